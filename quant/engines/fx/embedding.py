"""Weight-only int8 embeddings for the embeddings outside the traced parts (dynamic mode).

torch's ``nnq.Embedding``/``nnq.EmbeddingBag`` (``float_qparams_weight_only_qconfig``: per-row
scale and offset) refuse non-contiguous indices (``Expect weight, indices, and offsets to be
contiguous``), which float ``nn.Embedding`` accepts: BERT run without ``token_type_ids`` feeds its
token-type embedding a buffered, expanded (stride-0) index tensor. The subclasses here make the
indices (and offsets) contiguous first; the packed weight and the op are torch's own, and they
script and trace like torch's modules.

Only modules that embed as ``nn.Embedding``/``nn.EmbeddingBag`` do are quantized: the exact
classes, or subclasses that do not override ``forward`` (a subclass that scales its output,
e.g. BART's ``BartScaledWordEmbedding``, would lose its behaviour): ``weight_only_reason`` says
why a module is kept float.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.ao.nn import quantized as nnq

from quantstage.quant.engines.fx import _torch as _fx

__all__ = ["WeightOnlyEmbedding", "WeightOnlyEmbeddingBag", "embedding_weight_only", "weight_only_reason"]


class WeightOnlyEmbedding(nnq.Embedding):
    """torch's weight-only int8 ``Embedding`` that accepts non-contiguous indices."""

    def forward(self, indices: Tensor) -> Tensor:
        if self.dtype == torch.quint4x2:
            out: Tensor = torch.ops.quantized.embedding_4bit(self._packed_params._packed_weight, indices.contiguous())
        else:
            out = torch.ops.quantized.embedding_byte(self._packed_params._packed_weight, indices.contiguous())
        return out


class WeightOnlyEmbeddingBag(nnq.EmbeddingBag):
    """torch's weight-only int8 ``EmbeddingBag`` that accepts non-contiguous indices and offsets."""

    def forward(
        self,
        indices: Tensor,
        offsets: Optional[Tensor] = None,  # noqa: UP045  # TorchScript reads Optional
        per_sample_weights: Optional[Tensor] = None,  # noqa: UP045
        compressed_indices_mapping: Optional[Tensor] = None,  # noqa: UP045
    ) -> Tensor:
        indices = indices.contiguous()
        if offsets is not None:
            offsets = offsets.contiguous()
        weight = self._packed_params._packed_weight
        if self.dtype == torch.quint4x2:
            out: Tensor = torch.ops.quantized.embedding_bag_4bit(
                weight, indices, offsets, False, 0, self.pruned_weights, per_sample_weights,
                compressed_indices_mapping, self.include_last_offset,
            )  # fmt: skip
        else:
            out = torch.ops.quantized.embedding_bag_byte(
                weight, indices, offsets, False, 0, self.pruned_weights, per_sample_weights,
                compressed_indices_mapping, self.include_last_offset,
            )  # fmt: skip
        return out


def weight_only_reason(module: nn.Module) -> str | None:
    """Why ``module`` is not quantized weight-only (None when it is)."""
    base = nn.EmbeddingBag if isinstance(module, nn.EmbeddingBag) else nn.Embedding
    if not isinstance(module, base):
        return f"{type(module).__name__} is not an nn.Embedding or nn.EmbeddingBag"
    if isinstance(module, nn.EmbeddingBag) and module.mode != "sum":
        return f"EmbeddingBag mode {module.mode!r}: torch's weight-only int8 EmbeddingBag sums only; kept float"
    if type(module).forward is not base.forward:
        return (
            f"{type(module).__name__} subclasses nn.{base.__name__} with its own forward (weight-only int8 "
            f"would drop what it adds); kept float"
        )
    return None


def _plain(module: nn.Module) -> nn.Module:
    """``module`` as an instance of the exact ``nn.Embedding``/``nn.EmbeddingBag`` sharing its state
    (torch's ``from_float`` takes the exact classes only; it copies before quantizing)."""
    base: type[nn.Module] = nn.EmbeddingBag if isinstance(module, nn.EmbeddingBag) else nn.Embedding
    if type(module) is base:
        return module
    plain = base.__new__(base)
    plain.__dict__.update(module.__dict__)
    return plain


def embedding_weight_only(module: nn.Module) -> nn.Module | None:
    """``module`` as weight-only int8 (None when ``weight_only_reason`` says it stays float)."""
    if weight_only_reason(module) is not None:
        return None
    with _fx.fx_quiet():
        quantized = _fx.embedding_weight_only(_plain(module))
    quantized.__class__ = WeightOnlyEmbeddingBag if isinstance(module, nn.EmbeddingBag) else WeightOnlyEmbedding
    return quantized
