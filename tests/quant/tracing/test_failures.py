"""Torch failing in a stage: one line naming the stage, the module and the fix (whole path), or the
part to blame left float with the reason in the coverage (submodule path); quantstage's own bugs
are not wrapped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantstage.quant.engines import FxSpec, QuantSpec
from quantstage.quant.engines.fx import _torch as _fx
from quantstage.quant.engines.fx.engine import FX_ENGINE
from quantstage.quant.errors import ConversionError, QuantStageError, TracingError, raised_by_quantstage
from quantstage.quant.quantize import Quantized, prepare_model, quantize

STATIC = FxSpec(mode="static", qconfig_mapping={"preset": "static", "observers": {"activation": "minmax"}})


class Branchy(nn.Module):
    """The root does not trace (data-dependent ``if``): parts ``a`` and ``b`` are quantized alone."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.b = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > -1e9:
            h = h + 1
        return self.b(h)


@pytest.fixture
def branchy() -> nn.Module:
    torch.manual_seed(0)
    return Branchy().eval()


@pytest.fixture
def batches() -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(4, 8) for _ in range(3)]


def _is_b(module: nn.Module) -> bool:
    """Part ``b`` (prepared or reference: it holds a (4, 8) weight)."""
    return any(tuple(t.shape) == (4, 8) for t in module.state_dict().values() if isinstance(t, torch.Tensor))


def _boom(stage: str) -> RuntimeError:
    return RuntimeError(f"boom in {stage}\nsecond line of torch's message")


def _one_line(error: BaseException, *parts: str) -> None:
    text = str(error)
    assert "\n" not in text and "second line" not in text
    for part in parts:
        assert part in text, text


def _row(q: Quantized, path: str) -> dict[str, Any]:
    table = q.coverage.as_table()
    i = table["path"].index(path)
    return {k: v[i] for k, v in table.items()}


def _left_float(q: Quantized, path: str, reason: str, model: nn.Module, x: torch.Tensor) -> None:
    row = _row(q, path)
    assert row["status"] == "float" and reason in row["reason"], row
    assert type(q.model.get_submodule(path)) is type(model.get_submodule(path))  # the float module is back
    assert _row(q, "a")["status"] == "quantized"
    with torch.no_grad():
        assert F.cosine_similarity(q.model(x).flatten(), model(x).flatten(), dim=0).item() > 0.99


# --- preparing ------------------------------------------------------------------------------------


def _failing_prepare(when: Callable[[nn.Module], bool]) -> Callable[..., Any]:
    original = _fx.prepare_fx

    def prepare_fx(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if when(model):
            raise _boom("prepare")
        return original(model, *args, **kwargs)

    return prepare_fx


def test_prepare_failing_in_torch_is_one_tracing_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_fx, "prepare_fx", _failing_prepare(lambda _m: True))
    model = nn.Sequential(nn.Linear(8, 4)).eval()
    with pytest.raises(TracingError) as error:
        quantize(model, STATIC.model_copy(update={"tracing": "whole"}), [torch.randn(2, 8)])
    _one_line(error.value, "preparing (prepare_fx) failed in Sequential", "RuntimeError: boom in prepare", "fix:")


def test_a_part_that_torch_cannot_prepare_is_left_float(
    monkeypatch: pytest.MonkeyPatch, branchy: nn.Module, batches: list[torch.Tensor]
) -> None:
    monkeypatch.setattr(_fx, "prepare_fx", _failing_prepare(_is_b))
    q = quantize(branchy, STATIC, batches, timing_repeats=0)
    _left_float(q, "b", "RuntimeError: boom in prepare", branchy, batches[0])


# --- calibration ----------------------------------------------------------------------------------


def test_calibration_failing_names_the_module_and_the_fix() -> None:
    model = nn.Sequential(nn.Linear(8, 4)).eval()
    with pytest.raises(ConversionError) as error:
        quantize(model, STATIC, [torch.randn(2, 8), torch.randn(2, 5)])  # the second batch does not fit
    _one_line(error.value, "calibration failed in module '0' of Sequential", "RuntimeError", "skip_modules: ['0']")


def test_a_part_that_fails_calibration_is_left_float(branchy: nn.Module, batches: list[torch.Tensor]) -> None:
    prepared = prepare_model(branchy, STATIC, batches[0])
    assert prepared.parts is not None and set(prepared.parts.plan.quantized) == {"a", "b"}

    def forward(*_args: Any) -> torch.Tensor:
        raise _boom("calibration")

    prepared.parts.prepared["b"].forward = forward  # torch raising inside the prepared part
    prepared.calibrate(batches)
    assert prepared.parts.plan.quantized == ("a",)
    q = prepared.reference().lower(timing_repeats=0)
    _left_float(q, "b", "calibration failed: RuntimeError: boom in calibration; kept float", branchy, batches[0])


# --- reference conversion, lowering, running ------------------------------------------------------


def _failing(monkeypatch: pytest.MonkeyPatch, method: str, when: Callable[[Any], bool], stage: str) -> None:
    original = getattr(FX_ENGINE, method)

    def failing(module: Any, spec: QuantSpec) -> Any:
        if when(module):
            raise _boom(stage)
        return original(module, spec)

    monkeypatch.setattr(FX_ENGINE, method, failing)


def _reference_of_b(reference: Any) -> bool:
    return _is_b(reference.graph_module)


STAGES = [
    ("reference", "reference conversion", _is_b),
    ("lower", "lowering", _reference_of_b),
]


@pytest.mark.parametrize(("method", "stage", "when"), STAGES)
def test_a_part_that_fails_to_convert_is_left_float(
    monkeypatch: pytest.MonkeyPatch,
    branchy: nn.Module,
    batches: list[torch.Tensor],
    method: str,
    stage: str,
    when: Callable[[Any], bool],
) -> None:
    _failing(monkeypatch, method, when, stage)
    q = quantize(branchy, STATIC, batches, timing_repeats=0)
    _left_float(q, "b", f"{stage} failed: RuntimeError: boom in {stage}; kept float", branchy, batches[0])
    assert "b" not in q.lowered


@pytest.mark.parametrize(("method", "stage"), [(m, s) for m, s, _ in STAGES])
def test_converting_the_whole_model_failing_is_one_line(
    monkeypatch: pytest.MonkeyPatch, batches: list[torch.Tensor], method: str, stage: str
) -> None:
    _failing(monkeypatch, method, lambda _m: True, stage)
    with pytest.raises(ConversionError) as error:
        quantize(nn.Sequential(nn.Linear(8, 4)).eval(), STATIC, batches)
    _one_line(error.value, f"{stage} failed in Sequential", f"RuntimeError: boom in {stage}", "engine pt2e")


def _lowered_that_raises(monkeypatch: pytest.MonkeyPatch, when: Callable[[Any], bool]) -> None:
    original = FX_ENGINE.lower

    def lower(reference: Any, spec: QuantSpec) -> nn.Module:
        lowered = original(reference, spec)
        if when(reference):

            def forward(*_args: Any) -> torch.Tensor:
                raise _boom("running")

            lowered.forward = forward  # torch raising in the lowered part
        return lowered

    monkeypatch.setattr(FX_ENGINE, "lower", lower)


def test_a_part_that_fails_to_run_quantized_is_left_float(
    monkeypatch: pytest.MonkeyPatch, branchy: nn.Module, batches: list[torch.Tensor]
) -> None:
    _lowered_that_raises(monkeypatch, _reference_of_b)
    q = quantize(branchy, STATIC, batches, timing_repeats=0)
    _left_float(q, "b", "running the quantized model failed: RuntimeError: boom in running", branchy, batches[0])


def test_the_whole_quantized_model_failing_to_run_is_one_line(
    monkeypatch: pytest.MonkeyPatch, batches: list[torch.Tensor]
) -> None:
    _lowered_that_raises(monkeypatch, lambda _r: True)
    with pytest.raises(ConversionError) as error:
        quantize(nn.Sequential(nn.Linear(8, 4)).eval(), STATIC, batches)
    _one_line(error.value, "running the quantized model failed in the forward of Sequential", "boom in running")


# --- quantstage's own bugs ----------------------------------------------------------------------------


def _raised(fn: Callable[[], Any]) -> Iterator[BaseException]:
    try:
        fn()
    except Exception as exc:
        yield exc


def test_only_what_torch_or_the_model_raises_is_classified() -> None:
    (ours,) = _raised(lambda: _fx.backend_config_for("nope"))  # a ValueError raised in quant/
    (torchs,) = _raised(lambda: torch.zeros(2, 3) @ torch.zeros(2, 3))
    (models,) = _raised(lambda: Branchy()(torch.zeros(2, 5)))
    assert raised_by_quantstage(ours)
    assert not raised_by_quantstage(torchs) and not raised_by_quantstage(models)
    assert raised_by_quantstage(QuantStageError("deliberate"))


def test_a_bug_in_quantstage_is_not_wrapped(
    monkeypatch: pytest.MonkeyPatch, branchy: nn.Module, batches: list[torch.Tensor]
) -> None:
    def reference(prepared: nn.Module, spec: QuantSpec) -> Any:
        return _fx.backend_config_for("a bug: not a backend")  # ValueError from quantstage's own code

    monkeypatch.setattr(FX_ENGINE, "reference", reference)
    with pytest.raises(ValueError, match="unknown backend_config") as error:
        quantize(branchy, STATIC, batches, timing_repeats=0)
    assert not isinstance(error.value, QuantStageError)
