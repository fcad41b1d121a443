"""The convert-time ``qconfig_mapping`` rule, checked by the FX engine before any work.

convert_fx's rule: every prepare-time key is kept with the same qconfig or ``None``, and
keys are added only with ``None``. The FX engine's ``check`` tests it up front
(``quant.engines.fx.configs.check_convert_mapping``) wherever a spec is parsed for use
(``parse_spec(..., check=True)``, ``load_spec``, flow parameters, ``quantize``), so a bad spec fails with a
pydantic ValidationError naming the key and both qconfigs instead of an AssertionError deep
inside torch's convert. Where torch checks the same thing, it must reject the same mapping;
a valid convert-time mapping must be accepted and convert with parity.
"""

from __future__ import annotations

import copy
import operator
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pydantic import ValidationError
from torch import nn

from quantstage.quant.config.qconfig import QConfigMappingSpec
from quantstage.quant.engines import FxSpec, QuantSpec, load_spec, parse_spec
from quantstage.quant.engines.fx import _torch as _fx
from quantstage.quant.engines.fx import configs as fx_configs
from quantstage.quant.engines.fx.prepare import prepare
from quantstage.quant.errors import SpecError
from tests.quant.engines.fx.test_convert_parity import (
    Prepared,
    _assert_parity,
    _features,
    _reference_kwargs,
)

# the mappings here name torch's own `default` qconfig on purpose, onednn's included
pytestmark = pytest.mark.filterwarnings("ignore:Default qconfig of oneDNN backend:UserWarning")

RULE = re.escape(
    "rule: a convert-time qconfig_mapping keeps every prepare-time key with the same qconfig "
    "or null (skip), and may add keys only with null"
)
# How the presets read in the messages (x86): observer class names, in this order.
DEFAULT = r"QConfig\(activation=HistogramObserver.*, weight=PerChannelMinMaxObserver.*\)"
PER_TENSOR = r"QConfig\(activation=MinMaxObserver.*, weight=MinMaxObserver.*\)"


def _o(set_: str, key: str = "", qconfig: str | None = None, **kw: Any) -> dict[str, Any]:
    return {"set": set_, "key": key, "qconfig": qconfig, **kw}


def _m(preset: str, *overrides: dict[str, Any]) -> dict[str, Any]:
    return {"preset": preset, "overrides": list(overrides)}


ORDER = {"object_type": "operator.add", "index": 0}

# name -> (prepare-time mapping, convert-time mapping, the error message as a regex)
INVALID: dict[str, tuple[dict | None, dict, str]] = {
    "changed_global": (
        None,
        _m("static", _o("global", qconfig="per_tensor")),
        rf"changes the global qconfig: prepare {DEFAULT}, convert {PER_TENSOR}; "
        r"the global qconfig must stay the same",
    ),
    "global_dropped": (
        None,
        _m("none"),
        rf"changes the global qconfig: prepare {DEFAULT}, convert None;",
    ),
    "missing_module_name": (
        _m("static", _o("module_name", "head", "per_tensor")),
        _m("static"),
        rf"lacks module_name 'head' \(prepare: {PER_TENSOR}\); fix: add it with the same qconfig or null",
    ),
    "missing_skip": (
        _m("static", _o("module_name", "head")),
        _m("static"),
        r"lacks module_name 'head' \(prepare: None\)",
    ),
    "missing_object_type": (
        _m("static", _o("object_type", "torch.nn.Linear", "per_tensor")),
        _m("static"),
        rf"lacks object_type torch\.nn\.modules\.linear\.Linear \(prepare: {PER_TENSOR}\)",
    ),
    "missing_regex": (
        _m("static", _o("module_name_regex", r"head.*", "per_tensor")),
        _m("static"),
        rf"lacks module_name_regex 'head\.\*' \(prepare: {PER_TENSOR}\)",
    ),
    "missing_order": (
        _m("static", _o("module_name_object_type_order", "", "per_tensor", **ORDER)),
        _m("static"),
        rf"lacks module_name_object_type_order \('', <built-in function add>, 0\) \(prepare: {PER_TENSOR}\)",
    ),
    "changed_module_name": (
        _m("static", _o("module_name", "head", "per_tensor")),
        _m("static", _o("module_name", "head", "default")),
        rf"changes module_name 'head': prepare {PER_TENSOR}, convert {DEFAULT}; "
        r"fix: use the prepare-time qconfig or null",
    ),
    "changed_object_type": (
        _m("static", _o("object_type", "torch.nn.Linear", "per_tensor")),
        _m("static", _o("object_type", "torch.nn.Linear", "default")),
        rf"changes object_type torch\.nn\.modules\.linear\.Linear: prepare {PER_TENSOR}, convert {DEFAULT};",
    ),
    "changed_regex": (
        _m("static", _o("module_name_regex", r"head.*", "per_tensor")),
        _m("static", _o("module_name_regex", r"head.*", "default")),
        rf"changes module_name_regex 'head\.\*': prepare {PER_TENSOR}, convert {DEFAULT};",
    ),
    "changed_order": (
        _m("static", _o("module_name_object_type_order", "", "per_tensor", **ORDER)),
        _m("static", _o("module_name_object_type_order", "", "default", **ORDER)),
        rf"changes module_name_object_type_order \('', <built-in function add>, 0\): "
        rf"prepare {PER_TENSOR}, convert {DEFAULT};",
    ),
    "skip_unskipped_at_convert": (
        _m("static", _o("module_name", "head")),
        _m("static", _o("module_name", "head", "default")),
        rf"changes module_name 'head': prepare None, convert {DEFAULT};",
    ),
    "extra_module_name": (
        None,
        _m("static", _o("module_name", "body", "default")),
        rf"adds module_name 'body' with {DEFAULT}, which was not in the prepare-time mapping; "
        r"fix: set it to null \(skip\) or add it at prepare",
    ),
    "extra_object_type": (
        None,
        _m("static", _o("object_type", "torch.nn.Linear", "per_tensor")),
        rf"adds object_type torch\.nn\.modules\.linear\.Linear with {PER_TENSOR}, which was not",
    ),
    "extra_regex": (
        None,
        _m("static", _o("module_name_regex", "b.*", "default")),
        rf"adds module_name_regex 'b\.\*' with {DEFAULT}, which was not",
    ),
    "extra_order": (
        None,
        _m("static", _o("module_name_object_type_order", "", "default", **ORDER)),
        rf"adds module_name_object_type_order \('', <built-in function add>, 0\) with {DEFAULT}, which was not",
    ),
}


def _spec(prepare_mapping: dict | None, convert_mapping: dict, **kw: Any) -> QuantSpec:
    fields = {"backend": "x86", "backend_config": "x86", "qconfig_mapping": prepare_mapping}
    return parse_spec(fields | {"convert_qconfig_mapping": convert_mapping, **kw}, check=True)


@pytest.fixture(autouse=True)
def _engine():
    previous = torch.backends.quantized.engine
    yield
    torch.backends.quantized.engine = previous


# --------------------------------------------------------------------------- invalid mappings


@pytest.mark.parametrize("name", list(INVALID))
def test_invalid_convert_mapping_is_rejected_by_the_spec(name: str) -> None:
    prepare_mapping, convert_mapping, message = INVALID[name]
    with pytest.raises(ValidationError, match=rf"convert-time qconfig_mapping {message}") as info:
        _spec(prepare_mapping, convert_mapping)
    assert re.search(RULE, str(info.value)), "the message states the rule"
    # one error, on the model as a whole, from the convert-mapping check
    assert len(info.value.errors()) == 1


def test_the_message_names_the_key_and_both_values() -> None:
    """A changed value reads as: key, prepare qconfig, convert qconfig, fix, rule."""
    with pytest.raises(ValidationError) as info:
        _spec(_m("static", _o("module_name", "head", "per_tensor")), _m("static", _o("module_name", "head", "default")))
    message = info.value.errors()[0]["msg"]
    key, before, after = message.index("'head'"), message.index("prepare "), message.index("convert ", 10)
    assert key < before < after < message.index("fix:") < message.index("rule:")
    assert "MinMaxObserver" in message[before:after] and "HistogramObserver" in message[after:]


def test_changed_value_message_tells_the_two_qconfigs_apart() -> None:
    with pytest.raises(ValidationError) as info:
        parse_spec(
            {
                "mode": "float16",
                "qconfig_mapping": _m("float16", _o("module_name", "fc1", "float16_dynamic")),
                "convert_qconfig_mapping": _m("float16", _o("module_name", "fc1", "float16_static")),
            },
            check=True,
        )
    message = info.value.errors()[0]["msg"]
    before = message.split("prepare ", 1)[1].split(", convert ", 1)[0]
    after = message.split(", convert ", 1)[1].split(";", 1)[0]
    assert before != after, f"both qconfigs read {before}"


def test_invalid_convert_mapping_in_a_spec_file(tmp_path: Path) -> None:
    """load_spec reports the same rule violation as a SpecError, one line."""
    path = tmp_path / "spec.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "qconfig_mapping": _m("static", _o("module_name", "head", "per_tensor")),
                "convert_qconfig_mapping": _m("static"),
            }
        )
    )
    with pytest.raises(SpecError, match=r"is invalid: .*convert-time qconfig_mapping lacks module_name 'head'"):
        load_spec(path)


# Torch's own check (_compare_prepare_convert_qconfig_mappings) covers the global qconfig,
# missing keys and changed values of object_type, module_name and module_name_regex.
_SAME = "Expected convert QConfigMapping to have the same qconfig as prepare for key"
TORCH_CHECKED = {
    "changed_global": "Expected global qconfigs to be the same in the prepare and convert quantization configs",
    "global_dropped": "Expected global qconfigs to be the same in the prepare and convert quantization configs",
    "missing_module_name": "Missing key module_name head in convert QConfigMapping",
    "missing_skip": "Missing key module_name head in convert QConfigMapping",
    "missing_object_type": "Missing key object_type <class 'torch.nn.modules.linear.Linear'> in convert",
    "missing_regex": "Missing key module_name_regex head.* in convert QConfigMapping",
    "changed_module_name": f"{_SAME} module_name head",
    "changed_object_type": f"{_SAME} object_type",
    "changed_regex": f"{_SAME} module_name_regex head.*",
    "skip_unskipped_at_convert": f"{_SAME} module_name head",
}


class _Plain(nn.Module):
    """body and head Linears with nothing to fuse (an object_type qconfig on Linear is fine)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(16, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.mark.parametrize("name", list(TORCH_CHECKED))
def test_torch_rejects_what_the_spec_rejects(name: str) -> None:
    """The same mapping handed to torch's convert_fx fails its own check."""
    prepare_mapping, convert_mapping, _ = INVALID[name]
    spec = FxSpec(backend="x86", backend_config="x86", qconfig_mapping=prepare_mapping)
    torch.manual_seed(0)
    prepared = prepare(_Plain().eval(), _features(), spec)
    prepared(*_features())
    bad = fx_configs.build_mapping(QConfigMappingSpec.model_validate(convert_mapping), "x86")
    with _fx.fx_quiet(), pytest.raises(AssertionError, match=re.escape(TORCH_CHECKED[name])):
        _fx.convert_fx(copy.deepcopy(prepared), qconfig_mapping=bad, backend_config=fx_configs.backend_config(spec))


# --------------------------------------------------------------------------- valid mappings

# Prepare: per-tensor head, a regex for body, an order entry for the first add.
VALID_PREPARE = _m(
    "static",
    _o("module_name", "head", "per_tensor"),
    _o("module_name_regex", r"body", "default"),
    _o("module_name_object_type_order", "", "default", **ORDER),
)
# Convert: every prepare key kept (same qconfig, or null = skip), extra keys only null.
VALID_CONVERT = _m(
    "static",
    _o("module_name", "head", "per_tensor"),  # same
    _o("module_name_regex", r"body", None),  # prepare key -> null: skip body at convert
    _o("module_name_object_type_order", "", None, **ORDER),  # prepare key -> null
    _o("module_name", "not_a_module"),  # extra, null
    _o("object_type", "torch.nn.Conv2d"),  # extra, null
    _o("module_name_regex", r"nothing\..*"),  # extra, null
    _o("module_name_object_type_order", "", None, object_type="torch.nn.functional.linear", index=3),  # extra, null
)


def test_valid_convert_mapping_is_accepted() -> None:
    spec = _spec(VALID_PREPARE, VALID_CONVERT)
    assert spec.convert_qconfig_mapping == QConfigMappingSpec.model_validate(VALID_CONVERT)
    mapping = fx_configs.convert_qconfig_mapping(spec)
    assert mapping.module_name_regex_qconfigs["body"] is None
    assert mapping.module_name_qconfigs["not_a_module"] is None
    assert mapping.module_name_qconfigs["head"] is not None


def test_same_mapping_at_convert_is_accepted() -> None:
    _spec(VALID_PREPARE, VALID_PREPARE)
    _spec(None, _m("static"))


class _HeadAndAdds(nn.Module):
    """WithHead's body/head plus two adds (the order key)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(16, 16)
        self.relu = nn.ReLU()
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.body(x)) + x
        return self.head(y + y)


@pytest.mark.parametrize("backend", ["x86", "fbgemm", "qnnpack", "onednn"])
@pytest.mark.parametrize("remove_qconfig", [False, True], ids=["keep_qconfig", "remove_qconfig"])
def test_valid_convert_mapping_gives_parity(backend: str, remove_qconfig: bool) -> None:
    """convert, lower(reference_convert) and convert_fx agree; the convert-time skips hold."""
    spec = FxSpec(
        backend=backend,
        backend_config=backend,
        qconfig_mapping=VALID_PREPARE,
        convert_qconfig_mapping=VALID_CONVERT,
        remove_qconfig=remove_qconfig,
    )
    torch.manual_seed(0)
    prepared = prepare(_HeadAndAdds().eval(), _features(), spec)
    with torch.no_grad():
        for _ in range(2):
            prepared(*_features())
    p = Prepared(prepared, spec, [_features(), _features()])
    torch.backends.quantized.engine = backend
    results = _assert_parity(p, spec)
    for name, gm in results.items():
        # body (fused LinearReLU) was skipped at convert: a float fused module
        assert type(gm.body) is torch.ao.nn.intrinsic.LinearReLU, name
        # head kept its per-tensor qconfig: a quantized Linear with a per-tensor weight
        assert type(gm.head) is torch.ao.nn.quantized.Linear, name
        assert gm.head.weight().qscheme() == torch.per_tensor_affine, name
        adds = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is operator.add]
        assert len(adds) == 1, f"{name}: the first add (order key -> null) stays float, the second is quantized"
    # the reference stage used the convert-time mapping too
    assert type(p.reference.graph_module.body) is torch.ao.nn.intrinsic.LinearReLU
    assert _reference_kwargs(spec)["qconfig_mapping"] is not None


def test_skip_shorthands_carry_over_to_the_convert_mapping() -> None:
    spec = FxSpec(
        skip_modules=("head",),
        skip_object_types=("operator.add",),
        convert_qconfig_mapping=_m("static", _o("module_name", "body")),
    )
    mapping = fx_configs.convert_qconfig_mapping(spec)
    assert mapping.module_name_qconfigs["head"] is None
    assert mapping.module_name_qconfigs["body"] is None
