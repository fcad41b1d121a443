"""A zoo of real architectures as users bring them: transformers' own model classes built from small
configs with random weights (offline, no download), plus torchvision-style CNNs written here.

``tests.zoo:build`` is a model factory (``--model-factory tests.zoo:build --model-kwarg family=gpt2``)
and ``tests.zoo:batches`` the matching data function (``--data tests.zoo:batches --data-kwarg
family=gpt2``): text families get dict batches of ``input_ids`` + ``attention_mask`` (+ ``token_type_ids``
where the tokenizer makes them, padded rows included), vision families ``pixel_values``, audio
``input_values``. ``FAMILIES`` lists every family with its mode and task; ``FAST`` is the subset
``make test`` converts (the whole matrix runs under ``-m zoo``: ``make test-zoo``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["FAMILIES", "FAST", "Family", "Outcome", "batches", "build", "convert", "example"]

SEQ = 16
VOCAB = 512
IMAGE = 32
AUDIO = 1600


@dataclasses.dataclass(frozen=True)
class Family:
    """One architecture: how to build it, what it is fed, and how quantstage converts it by default."""

    name: str
    build: Callable[[], nn.Module]
    inputs: str  # text | text_tt | image | image224 | audio
    mode: str  # static (CNNs, vision) | dynamic (transformers)
    task: str  # embedding | classification | regression


def _text(cls_name: str, config_name: str, **config: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import transformers

        cfg = getattr(transformers, config_name)(**config)
        if hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = "sdpa" if _supports_sdpa(cls_name) else "eager"
        torch.manual_seed(0)
        return getattr(transformers, cls_name)(cfg).eval()

    return make


def _supports_sdpa(cls_name: str) -> bool:
    import transformers

    return bool(getattr(getattr(transformers, cls_name), "_supports_sdpa", False))


def _hf(cls_name: str, config_name: str, **config: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import transformers

        torch.manual_seed(0)
        return _trained_norms(getattr(transformers, cls_name)(getattr(transformers, config_name)(**config)).eval())

    return make


def _trained_norms(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, as a trained model has (fresh ones make e.g. MobileNetV2's logits vanish)."""
    generator = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=generator) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
    return model


def _bart_encoder() -> nn.Module:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BartConfig(
        vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=64,
    )  # fmt: skip
    return transformers.BartModel(cfg).get_encoder().eval()


_BERTLIKE = dict(
    vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
    max_position_embeddings=64,
)  # fmt: skip
_DECODER = dict(
    vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
    max_position_embeddings=64,
)  # fmt: skip


# --- torchvision-style CNNs, written here (no torchvision beside the pinned torch) ---


class BasicBlock(nn.Module):
    """ResNet's basic block: conv-bn-relu, conv-bn, + identity (or a 1x1 downsample), relu."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TinyResNet(nn.Module):
    """torchvision's ResNet shape, small: stem, two stages of basic blocks, global pool, fc."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class InvertedResidual(nn.Module):
    """MobileNetV3's block: expand 1x1, depthwise 3x3, squeeze-excite, project 1x1, hardswish."""

    def __init__(self, cin: int, expand: int, cout: int, stride: int, se: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(cin, expand, 1, bias=False), nn.BatchNorm2d(expand), nn.Hardswish(),
            nn.Conv2d(expand, expand, 3, stride, 1, groups=expand, bias=False), nn.BatchNorm2d(expand), nn.Hardswish(),
        ]  # fmt: skip
        if se:
            layers.append(SqueezeExcite(expand, max(8, expand // 4)))
        layers += [nn.Conv2d(expand, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_res_connect else out


class TinyMobileNetV3(nn.Module):
    """torchvision's MobileNetV3 shape, small: hardswish stem, inverted residuals with SE, classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()),
            InvertedResidual(16, 32, 16, 1, se=True),
            InvertedResidual(16, 48, 24, 2, se=False),
            InvertedResidual(24, 72, 24, 1, se=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(24, 64), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _cnn(cls: type[nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return _trained_norms(cls().eval())

    return make


_FAMILIES = [
    # encoders
    Family("bert", _text("BertModel", "BertConfig", **_BERTLIKE), "text_tt", "dynamic", "embedding"),
    Family("bert-no-tt", _text("BertModel", "BertConfig", **_BERTLIKE), "text", "dynamic", "embedding"),
    Family("distilbert", _hf("DistilBertModel", "DistilBertConfig", vocab_size=VOCAB, dim=64, n_layers=2,
                             n_heads=4, hidden_dim=128, max_position_embeddings=64), "text", "dynamic", "embedding"),
    Family("roberta", _hf("RobertaModel", "RobertaConfig", **{**_BERTLIKE, "max_position_embeddings": 80}),
           "text", "dynamic", "embedding"),
    Family("albert", _hf("AlbertModel", "AlbertConfig", **_BERTLIKE, embedding_size=32), "text_tt", "dynamic",
           "embedding"),
    Family("electra", _hf("ElectraModel", "ElectraConfig", **_BERTLIKE, embedding_size=32), "text_tt", "dynamic",
           "embedding"),
    Family("xlm-roberta", _hf("XLMRobertaModel", "XLMRobertaConfig", **{**_BERTLIKE, "max_position_embeddings": 80}),
           "text", "dynamic", "embedding"),
    Family("deberta-v2", _hf("DebertaV2Model", "DebertaV2Config", **_BERTLIKE), "text_tt", "dynamic", "embedding"),
    Family("t5-encoder", _hf("T5EncoderModel", "T5Config", vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128,
                             num_layers=2, num_heads=4), "text", "dynamic", "embedding"),
    Family("bart-encoder", _bart_encoder, "text", "dynamic", "embedding"),
    # decoders
    Family("gpt2", _hf("GPT2Model", "GPT2Config", vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                       bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1),
           "text", "dynamic", "embedding"),
    Family("gpt-neo", _hf("GPTNeoModel", "GPTNeoConfig", vocab_size=VOCAB, hidden_size=64, num_layers=2,
                          num_heads=4, attention_types=[[["global", "local"], 1]], max_position_embeddings=64,
                          window_size=8), "text", "dynamic", "embedding"),
    Family("llama", _hf("LlamaModel", "LlamaConfig", **_DECODER, num_key_value_heads=2), "text", "dynamic",
           "embedding"),
    Family("mistral", _hf("MistralModel", "MistralConfig", **_DECODER, num_key_value_heads=2), "text", "dynamic",
           "embedding"),
    Family("qwen2", _hf("Qwen2Model", "Qwen2Config", **_DECODER, num_key_value_heads=2), "text", "dynamic",
           "embedding"),
    Family("phi", _hf("PhiModel", "PhiConfig", **_DECODER), "text", "dynamic", "embedding"),
    # vision
    Family("vit", _hf("ViTForImageClassification", "ViTConfig", image_size=IMAGE, patch_size=8, hidden_size=64,
                      num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, num_labels=10),
           "image", "dynamic", "classification"),
    Family("vit-static", _hf("ViTForImageClassification", "ViTConfig", image_size=IMAGE, patch_size=8,
                             hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                             num_labels=10), "image", "static", "classification"),
    Family("deit", _hf("DeiTModel", "DeiTConfig", image_size=IMAGE, patch_size=8, hidden_size=64,
                       num_hidden_layers=2, num_attention_heads=4, intermediate_size=128), "image", "dynamic",
           "embedding"),
    Family("convnext", _hf("ConvNextForImageClassification", "ConvNextConfig", hidden_sizes=[16, 32, 64, 64],
                           depths=[1, 1, 1, 1], num_labels=10), "image", "static", "classification"),
    Family("resnet", _hf("ResNetForImageClassification", "ResNetConfig", embedding_size=16,
                         hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1], num_labels=10), "image", "static",
           "classification"),
    Family("mobilenet-v2", _hf("MobileNetV2ForImageClassification", "MobileNetV2Config", image_size=IMAGE,
                               depth_multiplier=0.35, num_labels=10), "image", "static", "classification"),
    Family("regnet", _hf("RegNetForImageClassification", "RegNetConfig", embedding_size=16,
                         hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1], groups_width=8, num_labels=10),
           "image", "static", "classification"),
    Family("yolos", _hf("YolosModel", "YolosConfig", image_size=[IMAGE, IMAGE], patch_size=8, hidden_size=64,
                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, num_detection_tokens=5),
           "image", "dynamic", "embedding"),
    Family("swin", _hf("SwinModel", "SwinConfig", image_size=IMAGE, patch_size=4, embed_dim=16, depths=[1, 1],
                       num_heads=[2, 4], window_size=4), "image", "dynamic", "embedding"),
    # audio
    Family("wav2vec2", _hf("Wav2Vec2Model", "Wav2Vec2Config", hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=128, conv_dim=(32, 32, 32),
                           conv_stride=(5, 4, 4), conv_kernel=(10, 8, 8), num_conv_pos_embeddings=16,
                           num_conv_pos_embedding_groups=4, do_stable_layer_norm=True), "audio", "dynamic",
           "embedding"),
    # torchvision-style CNNs defined above
    Family("tv-resnet", _cnn(TinyResNet), "image", "static", "classification"),
    Family("tv-mobilenet-v3", _cnn(TinyMobileNetV3), "image", "static", "classification"),
]  # fmt: skip

FAMILIES: dict[str, Family] = {f.name: f for f in _FAMILIES}

# What ``make test`` converts (one of each kind that broke before); the rest run under ``-m zoo``.
FAST = ("bert-no-tt", "gpt2", "vit-static", "mobilenet-v2", "tv-resnet")


def _family(family: str) -> Family:
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is unknown; allowed: {', '.join(FAMILIES)}")
    return FAMILIES[family]


def build(family: str = "bert") -> nn.Module:
    """The float model of ``family``, random weights, eval mode (a ``module:factory`` model source)."""
    return _family(family).build()


def _text_batch(generator: torch.Generator, batch: int, token_types: bool) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, VOCAB, (batch, SEQ), generator=generator)
    lengths = torch.randint(SEQ // 2, SEQ + 1, (batch,), generator=generator)
    lengths[0] = SEQ
    mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()
    ids = ids * mask  # padding token 0 past each row's length, as a tokenizer pads
    out = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        out["token_type_ids"] = (torch.arange(SEQ)[None, :] >= lengths[:, None] // 2).long() * mask
    return out


def example(family: str, batch: int = 4, seed: int = 0) -> Any:
    """One batch of ``family``'s inputs (a dict of named tensors for text, a tensor otherwise)."""
    generator = torch.Generator().manual_seed(seed)
    kind = _family(family).inputs
    if kind in ("text", "text_tt"):
        return _text_batch(generator, batch, kind == "text_tt")
    if kind == "audio":
        t = torch.arange(AUDIO, dtype=torch.float32) / 16000
        freq = torch.rand(batch, 1, generator=generator) * 400 + 100
        return torch.sin(2 * math.pi * freq * t) + 0.05 * torch.randn(batch, AUDIO, generator=generator)
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=generator)


def batches(family: str = "bert", count: int = 6, batch: int = 4, seed: int = 0) -> list[Any]:
    """``count`` batches of ``family``'s inputs (a ``module:function`` data source)."""
    return [example(family, batch, seed + i) for i in range(count)]


# --- one family through quantstage's library path, as the flow runs it ---


@dataclasses.dataclass
class Outcome:
    """What converting one family with one engine gave: a shipped, verified model and its numbers, or
    the one-line refusal (``error``; ``unexpected`` when what escaped was not a quantstage error)."""

    family: str
    engine: str
    mode: str
    converted: bool = False
    error: str = ""
    unexpected: bool = False
    stage: str = ""
    tracing: str = ""
    quantized_fraction: float = 0.0
    float_layers: list[str] = dataclasses.field(default_factory=list)
    shipped_as: str = ""
    seconds: float = 0.0
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    shipped: Any = dataclasses.field(default=None, repr=False)  # the verified artifact
    model: Any = dataclasses.field(default=None, repr=False)  # the float model, as the user runs it
    dataset: Any = dataclasses.field(default=None, repr=False)


def convert(family: str, engine: str = "fx", *, mode: str | None = None, keep: str | None = None) -> Outcome:
    """Quantize ``family`` with ``engine`` (default mode from ``FAMILIES``), evaluate it against the float
    model and ship it (saved, loaded back, verified) into ``keep`` (a folder; default a temporary one)."""
    import dataclasses as dc
    import tempfile
    import time
    from pathlib import Path

    from quantstage.quant.data.inputs import args_of, check_inputs_fit, head
    from quantstage.quant.data.outputs import output_key
    from quantstage.quant.data.sources import DataSpec, load_data
    from quantstage.quant.engines import get_engine, parse_spec
    from quantstage.quant.errors import QuantStageError, one_line
    from quantstage.quant.measure.evaluate import EvaluationSpec, evaluate
    from quantstage.quant.quantize import quantize
    from quantstage.quant.ship.signature import served_form

    f = _family(family)
    out = Outcome(family, engine, mode or f.mode)
    model = build(family)
    out.model = model
    dataset = load_data(DataSpec(source="tests.zoo:batches", kwargs={"family": family}), model)
    returned = check_inputs_fit(model, dataset.example_inputs, dataset.input_names)
    dataset = dc.replace(dataset, output_key=output_key(returned, None, type(model).__name__))
    out.dataset = dataset
    started = time.perf_counter()
    out.stage = "quantize"
    try:
        quantized = quantize(
            model, parse_spec({"mode": out.mode, "engine": engine}), [x for x, _ in dataset.calibration]
        )
        out.tracing = quantized.tracing
        out.quantized_fraction = quantized.coverage.quantized_fraction
        out.float_layers = [f"{e.name}: {e.reason}" for e in getattr(quantized.coverage, "float", [])][:20]
        out.stage = "evaluate"
        task = EvaluationSpec(task=f.task)
        report = evaluate(
            model, quantized.model, dataset.evaluation, task,
            input_names=dataset.input_names, output_key=dataset.output_key,
        )  # fmt: skip
        out.metrics = {k: float(v) for k, v in report.as_metrics().items() if v is not None}
        out.stage = "ship"
        verify = [args_of(x) for x, _ in dataset.evaluation[:2]] + [args_of(head(dataset.evaluation[0][0], 1))]
        folder = keep or tempfile.mkdtemp(prefix="zoo-")
        shipped = get_engine(engine).ship(
            served_form(quantized.model, dataset.output_key, dataset.input_names, dataset.example_inputs),
            Path(folder),
            verify,
            budget_s=3,
        )
        out.shipped, out.shipped_as = shipped, shipped.method
        out.converted = True
    except QuantStageError as exc:
        out.error = one_line(f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # what the CLI would print as "unexpected"
        out.error, out.unexpected = one_line(f"{type(exc).__name__}: {exc}"), True
    out.seconds = time.perf_counter() - started
    return out
