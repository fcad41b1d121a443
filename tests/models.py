"""The toy models every test shares, in one place.

- ``SmallCNN``: conv-bn-relu, conv-relu, pool, linear-relu, linear on (N, 1, 8, 8);
- ``Flat100``, ``Gate``/``GatedNet``, ``DigitsMLP`` (and ``sensitive_digits_mlp``): models the
  flow tests register in MLflow (importable, so the pickle flavor can load them);
- ``build_encoder``/``encoder_batches``: a small BERT-like encoder whose root forward (and
  attention blocks) torch.fx cannot trace, like a Hugging Face encoder: the root builds an
  additive attention mask by item assignment (``mask[attention_mask == 0] = -inf``) and
  returns early on a batch without tokens (a data-dependent ``if``); each attention block
  zeroes NaN probabilities by item assignment. The q/k/v/out projections and the feed-forward
  blocks trace on their own. ``tests.models:build_encoder`` is a ``module:factory`` model
  source and ``tests.models:encoder_batches`` a ``module:function`` data source.

No ``from __future__ import annotations`` here: with string annotations FX generates
``x: _torch_Tensor_`` placeholders that torch.jit.script cannot resolve.
"""

import math

import torch
from torch import Tensor, nn


class SmallCNN(nn.Module):
    """Conv-BN-ReLU, Conv-ReLU, pool, Flatten, Linear-ReLU, Linear: (N, 1, 8, 8) -> (N, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Flat100(nn.Module):
    """Expects ``(N, 100)`` inputs: the digits data ``(N, 1, 8, 8)`` does not fit it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            return y
        return -y


class GatedNet(nn.Module):
    """Runs fine eagerly on digits, but ``block`` cannot be symbolically traced."""

    def __init__(self) -> None:
        super().__init__()
        self.block = Gate()
        self.head = nn.Linear(4 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x).flatten(1))


class DigitsMLP(nn.Module):
    """Flatten, then ``depth`` Linear+ReLU layers, then a classifier: (N, 1, 8, 8) -> (N, 10)."""

    def __init__(self, width: int = 48, depth: int = 6) -> None:
        super().__init__()
        self.inp = nn.Linear(64, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.inp(x.flatten(1)))
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.out(x)


def sensitive_digits_mlp(sensitive: int = 3, epochs: int = 6) -> DigitsMLP:
    """A digits MLP trained briefly, then made sensitive on purpose in ``layers.<sensitive>``.

    Unit 0 of the layer before it is made dead (always 0 after ReLU) and the sensitive
    layer's weight column 0 huge: the float function barely changes, but per-channel int8
    spends every level on that column and rounds the weights that carry the signal to zero.
    """
    from quantstage.demo import train_classifier
    from quantstage.quant.data.sources import digits_split

    torch.manual_seed(0)
    model = DigitsMLP()
    x, y, _, _ = digits_split()
    train_classifier(model, x, y, epochs=epochs)
    with torch.no_grad():
        before = model.layers[sensitive - 1]
        before.weight[0].zero_()
        before.bias[0] = -1.0
        model.layers[sensitive].weight[:, 0] = 500.0
    return model.eval()


__all__ = ["Attention", "Encoder", "EncoderLayer", "FeedForward", "build_encoder", "encoder_batches"]


class Attention(nn.Module):
    """Multi-head self-attention; the NaN guard on the probabilities does not trace."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} is not a multiple of heads {heads}; pick hidden = heads * head_dim")
        self.heads = heads
        self.head_dim = hidden // heads
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def _split(self, x: Tensor) -> Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, s, h = x.shape
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim) + mask[:, None, None, :]
        probs = scores.softmax(dim=-1)
        probs[probs != probs] = 0.0  # a fully masked row gives NaN: attend to nothing instead
        context = (probs @ v).transpose(1, 2).reshape(b, s, h)
        return self.out(context)


class FeedForward(nn.Module):
    """Linear, GELU, Linear: traces on its own."""

    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, ffn)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ffn, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Post-norm transformer layer: attention, then feed-forward, each with a residual."""

    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attn = Attention(hidden, heads)
        self.norm1 = nn.LayerNorm(hidden)
        self.ffn = FeedForward(hidden, ffn)
        self.norm2 = nn.LayerNorm(hidden)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.norm1(x + self.attn(x, mask))
        return self.norm2(x + self.ffn(x))


class Encoder(nn.Module):
    """Token + position embeddings, ``layers`` encoder layers, a final LayerNorm: (B, S) ids -> (B, S, hidden)."""

    def __init__(self, vocab: int, hidden: int, heads: int, layers: int, ffn: int, max_len: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.position = nn.Embedding(max_len, hidden)
        self.layers = nn.ModuleList([EncoderLayer(hidden, heads, ffn) for _ in range(layers)])
        self.norm = nn.LayerNorm(hidden)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed(input_ids) + self.position(positions)[None]
        mask = torch.zeros(attention_mask.shape, dtype=x.dtype, device=x.device)
        mask[attention_mask == 0] = float("-inf")  # item assignment: FX cannot trace it
        if bool(attention_mask.sum() == 0):  # data-dependent early exit for an all-padding batch
            return torch.zeros_like(x)
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)


def build_encoder(
    vocab: int = 1000,
    hidden: int = 64,
    heads: int = 2,
    layers: int = 2,
    ffn: int = 128,
    max_len: int = 16,
    seed: int = 0,
) -> nn.Module:
    """A deterministic :class:`Encoder` (weights drawn from ``seed``), in eval mode."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Encoder(vocab, hidden, heads, layers, ffn, max_len)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def encoder_batches(
    num_batches: int = 8, batch_size: int = 4, seed: int = 0, *, vocab: int = 1000, seq_len: int = 16
) -> list[dict[str, Tensor]]:
    """``num_batches`` batches ``{"input_ids": (B, S) int64, "attention_mask": (B, S) int64}``.

    Every sequence has between ``seq_len // 4`` and ``seq_len`` real tokens (at least one),
    right-padded with id 0 and mask 0.
    """
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        input_ids = torch.randint(1, vocab, (batch_size, seq_len), generator=generator)
        lengths = torch.randint(max(1, seq_len // 4), seq_len + 1, (batch_size,), generator=generator)
        attention_mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
        batches.append({"input_ids": input_ids * attention_mask, "attention_mask": attention_mask})
    return batches
