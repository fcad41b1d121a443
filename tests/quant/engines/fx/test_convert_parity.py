"""Parity of ``quant.convert`` with torch's ``convert_fx``.

For every model pattern, on every quantized backend it applies to (x86, fbgemm, qnnpack,
onednn), and for all four combinations of ``keep_original_weights`` x ``_remove_qconfig``,
``convert(p, ...)``, ``lower(reference_convert(p, ...), ...)`` and torch's
``convert_fx(copy.deepcopy(p), ...)`` must generate the same code (the root's and every
GraphModule submodule's), the same submodules, qconfigs and state, and bit-identical
outputs. Parts a pattern skips must stay float in all three results.

The prepared models are built from a ``QuantSpec`` with ``quant.prepare.prepare`` (so the
spec -> torch path is covered too) and the spec's convert-time objects
(``convert_custom_config()``, ``convert_qconfig_mapping_object()``,
``backend_config_object()``, ``keep_original_weights``, ``remove_qconfig``) are passed to
all three converters.

Matrix size: ``test_parity`` runs 31 patterns (``CASES``) x 4 backends x 4 flag
combinations = 496 items; 472 pass and 24 are strict xfails carrying torch's exact error:

* 30 patterns convert on at least one backend. Their (pattern, backend) pairs: 124
  - 4 (``functional_conv2d_defaults``: torch cannot lower F.conv2d without positional
  stride/padding/dilation, on any backend; it stays in the matrix as a record)
  - 1 (``conv_transpose_bn`` on onednn: torch's prepare_fx rejects the per-channel weight
  observer of onednn's default qconfig for ConvTranspose2d;
  ``conv_transpose_bn_per_tensor`` covers onednn)
  - 1 (``float16_linear`` on qnnpack: no fp16 prepack kernel) = 118 pairs x 4 flags = 472.
* Of those 118 pairs, 3 are not applicable (onednn's BackendConfig has no float16 Linear
  and no float-qparams quint8 embeddings, so torch and we leave ``float16_linear``,
  ``embedding_weight_only`` and ``embedding_bag_weight_only`` float there; asserted).
  That leaves 115 applicable pairs x 4 flag combinations = 460 passing parity checks of
  quantized patterns (>= 20 patterns on every backend they apply to).

A prepared (and calibrated or QAT-trained) model, and its ``reference_convert``, are made
once per (pattern, backend) and shared by the four flag combinations: neither conversion
nor lowering mutates them (``test_does_not_mutate_prepared``). One intra-op thread keeps
the file fast (tiny tensors) and steady on shared cores.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import operator
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization.quantize_fx import convert_to_reference_fx

from quantstage.quant.engines import FxSpec, QuantSpec
from quantstage.quant.engines.fx import _torch as _fx
from quantstage.quant.engines.fx import configs as fx_configs
from quantstage.quant.engines.fx.convert import ReferenceModel, convert, lower, reference_convert
from quantstage.quant.engines.fx.prepare import prepare
from quantstage.quant.errors import ConversionError, TracingError

# torch's own reference LSTM/GRU (used by torch's convert_fx too) copy-constructs tensors.
pytestmark = pytest.mark.filterwarnings(
    "ignore:To copy construct from a tensor:UserWarning:torch.ao.nn.quantized.reference"
)

BACKENDS = ["x86", "fbgemm", "qnnpack", "onednn"]
SEED = 0
CALIBRATION_BATCHES = 2
EVAL_BATCHES = 2
QAT_STEPS = 3


# --------------------------------------------------------------------------- models


class ConvBnRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class ConvTransposeBn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(3, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.deconv(x))


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


class Mul(ResidualAdd):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x) * self.conv2(x)


class Cat(ResidualAdd):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv1(x), self.conv2(x)], dim=1)


class TwoAdds(nn.Module):
    """Two ``operator.add`` calls in the root, told apart by call order."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 16)
        self.fc2 = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc1(x) + x
        return self.fc2(y) + y


class FunctionalLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 16) * 0.1)
        self.bias = nn.Parameter(torch.randn(8) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class FunctionalConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.1)
        self.bias = nn.Parameter(torch.randn(8) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # stride, padding, dilation as positional sequences: the only form torch lowers
        return F.relu(F.conv2d(x, self.weight, self.bias, (1, 1), (1, 1), (1, 1), 1))


class FunctionalConvDefaults(FunctionalConv):
    """F.conv2d with its defaults (stride, padding, dilation not passed)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias)


class EmbeddingHead(nn.Module):
    """A weight-only quantized Embedding feeding a statically quantized Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(idx))


class EmbeddingBagModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(20, 8, mode="sum")

    def forward(self, idx: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.bag(idx, offsets)


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


class WithAttributes(WithHead):
    """Plain Python attributes the preserved_attributes cases carry through."""

    def __init__(self) -> None:
        super().__init__()
        self.labels = ["cat", "dog", "eel", "fox"]
        self.threshold = 0.25


class LinearThenFunctional(nn.Module):
    """An nn.Linear (+ReLU) and an F.linear, for the object-type skips."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 8)
        self.relu = nn.ReLU()
        self.weight = nn.Parameter(torch.randn(4, 8) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.relu(self.fc(x)), self.weight)


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
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.fc(out)


class GRUModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size=8, hidden_size=12, num_layers=1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return out


class WithStandalone(nn.Module):
    """``block`` is prepared and converted as a standalone module."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(16, 16)
        self.block = LinearRelu()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


class DataDependent(nn.Module):
    """Data-dependent control flow: FX cannot trace this forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class WithUntraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(16, 8)
        self.relu = nn.ReLU()
        self.dyn = DataDependent()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dyn(self.relu(self.body(x))))


class QatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------- inputs


def _image() -> tuple[torch.Tensor]:
    return (torch.randn(2, 3, 8, 8),)


def _features() -> tuple[torch.Tensor]:
    return (torch.randn(4, 16),)


def _sequence() -> tuple[torch.Tensor]:
    return (torch.randn(2, 5, 8),)


def _indices() -> tuple[torch.Tensor]:
    return (torch.randint(0, 20, (4, 6)),)


def _bags() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(0, 20, (12,)), torch.tensor([0, 3, 7, 9])


# --------------------------------------------------------------------------- cases


def _override(set_: str, key: str = "", qconfig: str | None = None, **kw: Any) -> dict[str, Any]:
    return {"set": set_, "key": key, "qconfig": qconfig, **kw}


def _mapping(preset: str, *overrides: dict[str, Any]) -> dict[str, Any]:
    return {"preset": preset, "overrides": list(overrides)}


@dataclasses.dataclass(frozen=True)
class Case:
    model: Callable[[], nn.Module]
    make_inputs: Callable[[], tuple[torch.Tensor, ...]]
    # QuantSpec fields (backend, backend_config and the two flags are added per test)
    spec: dict[str, Any] = dataclasses.field(default_factory=dict)
    # submodule paths that must end up as native quantized (static/dynamic/weight-only) modules
    quantized: tuple[str, ...] = ()
    # submodule path -> the exact float class it must still be after conversion
    float_modules: dict[str, type] = dataclasses.field(default_factory=dict)
    # call_function target -> how many float calls of it the converted root graph keeps
    float_functions: dict[Callable, int] = dataclasses.field(default_factory=dict)
    # root attributes that must survive conversion (convert_custom preserved_attributes)
    preserved: tuple[str, ...] = ()
    # backend -> why the pattern does not apply there: torch's BackendConfig has no dtype
    # config for it, so torch (and we) leave the ``quantized`` paths float; asserted so
    unsupported: dict[str, str] = dataclasses.field(default_factory=dict)
    # backend -> (stage, exception type, exact message) for pairs torch itself cannot quantize:
    # stage "prepare" (torch's prepare_fx raises) or "convert" (torch's convert_fx raises)
    torch_errors: dict[str, tuple[str, type[Exception], str]] = dataclasses.field(default_factory=dict)
    # backend -> expectation fields (quantized, float_modules, float_functions) that differ there
    on_backend: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def expect(self, backend: str) -> Case:
        """This case with the expectations for ``backend``."""
        return dataclasses.replace(self, **self.on_backend.get(backend, {}))


_SKIP_HEAD = _mapping("static", _override("module_name", "head"))

# onednn's BackendConfig has no float16 dynamic Linear and only qint8 (not quint8
# float-qparams) weight-only embeddings: torch leaves these float there, silently.
_ONEDNN_NO_FP16 = {"onednn": "onednn BackendConfig: no float16 dynamic dtype config for Linear"}
_ONEDNN_NO_QUINT8_EMBEDDING = {
    "onednn": "onednn BackendConfig: embeddings only with qint8 weights, not float_qparams quint8"
}

# torch.ops.quantized.linear_prepack_fp16 has no QNNPACK kernel (fbgemm only).
_FP16_QNNPACK = (
    "convert",
    RuntimeError,
    "quantized::linear_prepack_fp16 is currently not supported by QNNPACK",
)

# onednn's default qconfig has a per-channel weight observer, and torch's
# get_default_qconfig_mapping only swaps in a per-tensor one for ConvTranspose on fbgemm/x86:
# prepare_fx's _assert_valid_qconfig rejects it.
_CONV_TRANSPOSE_ONEDNN = (
    "prepare",
    AssertionError,
    "Per channel weight observer is not supported yet for ConvTranspose{n}d.",
)

# torch lowers F.conv2d only when stride, padding and dilation are passed positionally as
# sequences (lower_to_fbgemm hands the call's remaining args to conv2d_prepack as they are).
_FUNCTIONAL_CONV_DEFAULTS = (
    "convert",
    RuntimeError,
    "quantized::conv2d_prepack() is missing value for argument 'stride'. Declaration: "
    "quantized::conv2d_prepack(Tensor weight, Tensor? bias, int[] stride, int[] padding, "
    "int[] dilation, int groups) -> __torch__.torch.classes.quantized.Conv2dPackedParamsBase",
)

CASES: dict[str, Case] = {
    # -- fusions and plain static ops
    "conv_bn_relu": Case(ConvBnRelu, _image, quantized=("conv",)),
    "conv_transpose_bn": Case(
        ConvTransposeBn, _image, quantized=("deconv",), torch_errors={"onednn": _CONV_TRANSPOSE_ONEDNN}
    ),
    # the same with a per-tensor weight qconfig on ConvTranspose2d, which onednn accepts
    "conv_transpose_bn_per_tensor": Case(
        ConvTransposeBn,
        _image,
        spec={
            "qconfig_mapping": _mapping("static", _override("object_type", "torch.nn.ConvTranspose2d", "per_tensor"))
        },
        quantized=("deconv",),
    ),
    "linear_relu": Case(LinearRelu, _features, quantized=("fc",)),
    "residual_add": Case(ResidualAdd, _image, quantized=("conv1", "conv2")),
    "mul": Case(Mul, _image, quantized=("conv1", "conv2")),
    "cat": Case(Cat, _image, quantized=("conv1", "conv2")),
    "functional_linear": Case(FunctionalLinear, _features),
    "functional_conv2d_relu": Case(FunctionalConv, _image),
    "functional_conv2d_defaults": Case(
        FunctionalConvDefaults, _image, torch_errors=dict.fromkeys(BACKENDS, _FUNCTIONAL_CONV_DEFAULTS)
    ),
    "nested_blocks": Case(Nested, _image, quantized=("features.0.conv", "features.1.conv", "fc")),
    # -- weight-only embeddings (float_qparams_weight_only_qconfig on those types)
    "embedding_weight_only": Case(
        EmbeddingHead,
        _indices,
        spec={"qconfig_mapping": _mapping("static", _override("object_type", "torch.nn.Embedding", "weight_only"))},
        quantized=("emb",),
        unsupported=_ONEDNN_NO_QUINT8_EMBEDDING,
    ),
    "embedding_bag_weight_only": Case(
        EmbeddingBagModel,
        _bags,
        spec={"qconfig_mapping": _mapping("none", _override("object_type", "torch.nn.EmbeddingBag", "weight_only"))},
        quantized=("bag",),
        unsupported=_ONEDNN_NO_QUINT8_EMBEDDING,
    ),
    # -- dynamic and float16
    "dynamic_linear": Case(DynamicLinear, _features, spec={"mode": "dynamic"}, quantized=("fc1", "fc2")),
    "lstm_dynamic": Case(LSTMModel, _sequence, spec={"mode": "dynamic"}, quantized=("lstm", "fc")),
    "gru_dynamic": Case(GRUModel, _sequence, spec={"mode": "dynamic"}, quantized=("gru",)),
    "float16_linear": Case(
        DynamicLinear,
        _features,
        spec={"mode": "float16"},
        quantized=("fc1", "fc2"),
        unsupported=_ONEDNN_NO_FP16,
        torch_errors={"qnnpack": _FP16_QNNPACK},
    ),
    # -- module structure: standalone, non-traceable
    "standalone_submodule": Case(
        WithStandalone,
        _features,
        spec={"prepare_custom": {"standalone_module_names": ["block"]}},
        quantized=("stem", "block.fc", "head"),
    ),
    "non_traceable_submodule": Case(
        WithUntraceable,
        _features,
        spec={"prepare_custom": {"non_traceable_module_names": ["dyn"]}},
        quantized=("body", "head"),
        float_modules={"dyn": DataDependent, "dyn.fc": nn.Linear},
    ),
    # -- QAT: prepare_qat_fx, a few SGD steps, eval, convert (no calibration)
    "qat_trained": Case(QatNet, _image, spec={"mode": "qat"}, quantized=("conv", "fc")),
    "qat_skip_at_convert": Case(
        QatNet,
        _image,
        spec={"mode": "qat", "convert_qconfig_mapping": _mapping("qat", _override("module_name", "fc"))},
        quantized=("conv",),
        float_modules={"fc": nn.Linear},
    ),
    # -- skips by object type, module name, regex, call order; at convert time
    "skip_type_add": Case(
        TwoAdds,
        _features,
        spec={"skip_object_types": ["operator.add"]},
        quantized=("fc1", "fc2"),
        float_functions={operator.add: 2},
    ),
    "skip_type_add_after_conv": Case(
        ResidualAdd,
        _image,
        spec={"skip_object_types": ["operator.add"]},
        quantized=("conv1", "conv2"),
        float_functions={operator.add: 1},
        # onednn fuses conv1+add into ConvAdd2d: skipping the add must keep that float, whole
        on_backend={
            "onednn": {
                "quantized": ("conv2",),
                "float_modules": {"conv1": torch.ao.nn.intrinsic.ConvAdd2d},
                "float_functions": {},
            }
        },
    ),
    "skip_type_functional_linear": Case(
        LinearThenFunctional,
        _features,
        spec={"skip_object_types": ["torch.nn.functional.linear"]},
        quantized=("fc",),
        float_functions={F.linear: 1},
    ),
    "skip_type_linear": Case(
        LinearThenFunctional,
        _features,
        # nn.Linear+ReLU fuse to LinearReLU: the spec skips that fused form too
        spec={"qconfig_mapping": _mapping("static", _override("object_type", "torch.nn.Linear"))},
        float_modules={"fc": torch.ao.nn.intrinsic.LinearReLU},
    ),
    "skip_module_name": Case(
        WithHead,
        _features,
        spec={"qconfig_mapping": _SKIP_HEAD},
        quantized=("body",),
        float_modules={"head": nn.Linear},
    ),
    "skip_modules_shorthand": Case(
        WithHead, _features, spec={"skip_modules": ["head"]}, quantized=("body",), float_modules={"head": nn.Linear}
    ),
    "skip_module_regex": Case(
        Nested,
        _image,
        spec={"qconfig_mapping": _mapping("static", _override("module_name_regex", r"features\.1\."))},
        quantized=("features.0.conv", "fc"),
        # conv+relu fuse; the skipped fused module stays a float ConvReLU2d
        float_modules={"features.1.conv": torch.ao.nn.intrinsic.ConvReLU2d},
    ),
    "skip_object_type_order": Case(
        TwoAdds,
        _features,
        spec={
            "qconfig_mapping": _mapping(
                "static",
                _override("module_name_object_type_order", "", object_type="operator.add", index=1),
            )
        },
        quantized=("fc1", "fc2"),
        float_functions={operator.add: 1},
    ),
    "skip_at_convert": Case(
        WithHead,
        _features,
        spec={"convert_qconfig_mapping": _SKIP_HEAD},
        quantized=("body",),
        float_modules={"head": nn.Linear},
    ),
    # -- preserved attributes (prepare_custom keeps them through prepare, convert_custom through convert)
    "preserved_attributes": Case(
        WithAttributes,
        _features,
        spec={
            "prepare_custom": {"preserved_attributes": ["labels", "threshold"]},
            "convert_custom": {"preserved_attributes": ["labels", "threshold"]},
        },
        quantized=("body", "head"),
        preserved=("labels", "threshold"),
    ),
}


# The reference stage alone vs convert_to_reference_fx: the original patterns plus one of
# each new kind (the parity matrix covers the reference stage of every pattern already).
REFERENCE_PATTERNS = [
    "conv_bn_relu",
    "conv_transpose_bn",
    "linear_relu",
    "residual_add",
    "functional_linear",
    "nested_blocks",
    "embedding_bag_weight_only",
    "dynamic_linear",
    "lstm_dynamic",
    "gru_dynamic",
    "standalone_submodule",
    "qat_trained",
    "skip_module_name",
    "preserved_attributes",
]
assert all(CASES[p].spec.get("convert_qconfig_mapping") is None for p in REFERENCE_PATTERNS)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and much steadier on shared cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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
    spec: QuantSpec
    inputs: list[tuple[torch.Tensor, ...]]
    pattern: str = ""
    _reference: ReferenceModel | None = None

    @property
    def reference(self) -> ReferenceModel:
        """``reference_convert`` of the model, made once: it does not depend on the two flags,
        and ``lower`` does not modify it, so every flag combination lowers the same one."""
        if self._reference is None:
            self._reference = reference_convert(self.model, **_reference_kwargs(self.spec))
            assert isinstance(self._reference, ReferenceModel)
        return self._reference


class TorchCannotQuantize(Exception):
    """torch's own prepare_fx/convert_fx raised exactly the error recorded for the pair."""


@contextlib.contextmanager
def _torch_stage(pattern: str, backend: str, stage: str):
    """Turn the error recorded in ``torch_errors`` for this pair and stage (only that one,
    matched by type and message) into TorchCannotQuantize, which the xfails expect."""
    try:
        yield
    except Exception as raised:
        # our prepare classifies torch's failure into one TracingError line, raised from torch's error
        exc = raised.__cause__ if isinstance(raised, TracingError) and raised.__cause__ is not None else raised
        known = CASES[pattern].torch_errors.get(backend) if pattern in CASES else None
        if known and known[0] == stage and isinstance(exc, known[1]) and known[2] in str(exc):
            raise TorchCannotQuantize(f"torch {stage}_fx: {type(exc).__name__}: {exc}") from exc
        raise


def _spec(case: Case, backend: str, **flags: bool) -> QuantSpec:
    return FxSpec(backend=backend, backend_config=backend, **case.spec, **flags)


def _train_qat(prepared: torch.fx.GraphModule, case: Case) -> None:
    prepared.train()
    optimizer = torch.optim.SGD(prepared.parameters(), lr=0.05, momentum=0.9)
    for _ in range(QAT_STEPS):
        inputs = case.make_inputs()
        loss = prepared(*inputs).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    prepared.eval()


_PREPARED: dict[tuple[str, str], Prepared] = {}


def _prepare(pattern: str, backend: str) -> Prepared:
    """The prepared and calibrated (or QAT-trained) model, built once per pattern and backend."""
    key = (pattern, backend)
    if key not in _PREPARED:
        case = CASES[pattern]
        torch.manual_seed(SEED)
        spec = _spec(case, backend)
        model = case.model().eval()
        with _torch_stage(pattern, backend, "prepare"):
            prepared = prepare(model, case.make_inputs(), spec)
        if spec.mode == "qat":
            _train_qat(prepared, case)  # no calibration: the fake-quant observers were trained
        else:
            with torch.no_grad():
                for _ in range(CALIBRATION_BATCHES):
                    prepared(*case.make_inputs())
        inputs = [case.make_inputs() for _ in range(EVAL_BATCHES)]
        _PREPARED[key] = Prepared(prepared, spec, inputs, pattern)
    return _PREPARED[key]


def _reference_kwargs(spec: QuantSpec) -> dict[str, Any]:
    """The spec's convert-time torch objects, fresh for each converter."""
    return {
        "convert_custom_config": fx_configs.convert_custom_config(spec),
        "qconfig_mapping": fx_configs.convert_qconfig_mapping(spec),
        "backend_config": fx_configs.backend_config(spec),
    }


def _convert_kwargs(spec: QuantSpec) -> dict[str, Any]:
    return {
        **_reference_kwargs(spec),
        "_remove_qconfig": spec.remove_qconfig,
        "keep_original_weights": spec.keep_original_weights,
    }


def _torch_convert(prepared: torch.fx.GraphModule, **kwargs) -> torch.fx.GraphModule:
    with _fx.fx_quiet():
        return _fx.convert_fx(copy.deepcopy(prepared), **kwargs)


def _run(gm: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        return gm(*inputs)


def _three_ways(p: Prepared, spec: QuantSpec) -> dict[str, torch.fx.GraphModule]:
    with _torch_stage(p.pattern, spec.backend, "convert"):
        expected = _torch_convert(p.model, **_convert_kwargs(spec))
    ours = convert(p.model, **_convert_kwargs(spec))
    lowered = lower(p.reference, keep_original_weights=spec.keep_original_weights, remove_qconfig=spec.remove_qconfig)
    return {"convert_fx": expected, "convert": ours, "lower(reference_convert)": lowered}


def _assert_parity(p: Prepared, spec: QuantSpec) -> dict[str, torch.fx.GraphModule]:
    """Convert three ways and assert identical code, structure, state and outputs."""
    results = _three_ways(p, spec)
    expected = results["convert_fx"]
    for name in ("convert", "lower(reference_convert)"):
        got = results[name]
        assert got.code == expected.code, f"{name}: generated code differs"
        # Same module structure: names and types of every submodule.
        assert _module_types(got) == _module_types(expected), f"{name}: submodules differ"
        # Nested GraphModules (converted standalone modules) generate the same code too.
        assert _submodule_codes(got) == _submodule_codes(expected), f"{name}: submodule code differs"
        # _remove_qconfig: which modules still carry a qconfig, and which one.
        assert _qconfigs(got) == _qconfigs(expected), f"{name}: qconfigs differ"
        # keep_original_weights: the lookup torch attaches for prepacked get_attr weights.
        assert hasattr(got, "original_weights_lookup") == hasattr(expected, "original_weights_lookup"), (
            f"{name}: original_weights_lookup presence differs"
        )
        if hasattr(expected, "original_weights_lookup"):
            _assert_same_value(
                got.original_weights_lookup, expected.original_weights_lookup, f"{name}.original_weights_lookup"
            )
        # Quantized weights, packed params, scales and zero points.
        got_state, want_state = got.state_dict(), expected.state_dict()
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
                assert torch.equal(got.q_per_channel_zero_points(), want.q_per_channel_zero_points()), (
                    f"{where}: zero points"
                )
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
        name: "GraphModule" if isinstance(m, torch.fx.GraphModule) else f"{type(m).__module__}.{type(m).__qualname__}"
        for name, m in gm.named_modules()
    }


def _submodule_codes(gm: torch.nn.Module) -> dict[str, str]:
    return {name: m.code for name, m in gm.named_modules() if name and isinstance(m, torch.fx.GraphModule)}


def _is_quantized_module(m: nn.Module) -> bool:
    return type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))


def _quantized_calls(gm: torch.fx.GraphModule) -> list[str]:
    """Quantized ops and quantize calls in the root graph."""
    return [
        str(n.target)
        for n in gm.graph.nodes
        if n.op == "call_function" and ("quantized" in str(n.target) or n.target is torch.quantize_per_tensor)
    ]


def _assert_skips_and_quantization(case: Case, backend: str, results: dict[str, torch.fx.GraphModule]) -> None:
    """Skipped parts stay float, the rest is really quantized, preserved attributes survive."""
    case = case.expect(backend)
    float_model = case.model()
    for name, gm in results.items():
        for path in case.quantized:
            got = gm.get_submodule(path)
            if backend in case.unsupported:
                want = type(float_model.get_submodule(path))
                assert type(got) is want, f"{name}: {path!r} is {type(got).__qualname__} on {backend}"
            else:
                assert _is_quantized_module(got), f"{name}: {path!r} is {type(got).__qualname__}, not quantized"
        for path, cls in case.float_modules.items():
            got = type(gm.get_submodule(path))
            assert got is cls, f"{name}: skipped {path!r} is {got.__qualname__}, expected float {cls.__qualname__}"
        for target, count in case.float_functions.items():
            calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is target]
            assert len(calls) == count, f"{name}: {len(calls)} float {target} calls, expected {count}"
        if backend not in case.unsupported:
            quantized = [m for m in gm.modules() if _is_quantized_module(m)]
            assert quantized or _quantized_calls(gm), f"{name}: nothing was quantized"
        for attr in case.preserved:
            assert hasattr(gm, attr), f"{name}: preserved attribute {attr!r} is gone"
            assert getattr(gm, attr) == getattr(float_model, attr), f"{name}: {attr!r} changed"


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


def _matrix(patterns: list[str], stages: tuple[str, ...] = ("prepare", "convert")) -> list[Any]:
    """(pattern, backend) params; pairs torch itself cannot quantize at one of ``stages`` are
    strict xfails carrying torch's exact error."""
    params = []
    for pattern in patterns:
        for backend in BACKENDS:
            marks = []
            if backend in CASES[pattern].torch_errors and CASES[pattern].torch_errors[backend][0] in stages:
                stage, exc, message = CASES[pattern].torch_errors[backend]
                reason = f"torch: {stage}_fx raises {exc.__name__}: {message}"
                marks.append(pytest.mark.xfail(strict=True, raises=TorchCannotQuantize, reason=reason))
            params.append(pytest.param(pattern, backend, marks=marks, id=f"{pattern}-{backend}"))
    return params


@pytest.fixture
def engine():
    """Restores ``torch.backends.quantized.engine`` after tests that set it themselves."""
    previous = torch.backends.quantized.engine
    yield
    torch.backends.quantized.engine = previous


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("remove_qconfig", [False, True], ids=["keep_qconfig", "remove_qconfig"])
@pytest.mark.parametrize("keep_original_weights", [False, True], ids=["drop_orig_weights", "keep_orig_weights"])
@pytest.mark.parametrize(("pattern", "backend_name"), _matrix(list(CASES)))
def test_parity(pattern: str, backend_name: str, keep_original_weights: bool, remove_qconfig: bool, engine) -> None:
    case = CASES[pattern]
    p = _prepare(pattern, backend_name)
    torch.backends.quantized.engine = backend_name
    spec = _spec(case, backend_name, keep_original_weights=keep_original_weights, remove_qconfig=remove_qconfig)
    results = _assert_parity(p, spec)
    _assert_skips_and_quantization(case, backend_name, results)

    # The flags must be observable where they apply, so parity above means something:
    # keep_original_weights only affects prepacked get_attr weights (functional linear/conv),
    # _remove_qconfig only modules left in float (pool, skipped or untraceable modules).
    ours = results["convert"]
    if pattern in ("functional_linear", "functional_conv2d_relu"):
        assert hasattr(ours, "original_weights_lookup") == keep_original_weights
    if pattern in ("nested_blocks", "skip_at_convert", "skip_module_name", "non_traceable_submodule"):
        assert bool(_qconfigs(ours)) == (not remove_qconfig)


@pytest.mark.parametrize(
    ("pattern", "backend_name"),
    [(n, b) for n, c in CASES.items() for b in c.torch_errors],
    ids=[f"{n}-{b}" for n, c in CASES.items() for b in c.torch_errors],
)
def test_torch_cannot_convert(pattern: str, backend_name: str, engine) -> None:
    """Where torch fails, it fails with the recorded error, and so does ours."""
    case = CASES[pattern]
    stage, exc, message = case.torch_errors[backend_name]
    torch.backends.quantized.engine = backend_name
    if stage == "prepare":
        spec = _spec(case, backend_name)
        inputs = case.make_inputs()
        with _fx.fx_quiet(), pytest.raises(exc, match=re.escape(message)):
            _fx.prepare_fx(
                case.model().eval(),
                fx_configs.qconfig_mapping(spec),
                inputs,
                prepare_custom_config=fx_configs.prepare_custom_config(spec),
                backend_config=fx_configs.backend_config(spec),
            )
        with pytest.raises(TracingError, match=r"preparing \(prepare_fx\) failed .*; fix: ") as classified:
            prepare(case.model().eval(), inputs, spec)  # ours: one line, torch's error as its cause
        assert isinstance(classified.value.__cause__, exc) and message in str(classified.value.__cause__)
        assert message.splitlines()[0] in str(classified.value)
        return
    p = _prepare(pattern, backend_name)
    torch.backends.quantized.engine = backend_name
    with pytest.raises(exc, match=re.escape(message)):
        _torch_convert(p.model, **_convert_kwargs(p.spec))
    with pytest.raises(exc, match=re.escape(message)):
        convert(p.model, **_convert_kwargs(p.spec))
    with pytest.raises(exc, match=re.escape(message)):
        lower(p.reference)


@pytest.mark.parametrize(
    ("pattern", "backend_name"),
    _matrix(REFERENCE_PATTERNS, stages=("prepare",)),
)
def test_reference_code_matches_torch(pattern: str, backend_name: str, engine) -> None:
    """The reference stage on its own matches torch's ``convert_to_reference_fx``."""
    torch.backends.quantized.engine = backend_name
    p = _prepare(pattern, backend_name)
    torch.backends.quantized.engine = backend_name
    kwargs = _reference_kwargs(p.spec)
    with _fx.fx_quiet():
        expected = convert_to_reference_fx(
            copy.deepcopy(p.model),
            convert_custom_config=kwargs["convert_custom_config"],
            backend_config=kwargs["backend_config"],
        )
    reference = p.reference
    assert reference.code == expected.code
    assert _module_types(reference.graph_module) == _module_types(expected)
    assert _submodule_codes(reference.graph_module) == _submodule_codes(expected)
    for x in p.inputs:
        assert torch.equal(_run(reference.graph_module, x), _run(expected, x))
    for attr in CASES[pattern].preserved:
        assert getattr(reference.graph_module, attr) == getattr(expected, attr)


@pytest.mark.parametrize("pattern", ["conv_bn_relu", "skip_at_convert", "lstm_dynamic", "qat_skip_at_convert"])
def test_does_not_mutate_prepared(pattern: str, backend: str) -> None:
    p = _prepare(pattern, backend)
    torch.backends.quantized.engine = backend
    before = _snapshot(p.model)

    reference = reference_convert(p.model, **_reference_kwargs(p.spec))
    _assert_unchanged(p.model, before)
    reference_code, reference_modules = reference.code, _module_types(reference.graph_module)
    qconfigs_before = _qconfigs(reference.graph_module)
    lower(reference)  # its copy shares leaf modules with the reference: removing qconfigs must not reach them
    assert reference.code == reference_code, "lower() changed the reference model"
    assert _module_types(reference.graph_module) == reference_modules, "lower() swapped the reference's modules"
    assert _qconfigs(reference.graph_module) == qconfigs_before, "lower() removed the reference model's qconfigs"

    first = convert(p.model, **_convert_kwargs(p.spec))
    _assert_unchanged(p.model, before)
    second = convert(p.model, **_convert_kwargs(p.spec))
    _assert_unchanged(p.model, before)

    assert first.code == second.code
    for x in p.inputs:
        assert torch.equal(_run(first, x), _run(second, x))


def test_spec_builds_the_torch_configs() -> None:
    """The spec -> torch path the parity cases rely on actually reaches torch."""
    p = _prepare("preserved_attributes", "x86")
    assert p.model.labels == ["cat", "dog", "eel", "fox"] and p.model.threshold == 0.25
    assert fx_configs.convert_custom_config(p.spec).preserved_attributes == ["labels", "threshold"]
    p = _prepare("non_traceable_submodule", "x86")
    assert type(p.model.dyn) is DataDependent  # called as a leaf, not traced into
    p = _prepare("standalone_submodule", "x86")
    assert isinstance(p.model.block, torch.fx.GraphModule)  # an observed standalone module
    p = _prepare("qat_trained", "x86")
    assert not p.model.training
    assert any(isinstance(m, torch.ao.nn.intrinsic.qat.ConvBnReLU2d) for m in p.model.modules())


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


def test_convert_rejects_converted_model(engine) -> None:
    p = _prepare("linear_relu", "x86")
    torch.backends.quantized.engine = "x86"
    converted = convert(p.model)
    with pytest.raises(ConversionError, match=r"was not produced by prepare_fx/prepare_qat_fx"):
        convert(converted)


def test_lower_rejects_non_reference_model() -> None:
    p = _prepare("linear_relu", "x86")
    with pytest.raises(ConversionError, match=r"lower\(\) takes the ReferenceModel"):
        lower(p.model)
