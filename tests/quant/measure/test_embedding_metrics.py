"""Embedding metrics compare what users compare: pooled sentence embeddings, padding excluded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantstage.quant.measure.evaluate import EvaluationSpec, evaluate


class PaddingNoise(nn.Module):
    """Returns its token embeddings, with noise only where the attention mask says padding."""

    def __init__(self, noise: float) -> None:
        super().__init__()
        self.noise = noise

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pad = (attention_mask == 0).unsqueeze(-1).float()
        return tokens + self.noise * pad * torch.ones_like(tokens)


class Identity2(nn.Module):
    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return tokens


def _batches() -> list:
    torch.manual_seed(0)
    out = []
    for length in (5, 9):  # sequences padded to each batch's own length: ragged across batches
        tokens = torch.randn(4, length, 16)
        mask = torch.ones(4, length, dtype=torch.long)
        mask[:, length - 2 :] = 0
        out.append(((tokens, mask), None))
    return out


def test_mean_pooling_excludes_padding() -> None:
    spec = EvaluationSpec(task="embedding")
    metrics = evaluate(Identity2(), PaddingNoise(5.0), _batches(), spec, input_names=("tokens", "attention_mask"))
    extra = metrics.extra
    assert extra["embedding_cosine_min"] == pytest.approx(1.0, abs=1e-6)  # the noise sits in padding only
    assert extra["cosine_similarity"] < 0.99  # per sample, padding included: what users do not compare
    assert metrics.samples == 8


def test_cls_and_none_pooling() -> None:
    batches = _batches()
    names = ("tokens", "attention_mask")
    cls = evaluate(
        Identity2(), PaddingNoise(5.0), batches, EvaluationSpec(task="embedding", pooling="cls"), input_names=names
    )
    assert cls.extra["embedding_cosine_min"] == pytest.approx(1.0, abs=1e-6)  # the first token is never padding
    none = evaluate(
        Identity2(), PaddingNoise(5.0), batches, EvaluationSpec(task="embedding", pooling="none"), input_names=names
    )
    assert none.extra["embedding_cosine_min"] < 0.99
    unmasked = evaluate(Identity2(), PaddingNoise(5.0), batches, EvaluationSpec(task="embedding"), input_names=None)
    assert unmasked.extra["embedding_cosine_min"] < 0.99  # no mask found: every token counts


def test_worst_sample_is_reported() -> None:
    class OneBad(nn.Module):
        def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            out = tokens.clone()
            out[0] = -out[0]  # one damaged sentence per batch
            return out

    metrics = evaluate(
        Identity2(), OneBad(), _batches(), EvaluationSpec(task="embedding"), input_names=("tokens", "attention_mask")
    )
    assert metrics.extra["embedding_cosine_min"] == pytest.approx(-1.0, abs=1e-5)
    assert 0.4 < metrics.extra["embedding_cosine_mean"] < 0.6
