"""``engine: auto``: a spec that names candidate engines, turned into one concrete spec per engine (or the one
line refusing it), parsed without any quantization framework, and no engine of its own to quantize with."""

from __future__ import annotations

import re

import pytest
import torch
from pydantic import ValidationError

from quantstage.quant.config import first_error
from quantstage.quant.engines import AutoSpec, FxSpec, Pt2eSpec, check_spec, parse_spec, registry
from quantstage.quant.errors import SpecError
from quantstage.quant.quantize import quantize
from tests.models import SmallCNN


def test_the_default_candidates_are_each_engine_s_defaults() -> None:
    candidates = AutoSpec().candidates()
    assert [(c.engine, c.spec, c.refused) for c in candidates] == [("fx", FxSpec(), ""), ("pt2e", Pt2eSpec(), "")]


def test_a_spec_written_for_fx_parses_with_engine_auto_and_pt2e_refuses_its_fx_fields() -> None:
    written_for_fx = FxSpec(backend_config="x86", skip_modules=("head.3",), calibration_batches=4)
    spec = parse_spec(written_for_fx.model_dump(mode="json") | {"engine": "auto"})
    assert type(spec) is AutoSpec
    fx, pt2e = AutoSpec.model_validate(spec.model_dump()).candidates()
    assert fx.spec == written_for_fx and not fx.refused
    assert pt2e.spec is None
    assert "backend_config = 'x86' has no meaning for engine 'pt2e'" in pt2e.refused and "fix:" in pt2e.refused
    assert "\n" not in pt2e.refused


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (
            {"engines": ["fx", "tvm"]},
            r"engines \['fx', 'tvm'\] must list candidate engines once each; allowed: fx, pt2e",
        ),
        ({"engines": []}, "must list candidate engines"),
        ({"engines": ["fx", "fx"]}, "must list candidate engines once each"),
        ({"engines": ["auto"]}, "allowed: fx, pt2e"),
        ({"auto_budget_s": -1}, "auto_budget_s: Input should be greater than or equal to 0"),
        (
            {"backend_config": "bogus"},
            r"every candidate engine refuses the spec \(fx: backend_config 'bogus' is unknown",
        ),
    ],
    ids=["unknown", "empty", "twice", "itself", "budget", "none-accept"],
)
def test_what_no_race_can_use_is_refused_on_parsing_with_one_line(fields: dict, named: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_spec({"engine": "auto", **fields})
    message = first_error(info.value)
    assert "\n" not in message
    assert re.search(named, message), message


def test_the_check_asks_every_candidate_engine() -> None:
    """An engine's own check (torch.ao's convert-time mapping rule) refuses it as a row; all refusing: SpecError."""
    added = {"set": "module_name", "key": "head", "qconfig": "default"}
    spec = AutoSpec(engines=("fx",), convert_qconfig_mapping={"preset": "static", "overrides": [added]})
    (fx,) = spec.candidates()
    assert fx.spec is None and "convert-time qconfig_mapping adds module_name 'head'" in fx.refused
    with pytest.raises(SpecError, match=r"every candidate engine refuses the spec \(fx: convert-time"):
        check_spec(spec)
    assert check_spec(AutoSpec()) == AutoSpec()


def test_auto_quantizes_nothing_itself_one_line_with_the_fix() -> None:
    with pytest.raises(SpecError, match=r"engine 'auto' has no 'prepare'.*fix: race them") as info:
        quantize(SmallCNN().eval(), AutoSpec(), [torch.rand(4, 1, 8, 8)])
    assert "\n" not in str(info.value)


def test_making_auto_the_default_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "DEFAULT_ENGINE", registry.AUTO)
    assert type(parse_spec({})) is AutoSpec
    assert parse_spec({"mode": "dynamic"}) == AutoSpec(mode="dynamic")


def test_a_sweep_candidate_may_be_auto() -> None:
    """A sweep grid over engine gives an auto candidate its own AutoSpec (it races inside its unit)."""
    from quantstage.flows.sweep_params import expand_grid

    specs = [parse_spec(raw) for _, raw in expand_grid(FxSpec(mode="dynamic"), {"engine": ["fx", "auto"]})]
    assert specs == [FxSpec(mode="dynamic"), AutoSpec(mode="dynamic")]
