"""The engine registry: one line per engine gives the spec union, its parsing, its errors and its engine."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from pydantic import BaseModel, Field, ValidationError

from quantstage.quant.config import SpecBase, first_error
from quantstage.quant.engines import (
    DEFAULT_ENGINE,
    REGISTRY,
    CheckedSpec,
    FxSpec,
    Pt2eSpec,
    QuantSpec,
    default_spec,
    engine_for,
    get_engine,
    parse_spec,
    parse_spec_json,
    spec_class,
)
from quantstage.quant.errors import SpecError

ENGINES = sorted(REGISTRY)


class _Params(BaseModel):
    """A flow's parameters in miniature: one spec field, as flows declare it."""

    spec: CheckedSpec = Field(default_factory=default_spec)


@pytest.mark.parametrize("name", ENGINES)
def test_every_engine_round_trips_through_the_union(name: str) -> None:
    spec = parse_spec({"engine": name})
    assert type(spec) is REGISTRY[name].spec is spec_class(name)
    assert isinstance(spec, SpecBase) and spec.engine == name
    assert parse_spec_json(spec.model_dump_json()) == spec
    assert parse_spec(spec.model_dump(mode="json")) == spec
    assert parse_spec(spec.model_dump(mode="json", exclude_defaults=True)) == spec  # engine is always dumped
    assert parse_spec(spec) is spec
    assert _Params(spec=spec.model_dump(mode="json")).spec == spec


@pytest.mark.parametrize("name", ENGINES)
def test_every_entry_names_its_own_engine(name: str) -> None:
    assert spec_class(name).model_fields["engine"].default == name
    assert get_engine(name).name == name
    assert engine_for(parse_spec({"engine": name})) is get_engine(name)


def test_a_spec_without_engine_is_the_default_engines() -> None:
    assert type(parse_spec({})) is REGISTRY[DEFAULT_ENGINE].spec
    assert default_spec() == parse_spec({}) == FxSpec()
    assert _Params().spec == default_spec()
    assert parse_spec({"mode": "dynamic"}) == FxSpec(mode="dynamic")


def test_an_unknown_engine_is_one_line_naming_the_allowed() -> None:
    with pytest.raises(ValidationError) as info:
        _Params(spec={"engine": "tvm"})
    assert first_error(info.value) == "spec.engine: Input should be 'fx', 'pt2e' or 'auto' (got 'tvm')"
    assert len(info.value.errors()) == 1
    with pytest.raises(SpecError, match=r"engine 'tvm' is unknown; allowed: fx, pt2e, auto"):
        get_engine("tvm")


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        ({"calibration_batchez": 4}, "spec.calibration_batchez: Extra inputs are not permitted (got 4)"),
        ({"engine": "pt2e", "calibration_batches": 0}, "spec.calibration_batches: Input should be greater than"),
        ({"engine": "pt2e", "backend_config": "x86"}, "spec: backend_config = 'x86' has no meaning for engine 'pt2e'"),
        ([1, 2], "spec: Input should be a valid dictionary or instance of FxSpec (got [1, 2])"),
    ],
    ids=["fx-extra", "pt2e-field", "pt2e-fx-only", "not-a-mapping"],
)
def test_errors_read_as_one_model_without_the_union_tag(raw: object, line: str) -> None:
    with pytest.raises(ValidationError) as info:
        _Params(spec=raw)
    assert first_error(info.value).startswith(line), first_error(info.value)
    assert len(info.value.errors()) == 1


def test_checked_specs_run_the_engines_check() -> None:
    """A flow parameter is checked by its engine too (the convert-time mapping rule needs torch.ao)."""
    added = {"set": "module_name", "key": "head", "qconfig": "default"}
    raw = {"convert_qconfig_mapping": {"preset": "static", "overrides": [added]}}
    assert parse_spec(raw).convert_qconfig_mapping is not None  # parsing alone does not build torch objects
    with pytest.raises(ValidationError, match="convert-time qconfig_mapping adds module_name 'head'"):
        parse_spec(raw, check=True)
    with pytest.raises(ValidationError) as info:
        _Params(spec=raw)
    assert first_error(info.value).startswith("spec: convert-time qconfig_mapping adds module_name 'head'")


def test_the_json_schema_offers_every_engines_spec() -> None:
    """Deployments publish it; a spec without engine must fit it (anyOf: the default engine's is parsed)."""
    schema = _Params.model_json_schema()
    members = schema["properties"]["spec"]["anyOf"]
    assert [m["$ref"].rsplit("/", 1)[1] for m in members] == [REGISTRY[n].spec.__name__ for n in REGISTRY]
    assert schema["$defs"]["Pt2eSpec"]["properties"]["engine"]["const"] == "pt2e"
    assert "backend_config" not in schema["$defs"]["Pt2eSpec"]["properties"]
    json.dumps(schema)


def test_quant_spec_is_the_union_and_spec_base_the_class() -> None:
    assert not isinstance(QuantSpec, type)
    assert issubclass(FxSpec, SpecBase) and issubclass(Pt2eSpec, SpecBase)


def test_building_a_spec_imports_no_quantization_framework() -> None:
    """quant.config and every engine's spec parse without torch.ao's FX quantization or torchao, and without
    the engine modules that import them (torch itself imports torch.ao.quantization's eager parts)."""
    code = textwrap.dedent(
        """
        import sys
        import quantstage.quant.config
        from quantstage.quant.engines.registry import REGISTRY, parse_spec
        for name in REGISTRY:
            parse_spec({"engine": name, "skip_modules": ["head"]})
        heavy = ("torch.ao.quantization.quantize_fx", "torch.ao.quantization.fx", "torchao",
                 "quantstage.quant.engines.fx.engine", "quantstage.quant.engines.fx._torch",
                 "quantstage.quant.engines.pt2e.engine", "quantstage.quant.engines.pt2e._torchao")
        print(sorted(m for m in sys.modules if m.startswith(heavy)))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_importing_the_config_or_building_a_spec_imports_no_torch() -> None:
    """``python -c "import quantstage.quant.config"`` — and parsing a spec of every engine — loads neither
    torch.ao.quantization nor torchao: not even torch (whose import loads torch.ao.quantization's eager parts)."""
    code = textwrap.dedent(
        """
        import sys
        import quantstage.quant.config
        config = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchao'))
        from quantstage.quant.engines import REGISTRY, parse_spec
        for name in REGISTRY:
            parse_spec({"engine": name})
        print(config, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchao')))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "[] []", result.stdout
