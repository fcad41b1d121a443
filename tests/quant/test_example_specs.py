"""Every example spec and parameter file in the repo loads, and round-trips exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.convert import ConvertParams
from quant.spec import QuantSpec, load_spec

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "deploy" / "specs").glob("*.yaml"))
PARAMS = sorted((ROOT / "deploy" / "configs").glob("*.yaml"))


def test_examples_exist() -> None:
    assert len(SPECS) >= 6 and PARAMS


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_spec_round_trip(path: Path, tmp_path: Path) -> None:
    spec = load_spec(path)
    assert QuantSpec.model_validate_json(spec.model_dump_json()) == spec
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    assert load_spec(again) == spec
    assert load_spec(again).digest() == spec.digest()
    spec.qconfig_mapping_object()  # builds the torch objects too
    spec.convert_qconfig_mapping_object()
    spec.prepare_custom_config()
    spec.convert_custom_config()
    spec.backend_config_object()


@pytest.mark.parametrize("path", PARAMS, ids=[p.stem for p in PARAMS])
def test_params_round_trip(path: Path) -> None:
    params = ConvertParams.model_validate(yaml.safe_load(path.read_text()))
    assert ConvertParams.model_validate_json(params.model_dump_json()) == params
