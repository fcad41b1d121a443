"""Model families users bring (tests.zoo) through the FX engine: what broke each, now converted."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantstage.quant.engines import FxSpec
from quantstage.quant.engines.fx.embedding import WeightOnlyEmbedding, embedding_weight_only, weight_only_reason
from quantstage.quant.quantize import Quantized, quantize
from quantstage.quant.tracing.linear_like import as_linear, with_linear_equivalents
from tests import zoo

pytest.importorskip("transformers")

MINMAX = {"preset": "static", "observers": {"activation": "minmax"}}  # fast calibration, same code paths


def _quantize(family: str, **spec: Any) -> tuple[nn.Module, Quantized]:
    model = zoo.build(family)
    mode = spec.pop("mode", zoo.FAMILIES[family].mode)
    if mode == "static":
        spec.setdefault("qconfig_mapping", MINMAX)
    return model, quantize(model, FxSpec(mode=mode, **spec), zoo.batches(family, count=3), timing_repeats=0)


def _first(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    return output[0] if isinstance(output, tuple) else next(iter(output.values()))


def _cosine(float_model: nn.Module, quantized: nn.Module, batch: Any) -> float:
    with torch.no_grad():
        call = (lambda m: m(**batch)) if isinstance(batch, dict) else (lambda m: m(batch))
        a, b = _first(call(float_model)), _first(call(quantized))
    return F.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0).item()


def _row(q: Quantized, path: str) -> Any:
    table = q.coverage.as_table()
    i = table["path"].index(path)
    return {k: v[i] for k, v in table.items()}


class _Out(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _first(self.model(x))


def _traces_and_saves(model: nn.Module, x: torch.Tensor) -> None:
    wrapped = _Out(model).eval()
    with torch.no_grad():
        traced = torch.jit.trace(wrapped, (x,), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
        assert torch.equal(loaded(x), wrapped(x))


# --- weight-only embeddings -------------------------------------------------------------------


def test_bert_without_token_types_runs_its_expanded_token_type_ids_through_int8_embeddings() -> None:
    model, q = _quantize("bert-no-tt")
    assert isinstance(q.model.get_submodule("embeddings.token_type_embeddings"), WeightOnlyEmbedding)
    batch = zoo.example("bert-no-tt", seed=7)
    assert _cosine(model, q.model, batch) > 0.99


def test_weight_only_embedding_takes_non_contiguous_indices_and_scripts() -> None:
    torch.manual_seed(0)
    float_embedding = nn.Embedding(16, 8)
    quantized = embedding_weight_only(float_embedding)
    assert isinstance(quantized, WeightOnlyEmbedding)
    indices = torch.tensor([[1, 2, 3]]).expand(4, 3)  # stride 0, as BERT's buffered token_type_ids
    assert not indices.is_contiguous()
    out = quantized(indices)
    assert (out - float_embedding(indices)).abs().max().item() < 0.05
    scripted = torch.jit.script(quantized)
    assert torch.equal(scripted(indices), out)


def test_embeddings_that_add_to_forward_or_do_not_sum_stay_float_with_a_reason() -> None:
    class Scaled(nn.Embedding):
        def forward(self, input: torch.Tensor) -> torch.Tensor:
            return super().forward(input) * 2.0

    class Plain(nn.Embedding):
        pass

    assert embedding_weight_only(Scaled(8, 4)) is None
    assert "own forward" in (weight_only_reason(Scaled(8, 4)) or "")
    assert embedding_weight_only(nn.EmbeddingBag(8, 4, mode="mean")) is None
    assert "mean" in (weight_only_reason(nn.EmbeddingBag(8, 4, mode="mean")) or "")
    plain = Plain(8, 4)
    quantized = embedding_weight_only(plain)
    assert isinstance(quantized, WeightOnlyEmbedding)
    assert (quantized(torch.arange(8)) - plain(torch.arange(8))).abs().max().item() < 0.05


def test_bart_encoder_keeps_its_scaled_embedding_float_and_says_why() -> None:
    model, q = _quantize("bart-encoder")
    assert type(q.model.get_submodule("embed_tokens")).__name__ == "BartScaledWordEmbedding"
    row = _row(q, "embed_tokens")
    assert row["status"] == "float" and "overrides nn.Embedding.forward" in row["reason"]
    assert q.coverage.quantized_fraction == 1.0
    assert _cosine(model, q.model, zoo.example("bart-encoder", seed=3)) > 0.99


# --- GPT-2's Conv1D: the Linear it is -----------------------------------------------------------


def test_gpt2_conv1d_is_quantized_as_linear_and_counted() -> None:
    model, q = _quantize("gpt2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert q.coverage.quantized_fraction == 1.0
    conv1d_params = sum(
        p.numel() for m in model.modules() if type(m).__name__ == "Conv1D" for p in m.parameters(recurse=False)
    )
    assert conv1d_params > 0 and q.coverage.linear_conv_params >= conv1d_params
    assert type(model.h[0].attn.c_attn).__name__ == "Conv1D"  # the float model given is not modified
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert _cosine(model, q.model, zoo.example("gpt2", seed=5)) > 0.99


def test_a_transposed_weight_linear_becomes_the_equivalent_linear() -> None:
    class Conv1D(nn.Module):  # transformers.pytorch_utils.Conv1D's structure
        def __init__(self, nf: int, nx: int) -> None:
            super().__init__()
            self.nf = nf
            self.weight = nn.Parameter(torch.randn(nx, nf))
            self.bias = nn.Parameter(torch.randn(nf))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
            return out.view(x.size()[:-1] + (self.nf,))

    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(6, 4), nn.ReLU())
    linear = as_linear(model[0])
    assert isinstance(linear, nn.Linear) and linear.weight.shape == (6, 4)
    x = torch.randn(2, 3, 4)
    assert torch.allclose(linear(x), model[0](x), atol=1e-6)
    copy, paths = with_linear_equivalents(model)
    assert paths == ("0",) and isinstance(copy[0], nn.Linear) and isinstance(model[0], Conv1D)
    assert with_linear_equivalents(nn.Sequential(nn.Linear(2, 2)))[1] == ()


# --- parts whose attributes the code around them reads ------------------------------------------


def test_vit_static_keeps_the_projection_whose_weight_the_glue_reads_float() -> None:
    model, q = _quantize("vit-static")
    row = _row(q, "vit.embeddings.patch_embeddings.projection")
    assert row["status"] == "float" and "'weight'" in row["reason"]
    assert _cosine(model, q.model, zoo.example("vit-static", seed=2)) > 0.98


def test_a_part_whose_plain_attributes_the_glue_reads_carries_them() -> None:
    class Padded(nn.Module):  # MobileNetV2's TF padding: reads the conv's stride and kernel size
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] % 2:  # data-dependent: does not trace, so the conv is quantized alone
                x = F.pad(x, (0, 1, 0, 1))
            pad = self.conv.kernel_size[0] // self.conv.stride[0]
            return self.conv(F.pad(x, (pad, pad, pad, pad)))

    torch.manual_seed(0)
    model = Padded().eval()
    batches = [torch.randn(2, 3, 9, 9) for _ in range(3)]
    q = quantize(model, FxSpec(mode="static", qconfig_mapping=MINMAX), batches, timing_repeats=0)
    assert q.plan is not None and q.plan.quantized == ("conv",)
    assert q.model.conv.stride == (2, 2) and q.model.conv.kernel_size == (3, 3)
    assert _cosine(model, q.model, batches[0]) > 0.99
    copied = copy.deepcopy(q.model)  # a GraphModule's deepcopy keeps them too
    assert copied.conv.kernel_size == (3, 3)
    assert torch.equal(copied(batches[1]), q.model(batches[1]))


def test_mobilenet_v2_converts_with_its_tf_padding_glue() -> None:
    model, q = _quantize("mobilenet-v2")
    assert q.coverage.quantized_fraction > 0.95
    conv = q.model.get_submodule("mobilenet_v2.conv_stem.first_conv.convolution")
    assert isinstance(conv, torch.fx.GraphModule) and conv.stride == (2, 2)  # read by apply_tf_padding
    x = zoo.example("mobilenet-v2", seed=1)
    with torch.no_grad():  # random weights: the logits vanish (~1e-26), so compare the shape, not values
        out, expected = q.model(x).logits, model(x).logits
    assert out.shape == expected.shape and bool(torch.isfinite(out).all())


# --- Hugging Face modules whose parameters all got quantized --------------------------------------


@pytest.mark.parametrize("family", ["resnet", "regnet"])
def test_models_left_without_float_parameters_keep_their_dtype_property_and_trace(family: str) -> None:
    model, q = _quantize(family)
    assert q.coverage.quantized_fraction == 1.0
    assert q.model.dtype == torch.float32  # PreTrainedModel.dtype: next(float parameter)
    x = zoo.example(family, seed=4)
    _traces_and_saves(q.model, x)
    assert _cosine(model, q.model, x) > 0.95
