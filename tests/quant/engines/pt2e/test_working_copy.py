"""What the PT2E engine changes in its working copy and exported graph so the architectures users bring
convert (each without compiling): GPT-2's ``Conv1D`` as ``nn.Linear``, tanh-GELU modules as
``nn.GELU``, one quantization pattern per call of a reused module, no annotation on integer tensors."""

from __future__ import annotations

import math

import torch
from torch import nn

from quantstage.quant import Pt2eSpec
from quantstage.quant.engines.pt2e.capture import distinct_calls, export_program, working_copy
from quantstage.quant.engines.pt2e.coverage import module_path
from quantstage.quant.engines.pt2e.gelu import is_tanh_gelu
from quantstage.quant.quantize import prepare_model
from quantstage.quant.tracing.linear_like import with_linear_equivalents
from tests import zoo


class Conv1D(nn.Module):
    """transformers' ``pytorch_utils.Conv1D`` as GPT-2 has it: a Linear with a transposed weight."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.randn(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return out.view(*x.shape[:-1], self.nf)


def test_transposed_linears_are_swapped_for_equal_linears_at_the_same_path() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(8, 4), nn.ReLU(), nn.Sequential(Conv1D(3, 8)))
    work, paths = with_linear_equivalents(model)  # what prepare_model hands every engine
    assert paths == ("0", "2.0")
    assert isinstance(work[0], nn.Linear) and isinstance(work[2][0], nn.Linear)
    assert isinstance(model[0], Conv1D)  # the model given is not modified
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(work(x), model(x))
    plain = nn.Sequential(nn.Linear(2, 2))
    assert with_linear_equivalents(plain) == (plain, ())


def test_a_module_called_twice_gets_one_pattern_per_call() -> None:
    """torchao refuses a pattern with two outputs ("Input partition has more than one output node")."""
    model = zoo.build("tv-resnet")
    program, _, _ = export_program(working_copy(model), (torch.randn(2, 3, 32, 32),))
    graph = program.module()
    assert distinct_calls(graph) > 0 and distinct_calls(graph) == 0  # idempotent
    paths = [module_path(n)[0] for n in graph.graph.nodes if n.op == "call_function"]
    assert "layer1.0.relu" in paths and not any("@" in p for p in paths)


class NewGELUActivation(nn.Module):
    """transformers' ``gelu_new`` (GPT-2, GPT-Neo, Phi): the tanh approximation written out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class ExactGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x)


def test_tanh_gelu_modules_become_nn_gelu_and_only_those() -> None:
    model = nn.Sequential(nn.Linear(4, 8), NewGELUActivation(), nn.Linear(8, 8), ExactGELU(), nn.Tanh())
    assert [is_tanh_gelu(m) for m in model] == [False, True, False, False, False]
    work = working_copy(model)
    assert isinstance(work[1], nn.GELU) and work[1].approximate == "tanh" and isinstance(work[3], ExactGELU)
    x = torch.randn(3, 4)
    torch.testing.assert_close(work(x), model(x))


class PositionIds(nn.Module):
    """RoBERTa's position ids: integer ``cumsum(mask) * mask + pad`` before an embedding and a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.position = nn.Embedding(40, 8)
        self.fc = nn.Linear(8, 8)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids.ne(1).int()
        positions = (torch.cumsum(mask, dim=1).type_as(mask) + 0) * mask
        return self.fc(self.position(positions.long() + 1))


def test_integer_tensors_are_never_quantized() -> None:
    ids = torch.randint(2, 30, (4, 12))
    prepared = prepare_model(PositionIds().eval(), Pt2eSpec(mode="dynamic"), (ids,))
    reference = prepared.reference().references[""]
    chosen = [
        node.args[0].meta["val"].dtype
        for node in reference.exported.graph.nodes
        if node.op == "call_function" and "choose_qparams" in str(node.target)
    ]
    assert chosen and all(dtype.is_floating_point for dtype in chosen), chosen
