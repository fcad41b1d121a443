"""The library's entry point: ``quantize(model, spec, calibration)`` returns one ``Quantized``.

It picks the engine the spec names and decides how the model is captured: whole, or (when
``spec.tracing`` is ``auto`` and the whole model does not trace, or it is ``submodules``)
by its largest traceable submodules, with the glue left float. The steps are public so a
pipeline can run, time and log them apart (quantstage's Prefect tasks do); ``quantize``
runs them in order::

    prepared = prepare_model(model, spec, example_inputs)   # engine, whole/submodules, prepared once
    prepared.calibrate(calibration)                          # static mode
    reference = prepared.reference()                        # reference quantized model(s)
    quantized = reference.lower()                           # lowered model(s), coverage

No step modifies the model given, or the result of the step before it (calibration fills
the prepared model's observers, which is its purpose).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from torch import nn

from quantstage.quant.calibrate import run_inputs
from quantstage.quant.data.inputs import bind_to_forward
from quantstage.quant.engines import engine_for
from quantstage.quant.engines.base import Engine, Reference, UnusedSkip
from quantstage.quant.engines.registry import QuantSpec, default_spec
from quantstage.quant.errors import (
    DataError,
    SpecError,
    TracingError,
    raised_by_quantstage,
)
from quantstage.quant.measure.coverage import Coverage, CoverageReport
from quantstage.quant.tracing.linear_like import with_linear_equivalents
from quantstage.quant.tracing.plan import PlannedParts, TracingPlan, show
from quantstage.quant.tracing.recover import assemble_running, calibration_failed, check_runs, part_failed
from quantstage.quant.tracing.submodules import check_mode, prepare_submodules

__all__ = ["Prepared", "Quantized", "Referenced", "Tracing", "prepare_model", "quantize"]

logger = logging.getLogger(__name__)

Tracing = Literal["whole", "submodules"]


def _example(inputs: Any) -> Any:
    """Example inputs as ``forward`` takes them: a dict stays keyword arguments, a tensor becomes ``(x,)``."""
    if isinstance(inputs, (dict, tuple)):
        return inputs
    if isinstance(inputs, list):
        return tuple(inputs)
    return (inputs,)


@dataclasses.dataclass
class Prepared:
    """A model ready for calibration: one prepared module (``tracing == "whole"``) or a working copy
    of the model with its prepared submodules in place (``"submodules"``). ``model`` is what
    calibration runs; ``reason`` says why the submodule path was taken."""

    engine: Engine
    spec: QuantSpec
    float_model: nn.Module
    example_inputs: Any
    tracing: Tracing
    reason: str
    model: nn.Module
    parts: PlannedParts | None = None
    unused_skips: tuple[UnusedSkip, ...] = ()
    from_qat: bool = False
    calibrated_batches: int = 0

    @property
    def prepared_modules(self) -> dict[str, nn.Module]:
        """Full path -> prepared module (``""``: the whole model)."""
        return {"": self.model} if self.parts is None else dict(self.parts.prepared)

    @property
    def needs_calibration(self) -> bool:
        """Static mode needs activation ranges; dynamic, float16 and a trained QAT model do not."""
        return self.spec.mode == "static" and not self.from_qat

    def spec_of(self, path: str) -> QuantSpec:
        """The spec the part at ``path`` was prepared with (re-rooted on the submodule path)."""
        return self.spec if self.parts is None else self.parts.specs[path]

    def calibrate(
        self,
        inputs: Iterable[Any],
        *,
        max_batches: int | None = None,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> int:
        """Run up to ``max_batches`` (default ``spec.calibration_batches``) batches of inputs through
        the whole model, so every prepared part observes what it really sees; return how many ran."""
        limit = max_batches or self.spec.calibration_batches
        batches = list(itertools.islice(inputs, limit))
        ran: list[int] = [0]

        def progress(done: int, total: int) -> None:
            ran[0] = done
            if on_batch is not None:
                on_batch(done, total)

        while True:
            ran[0] = 0
            try:
                seen = run_inputs(self.model, batches, max_batches=limit, on_batch=progress)
                break
            except Exception as exc:
                if raised_by_quantstage(exc):
                    raise
                self._calibration_failed(exc, batches[ran[0]])  # raises, or leaves the part float: again
        if seen == 0:
            raise DataError(
                "static mode got no calibration batches; allowed: an iterable of model inputs (a tensor, a tuple of "
                "positional arguments or a dict of keyword arguments per batch); fix: pass calibration data, or use "
                "mode 'dynamic'"
            )
        self.calibrated_batches += seen
        return seen

    def _calibration_failed(self, exc: Exception, batch: Any) -> None:
        """Leave the part(s) the failure lies in (or around) float, or raise it as one line."""
        self.model, self.parts = calibration_failed(self.model, self.float_model, self.parts, exc, batch)

    def degenerate_ranges(self) -> list[str]:
        """One message per observer whose calibrated range cannot quantize well (the part named first)."""
        messages = []
        for path, module in self.prepared_modules.items():
            prefix = f"in {show(path)}: " if self.parts is not None else ""
            messages += [prefix + m for m in self.engine.degenerate_ranges(module)]
        return messages

    def reference(self) -> Referenced:
        """The reference quantized model of every prepared part (the prepared model is not modified)."""
        references: dict[str, Reference] = {}
        failed: dict[str, str] = {}
        for path, module in self.prepared_modules.items():
            try:
                references[path] = self.engine.reference(module, self.spec_of(path))
            except Exception as exc:
                failed[path] = part_failed(self.parts is None, self.float_model, "reference conversion", path, exc)
        return Referenced(self, references, failed)


@dataclasses.dataclass
class Referenced:
    """The reference quantized part(s) of a prepared model, keyed by full path (``""``: whole)."""

    prepared: Prepared
    references: dict[str, Reference]
    failed: dict[str, str] = dataclasses.field(default_factory=dict)  # parts left float: path -> why

    def lower(self, *, timing_repeats: int = 10) -> Quantized:
        """Lower every part (or finalise the reference model, ``spec.target: reference``) and
        measure coverage. On the submodule path the parts go into a copy of the model that
        shares its float weights, and the float time share is timed (``timing_repeats``; 0: not)."""
        p = self.prepared
        failed = dict(self.failed)
        lowered: dict[str, nn.Module] = {}
        coverage: dict[str, CoverageReport] = {}
        for path, ref in self.references.items():
            stage = "lowering"
            try:
                lowered[path] = p.engine.lower(ref, p.spec_of(path))
                stage = "measuring coverage"
                float_part = p.float_model.get_submodule(path) if path else p.float_model
                coverage[path] = p.engine.coverage(float_part, ref, lowered[path])
            except Exception as exc:
                failed[path] = part_failed(p.parts is None, p.float_model, stage, path, exc)
                lowered.pop(path, None)
        plan: TracingPlan | None = None
        if p.parts is None:
            model: nn.Module = lowered[""]
            report: Coverage = coverage[""]
            check_runs(model, p.float_model, _positional(p.float_model, p.example_inputs))
        else:
            model, report, plan = assemble_running(
                p.engine, p.float_model, p.spec, p.model, p.parts, failed, lowered, coverage, p.example_inputs,
                timing_repeats=timing_repeats,
            )  # fmt: skip
        return Quantized(
            model=model,
            spec=p.spec,
            engine=p.engine.name,
            tracing=p.tracing,
            reason=p.reason,
            prepared=p.model if p.parts is None else None,
            references={path: r for path, r in self.references.items() if plan is None or path in plan.quantized},
            lowered={path: m for path, m in lowered.items() if plan is None or path in plan.quantized},
            coverage=report,
            part_coverage={path: c for path, c in coverage.items() if plan is None or path in plan.quantized},
            plan=plan,
            unused_skips=p.unused_skips,
        )


@dataclasses.dataclass
class Quantized:
    """A quantized model and how it was made.

    ``model`` is what ships (lowered, or the reference model with ``spec.target: reference``);
    ``prepared`` the calibrated prepared model on the whole path (the numeric suite compares
    it with ``model``; None on the submodule path); ``references`` and ``lowered`` each part by
    full path (``""``: whole); ``coverage`` which layers run quantized (``CoverageReport`` whole,
    ``SubmoduleCoverage`` by submodules), ``part_coverage`` each part's engine report (layer names
    relative to the part); ``plan`` the submodule plan.
    """

    model: nn.Module
    spec: QuantSpec
    engine: str
    tracing: Tracing
    reason: str
    prepared: nn.Module | None
    references: dict[str, Reference]
    lowered: dict[str, nn.Module]
    coverage: Coverage
    part_coverage: dict[str, CoverageReport] = dataclasses.field(default_factory=dict)
    plan: TracingPlan | None = None
    unused_skips: tuple[UnusedSkip, ...] = ()

    @property
    def reference(self) -> Reference | None:
        """The whole model's reference quantized model (None on the submodule path)."""
        return self.references.get("")

    def code(self) -> dict[str, str]:
        """Generated code of each lowered part, by full path (``""``: the whole model)."""
        return {path: str(getattr(m, "code", "")) for path, m in self.lowered.items()}

    def reference_code(self) -> dict[str, str]:
        """Generated code of each reference part, by full path."""
        return {path: ref.code for path, ref in self.references.items()}


def _positional(model: nn.Module, example: Any) -> tuple[Any, ...]:
    """Example inputs as positional arguments (a dict is bound to ``forward``'s signature)."""
    return bind_to_forward(model, example)[0] if isinstance(example, dict) else tuple(example)


def _whole(engine: Engine, model: nn.Module, spec: QuantSpec, example: Any, reason: str = "") -> Prepared:
    prepared = engine.prepare(model, _positional(model, example), spec)
    unused = tuple(engine.unused_skips(model, prepared, spec))  # raises instead when spec.strict_skips
    return Prepared(engine, spec, model, example, "whole", reason, prepared, unused_skips=unused)


def prepare_model(
    model: nn.Module,
    spec: QuantSpec | None = None,
    example_inputs: Any = None,
    *,
    qat_checkpoint: str | Path | None = None,
) -> Prepared:
    """Prepare ``model`` for ``spec`` (default ``default_spec()``) with the engine it names, whole or by
    submodules (``spec.tracing``); ``model`` is not modified.

    ``example_inputs`` are one batch of inputs: a tensor, a tuple of positional arguments, or a
    dict of keyword arguments. With ``qat_checkpoint`` (written by ``save_qat_checkpoint``) the
    trained prepared model is rebuilt from it, with the checkpoint's spec (``spec`` must be the
    default or equal it).
    """
    spec = spec or default_spec()
    if example_inputs is None:
        raise DataError(
            "prepare_model needs example_inputs: one batch of the model's inputs (a tensor, a tuple or a dict)"
        )
    example = _example(example_inputs)
    engine = engine_for(spec)
    engine.check(spec)  # what only the engine can check (its framework's rules), before any work
    if qat_checkpoint is not None:
        prepared, trained = engine.load_qat(qat_checkpoint, model, _positional(model, example))
        if spec != default_spec() and spec != trained:
            raise SpecError(
                f"the spec given (hash {spec.digest()}) differs from the one that prepared the QAT checkpoint "
                f"{str(qat_checkpoint)!r} (hash {trained.digest()}); fix: omit the spec to use the checkpoint's"
            )
        return Prepared(engine, trained, model, example, "whole", "QAT checkpoint", prepared, from_qat=True)
    if spec.mode == "qat":
        raise SpecError(
            "mode 'qat' converts a model trained with QAT elsewhere; fix: pass its checkpoint "
            "(qat_checkpoint=..., written by save_qat_checkpoint), or use mode 'static'"
        )
    model, replaced = with_linear_equivalents(model)  # GPT-2's Conv1D: the Linear it is (a copy; not in place)
    if replaced:
        logger.info("%d Linear-equivalent modules (e.g. %s) quantized as nn.Linear", len(replaced), replaced[0])
    if spec.tracing == "submodules":
        reason = "tracing: submodules"
    else:
        try:
            return _whole(engine, model, spec, example)
        except TracingError as exc:
            if spec.tracing == "whole" or not engine.supports_submodules:
                raise
            reason = str(exc)
            logger.info(
                "%s does not trace as a whole (%s); quantizing its largest traceable submodules",
                type(model).__name__,
                exc,
            )
    check_mode(spec)
    work, parts = prepare_submodules(engine, model, spec, example)
    return Prepared(engine, spec, model, example, "submodules", reason, work, parts=parts)


def quantize(
    model: nn.Module,
    spec: QuantSpec | None = None,
    calibration: Iterable[Any] = (),
    *,
    example_inputs: Any = None,
    qat_checkpoint: str | Path | None = None,
    timing_repeats: int = 10,
) -> Quantized:
    """Quantize ``model`` as ``spec`` (default ``default_spec()``: static int8 for x86) says.

    ``calibration`` is an iterable of batches of model inputs (a tensor, a tuple of positional
    arguments, or a dict of keyword arguments each); static mode runs the first
    ``spec.calibration_batches`` through the model. ``example_inputs`` (default: the first
    calibration batch) is what the model is traced with. ``timing_repeats`` times the float
    time share on the submodule path (0: not timed). The model given is not modified.
    """
    batches = list(calibration)
    if example_inputs is None:
        if not batches:
            raise DataError(
                "quantize needs example_inputs or calibration batches to trace the model; fix: pass "
                "example_inputs=(x,) (one batch of the model's inputs) or calibration=[...]"
            )
        example_inputs = batches[0]
    prepared = prepare_model(model, spec, example_inputs, qat_checkpoint=qat_checkpoint)
    if prepared.needs_calibration:
        seen = prepared.calibrate(batches)
        logger.info("calibrated on %d batches", seen)
        for message in prepared.degenerate_ranges():
            logger.warning("degenerate calibration: %s", message)
    return prepared.reference().lower(timing_repeats=timing_repeats)
