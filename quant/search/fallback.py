"""Accuracy-aware fallback: keep the fewest, most harmful layers float until the gate passes.

Uses the qconfig mapping's own mechanism — ``set_module_name(name, None)`` — and a search over the
sensitivity ranking that needs far fewer full evaluations than reverting one layer at a
time: check the largest allowed set, bisect for the shortest passing prefix of the
ranking, then try dropping each chosen layer (least sensitive first) while the budget lasts.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from quantstage.quant.data.sources import Dataset
from quantstage.quant.engines.registry import QuantSpec
from quantstage.quant.measure.evaluate import EvaluationSpec, evaluate
from quantstage.quant.measure.gates import GatesConfig, check_gates
from quantstage.quant.quantize import quantize

__all__ = [
    "FallbackConfig",
    "FallbackResult",
    "Trial",
    "convert_and_check",
    "search_fallback",
    "spec_with_float_layers",
]

logger = logging.getLogger(__name__)


class FallbackConfig(BaseModel):
    """When and how far the fallback search may go."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=False, description="Search for layers to keep float when the accuracy gate fails.")
    max_float_layers: int = Field(default=4, ge=1, description="Most layers the search may keep float.")
    max_evaluations: int = Field(default=8, ge=1, description="Most full convert+evaluate trials the search may run.")


@dataclasses.dataclass(frozen=True)
class Trial:
    """One evaluated candidate: the layers kept float and what it measured."""

    float_layers: tuple[str, ...]
    passed: bool
    metrics: dict[str, float]

    @property
    def accuracy_drop(self) -> float:
        return self.metrics.get("accuracy_drop", float("inf"))


@dataclasses.dataclass(frozen=True)
class FallbackResult:
    """The chosen trial (None when nothing within the limits passed) and every trial run."""

    chosen: Trial | None
    trials: tuple[Trial, ...]

    @property
    def evaluations(self) -> int:
        return len(self.trials)

    @property
    def best(self) -> Trial | None:
        """The chosen trial, else the one with the smallest accuracy drop."""
        if self.chosen is not None:
            return self.chosen
        return min(self.trials, key=lambda t: t.accuracy_drop, default=None)


class _Budget(Exception):
    pass


def search_fallback(
    ranking: Sequence[str],
    evaluate: Callable[[tuple[str, ...]], Trial],
    config: FallbackConfig,
) -> FallbackResult:
    """Find a small set of layers (from ``ranking``, most sensitive first) to keep float.

    ``evaluate(float_layers)`` converts with those layers skipped and returns a Trial
    whose ``passed`` says whether every accuracy gate held. The full-int8 trial is assumed
    to have failed already (that is why the search runs).
    """
    trials: list[Trial] = []
    cache: dict[tuple[str, ...], Trial] = {}

    def run(layers: tuple[str, ...]) -> Trial:
        key = tuple(sorted(layers))
        if key in cache:
            return cache[key]
        if len(trials) >= config.max_evaluations:
            raise _Budget
        trial = evaluate(layers)
        logger.info(
            "fallback trial %d: float %s -> %s", len(trials) + 1, list(layers), "pass" if trial.passed else "fail"
        )
        trials.append(trial)
        cache[key] = trial
        return trial

    limit = min(config.max_float_layers, len(ranking))
    chosen: Trial | None = None
    try:
        if limit == 0 or not run(tuple(ranking[:limit])).passed:
            return FallbackResult(None, tuple(trials))
        lo, hi = 0, limit  # prefix of length lo fails (full int8), length hi passes
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if run(tuple(ranking[:mid])).passed:
                hi = mid
            else:
                lo = mid
        chosen = run(tuple(ranking[:hi]))
        # prune: the prefix may carry layers that are not needed (least sensitive first)
        for layer in reversed(chosen.float_layers):
            if len(chosen.float_layers) == 1:
                break
            candidate = tuple(name for name in chosen.float_layers if name != layer)
            trial = run(candidate)
            if trial.passed:
                chosen = trial
    except _Budget:
        logger.info("fallback search stopped at its budget of %d evaluations", config.max_evaluations)
        passing = [t for t in trials if t.passed]
        chosen = min(passing, key=lambda t: (len(t.float_layers), t.accuracy_drop)) if passing else None
    return FallbackResult(chosen, tuple(trials))


def spec_with_float_layers(spec: QuantSpec, float_layers: Sequence[str]) -> QuantSpec:
    """``spec`` with ``float_layers`` added to its skipped modules (set_module_name(name, None))."""
    extra = tuple(name for name in float_layers if name not in spec.skip_modules)
    return spec.model_copy(update={"skip_modules": (*spec.skip_modules, *extra)})


def convert_and_check(
    model: torch.nn.Module,
    dataset: Dataset,
    spec: QuantSpec,
    gates: GatesConfig,
    float_layers: Sequence[str] = (),
    evaluation: EvaluationSpec | None = None,
) -> tuple[Trial, torch.nn.Module]:
    """Convert ``model`` with ``float_layers`` kept float, evaluate it and check the accuracy gates."""
    trial_spec = spec_with_float_layers(spec, float_layers)
    quantized = quantize(
        model, trial_spec, [inputs for inputs, _ in dataset.calibration], example_inputs=dataset.example_inputs
    ).model
    accuracy = evaluate(
        model, quantized, dataset.evaluation, evaluation, input_names=dataset.input_names, output_key=dataset.output_key
    )
    results = check_gates(gates.accuracy_only(), accuracy)
    trial = Trial(tuple(float_layers), all(r.passed for r in results), accuracy.as_metrics())
    return trial, quantized
