"""Every example spec and parameter file in the repo loads, and round-trips exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from quantstage.flows.convert import ConvertParams
from quantstage.quant.engines import load_spec, parse_spec_json
from quantstage.quant.engines.fx import configs as fx_configs
from quantstage.quant.engines.pt2e.quantizer import build_quantizer

ROOT = Path(__file__).resolve().parents[3]
SPECS = sorted((ROOT / "deploy" / "specs").glob("*.yaml"))
PARAMS = sorted((ROOT / "deploy" / "configs").glob("*.yaml"))


def test_examples_exist() -> None:
    assert len(SPECS) >= 6 and PARAMS


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_spec_round_trip(path: Path, tmp_path: Path) -> None:
    spec = load_spec(path)
    assert parse_spec_json(spec.model_dump_json()) == spec
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    assert load_spec(again) == spec
    assert load_spec(again).digest() == spec.digest()
    if spec.engine == "pt2e":
        build_quantizer(spec)  # builds the X86InductorQuantizer too
        return
    fx_configs.qconfig_mapping(spec)  # builds the torch objects too
    fx_configs.convert_qconfig_mapping(spec)
    fx_configs.prepare_custom_config(spec)
    fx_configs.convert_custom_config(spec)
    fx_configs.backend_config(spec)


@pytest.mark.parametrize("path", PARAMS, ids=[p.stem for p in PARAMS])
def test_params_round_trip(path: Path) -> None:
    params = ConvertParams.model_validate(yaml.safe_load(path.read_text()))
    assert ConvertParams.model_validate_json(params.model_dump_json()) == params
