"""Parity of ``quant.convert`` with torch's ``convert_fx``.

For every model pattern and every quantized backend (x86, fbgemm, qnnpack, onednn),
``convert(p, ...)``, ``lower(reference_convert(p, ...), ...)`` and torch's
``convert_fx(copy.deepcopy(p), ...)`` must generate the same code and bit-identical outputs.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import default_dynamic_qconfig
from torch.ao.quantization.quantize_fx import convert_to_reference_fx

from quant import _fx
from quant.convert import ReferenceModel, convert, lower, reference_convert
from quant.errors import ConversionError

# torch's own reference LSTM (used by torch's convert_fx too) copy-constructs tensors.
pytestmark = pytest.mark.filterwarnings(
    "ignore:To copy construct from a tensor:UserWarning:torch.ao.nn.quantized.reference"
)

BACKENDS = ["x86", "fbgemm", "qnnpack", "onednn"]
SEED = 0
CALIBRATION_BATCHES = 3
EVAL_BATCHES = 2


# --------------------------------------------------------------------------- models


class ConvBnRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class LinearRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 8)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.fc(x))


class ResidualAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        z = self.conv2(x)
        return y + z


class FunctionalLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 16) * 0.1)
        self.bias = nn.Parameter(torch.randn(8) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class ConvReluBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


class Nested(nn.Module):
    """The same block class used twice, inside an intermediate container."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(ConvReluBlock(3, 8), ConvReluBlock(8, 8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class WithHead(nn.Module):
    """A quantized body and a ``head`` Linear that the skip cases leave in float."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(16, 8)
        self.relu = nn.ReLU()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.body(x)))


class DynamicLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 12)
        self.fc2 = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class LSTMModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size=8, hidden_size=12, num_layers=1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return out


# --------------------------------------------------------------------------- cases


def _image() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8)


def _features() -> torch.Tensor:
    return torch.randn(4, 16)


def _sequence() -> torch.Tensor:
    return torch.randn(2, 5, 8)


def _static_mapping(backend: str) -> _fx.QConfigMapping:
    return _fx.get_default_qconfig_mapping(backend)


def _dynamic_mapping(backend: str) -> _fx.QConfigMapping:
    return (
        _fx.QConfigMapping()
        .set_object_type(nn.Linear, default_dynamic_qconfig)
        .set_object_type(nn.LSTM, default_dynamic_qconfig)
    )


def _skip_head_mapping(backend: str) -> _fx.QConfigMapping:
    return _static_mapping(backend).set_module_name("head", None)


@dataclasses.dataclass(frozen=True)
class Case:
    model: Callable[[], nn.Module]
    make_input: Callable[[], torch.Tensor]
    prepare_mapping: Callable[[str], _fx.QConfigMapping]
    # a convert-time mapping derived from the prepare-time one, or None
    convert_mapping: Callable[[_fx.QConfigMapping], _fx.QConfigMapping] | None = None
    # names of submodules that must stay a float nn.Linear after conversion
    float_linears: tuple[str, ...] = ()
    static: bool = True


CASES: dict[str, Case] = {
    "conv_bn_relu": Case(ConvBnRelu, _image, _static_mapping),
    "linear_relu": Case(LinearRelu, _features, _static_mapping),
    "residual_add": Case(ResidualAdd, _image, _static_mapping),
    "functional_linear": Case(FunctionalLinear, _features, _static_mapping),
    "nested_blocks": Case(Nested, _image, _static_mapping),
    "skip_at_prepare": Case(WithHead, _features, _skip_head_mapping, float_linears=("head",)),
    "skip_at_convert": Case(
        WithHead,
        _features,
        _static_mapping,
        convert_mapping=lambda qm: copy.deepcopy(qm).set_module_name("head", None),
        float_linears=("head",),
    ),
    "dynamic_linear": Case(DynamicLinear, _features, _dynamic_mapping, static=False),
    "lstm_dynamic": Case(LSTMModel, _sequence, _dynamic_mapping, static=False),
}


# conv-bn-relu and linear-relu, plus patterns where each flag is observable:
# keep_original_weights only affects prepacked get_attr weights (functional linear),
# _remove_qconfig only modules left in float (the pool in nested_blocks, a skipped head).
FLAG_PATTERNS = [
    "conv_bn_relu",
    "linear_relu",
    "functional_linear",
    "nested_blocks",
    "skip_at_convert",
]


# --------------------------------------------------------------------------- helpers


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def backend(request: pytest.FixtureRequest):
    """The backend name, with ``torch.backends.quantized.engine`` set to it for the test."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = request.param
    try:
        yield request.param
    finally:
        torch.backends.quantized.engine = previous


@dataclasses.dataclass
class Prepared:
    model: torch.fx.GraphModule
    mapping: _fx.QConfigMapping
    backend_config: _fx.BackendConfig
    inputs: list[torch.Tensor]


def _prepare(case: Case, backend: str) -> Prepared:
    torch.manual_seed(SEED)
    model = case.model().eval()
    mapping = case.prepare_mapping(backend)
    backend_config = _fx.backend_config_for(backend)
    example = (case.make_input(),)
    with _fx.fx_quiet():
        prepared = _fx.prepare_fx(model, mapping, example, backend_config=backend_config)
    with torch.no_grad():
        for _ in range(CALIBRATION_BATCHES):
            prepared(case.make_input())
    inputs = [case.make_input() for _ in range(EVAL_BATCHES)]
    return Prepared(prepared, mapping, backend_config, inputs)


def _torch_convert(prepared: torch.fx.GraphModule, **kwargs) -> torch.fx.GraphModule:
    with _fx.fx_quiet():
        return _fx.convert_fx(copy.deepcopy(prepared), **kwargs)


def _run(gm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return gm(x)


def _assert_parity(
    p: Prepared,
    *,
    qconfig_mapping: _fx.QConfigMapping | None = None,
    keep_original_weights: bool = False,
    remove_qconfig: bool = True,
) -> dict[str, torch.fx.GraphModule]:
    """Convert three ways and assert identical code and bit-identical outputs."""
    expected = _torch_convert(
        p.model,
        _remove_qconfig=remove_qconfig,
        qconfig_mapping=qconfig_mapping,
        backend_config=p.backend_config,
        keep_original_weights=keep_original_weights,
    )
    ours = convert(
        p.model,
        _remove_qconfig=remove_qconfig,
        qconfig_mapping=qconfig_mapping,
        backend_config=p.backend_config,
        keep_original_weights=keep_original_weights,
    )
    reference = reference_convert(
        p.model, qconfig_mapping=qconfig_mapping, backend_config=p.backend_config
    )
    assert isinstance(reference, ReferenceModel)
    lowered = lower(
        reference, keep_original_weights=keep_original_weights, remove_qconfig=remove_qconfig
    )
    results = {"convert_fx": expected, "convert": ours, "lower(reference_convert)": lowered}

    for name in ("convert", "lower(reference_convert)"):
        assert results[name].code == expected.code, f"{name}: generated code differs"
        # Same module structure: names and types of every submodule.
        assert _module_types(results[name]) == _module_types(expected), (
            f"{name}: submodules differ"
        )
        # _remove_qconfig: which modules still carry a qconfig, and which one.
        assert _qconfigs(results[name]) == _qconfigs(expected), f"{name}: qconfigs differ"
        # keep_original_weights: the lookup torch attaches for prepacked get_attr weights.
        assert hasattr(results[name], "original_weights_lookup") == hasattr(
            expected, "original_weights_lookup"
        ), f"{name}: original_weights_lookup presence differs"
        if hasattr(expected, "original_weights_lookup"):
            _assert_same_value(
                results[name].original_weights_lookup,
                expected.original_weights_lookup,
                f"{name}.original_weights_lookup",
            )
        # Quantized weights, packed params, scales and zero points.
        got_state, want_state = results[name].state_dict(), expected.state_dict()
        assert got_state.keys() == want_state.keys(), f"{name}: state_dict keys differ"
        for key in want_state:
            _assert_same_value(got_state[key], want_state[key], f"{name}.state_dict[{key!r}]")

    for i, x in enumerate(p.inputs):
        want = _run(expected, x)
        for name in ("convert", "lower(reference_convert)"):
            got = _run(results[name], x)
            assert got.dtype == want.dtype and got.shape == want.shape, f"{name}: input {i}"
            assert torch.equal(got, want), (
                f"{name}: output for input {i} differs from convert_fx "
                f"(max abs diff {(got.float() - want.float()).abs().max().item()})"
            )
    return results


def _assert_same_value(got: object, want: object, where: str) -> None:
    """Exact equality of state values: tensors (quantized too), packed params, containers."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), f"{where}: {type(got).__name__} is not a tensor"
        assert (got.dtype, got.shape) == (want.dtype, want.shape), f"{where}: dtype/shape"
        if want.is_quantized:
            assert got.qscheme() == want.qscheme(), f"{where}: qscheme"
            if want.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                assert got.q_scale() == want.q_scale(), f"{where}: scale"
                assert got.q_zero_point() == want.q_zero_point(), f"{where}: zero point"
            else:
                assert got.q_per_channel_axis() == want.q_per_channel_axis(), f"{where}: axis"
                assert torch.equal(got.q_per_channel_scales(), want.q_per_channel_scales())
                assert torch.equal(
                    got.q_per_channel_zero_points(), want.q_per_channel_zero_points()
                ), f"{where}: zero points"
            assert torch.equal(got.int_repr(), want.int_repr()), f"{where}: int values"
        else:
            assert torch.equal(got, want), f"{where}: values"
    elif isinstance(want, torch.ScriptObject):  # packed weights
        assert isinstance(got, torch.ScriptObject), f"{where}: not a ScriptObject"
        assert got._type().qualified_name() == want._type().qualified_name(), where
        _assert_same_value(got.__getstate__(), want.__getstate__(), f"{where}.__getstate__()")
    elif isinstance(want, (tuple, list)):
        assert type(got) is type(want) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (a, b) in enumerate(zip(got, want)):
            _assert_same_value(a, b, f"{where}[{i}]")
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), f"{where}: keys differ"
        for k in want:
            _assert_same_value(got[k], want[k], f"{where}[{k!r}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def _qconfigs(gm: torch.nn.Module) -> dict[str, str]:
    """repr of the qconfig each submodule still carries (absent ones left out)."""
    return {name: repr(m.qconfig) for name, m in gm.named_modules() if hasattr(m, "qconfig")}


def _module_types(gm: torch.nn.Module) -> dict[str, str]:
    """Qualified type name of every submodule (a GraphModule's class is per instance)."""
    return {
        name: "GraphModule"
        if isinstance(m, torch.fx.GraphModule)
        else f"{type(m).__module__}.{type(m).__qualname__}"
        for name, m in gm.named_modules()
    }


def _snapshot(gm: torch.fx.GraphModule) -> tuple[str, dict[str, torch.Tensor], dict[str, str]]:
    return (
        gm.code,
        {k: v.detach().clone() for k, v in gm.state_dict().items()},
        _module_types(gm),
    )


def _assert_unchanged(gm: torch.fx.GraphModule, snapshot) -> None:
    code, state, modules = snapshot
    assert gm.code == code, "prepared model's code changed"
    now = gm.state_dict()
    assert now.keys() == state.keys(), "prepared model's state_dict keys changed"
    for k, v in state.items():
        assert now[k].dtype == v.dtype and torch.equal(now[k], v), f"state_dict[{k!r}] changed"
    assert _module_types(gm) == modules, "submodules changed"


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("pattern", list(CASES), ids=list(CASES))
def test_parity(pattern: str, backend: str) -> None:
    case = CASES[pattern]
    p = _prepare(case, backend)
    convert_mapping = case.convert_mapping(p.mapping) if case.convert_mapping else None
    results = _assert_parity(p, qconfig_mapping=convert_mapping)

    for name, gm in results.items():
        for module_name in case.float_linears:
            assert type(gm.get_submodule(module_name)) is nn.Linear, (
                f"{name}: skipped module {module_name!r} is "
                f"{type(gm.get_submodule(module_name)).__name__}, expected float nn.Linear"
            )
    if not case.static:
        # Dynamic patterns must actually have been quantized (not left in float).
        quantized = [m for m in results["convert"].modules() if "quantized" in type(m).__module__]
        assert quantized, "dynamic pattern was not quantized"


@pytest.mark.parametrize("remove_qconfig", [False, True], ids=["keep_qconfig", "remove_qconfig"])
@pytest.mark.parametrize(
    "keep_original_weights", [False, True], ids=["drop_orig_weights", "keep_orig_weights"]
)
@pytest.mark.parametrize("pattern", FLAG_PATTERNS, ids=FLAG_PATTERNS)
def test_parity_flags(
    pattern: str, backend: str, keep_original_weights: bool, remove_qconfig: bool
) -> None:
    case = CASES[pattern]
    p = _prepare(case, backend)
    convert_mapping = case.convert_mapping(p.mapping) if case.convert_mapping else None
    results = _assert_parity(
        p,
        qconfig_mapping=convert_mapping,
        keep_original_weights=keep_original_weights,
        remove_qconfig=remove_qconfig,
    )
    # The flags must be observable where they apply, so parity above means something.
    ours = results["convert"]
    if pattern == "functional_linear":
        assert hasattr(ours, "original_weights_lookup") == keep_original_weights
    if pattern in ("nested_blocks", "skip_at_convert"):
        assert bool(_qconfigs(ours)) == (not remove_qconfig)


@pytest.mark.parametrize(
    "pattern",
    [name for name, case in CASES.items() if case.convert_mapping is None],
    ids=[name for name, case in CASES.items() if case.convert_mapping is None],
)
def test_reference_code_matches_torch(pattern: str, backend: str) -> None:
    """The reference stage on its own matches torch's ``convert_to_reference_fx``."""
    p = _prepare(CASES[pattern], backend)
    with _fx.fx_quiet():
        expected = convert_to_reference_fx(
            copy.deepcopy(p.model), backend_config=p.backend_config
        )
    reference = reference_convert(p.model, backend_config=p.backend_config)
    assert reference.code == expected.code
    for x in p.inputs:
        assert torch.equal(_run(reference.graph_module, x), _run(expected, x))


@pytest.mark.parametrize(
    "pattern",
    ["conv_bn_relu", "skip_at_convert", "lstm_dynamic"],
    ids=["conv_bn_relu", "skip_at_convert", "lstm_dynamic"],
)
def test_does_not_mutate_prepared(pattern: str, backend: str) -> None:
    case = CASES[pattern]
    p = _prepare(case, backend)
    convert_mapping = case.convert_mapping(p.mapping) if case.convert_mapping else None
    before = _snapshot(p.model)

    reference = reference_convert(
        p.model, qconfig_mapping=convert_mapping, backend_config=p.backend_config
    )
    _assert_unchanged(p.model, before)
    reference_code = reference.code
    lower(reference)
    assert reference.code == reference_code, "lower() changed the reference model"

    first = convert(p.model, qconfig_mapping=convert_mapping, backend_config=p.backend_config)
    _assert_unchanged(p.model, before)
    second = convert(p.model, qconfig_mapping=convert_mapping, backend_config=p.backend_config)
    _assert_unchanged(p.model, before)

    assert first.code == second.code
    for x in p.inputs:
        assert torch.equal(_run(first, x), _run(second, x))


def test_convert_rejects_non_graph_module() -> None:
    with pytest.raises(ConversionError, match=r"expected a prepared model .*got Linear"):
        convert(nn.Linear(4, 4))
    with pytest.raises(ConversionError, match=r"expected a prepared model .*got Linear"):
        reference_convert(nn.Linear(4, 4))


def test_convert_rejects_unprepared_graph_module() -> None:
    traced = torch.fx.symbolic_trace(LinearRelu().eval())
    with pytest.raises(ConversionError, match=r"carries no observer metadata"):
        convert(traced)
    with pytest.raises(ConversionError, match=r"carries no observer metadata"):
        reference_convert(traced)


def test_convert_rejects_converted_model() -> None:
    p = _prepare(CASES["linear_relu"], "x86")
    converted = convert(p.model)
    with pytest.raises(ConversionError, match=r"was not produced by prepare_fx/prepare_qat_fx"):
        convert(converted)


def test_lower_rejects_non_reference_model() -> None:
    p = _prepare(CASES["linear_relu"], "x86")
    with pytest.raises(ConversionError, match=r"lower\(\) takes the ReferenceModel"):
        lower(p.model)
