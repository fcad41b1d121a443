"""What a sweep is given and what it returns: the candidates (explicit specs and a grid over
spec fields), the ranking settings, and the outcome of every candidate."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from quantstage.flows.params import StageParams
from quantstage.flows.unit import UnitResult
from quantstage.quant.config.spec import first_error
from quantstage.quant.digest import digest
from quantstage.quant.engines import DEFAULT_ENGINE, REGISTRY, CheckedSpec, QuantSpec, default_spec, parse_spec

__all__ = ["FAIRNESS", "SweepParams", "SweepResult", "expand_grid"]

FAIRNESS = "sequential_rebenchmark"


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _label(spec: QuantSpec) -> str:
    """What a spec sets apart from the defaults, e.g. ``backend="qnnpack", mode="dynamic"``."""
    changed = _flatten(spec.model_dump(mode="json", exclude_defaults=True))
    if changed.get("engine") == DEFAULT_ENGINE:  # dumped whatever its default: shown only when not the default
        del changed["engine"]
    text = ", ".join(f"{k}={json.dumps(v)}" for k, v in changed.items()) or "default spec"
    return text if len(text) <= 120 else text[:117] + "..."


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        if tree.get(part) is None:
            tree[part] = {}
        elif not isinstance(tree[part], dict):
            raise ValueError(f"grid field {dotted!r}: {part!r} is a value, not a section of the spec")
        tree = tree[part]
    tree[leaf] = value


def _check_fields(base: QuantSpec, grid: Mapping[str, Sequence[Any]]) -> None:
    """Every grid field is a field of each engine the candidates use (unknown engines: their validation says)."""
    engines = {str(e) for e in grid["engine"]} if "engine" in grid else {base.engine}
    for engine in sorted(e for e in engines if e in REGISTRY):
        fields = REGISTRY[engine].spec.model_fields
        for key in grid:
            if key.split(".")[0] not in fields:
                raise ValueError(
                    f"grid field {key!r} is not a QuantSpec field of engine {engine!r}; use a dotted path from "
                    f"{sorted(fields)}, e.g. 'backend' or 'qconfig_mapping.observers.reduce_range'"
                )


def expand_grid(base: QuantSpec, grid: Mapping[str, Sequence[Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every combination of ``grid`` (dotted spec field → values) applied to ``base``, as
    ``(label, raw spec)`` pairs in product order (the last field varies fastest); unvalidated."""
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"grid field {key!r} needs a non-empty list of values, got {values!r}")
    _check_fields(base, grid)
    keys = list(grid)
    short = [k.rsplit(".", 1)[-1] for k in keys]
    names = [s if short.count(s) == 1 else k for s, k in zip(short, keys)]
    combos = []
    for values in itertools.product(*(grid[k] for k in keys)):
        raw = base.model_dump(mode="json", exclude_defaults=True)  # what another engine's spec can take too
        for key, value in zip(keys, values):
            _set_path(raw, key, value)
        combos.append((", ".join(f"{n}={json.dumps(v)}" for n, v in zip(names, values)), raw))
    return combos


class SweepParams(StageParams):
    """Parameters of one sweep: a source model, the candidates, and what they share."""

    candidates: tuple[QuantSpec, ...] = Field(
        (), description="Candidate specs, evaluated in this order (indices 0..n-1), before the grid's."
    )
    grid: dict[str, tuple[Any, ...]] | None = Field(
        None,
        description="Dotted QuantSpec field -> values; every combination applied to base_spec is a candidate, "
        "e.g. {'backend': ['x86', 'qnnpack'], 'qconfig_mapping.observers.reduce_range': [true, false]}.",
    )
    base_spec: CheckedSpec = Field(default_factory=default_spec, description="The spec the grid varies.")
    policy: Literal["fastest_passing", "pareto"] = Field(
        "fastest_passing",
        description="fastest_passing: lowest re-measured p50 among the passing candidates (ties: smaller accuracy "
        "drop); pareto: smallest accuracy drop among the passing candidates within pareto_tolerance of the fastest.",
    )
    pareto_tolerance: float = Field(0.05, ge=0.0, description="pareto: latency window above the fastest (0.05 = 5%).")
    finalists: int | None = Field(
        3, ge=1, description="Passing candidates (fastest first, parallel numbers) re-benchmarked alone; null: all."
    )
    task_runner: Literal["threads", "dask", "ray"] = Field("threads", description="Where the candidates run.")
    address: str | None = Field(
        None, description="dask/ray: attach to this scheduler (e.g. tcp://10.0.0.5:8786) instead of a local cluster."
    )
    workers: int = Field(2, ge=1, description="threads: pool size; dask without address: LocalCluster processes.")
    sensitivity: bool = Field(False, description="Per-layer sensitivity for every candidate (costs a pass per layer).")
    benchmark_iterations: int = Field(
        100, ge=5, description="Timed calls per model when the finalists are re-benchmarked alone (the ranked numbers)."
    )
    screening_iterations: int = Field(
        20,
        ge=5,
        description="Timed calls per model inside each unit of work, beside the other candidates: a screening "
        "that picks the finalists (no re-measuring: numbers taken under load are noisy anyway).",
    )

    @field_validator("candidates", mode="before")
    @classmethod
    def _each_candidate(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            return value
        specs = []
        for i, raw in enumerate(value):
            try:
                specs.append(parse_spec(raw, check=True))
            except ValidationError as exc:
                raise ValueError(f"candidate {i}: {first_error(exc)}") from None
        return tuple(specs)

    @model_validator(mode="after")
    def _candidates_usable(self) -> SweepParams:
        specs = self.candidate_specs()
        if not specs:
            raise ValueError("no candidates: give candidates (a list of specs) and/or grid (field -> values)")
        seen: dict[str, int] = {}
        for i, (name, spec) in enumerate(specs):
            if spec.mode == "qat":
                raise ValueError(
                    f"candidate {i} ({name}): mode 'qat' converts a QAT-trained checkpoint, which a sweep does not "
                    f"take; use convert_flow with qat_checkpoint, or mode static/dynamic/float16"
                )
            if (first := seen.setdefault(spec.digest(), i)) != i:
                raise ValueError(f"candidates {first} and {i} are the same spec (hash {spec.digest()}); drop one")
        if self.address and self.task_runner == "threads":
            raise ValueError(f"address {self.address!r} applies to task_runner 'dask' or 'ray', not 'threads'")
        return self

    def idempotency_key(self, identity: str) -> str:
        """sha256 of the resolved source, every candidate spec (in order), the data, the evaluation,
        the gates, the fallback and the ranking settings — not the task runner, which does not change the answer."""
        return digest(
            {
                "sweep": True,
                "source": identity,
                "candidates": [spec.digest() for _, spec in self.candidate_specs()],
                "ranking": [self.policy, self.pareto_tolerance, self.finalists],
            }
            | self.eval_key()
        )

    def candidate_specs(self) -> list[tuple[str, QuantSpec]]:
        """``(label, spec)`` of every candidate: the explicit ones, then the grid's; validated,
        an error names the candidate index and the field."""
        out = [(_label(s), s) for s in self.candidates]
        if self.grid:
            for offset, (label, raw) in enumerate(expand_grid(self.base_spec, self.grid)):
                try:
                    out.append((label, parse_spec(raw, check=True)))
                except ValidationError as exc:
                    raise ValueError(
                        f"candidate {len(self.candidates) + offset} (grid {label}): {first_error(exc)}"
                    ) from None
        return out


class SweepResult(BaseModel):
    """What a sweep produced: every candidate's outcome, the ranking, the registered winner."""

    parent_run_id: str
    registered_name: str
    version: str | None = Field(None, description="Registry version of the winner (None: nothing registered).")
    promoted: bool = False
    winner: int | None = Field(None, description="Index of the winning candidate.")
    winner_run_id: str | None = None
    policy: str
    fairness: str = FAIRNESS
    reason: str = ""
    order: list[int] = Field(default_factory=list, description="Eligible candidates, best first.")
    front: list[int] = Field(default_factory=list, description="Pareto front of the re-measured candidates.")
    candidates: list[UnitResult] = Field(default_factory=list)
    sequential: dict[int, dict[str, float]] = Field(default_factory=dict, description="Re-benchmark numbers by index.")
    table: dict[str, list[Any]] = Field(default_factory=dict, description="The comparison table (columns).")
    skipped: bool = Field(False, description="Nothing evaluated: a winner of the same sweep is already registered.")
    idempotency_key: str = ""
