"""FX prepare: the caller's model untouched, the engine set, skipped modules kept float, tracing
errors that name the module and the skip that fixes it."""

import re

import pytest
import torch
from torch import nn
from torch.fx import GraphModule

from quantstage.quant import FxSpec
from quantstage.quant.calibrate import calibrate
from quantstage.quant.data.sources import Dataset
from quantstage.quant.engines.fx.convert import convert
from quantstage.quant.engines.fx.prepare import prepare
from quantstage.quant.errors import TracingError
from quantstage.quant.measure.evaluate import sqnr_db
from tests.quant.helpers import quantize_fx, toy_model

pytestmark = [
    pytest.mark.usefixtures("restore_torch_state"),
]


class DataDependentBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return x


class WithDataDependentBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 8)
        self.block = DataDependentBlock()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


class NestedDataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(8, 8), DataDependentBlock())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DataDependentRoot(DataDependentBlock):
    """The same data-dependent block, as the whole model (its root forward does not trace)."""


def test_prepare_copies_the_model_and_sets_the_engine(data: Dataset) -> None:
    model = toy_model("cnn").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = prepare(model, data.example_inputs, FxSpec(backend="qnnpack"))
    assert isinstance(prepared, GraphModule)
    assert not prepared.training
    assert model.training, "prepare must not switch the caller's model to eval"
    assert type(model.features[0]) is nn.Conv2d, "prepare must not fuse the caller's model"
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.backends.quantized.engine == "qnnpack"


def test_skip_modules_stay_float(data: Dataset) -> None:
    model = toy_model("cnn")
    quantized = quantize_fx(model, data, FxSpec(skip_modules=("head.3",)))
    head = dict(quantized.named_modules())["head.3"]
    assert type(head) is nn.Linear, type(head)
    assert torch.equal(head.weight, model.head[3].weight)


@pytest.mark.parametrize(
    ("model", "where"),
    [
        (WithDataDependentBlock(), "module 'block'"),
        (NestedDataDependent(), "module 'layers.1'"),
        (DataDependentRoot(), "the root forward of DataDependentRoot"),
    ],
    ids=["block", "nested", "root"],
)
def test_prepare_tracing_error_names_the_module(model: nn.Module, where: str) -> None:
    expected = (
        f"torch.fx cannot symbolically trace {type(model).__name__} (failed in {where}: "
        "symbolically traced variables cannot be used as inputs to control flow); "
        "fix: make that forward free of data-dependent control flow"
    )
    with pytest.raises(TracingError, match=re.escape(expected)):
        prepare(model, (torch.randn(4, 8),), FxSpec())


def test_tracing_error_suggests_the_exact_skip() -> None:
    with pytest.raises(
        TracingError,
        match=re.escape("prepare_custom.non_traceable_module_names: ['layers.1'] (or skip_modules: ['layers.1'])"),
    ):
        prepare(NestedDataDependent(), (torch.randn(4, 8),), FxSpec())


@pytest.mark.parametrize("model", [WithDataDependentBlock(), NestedDataDependent()], ids=["block", "nested"])
def test_skipped_untraceable_module_stays_float_and_rest_quantizes(model: nn.Module) -> None:
    """The fix the tracing error suggests works: the skipped module is neither traced nor quantized."""
    scope = "block" if isinstance(model, WithDataDependentBlock) else "layers.1"
    inputs = torch.randn(16, 8)
    prepared = prepare(model, (inputs,), FxSpec(skip_modules=(scope,)))
    calibrate(prepared, [(inputs, None)], max_batches=1)
    quantized = convert(prepared)
    modules = dict(quantized.named_modules())
    assert type(modules[scope]) is type(dict(model.named_modules())[scope]), "skipped module must stay as it was"
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in modules.values()), quantized
    with torch.no_grad():
        sqnr = sqnr_db(model.eval()(inputs), quantized(inputs))
    assert sqnr >= 20, f"SQNR {sqnr} too low"


@pytest.mark.parametrize("path", ["torch.nn.Linear", "torch.nn.Conv2d"], ids=["linear", "conv"])
def test_skip_object_type_covers_fused_modules(data: Dataset, path: str) -> None:
    """Skipping a type also keeps its fused forms (LinearReLU, ConvReLU2d, ...) float."""
    quantized = quantize_fx(toy_model("cnn"), data, FxSpec(skip_object_types=(path,)))
    float_type, quantized_forms = {
        "torch.nn.Linear": (nn.Linear, (torch.ao.nn.quantized.Linear, torch.ao.nn.intrinsic.quantized.LinearReLU)),
        "torch.nn.Conv2d": (nn.Conv2d, (torch.ao.nn.quantized.Conv2d, torch.ao.nn.intrinsic.quantized.ConvReLU2d)),
    }[path]
    leftovers = [name for name, m in quantized.named_modules() if isinstance(m, quantized_forms)]
    assert not leftovers, f"{path} skipped but still quantized: {leftovers}"
    n_float = sum(isinstance(m, float_type) for m in quantized.modules())
    assert n_float == sum(isinstance(m, float_type) for m in toy_model("cnn").modules())
