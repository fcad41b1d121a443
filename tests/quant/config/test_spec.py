"""FxSpec (the default engine's spec): defaults, validation, (de)serialisation, dotted paths and the torch configs built
from it."""

from __future__ import annotations

import json
import operator
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from pydantic import ValidationError
from torch import nn

from quantstage.quant.config import BACKENDS
from quantstage.quant.config.dotted import resolve_dotted
from quantstage.quant.engines import FxSpec, QuantSpec, load_spec, parse_spec, parse_spec_json
from quantstage.quant.engines.fx import configs as fx_configs
from quantstage.quant.errors import SpecError

# --------------------------------------------------------------------------- fixtures

SPECS = [
    FxSpec(),
    FxSpec(mode="dynamic"),
    *[FxSpec(backend=backend, backend_config=backend) for backend in BACKENDS],
    FxSpec(
        backend="fbgemm",
        calibration_batches=3,
        skip_modules=("head", "features.0"),
        skip_object_types=("torch.nn.Linear", "torch.nn.functional.linear", "operator.add"),
        keep_original_weights=True,
        remove_qconfig=False,
    ),
    FxSpec(mode="dynamic", skip_object_types=("torch.nn.LSTM",), skip_modules=("rnn",)),
]
SPEC_IDS = [
    "default",
    "dynamic",
    *[f"static-{backend}" for backend in BACKENDS],
    "static-skips",
    "dynamic-skips",
]


def _write(path: Path, spec: QuantSpec) -> Path:
    data = spec.model_dump(mode="json")
    if path.suffix == ".json":
        path.write_text(json.dumps(data))
    else:
        path.write_text(yaml.safe_dump(data))
    return path


# --------------------------------------------------------------------------- the model


def test_defaults() -> None:
    spec = FxSpec()
    assert spec.version == 1
    assert spec.backend == "x86"
    assert spec.mode == "static"
    assert spec.calibration_batches == 8
    assert spec.skip_modules == ()
    assert spec.skip_object_types == ()
    assert spec.backend_config == "native"
    assert spec.keep_original_weights is False
    assert spec.remove_qconfig is True


def test_backends_match_the_literal() -> None:
    assert BACKENDS == ("x86", "fbgemm", "qnnpack", "onednn")
    for backend in BACKENDS:
        assert FxSpec(backend=backend).backend == backend


def test_frozen() -> None:
    spec = FxSpec()
    with pytest.raises(ValidationError, match="frozen"):
        spec.backend = "fbgemm"  # type: ignore[misc]
    assert spec.backend == "x86"


def test_unknown_field_rejected() -> None:
    with pytest.raises(ValidationError, match="calibration_batchez"):
        FxSpec(calibration_batchez=4)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"backend": "arm"}, "backend"),
        ({"mode": "weight_only"}, "mode"),
        ({"calibration_batches": 0}, "calibration_batches"),
        ({"version": 2}, "version"),
        ({"backend_config": "tensorrt-llm"}, "backend_config"),
    ],
    ids=["backend", "mode", "calibration_batches", "version", "backend_config"],
)
def test_invalid_values_rejected(kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        FxSpec(**kwargs)


@pytest.mark.parametrize("name", ["", " head", "head ", "\tfeatures.0"], ids=["empty", "lead", "trail", "tab"])
def test_skip_modules_must_be_module_paths(name: str) -> None:
    with pytest.raises(ValidationError, match=r"skip_modules entry .* is not a module path.*named_modules"):
        FxSpec(skip_modules=(name,))


def test_skip_object_types_unknown_rejected_naming_the_path() -> None:
    with pytest.raises(ValidationError, match=r"cannot resolve 'torch\.nn\.NoSuchLayer'"):
        FxSpec(skip_object_types=("torch.nn.NoSuchLayer",))


def test_sequences_become_tuples() -> None:
    spec = parse_spec({"skip_modules": ["head"], "skip_object_types": ["operator.add"]})
    assert spec.skip_modules == ("head",)
    assert spec.skip_object_types == ("operator.add",)
    assert hash(spec) == hash(FxSpec(skip_modules=("head",), skip_object_types=("operator.add",)))


# --------------------------------------------------------------------------- serialisation


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_json_round_trip(spec: QuantSpec) -> None:
    assert parse_spec_json(spec.model_dump_json()) == spec
    assert parse_spec_json(spec.to_json()) == spec


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"], ids=["yaml", "yml", "json"])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_load_spec_file_round_trip(tmp_path: Path, spec: QuantSpec, suffix: str) -> None:
    path = _write(tmp_path / f"spec{suffix}", spec)
    assert load_spec(path) == spec
    assert load_spec(str(path)) == spec


def test_load_spec_unwraps_a_spec_key(tmp_path: Path) -> None:
    path = tmp_path / "wrapped.yaml"
    path.write_text("spec:\n  backend: qnnpack\n  skip_modules: [head]\n")
    assert load_spec(path) == FxSpec(backend="qnnpack", skip_modules=("head",))


def test_load_spec_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_spec(path) == FxSpec()


def test_load_spec_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match=rf"spec file '{re.escape(str(missing))}' does not exist"):
        load_spec(missing)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.yaml", "backend: [x86\n", r"is not valid YAML: line 2"),
        ("bad.yml", "mode: static\n  - oops: [\n", r"is not valid YAML: line"),
        ("bad.json", '{"backend": "x86",', r"is not valid JSON: line 1, column 19"),
    ],
    ids=["yaml", "yml", "json"],
)
def test_load_spec_unparseable(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SpecError, match=message):
        load_spec(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("calibration_batches: 0\n", r"is invalid: calibration_batches: .*\(got 0\)"),
        ("backend: arm\n", r"is invalid: backend: .*\(got 'arm'\)"),
        ("bogus_field: 1\n", r"is invalid: bogus_field: Extra inputs are not permitted"),
        ("skip_object_types: [torch.nn.NoSuchLayer]\n", r"is invalid: skip_object_types: .*NoSuchLayer"),
        ("skip_modules: ['']\n", r"is invalid: skip_modules entry '' is not a module path"),
        ("- x86\n", r"must hold a mapping of fields, got a list"),
    ],
    ids=["calibration_batches", "backend", "extra", "skip_object_types", "skip_modules", "not-a-mapping"],
)
def test_load_spec_invalid_field_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message):
        load_spec(path)


# --------------------------------------------------------------------------- dotted paths


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("torch.nn.Linear", nn.Linear),
        ("torch.nn.functional.linear", F.linear),
        ("operator.add", operator.add),
        ("torch.add", torch.add),
        ("torch.nn:Linear", nn.Linear),
        ("torch.nn.modules.linear:Linear", nn.Linear),
    ],
    ids=["module-class", "functional", "operator", "torch-op", "colon", "colon-deep"],
)
def test_resolve_dotted(path: str, expected: object) -> None:
    assert resolve_dotted(path) is expected


@pytest.mark.parametrize(
    ("path", "cause"),
    [
        ("torch.nn.NoSuchLayer", "has no attribute 'NoSuchLayer'"),
        ("no_such_package_xyz.thing", "No module named 'no_such_package_xyz'"),
        ("torch.nn:NoSuchLayer", "has no attribute 'NoSuchLayer'"),
        ("torch", "None"),
    ],
    ids=["attribute", "module", "colon", "bare-module"],
)
def test_resolve_dotted_failure(path: str, cause: str) -> None:
    with pytest.raises(SpecError, match=rf"cannot resolve {re.escape(repr(path))} to a Python object") as info:
        resolve_dotted(path)
    assert cause in str(info.value)
    assert "give an importable dotted path such as 'torch.nn.Linear'" in str(info.value)


def test_resolve_dotted_relative_path_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"cannot resolve '\.foo'"):
        resolve_dotted(".foo")


# --------------------------------------------------------------------------- torch configs


@pytest.mark.parametrize("backend", BACKENDS, ids=list(BACKENDS))
def test_static_qconfig_mapping_has_a_global_qconfig(backend: str) -> None:
    mapping = fx_configs.qconfig_mapping(FxSpec(backend=backend))
    assert mapping.global_qconfig is not None
    assert nn.Linear not in mapping.object_type_qconfigs
    assert len(mapping.module_name_qconfigs) == 0


def test_skips_map_to_none() -> None:
    spec = FxSpec(
        skip_modules=("head", "features.0"),
        skip_object_types=("torch.nn.Linear", "torch.nn.functional.linear", "operator.add"),
    )
    mapping = fx_configs.qconfig_mapping(spec)
    assert dict(mapping.module_name_qconfigs) == {"head": None, "features.0": None}
    for obj in (nn.Linear, F.linear, operator.add):
        assert obj in mapping.object_type_qconfigs, obj
        assert mapping.object_type_qconfigs[obj] is None, obj
    assert mapping.global_qconfig is not None


def _qconfig_for(mapping, object_type: object):
    """The qconfig prepare_fx gives ``object_type``: its object-type entry, else the global one."""
    return mapping.object_type_qconfigs.get(object_type, mapping.global_qconfig)


@pytest.mark.parametrize("module_type", [nn.Linear, nn.LSTM], ids=["Linear", "LSTM"])
def test_dynamic_maps_module_types_to_a_dynamic_qconfig(module_type: type) -> None:
    qconfig = _qconfig_for(fx_configs.qconfig_mapping(FxSpec(mode="dynamic")), module_type)
    assert qconfig.activation().is_dynamic
    if module_type is nn.LSTM:  # recurrent layers keep torch's per-tensor dynamic qconfig
        assert qconfig is torch.ao.quantization.default_dynamic_qconfig
    else:  # Linear: per-channel weights, 7 bits on a CPU without VNNI/AMX (8-bit activations)
        weight = qconfig.weight()
        assert weight.qscheme == torch.per_channel_symmetric
        bits = FxSpec(mode="dynamic").resolved()["dynamic.weight_bits"]
        assert (weight.quant_min, weight.quant_max) == ((-64, 63) if bits == 7 else (-128, 127))


@pytest.mark.parametrize("isa", ["avx512_vnni", None])
def test_dynamic_defaults_follow_the_cpu(monkeypatch: pytest.MonkeyPatch, isa: str | None) -> None:
    """8-bit dynamic activations everywhere; 8-bit weights only where u8*s8 pairs cannot saturate int16."""
    from quantstage.quant import hardware

    monkeypatch.setattr(hardware, "has_int8_dot_product", lambda: isa)
    spec = FxSpec(mode="dynamic")
    assert spec.resolved() == {
        "dynamic.weight": "per_channel",
        "dynamic.activation_bits": 8,
        "dynamic.weight_bits": 8 if isa else 7,
    }
    assert spec.as_params()["resolved.dynamic"].startswith(
        f"per_channel weights, 8-bit activations, {8 if isa else 7}-bit"
    )
    torch_default = FxSpec(
        mode="dynamic", qconfig_mapping={"preset": "dynamic", "dynamic": {"weight": "per_tensor", "activation_bits": 7}}
    )
    assert torch_default.resolved()["dynamic.weight_bits"] == 8  # 7-bit activations never saturate
    assert (
        _qconfig_for(fx_configs.qconfig_mapping(torch_default), nn.Linear)
        is torch.ao.quantization.default_dynamic_qconfig
    )
    qnnpack = FxSpec(mode="dynamic", backend="qnnpack").resolved()
    assert qnnpack["dynamic.weight_bits"] == 8


def test_dynamic_settings_need_the_dynamic_preset() -> None:
    with pytest.raises(ValidationError, match=r"dynamic settings apply to the dynamic preset, not 'static'"):
        FxSpec(qconfig_mapping={"preset": "static", "dynamic": {"weight": "per_tensor"}})


@pytest.mark.filterwarnings("ignore:Please use quant_min and quant_max:UserWarning")
@pytest.mark.parametrize("backend", BACKENDS, ids=list(BACKENDS))
def test_static_qconfig_is_not_dynamic(backend: str) -> None:
    qconfig = _qconfig_for(fx_configs.qconfig_mapping(FxSpec(backend=backend)), nn.Linear)
    assert qconfig is not None
    assert not getattr(qconfig.activation(), "is_dynamic", False)


def test_dynamic_skip_overrides_the_dynamic_qconfig() -> None:
    mapping = fx_configs.qconfig_mapping(
        FxSpec(mode="dynamic", skip_object_types=("torch.nn.Linear",), skip_modules=("rnn",))
    )
    assert mapping.object_type_qconfigs[nn.Linear] is None
    assert _qconfig_for(mapping, nn.LSTM) is torch.ao.quantization.default_dynamic_qconfig
    assert dict(mapping.module_name_qconfigs) == {"rnn": None}


def test_qconfig_mapping_is_fresh_each_call() -> None:
    spec = FxSpec(skip_modules=("head",))
    first = fx_configs.qconfig_mapping(spec)
    first.set_module_name("other", None)
    assert dict(fx_configs.qconfig_mapping(spec).module_name_qconfigs) == {"head": None}


@pytest.mark.parametrize("name", ["native", *BACKENDS], ids=["native", *BACKENDS])
def test_backend_config_object(name: str) -> None:
    config = fx_configs.backend_config(FxSpec(backend_config=name))
    assert config.name == name


# --------------------------------------------------------------------------- digest and params


def test_digest_stable_across_equal_specs() -> None:
    a = FxSpec(backend="fbgemm", skip_modules=("head",), calibration_batches=4)
    b = FxSpec(calibration_batches=4, skip_modules=["head"], backend="fbgemm")  # type: ignore[arg-type]
    c = parse_spec_json(a.model_dump_json())
    assert a.digest() == b.digest() == c.digest()
    assert re.fullmatch(r"[0-9a-f]{16}", a.digest()), a.digest()


@pytest.mark.parametrize("spec", SPECS[1:], ids=SPEC_IDS[1:])
def test_digest_differs_for_different_specs(spec: QuantSpec) -> None:
    assert spec.digest() != FxSpec().digest()


def test_digests_all_distinct() -> None:
    digests = [spec.digest() for spec in SPECS]
    assert len(set(digests)) == len(SPECS), digests


def test_as_params() -> None:
    spec = FxSpec(skip_modules=("head", "features.0"), skip_object_types=("operator.add",))
    params = spec.as_params()
    assert set(params) == {f"spec.{name}" for name in FxSpec.model_fields} | {"resolved.reduce_range"}
    assert all(key.startswith(("spec.", "resolved.")) for key in params)
    assert all(isinstance(value, str) for value in params.values())
    assert params["spec.backend"] == "x86"
    assert params["spec.calibration_batches"] == "8"
    assert params["spec.skip_modules"] == "head,features.0"
    assert params["spec.skip_object_types"] == "operator.add"
    assert params["spec.remove_qconfig"] == "True"
    assert FxSpec().as_params()["spec.skip_modules"] == ""


@pytest.mark.parametrize("isa", ["avx512_vnni", None])
def test_reduce_range_default_follows_the_cpu(monkeypatch: pytest.MonkeyPatch, isa: str | None) -> None:
    """x86/fbgemm observe 8-bit activations on a CPU with VNNI/AMX, 7-bit without; torch's other
    defaults (per-tensor ConvTranspose weights, fixed-qparams ops) are kept either way."""
    import torch

    from quantstage.quant import hardware

    monkeypatch.setattr(hardware, "has_int8_dot_product", lambda: isa)
    for backend in ("x86", "fbgemm"):
        spec = FxSpec(backend=backend)
        mapping = fx_configs.qconfig_mapping(spec)
        assert mapping.global_qconfig.activation.p.keywords["reduce_range"] is (isa is None)
        transpose = mapping.object_type_qconfigs[torch.nn.ConvTranspose2d]
        assert transpose.weight.p.keywords["qscheme"] == torch.per_tensor_symmetric
        assert transpose.activation.p.keywords["reduce_range"] is (isa is None)
        assert spec.as_params()["resolved.reduce_range"].startswith(str(isa is None))
    explicit = FxSpec(backend="x86", qconfig_mapping={"preset": "static", "observers": {"reduce_range": True}})
    assert fx_configs.qconfig_mapping(explicit).global_qconfig.activation.p.keywords["reduce_range"] is True
    assert "set in the spec" in explicit.as_params()["resolved.reduce_range"]
    onednn = fx_configs.qconfig_mapping(FxSpec(backend="onednn")).global_qconfig  # 8 bits saturate without VNNI too
    assert onednn.activation.p.keywords["reduce_range"] is (isa is None)
    assert FxSpec(backend="onednn").resolved() == {"reduce_range": isa is None}
    assert FxSpec(backend="x86").digest() != FxSpec(backend="qnnpack").digest()
    qnnpack = fx_configs.qconfig_mapping(FxSpec(backend="qnnpack")).global_qconfig  # torch's own default, untouched
    assert qnnpack.activation.p.keywords.get("reduce_range") is False


def test_digest_holds_what_the_machine_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same spec makes a different model on a CPU without VNNI (7-bit activations): its digest,
    and so the idempotency key, differ; a spec that fixes reduce_range has one digest everywhere."""
    from quantstage.quant import hardware

    fixed = FxSpec(qconfig_mapping={"preset": "static", "observers": {"reduce_range": False}})
    digests = {}
    for isa in ("avx512_vnni", None):
        monkeypatch.setattr(hardware, "has_int8_dot_product", lambda isa=isa: isa)
        digests[isa] = (FxSpec().digest(), fixed.digest(), FxSpec(mode="float16").digest())
    assert digests["avx512_vnni"][0] != digests[None][0]
    assert digests["avx512_vnni"][1:] == digests[None][1:]
