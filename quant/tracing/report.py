"""What the submodule path reports: Linear/Conv parameters quantized, modules left float and why,
and the share of forward time spent outside the quantized parts (measured in float)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from quantstage.quant.data.inputs import call
from quantstage.quant.measure.coverage import CoverageEntry, CoverageReport
from quantstage.quant.tracing.plan import LINEAR_CONV, MAX_LISTED, FloatModule, TracingPlan
from quantstage.quant.tracing.reroot import covers

__all__ = ["SubmoduleCoverage", "SubmoduleRow", "float_time_share", "float_times", "submodule_coverage"]

_LINEAR_CONV_OPS = ("F.linear", "F.conv", "quantized.linear", "quantized.conv")


def _linear_conv_params(module: nn.Module) -> dict[str, int]:
    """Module path (relative to ``module``) -> parameter elements of each Linear/Conv in it."""
    seen: set[int] = set()
    counts = {}
    for name, sub in module.named_modules():
        if isinstance(sub, LINEAR_CONV):
            params = [p for p in sub.parameters(recurse=False) if id(p) not in seen]
            seen.update(id(p) for p in params)
            counts[name] = sum(p.numel() for p in params)
    return counts


def float_times(
    model: nn.Module, paths: Sequence[str], batches: Sequence[Any], repeats: int
) -> tuple[dict[str, float], float]:
    """(milliseconds per forward inside each module at ``paths``, milliseconds per forward):
    the fastest of ``repeats`` runs of ``batches`` after two warm-up runs (the least disturbed by
    other load, as ``timeit`` takes it); ``model`` runs in eval mode (its modes are restored after)."""
    modules = dict(model.named_modules())
    training = {name: m.training for name, m in modules.items()}
    inside: dict[str, float] = dict.fromkeys(paths, 0.0)
    starts: list[float] = []

    def leave(path: str) -> Any:
        def stop(*_: Any) -> None:
            inside[path] += time.perf_counter() - starts.pop()

        return stop

    handles = [modules[p].register_forward_pre_hook(lambda *_: starts.append(time.perf_counter())) for p in paths]
    handles += [modules[p].register_forward_hook(leave(p)) for p in paths]
    runs: list[tuple[dict[str, float], float]] = []
    try:
        model.eval()
        with torch.no_grad():
            for _ in range(max(1, repeats) + 2):  # two runs warm up
                inside.update(dict.fromkeys(paths, 0.0))
                start = time.perf_counter()
                for batch in batches:
                    call(model, batch)
                runs.append((dict(inside), time.perf_counter() - start))
    finally:
        for handle in handles:
            handle.remove()
        for name, mode in training.items():
            modules[name].training = mode
    scale = 1000.0 / max(1, len(batches))
    per_path = {p: scale * min(r[0][p] for r in runs[2:]) for p in paths}
    return per_path, scale * min(r[1] for r in runs[2:])


def _share_outside(inside_ms: Iterable[float], total_ms: float) -> float:
    return min(1.0, max(0.0, 1.0 - sum(inside_ms) / total_ms)) if total_ms > 0 else 1.0


def float_time_share(model: nn.Module, paths: Sequence[str], batches: Sequence[Any], repeats: int = 10) -> float:
    """1 - (time inside the modules at ``paths`` / total forward time), timed in float.

    Forward hooks time every call of each module at ``paths`` (disjoint subtrees) while
    ``model`` runs ``batches`` (model inputs) ``repeats`` times after two warm-up runs (the
    fastest run counts). ``model`` is not modified.
    """
    if "" in paths:
        return 0.0
    inside, total = float_times(model, paths, batches, repeats)
    return _share_outside(inside.values(), total)


@dataclasses.dataclass(frozen=True)
class SubmoduleRow:
    """One module of the plan: quantized whole, or left float (with the Linear/Conv parameters
    attributed to it: those in it and not under a deeper row)."""

    path: str
    module_type: str
    status: Literal["quantized", "float"]
    reason: str
    linear_conv_params: int
    quantized_params: int
    float_ms: float | None


@dataclasses.dataclass(frozen=True)
class SubmoduleCoverage:
    """Linear/Conv parameters quantized, modules left float, and the float-time share."""

    rows: tuple[SubmoduleRow, ...]
    float_time_share: float | None
    weight_only: tuple[str, ...] = ()  # embeddings outside the traced submodules, int8 weight-only (dynamic)

    @property
    def linear_conv_params(self) -> int:
        return sum(r.linear_conv_params for r in self.rows)

    @property
    def quantized_params(self) -> int:
        return sum(r.quantized_params for r in self.rows)

    @property
    def quantized_fraction(self) -> float:
        """Fraction of the float model's Linear and Conv parameters that run quantized."""
        total = self.linear_conv_params
        return self.quantized_params / total if total else 0.0

    @property
    def left_float(self) -> list[SubmoduleRow]:
        return [r for r in self.rows if r.status == "float"]

    @property
    def quantized_count(self) -> int:
        """Submodules that run quantized (the ``quantized_any`` gate reads this)."""
        return sum(1 for r in self.rows if r.status == "quantized")

    @property
    def quantizes_nothing(self) -> bool:
        return self.quantized_params == 0

    def as_table(self) -> dict[str, list[Any]]:
        """Columns path, module_type, status, reason, linear_conv_params, quantized_params, float_ms."""
        fields = [f.name for f in dataclasses.fields(SubmoduleRow)]
        return {f: [getattr(r, f) for r in self.rows] for f in fields}

    def markdown(self) -> list[str]:
        """The report's coverage section: summary and one table row per module of the plan."""
        lines = [
            "## Quantized coverage (by submodules: the model does not trace as a whole)",
            "",
            self.summary(),
            "",
            "| module | type | status | why | Linear/Conv params | quantized |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.path or '<root>'} | {r.module_type} | {r.status} | {r.reason} | {r.linear_conv_params} | "
            f"{r.quantized_params} |"
            for r in self.rows
        ]
        return lines

    def summary(self) -> str:
        """A few lines for a Markdown report."""
        quantized = [r for r in self.rows if r.status == "quantized"]
        lines = [
            f"- submodule quantization: {len(quantized)} submodules quantized, {len(self.left_float)} left float; "
            f"{100.0 * self.quantized_fraction:.1f}% of Linear/Conv parameters quantized "
            f"({self.quantized_params:,}/{self.linear_conv_params:,})"
        ]
        if self.float_time_share is not None:
            lines.append(
                f"- time outside the quantized submodules (measured in float): {100.0 * self.float_time_share:.1f}% "
                f"of forward time"
            )
        if self.weight_only:
            lines.append(
                f"- embeddings outside them quantized weight-only: {', '.join(f'`{p}`' for p in self.weight_only)}"
            )
        for row in self.left_float[:MAX_LISTED]:
            lines.append(f"- left float: `{row.path or '<root>'}` ({row.module_type}): {row.reason}")
        if len(self.left_float) > MAX_LISTED:
            lines.append(f"- and {len(self.left_float) - MAX_LISTED} more left float")
        return "\n".join(lines)


def _is_linear_conv_entry(entry: CoverageEntry, float_module: nn.Module) -> bool:
    try:
        target = float_module.get_submodule(entry.name) if entry.name else float_module
    except AttributeError:
        target = None
    if isinstance(target, nn.Module):
        return isinstance(target, LINEAR_CONV)
    return entry.op.startswith(_LINEAR_CONV_OPS)


def submodule_coverage(
    model: nn.Module,
    plan: TracingPlan,
    coverage: dict[str, CoverageReport],
    times: dict[str, float],
    total_ms: float | None,
    weight_only: tuple[str, ...] = (),
    kept_float: Sequence[FloatModule] = (),
) -> SubmoduleCoverage:
    """The report of ``model`` (the float model) quantized by ``plan``: ``coverage`` holds each
    quantized submodule's engine coverage report, ``times``/``total_ms`` the float timings;
    ``kept_float`` are other modules left float (embeddings with no weight-only form), a row each."""
    modules = dict(model.named_modules())
    rows_at = list(plan.quantized) + [f.path for f in plan.left_float]
    attributed: dict[str, int] = dict.fromkeys(rows_at, 0)
    for name, count in _linear_conv_params(model).items():
        owner = max((p for p in rows_at if covers(p, name)), key=len, default=None)
        if owner is not None:
            attributed[owner] += count
    rows = []
    for path in plan.quantized:
        entries = [e for e in coverage[path].entries if _is_linear_conv_entry(e, modules[path])]
        done = [e for e in entries if e.quantized]
        forms = sorted({e.reason for e in (done or entries)})
        reason = (
            f"{', '.join(forms) or 'no Linear/Conv layer'} ({len(done)}/{len(entries)} Linear/Conv layers quantized)"
        )
        status: Literal["quantized", "float"] = "quantized" if done else "float"
        rows.append(
            SubmoduleRow(
                path,
                type(modules[path]).__name__,
                status,
                reason,
                attributed[path],
                sum(e.params for e in done),
                times.get(path),
            )
        )
    for f in plan.left_float:
        rows.append(SubmoduleRow(f.path, f.module_type, "float", f.reason, attributed[f.path], 0, None))
    for f in kept_float:
        rows.append(SubmoduleRow(f.path, f.module_type, "float", f.reason, 0, 0, None))
    order = {path: i for i, path in enumerate(modules)}
    rows.sort(key=lambda r: order.get(r.path, len(order)))
    share = 0.0 if "" in plan.quantized else None  # the whole model traced: nothing runs outside
    if total_ms is not None:
        share = _share_outside((r.float_ms or 0.0 for r in rows if r.status == "quantized"), total_ms)
    return SubmoduleCoverage(tuple(rows), share, weight_only)
