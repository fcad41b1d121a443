"""Modules that are a Linear in another shape become the ``nn.Linear`` they are (every engine then quantizes them)."""

from __future__ import annotations

import torch
from torch import nn

from quantstage.quant.engines import FxSpec
from quantstage.quant.quantize import quantize
from quantstage.quant.tracing.linear_like import is_linear_subclass, with_linear_equivalents


class MatmulLinear(nn.Linear):
    """Falcon's ``FalconLinear``: a Linear written as a matmul (FX traces through it and sees no Linear)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x @ self.weight.T
        return out if self.bias is None else out + self.bias


class ScaledLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * super().forward(x)


class LoraLinear(nn.Linear):
    def __init__(self, n: int) -> None:
        super().__init__(n, n)
        self.lora_b = nn.Parameter(torch.zeros(n, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + x @ self.lora_b


def test_a_linear_written_as_a_matmul_is_replaced_and_quantized() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(MatmulLinear(8, 16), nn.ReLU(), MatmulLinear(16, 4, bias=False)).eval()
    work, paths = with_linear_equivalents(model)
    assert paths == ("0", "2") and all(type(work[i]) is nn.Linear for i in (0, 2))
    assert type(model[0]) is MatmulLinear  # the model given is not modified
    x = torch.randn(5, 8)
    torch.testing.assert_close(work(x), model(x))
    quantized = quantize(model, FxSpec(mode="dynamic"), [x])
    assert quantized.coverage.quantized_fraction == 1.0


def test_a_subclass_that_computes_something_else_is_left_alone() -> None:
    assert not is_linear_subclass(ScaledLinear(4, 4))
    assert not is_linear_subclass(LoraLinear(4))  # extra parameters: a branch that may be trained
    assert not is_linear_subclass(nn.Linear(4, 4))  # torch's own is quantized as it is
