"""Structured outputs (ModelOutput, dict, tuple, dataclass): one tensor compared, or a one-line error."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import pytest
import torch
from torch import nn

from quantstage.quant.data.outputs import OutputOf, output_key, select_output, with_output
from quantstage.quant.errors import DataError
from quantstage.quant.ship.jit import jit_quiet


@dataclasses.dataclass
class Result:
    loss: float | None
    logits: torch.Tensor


class ModelOutputLike(OrderedDict):
    """What transformers' ModelOutput is: an ordered dict whose fields are also attributes."""


def test_the_first_tensor_field_is_compared_by_default() -> None:
    x = torch.ones(2, 3)
    hf = ModelOutputLike(last_hidden_state=x, pooler_output=x[:, 0])
    assert output_key(hf, None, "Bert.forward") == "last_hidden_state"
    assert output_key({"a": 1, "b": x}, None, "M.forward") == "b"
    assert output_key((x, x), None, "M.forward") == "0"
    assert output_key(Result(None, x), None, "M.forward") == "logits"
    assert output_key(x, None, "M.forward") is None
    assert select_output(hf, "pooler_output") is hf["pooler_output"]
    assert select_output((x, x + 1), "1").equal(x + 1)


def test_a_named_output_is_used_or_refused_with_the_choices() -> None:
    x = torch.ones(2, 3)
    hf = ModelOutputLike(last_hidden_state=x, pooler_output=x[:, 0])
    assert output_key(hf, "pooler_output", "Bert.forward") == "pooler_output"
    with pytest.raises(
        DataError,
        match=r"Bert\.forward returns ModelOutputLike .*'logits' is missing; allowed: \['last_hidden_state', 'pooler_output'\]; fix: output: <one of them> \(--output NAME\)",
    ):
        output_key(hf, "logits", "Bert.forward")
    with pytest.raises(DataError, match=r"M\.forward returns a tensor, so output 'x' names nothing; fix: drop output"):
        output_key(x, "x", "M.forward")
    with pytest.raises(
        DataError, match=r"returns dict \(a: int\), which holds no tensor to compare; fix: name the output"
    ):
        output_key({"a": 1}, None, "M.forward")


class HF(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> ModelOutputLike:
        return ModelOutputLike(last_hidden_state=self.fc(x), pooler_output=x.sum(1))


def test_with_output_serves_the_tensor_and_traces() -> None:
    model = HF().eval()
    wrapped = with_output(model, "last_hidden_state")
    assert isinstance(wrapped, OutputOf) and with_output(model, None) is model
    x = torch.randn(2, 3)
    with jit_quiet():
        traced = torch.jit.trace(wrapped, (x,), check_trace=False)
    assert torch.equal(traced(x), model(x)["last_hidden_state"])
