"""Models that do not trace as a whole: quantize() on the submodule path (quant.tracing), on a real encoder."""

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from quantstage.quant.engines import FxSpec, QuantSpec
from quantstage.quant.engines.fx import configs as fx_configs
from quantstage.quant.engines.fx.convert import convert
from quantstage.quant.engines.fx.prepare import prepare
from quantstage.quant.engines.fx.torchscript import export_torchscript
from quantstage.quant.errors import DataError, SpecError, TracingError
from quantstage.quant.measure.evaluate import sqnr_db
from quantstage.quant.quantize import Quantized, quantize
from quantstage.quant.tracing import plan_submodules, spec_for_submodule
from tests.models import SmallCNN, build_encoder, encoder_batches

ITEM_ASSIGNMENT = "TypeError: 'Proxy' object does not support item assignment"
LAYERS = ("layers.0", "layers.1")
PLANNED = tuple(
    path
    for layer in LAYERS
    for path in (f"{layer}.attn.q", f"{layer}.attn.k", f"{layer}.attn.v", f"{layer}.attn.out", f"{layer}.ffn")
)
LEFT_FLOAT = ("", *(path for layer in LAYERS for path in (layer, f"{layer}.attn")))


def _args(batches: list[dict[str, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(b["input_ids"], b["attention_mask"]) for b in batches]


@pytest.fixture(scope="module")
def encoder() -> nn.Module:
    return build_encoder()


@pytest.fixture(scope="module")
def calibration() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return _args(encoder_batches(num_batches=8, seed=0))


@pytest.fixture(scope="module")
def held_out() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return _args(encoder_batches(num_batches=4, seed=1))


def _tracing(spec: QuantSpec, tracing: str) -> QuantSpec:
    return spec.model_copy(update={"tracing": tracing})


def _submodules(
    model: nn.Module, spec: QuantSpec, example: object, calibration: list = (), **kwargs: object
) -> Quantized:
    return quantize(model, _tracing(spec, "submodules"), calibration, example_inputs=example, **kwargs)


def _sqnr(float_model: nn.Module, quantized: nn.Module, batches: list[tuple[torch.Tensor, ...]]) -> float:
    with torch.no_grad():
        expected = torch.cat([float_model(*b) for b in batches])
        got = torch.cat([quantized(*b) for b in batches])
    return sqnr_db(expected, got)


@pytest.fixture(scope="module")
def dynamic(encoder: nn.Module, calibration: list) -> dict:
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    result = quantize(encoder, FxSpec(mode="dynamic"), calibration, example_inputs=calibration[0])
    return {"result": result, "state_before": before}


@pytest.fixture(scope="module")
def static(encoder: nn.Module, calibration: list) -> Quantized:
    # calibration as dict batches (keyword args), as encoder_batches gives them
    batches = encoder_batches(num_batches=8, seed=0)
    return _submodules(encoder, FxSpec(mode="static", backend="x86"), calibration[0], batches)


def test_the_encoder_does_not_trace_at_the_root_nor_in_attention(encoder: nn.Module) -> None:
    for module in (encoder, encoder.layers[0], encoder.layers[0].attn):
        with pytest.raises(TypeError, match="does not support item assignment"):
            torch.fx.symbolic_trace(module)
    torch.fx.symbolic_trace(encoder.layers[0].ffn)  # the Linear-bearing parts do


def test_plan_lists_the_largest_traceable_submodules_and_the_float_ones_with_their_first_error(
    encoder: nn.Module, calibration: list
) -> None:
    plan = plan_submodules(encoder, calibration[0], FxSpec(mode="dynamic"))
    assert plan.quantized == PLANNED
    assert tuple(f.path for f in plan.left_float) == LEFT_FLOAT
    assert {f.reason for f in plan.left_float} == {ITEM_ASSIGNMENT}
    assert plan.first_error("layers.1.attn") == ITEM_ASSIGNMENT
    assert plan.first_error("layers.1.ffn") is None


def test_auto_falls_back_to_submodules_and_leaves_the_model_untouched(encoder: nn.Module, dynamic: dict) -> None:
    result = dynamic["result"]
    assert result.tracing == "submodules"
    assert result.plan is not None and result.reference is None and result.prepared is None
    assert "failed in the root forward of Encoder" in result.reason
    assert "does not support item assignment" in result.reason
    assert all(type(m) is nn.Linear for m in (encoder.layers[0].attn.q, encoder.layers[1].ffn.fc2))
    after = encoder.state_dict()
    assert all(torch.equal(after[k], v) for k, v in dynamic["state_before"].items())


def test_auto_logs_why_it_falls_back(encoder: nn.Module, calibration: list, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="quantstage.quant.quantize"):
        result = quantize(encoder, FxSpec(mode="float16"), example_inputs=calibration[0])
    assert result.tracing == "submodules"
    assert "does not trace as a whole" in caplog.text and "item assignment" in caplog.text


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_auto_takes_the_whole_path_when_the_model_traces(mode: str) -> None:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    batches = [(torch.rand(4, 1, 8, 8),) for _ in range(4)]
    result = quantize(model, FxSpec(mode=mode, calibration_batches=4), batches)
    assert result.tracing == "whole" and result.reference is not None and result.plan is None
    assert result.reason == "" and result.prepared is not None
    sqnr = _sqnr(model, result.model, batches)
    assert sqnr >= 20.0, f"{mode} SQNR {sqnr:.1f} dB is too low"


def test_submodules_called_with_keyword_arguments_are_prepared_with_them() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return self.fc(x) * scale

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = Scaled()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            x[x < 0] = 0.0
            return self.block(x, scale=x.amax())

    torch.manual_seed(0)
    model = Model().eval()
    args = (torch.randn(4, 8),)
    result = _submodules(model, FxSpec(mode="dynamic"), args, timing_repeats=0)
    assert result.plan is not None and result.plan.quantized == ("block",)
    assert _sqnr(model, result.model, [args]) >= 30.0


def test_whole_mode_raises_the_tracing_error(encoder: nn.Module, calibration: list) -> None:
    with pytest.raises(
        TracingError, match=r"failed in the root forward of Encoder: 'Proxy' object does not support item"
    ):
        quantize(encoder, _tracing(FxSpec(mode="dynamic"), "whole"), calibration)


def test_dynamic_quantizes_every_linear_with_high_sqnr(encoder: nn.Module, dynamic: dict, held_out: list) -> None:
    result = dynamic["result"]
    report = result.coverage
    total = sum(p.numel() for m in encoder.modules() if isinstance(m, nn.Linear) for p in m.parameters())
    assert report.linear_conv_params == total
    assert report.quantized_fraction >= 0.95, report.summary()
    assert all(row.status == "quantized" for row in report.rows if row.path in PLANNED)
    assert not any(type(m) is nn.Linear for m in result.model.modules()), "a Linear stayed float"
    sqnr = _sqnr(encoder, result.model, held_out)
    assert sqnr >= 30.0, f"dynamic SQNR {sqnr:.1f} dB is too low"


def test_the_report_has_a_table_a_summary_and_the_float_time_share(dynamic: dict) -> None:
    report = dynamic["result"].coverage
    table = report.as_table()
    assert set(table) == {
        "path",
        "module_type",
        "status",
        "reason",
        "linear_conv_params",
        "quantized_params",
        "float_ms",
    }
    assert {len(column) for column in table.values()} == {len(PLANNED) + len(LEFT_FLOAT)}
    assert table["path"][0] == "" and table["status"][0] == "float" and table["reason"][0] == ITEM_ASSIGNMENT
    assert all(table["float_ms"][table["path"].index(p)] > 0 for p in PLANNED)
    assert report.float_time_share is not None and 0.0 < report.float_time_share < 1.0
    summary = report.summary()
    assert "100.0% of Linear/Conv parameters quantized" in summary
    assert "measured in float" in summary
    assert f"`layers.0.attn` (Attention): {ITEM_ASSIGNMENT}" in summary


def test_static_calibrates_each_submodule_on_the_inputs_it_sees_in_the_whole_model(
    encoder: nn.Module, static: Quantized, calibration: list, held_out: list
) -> None:
    # the FFN of the last layer, prepared alone and calibrated on what it receives in the float
    # model, converts to exactly the lowered module the submodule path made
    seen: list[tuple[torch.Tensor, ...]] = []
    handle = encoder.layers[1].ffn.register_forward_pre_hook(lambda _m, args: seen.append(args))
    with torch.no_grad():
        for batch in calibration:
            encoder(*batch)
    handle.remove()
    alone = prepare(encoder.layers[1].ffn, seen[0], FxSpec(mode="static", backend="x86"))
    with torch.no_grad():
        for args in seen:
            alone(*args)
    expected = convert(alone)
    lowered = static.lowered["layers.1.ffn"]
    assert dict(expected.named_buffers()).keys() == dict(lowered.named_buffers()).keys()
    for name, buffer in expected.named_buffers():
        assert torch.equal(buffer, lowered.get_buffer(name)), name
    assert static.coverage.quantized_fraction >= 0.95
    sqnr = _sqnr(encoder, static.model, held_out)
    assert sqnr >= 30.0, f"static SQNR {sqnr:.1f} dB is too low"  # measured 43 dB


def test_static_without_calibration_data_says_so(encoder: nn.Module, calibration: list) -> None:
    with pytest.raises(DataError, match="static mode got no calibration batches"):
        _submodules(encoder, FxSpec(mode="static"), calibration[0], [], timing_repeats=0)


def test_module_name_overrides_and_skips_apply_on_full_paths(encoder: nn.Module, calibration: list) -> None:
    spec = FxSpec(
        mode="dynamic",
        qconfig_mapping={
            "preset": "dynamic",
            "overrides": [{"set": "module_name", "key": "layers.0.ffn.fc1", "qconfig": None}],
        },
        skip_modules=("layers.1.attn",),
    )
    result = _submodules(encoder, spec, calibration[0], timing_repeats=0)
    float_linears = [name for name, m in result.model.named_modules() if type(m) is nn.Linear]
    skipped = [f"layers.1.attn.{p}" for p in ("q", "k", "v", "out")]
    assert float_linears == ["layers.0.ffn.fc1", *skipped]
    # skipping its attention (called as a float leaf) makes the second layer trace whole
    assert result.plan is not None
    assert "layers.1" in result.plan.quantized and "layers.1.ffn" not in result.plan.quantized
    assert type(result.model.layers[1].attn).__name__ == "Attention"
    assert result.part_coverage["layers.0.ffn"].summary().startswith("1/2 weighted layers quantized")
    assert isinstance(result.model.layers[0].ffn, torch.fx.GraphModule)
    float_params = sum(p.numel() for n in float_linears for p in encoder.get_submodule(n).parameters())
    assert result.coverage.quantized_params == result.coverage.linear_conv_params - float_params


def test_spec_for_submodule_reroots_module_name_keys(encoder: nn.Module) -> None:
    spec = FxSpec(
        mode="static",
        qconfig_mapping={
            "preset": "static",
            "overrides": [
                {"set": "module_name_regex", "key": r"layers\.0\.ffn\.fc[12]", "qconfig": None},
                {"set": "module_name", "key": "layers.1.ffn.fc2", "qconfig": None},
                {"set": "module_name", "key": "layers.1", "qconfig": "per_tensor"},
            ],
        },
        skip_modules=("layers.0.ffn.fc2", "layers.1.attn"),
    )
    ffn0 = spec_for_submodule(spec, "layers.0.ffn", encoder.layers[0].ffn)
    mapping = fx_configs.qconfig_mapping(ffn0)
    assert dict(mapping.module_name_regex_qconfigs) == {r"fc1\Z": None, r"fc2\Z": None}
    assert dict(mapping.module_name_qconfigs) == {"fc2": None}
    assert ffn0.skip_modules == ("fc2",)
    assert fx_configs.prepare_custom_config(ffn0).non_traceable_module_names == ["fc2"]
    # a module_name override on a parent beats the rest inside: it becomes the global qconfig
    ffn1 = fx_configs.qconfig_mapping(spec_for_submodule(spec, "layers.1.ffn", encoder.layers[1].ffn))
    assert ffn1.global_qconfig is not None and dict(ffn1.module_name_qconfigs) == {"fc2": None}
    assert not ffn1.object_type_qconfigs and not ffn1.module_name_regex_qconfigs


def test_a_model_where_nothing_traces_raises_with_the_first_errors() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.linear(x, self.fc.weight, self.fc.bias)  # the Linear is never called as a module
            y[y < 0] = 0.0
            return y

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate = Gate()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:
                return self.gate(x)
            return -self.gate(-x)

    with pytest.raises(TracingError) as info:
        quantize(Model().eval(), FxSpec(mode="dynamic"), example_inputs=(torch.ones(2, 8),))
    message = str(info.value)
    assert "no submodule of Model could be quantized" in message
    assert "<root>: TraceError: symbolically traced variables cannot be used as inputs to control flow" in message
    assert f"'gate': {ITEM_ASSIGNMENT}" in message
    assert "prepare_custom.non_traceable_module_names" in message


def test_the_quantized_encoder_becomes_torchscript_that_loads_back_bit_exactly(
    dynamic: dict, held_out: list, tmp_path: Path
) -> None:
    model = dynamic["result"].model
    artifact = export_torchscript(model, tmp_path / "encoder.pt", held_out)  # verifies bit-exactness itself
    assert artifact.method in ("script", "trace")
    with torch.no_grad():
        for batch in held_out:
            assert torch.equal(artifact.module(*batch), model(*batch))


def test_bad_arguments_say_what_is_allowed(encoder: nn.Module, calibration: list) -> None:
    with pytest.raises(ValidationError, match=r"tracing\n  Input should be 'auto', 'whole' or 'submodules'"):
        FxSpec(tracing="partial")
    with pytest.raises(
        SpecError, match=r"mode 'qat' converts a model trained with QAT elsewhere; fix: pass its checkpoint"
    ):
        quantize(encoder, FxSpec(mode="qat"), calibration)
    with pytest.raises(
        SpecError, match=r"mode 'qat' is not supported by submodules; allowed: static, dynamic, float16"
    ):
        from quantstage.quant.tracing.submodules import check_mode

        check_mode(FxSpec(mode="qat"))


def test_dynamic_submodules_quantize_embeddings_outside_them_weight_only() -> None:
    """Embeddings sit in the untraceable glue; dynamic mode still stores them int8 (weight-only),
    as the whole-model path does, unless the spec keeps them float."""
    from torch.ao.nn.quantized import Embedding as QuantizedEmbedding

    from quantstage.quant.measure.benchmark import serialized_size

    model = build_encoder().eval()
    batch = encoder_batches(1)[0]
    args = (batch["input_ids"], batch["attention_mask"])
    result = _submodules(model, FxSpec(mode="dynamic"), args, timing_repeats=0)
    embeddings = [p for p, m in model.named_modules() if isinstance(m, torch.nn.Embedding)]
    assert embeddings and result.coverage.weight_only == tuple(embeddings)
    assert all(isinstance(result.model.get_submodule(p), QuantizedEmbedding) for p in embeddings)
    assert "quantized weight-only" in result.coverage.summary()
    with torch.no_grad():
        assert sqnr_db(model(*args), result.model(*args)) >= 30.0
    # the 1000-row table stored int8 (a per-row scale and offset; tiny tables are mostly that overhead)
    assert serialized_size(result.model.get_submodule("embed")) < serialized_size(model.get_submodule("embed")) / 3
    assert serialized_size(result.model) < serialized_size(model) / 2
    kept = _submodules(model, FxSpec(mode="dynamic", skip_modules=(embeddings[0],)), args, timing_repeats=0)
    assert embeddings[0] not in kept.coverage.weight_only
    assert isinstance(kept.model.get_submodule(embeddings[0]), torch.nn.Embedding)
