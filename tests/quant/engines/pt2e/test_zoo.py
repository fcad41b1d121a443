"""The PT2E engine on the architectures users bring (``tests/zoo.py``): each family converts with the
defaults its mode implies, covers every Linear/Conv (GPT-2's ``Conv1D`` counted as the Linear it
is) and stays close to the float model; what torch.export or torchao cannot handle is one line
naming the stage and the fix. Each conversion compiles an AOTInductor package (~30-60 s on 2
cores): two families run by default, the rest under ``-m zoo`` (``make test-zoo``)."""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch
from torch import nn

from quantstage.quant import Pt2eSpec, quantize
from quantstage.quant.engines.pt2e import convert
from quantstage.quant.engines.pt2e.coverage import REASON_DYNAMIC_CONV
from quantstage.quant.errors import ConversionError, TracingError
from quantstage.quant.tracing.linear_like import is_transposed_linear
from tests import zoo

DEFAULT = ("gpt2", "tv-resnet")  # a Conv1D decoder with a KV cache; a CNN that reuses its ReLU modules
MIN_COSINE = 0.98


def _first_tensor(output: Any) -> torch.Tensor:
    leaves = [t for t in torch.utils._pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]
    return leaves[0]


def _call(model: nn.Module, batch: Any) -> torch.Tensor:
    with torch.no_grad():
        return _first_tensor(model(**batch) if isinstance(batch, dict) else model(batch))


def _cosine(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Mean cosine similarity over the last dimension (per token, or per sample's logits)."""
    return float(nn.functional.cosine_similarity(ref.flatten(0, -2), out.flatten(0, -2), dim=-1).mean())


def _linears(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, nn.Linear) or is_transposed_linear(m)}


def _linear_like(model: nn.Module) -> set[str]:
    return _linears(model) | {n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))}


def _converts(family: str) -> None:
    if not family.startswith("tv-"):
        pytest.importorskip("transformers")
    model = zoo.build(family)
    batches = zoo.batches(family, count=4)
    mode = zoo.FAMILIES[family].mode
    quantized = quantize(model, Pt2eSpec(mode=mode), batches)
    assert quantized.tracing == "whole"
    entries = {e.name: e for e in quantized.coverage.entries}
    assert _linear_like(model) <= set(entries), sorted(_linear_like(model) - set(entries))
    floats = [e for e in quantized.coverage.entries if e.status != "quantized"]
    if mode == "dynamic":  # dynamic int8 is for linear layers; convolutions (wav2vec2's) stay float, said so
        assert all(e.reason == REASON_DYNAMIC_CONV for e in floats), floats
        assert not [n for n in _linears(model) if entries[n].status != "quantized"]
    else:
        assert not floats, floats
    for batch in zoo.batches(family, count=2, seed=10):
        ref, out = _call(model, batch), _call(quantized.model, batch)
        assert out.shape == ref.shape
        if ref.abs().max() < 1e-6:  # a random-init net whose output vanishes (mobilenet-v2's logits: ~1e-26)
            assert out.abs().max() < 1e-3
        else:
            assert _cosine(ref, out) >= MIN_COSINE, (family, _cosine(ref, out))


@pytest.mark.parametrize("family", DEFAULT)
def test_a_family_converts_covers_every_layer_and_agrees(family: str) -> None:
    _converts(family)


@pytest.mark.zoo
@pytest.mark.parametrize("family", [f for f in zoo.FAMILIES if f not in DEFAULT])
def test_every_zoo_family_converts_covers_every_layer_and_agrees(family: str) -> None:
    _converts(family)


def test_a_model_torch_export_cannot_capture_is_refused_in_one_line() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent Python branch
                return self.fc(x)
            return x

    with pytest.raises(TracingError) as info:
        quantize(Branchy(), Pt2eSpec(mode="dynamic"), [torch.randn(4, 4)])
    message = str(info.value)
    assert "\n" not in message
    assert "torch.export cannot capture Branchy" in message and "test_zoo.py" in message
    assert "fix:" in message and "engine 'fx'" in message


def test_a_torchao_failure_is_one_line_naming_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any) -> None:
        raise ValueError("Input partition has more than one output node\n(more detail)")

    real = convert.torchao()
    monkeypatch.setattr(convert, "torchao", lambda: types.SimpleNamespace(**{**vars(real), "prepare_pt2e": refuse}))
    with pytest.raises(ConversionError) as info:
        quantize(nn.Sequential(nn.Linear(4, 4)), Pt2eSpec(mode="dynamic"), [torch.randn(4, 4)])
    message = str(info.value)
    assert "\n" not in message
    assert "failed at prepare of Sequential" in message and "Input partition" in message
    assert "fix: keep that module float" in message and "--engine fx" in message
