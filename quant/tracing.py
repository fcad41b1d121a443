"""Models that do not trace as a whole: quantize their largest traceable submodules.

A Hugging Face style encoder's root ``forward`` (and often each attention block) cannot be
symbolically traced (``'Proxy' object does not support item assignment``, data-dependent
``if``/loops), while the Linear-bearing parts inside trace fine. Here:

* ``plan_submodules`` walks the module tree top-down. A module whose ``prepare`` succeeds is
  taken whole; one that fails is left float with its first error (one line) and its children
  are tried. Only modules holding Linear/Conv parameters that ``forward`` really calls (seen
  by hooks on one run of the example args) are tried; a module the spec skips (skip_modules,
  a ``module_name`` override set to null on it or a parent, non_traceable_module_names) is
  left float untried.
* ``quantize_submodules`` quantizes a copy of the model by that plan: each planned
  submodule is prepared with the inputs it really receives in the whole model (args and
  kwargs captured by forward pre-hooks), the prepared GraphModules are swapped into the
  copy, calibration batches run through the *whole* copy (static mode: every submodule is
  calibrated on what it really sees), then each is reference-converted, lowered and swapped
  in. The model given is not modified. Module-name keys of the spec (overrides, regexes,
  skips) keep meaning full paths: ``spec_for_submodule`` re-roots them onto each submodule.
* ``quantize_auto`` picks the path: ``whole`` prepares the whole model (a TracingError is
  raised as is); ``submodules`` always takes the submodule path; ``auto`` tries the whole
  model and falls back to the submodule path on a TracingError, logging why. Its result
  says which path was used (``AutoQuantization.tracing``).

``SubmoduleCoverage`` reports the fraction of Linear/Conv parameters quantized, the modules
left float with their first error, and the share of forward time (measured in float) that
runs outside the quantized submodules. Modes: static, dynamic and float16 (qat needs a
whole-model QAT checkpoint).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.fx import GraphModule

from quant import _fx
from quant.convert import ReferenceModel, convert_with_spec
from quant.coverage import CoverageReport, coverage_report
from quant.errors import DataError, SpecError, TracingError
from quant.prepare import degenerate_ranges, prepare
from quant.qconfig import QConfigMappingSpec, QConfigOverride
from quant.spec import QuantSpec

__all__ = [
    "AutoQuantization",
    "FloatModule",
    "SubmoduleCoverage",
    "SubmoduleQuantization",
    "SubmoduleRow",
    "TracingMode",
    "TracingPlan",
    "float_time_share",
    "plan_submodules",
    "quantize_auto",
    "quantize_submodules",
    "spec_for_submodule",
]

logger = logging.getLogger(__name__)

TracingMode = Literal["auto", "whole", "submodules"]
TRACING_MODES = ("auto", "whole", "submodules")

LINEAR_CONV = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)
_MODES = ("static", "dynamic", "float16")
_LINEAR_CONV_OPS = ("F.linear", "F.conv", "quantized.linear", "quantized.conv")
_MAX_LISTED = 5

Inputs = tuple[tuple[Any, ...], dict[str, Any]]


# --------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class FloatModule:
    """A module tried (or skipped by the spec) and left float: ``reason`` is its first error, one line."""

    path: str
    module_type: str
    reason: str


@dataclasses.dataclass(frozen=True)
class TracingPlan:
    """Which submodules are quantized whole (``quantized``, full paths) and which were left float."""

    quantized: tuple[str, ...]
    left_float: tuple[FloatModule, ...]

    def first_error(self, path: str) -> str | None:
        """The first error recorded for ``path`` (None when it was not left float)."""
        return next((f.reason for f in self.left_float if f.path == path), None)

    def summary(self) -> str:
        shown = "; ".join(f"{_show(f.path)}: {f.reason}" for f in self.left_float[:_MAX_LISTED])
        more = f"; and {len(self.left_float) - _MAX_LISTED} more" if len(self.left_float) > _MAX_LISTED else ""
        return f"{len(self.quantized)} submodules traced, {len(self.left_float)} left float" + (
            f" ({shown}{more})" if shown else ""
        )


def _show(path: str) -> str:
    return repr(path) if path else "<root>"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _covers(key: str, path: str) -> bool:
    """``path`` is ``key`` or lies under it (``""`` is the root, above everything)."""
    return not key or path == key or path.startswith(key + ".")


def _first_line(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, TracingError) and exc.__cause__ is not None else exc
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[0]}" if text else type(cause).__name__


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


def _has_linear_conv(module: nn.Module) -> bool:
    return any(isinstance(m, LINEAR_CONV) for m in module.modules())


# --------------------------------------------------------------------------- re-rooting the spec


def _qconfig_over(mapping: QConfigMappingSpec, path: str) -> tuple[bool, str | None]:
    """(found, qconfig) of the deepest module_name override on ``path`` or a parent of it."""
    keys: dict[str, str | None] = {}
    for o in mapping.overrides:
        if o.set == "module_name":
            keys[o.key] = o.qconfig
    covering = [k for k in keys if k and _covers(k, path)]
    if not covering:
        return False, None
    return True, keys[max(covering, key=len)]


def _reroot_mapping(mapping: QConfigMappingSpec, path: str, names: Sequence[str]) -> QConfigMappingSpec:
    """``mapping`` (keys on full paths) as it applies to the submodule at ``path``.

    ``module_name`` / ``module_name_object_type_order`` keys inside it lose the prefix and keys
    outside it are dropped; a ``module_name_regex`` becomes one exact regex per submodule name it
    matches (in order, so torch's first-match rule still holds). A ``module_name`` override on
    ``path`` or a parent beats regexes, object types and global inside it: it becomes the
    global qconfig of an otherwise empty mapping.
    """
    found, covering = _qconfig_over(mapping, path)
    overrides: list[QConfigOverride] = []
    matched: set[str] = set()
    for o in mapping.overrides:
        if o.set in ("global", "object_type"):
            if not found:
                overrides.append(o)
        elif o.set == "module_name_regex":
            if found:
                continue
            for name in names:
                if name not in matched and re.match(o.key, _join(path, name) if name else path):
                    matched.add(name)
                    overrides.append(o.model_copy(update={"key": re.escape(name) + r"\Z"}))
        elif o.key and _covers(path, o.key) and o.key != path:  # strictly inside the submodule
            overrides.append(o.model_copy(update={"key": o.key[len(path) + 1 :]}))
        elif o.set == "module_name_object_type_order" and o.key == path:
            overrides.append(o.model_copy(update={"key": ""}))
    if found:
        start = QConfigOverride(set="global", qconfig=covering)
        return QConfigMappingSpec(preset="none", overrides=(start, *overrides))
    return mapping.model_copy(update={"overrides": tuple(overrides)})


def _reroot_names(names: Sequence[str], path: str) -> tuple[str, ...]:
    return tuple(n[len(path) + 1 :] for n in names if n.startswith(path + "."))


def _skip_overrides(spec: QuantSpec) -> list[QConfigOverride]:
    """skip_object_types / skip_modules as null overrides, as QuantSpec appends them to both mappings."""
    skips = [QConfigOverride(set="object_type", key=p, qconfig=None) for p in spec.skip_object_types]
    return skips + [QConfigOverride(set="module_name", key=n, qconfig=None) for n in spec.skip_modules]


def spec_for_submodule(spec: QuantSpec, path: str, submodule: nn.Module) -> QuantSpec:
    """``spec`` re-rooted onto the submodule at ``path``: its module-name keys stay full paths.

    ``skip_modules``, non-traceable and standalone module names and the module-name keys of
    both qconfig mappings lose the ``path.`` prefix, keys outside the submodule are dropped;
    root attributes to preserve belong to the whole model and are dropped too.
    """
    if not path:
        return spec
    names = [name for name, _ in submodule.named_modules()]
    prepare_mapping = _reroot_mapping(spec.mapping_spec(), path, names)
    convert_mapping = None
    if spec.convert_qconfig_mapping is not None:
        base = spec.convert_qconfig_mapping
        full = base.model_copy(update={"overrides": (*base.overrides, *_skip_overrides(spec))})
        convert_mapping = _reroot_mapping(full, path, names)
    p = spec.prepare_custom
    return spec.model_copy(
        update={
            "qconfig_mapping": prepare_mapping,  # the skips are in it already
            "convert_qconfig_mapping": convert_mapping,
            "skip_object_types": (),
            "skip_modules": _reroot_names(spec.skip_modules, path),
            "prepare_custom": p.model_copy(
                update={
                    "non_traceable_module_names": _reroot_names(p.non_traceable_module_names, path),
                    "standalone_module_names": _reroot_names(p.standalone_module_names, path),
                    "preserved_attributes": (),
                }
            ),
            "convert_custom": spec.convert_custom.model_copy(update={"preserved_attributes": ()}),
        }
    )


def _kept_float_by_spec(spec: QuantSpec, path: str) -> str | None:
    """Why the spec keeps the whole module at ``path`` float, or None."""
    if not path:
        return None
    for name in spec.prepare_custom.non_traceable_module_names:
        if _covers(name, path):
            return f"kept float by spec: prepare_custom.non_traceable_module_names has {name!r}"
    mappings = [("qconfig_mapping", spec.mapping_spec())]
    if spec.convert_qconfig_mapping is not None:
        mappings.append(("convert_qconfig_mapping", spec.convert_qconfig_mapping))
    for where, mapping in mappings:
        found, qconfig = _qconfig_over(mapping, path)
        if found and qconfig is None:
            return f"kept float by spec: {where} (or skip_modules) sets module_name on it or a parent to null"
    return None


# --------------------------------------------------------------------------- running the model


def _call(model: nn.Module, batch: Any) -> Any:
    """Run ``model`` on a batch: a tuple/list of positional args, or a mapping of keyword args."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    raise DataError(
        f"a batch for {type(model).__name__} is a {type(batch).__name__}; allowed: a tuple of positional "
        f"args (or a dict of keyword args); fix: wrap a single tensor as (x,)"
    )


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def _capture_inputs(model: nn.Module, example_args: tuple[Any, ...]) -> dict[str, Inputs]:
    """The (args, kwargs) each module receives at its first call in one forward of ``model``."""
    captured: dict[str, Inputs] = {}

    def hook(path: str) -> Any:
        def record(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured.setdefault(path, (_detached(args), _detached(kwargs)))

        return record

    handles = [m.register_forward_pre_hook(hook(path), with_kwargs=True) for path, m in model.named_modules()]
    try:
        with torch.no_grad():
            _call(model, example_args)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _positional(module: nn.Module, inputs: Inputs) -> tuple[Any, ...]:
    """Captured (args, kwargs) as the positional example inputs of ``module.forward``."""
    args, kwargs = inputs
    if not kwargs:
        return args
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return args
    bound.apply_defaults()
    return tuple(bound.arguments.values())


def _swap(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``path`` in ``model``; return the (possibly new) root."""
    if not path:
        return new
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, name, new)
    return model


def _float_times(
    model: nn.Module, paths: Sequence[str], batches: Sequence[Any], repeats: int
) -> tuple[dict[str, float], float]:
    """(milliseconds per forward inside each module at ``paths``, milliseconds per forward):
    the fastest of ``repeats`` runs of ``batches`` after two warm-up runs (the least disturbed by
    other load, as ``timeit`` takes it); ``model`` runs as is."""
    modules = dict(model.named_modules())
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
        with torch.no_grad():
            for _ in range(max(1, repeats) + 2):  # two runs warm up
                inside.update(dict.fromkeys(paths, 0.0))
                start = time.perf_counter()
                for batch in batches:
                    _call(model, batch)
                runs.append((dict(inside), time.perf_counter() - start))
    finally:
        for handle in handles:
            handle.remove()
    scale = 1000.0 / max(1, len(batches))
    per_path = {p: scale * min(r[0][p] for r in runs[2:]) for p in paths}
    return per_path, scale * min(r[1] for r in runs[2:])


def _share_outside(inside_ms: Iterable[float], total_ms: float) -> float:
    return min(1.0, max(0.0, 1.0 - sum(inside_ms) / total_ms)) if total_ms > 0 else 1.0


def float_time_share(model: nn.Module, paths: Sequence[str], batches: Sequence[Any], repeats: int = 10) -> float:
    """1 - (time inside the modules at ``paths`` / total forward time), timed in float.

    Forward hooks time every call of each module at ``paths`` (disjoint subtrees) while a
    copy of ``model`` runs ``batches`` (tuples of positional args) ``repeats`` times after two
    warm-up runs (the fastest run counts). ``model`` is not modified.
    """
    if "" in paths:
        return 0.0
    inside, total = _float_times(copy.deepcopy(model).eval(), paths, batches, repeats)
    return _share_outside(inside.values(), total)


# --------------------------------------------------------------------------- planning


def _plan(
    model: nn.Module, inputs: dict[str, Inputs], spec: QuantSpec
) -> tuple[TracingPlan, dict[str, GraphModule], dict[str, QuantSpec]]:
    """Plan on ``model`` (a working copy); also return the prepared modules and their specs."""
    quantized: list[str] = []
    left_float: list[FloatModule] = []
    prepared: dict[str, GraphModule] = {}
    specs: dict[str, QuantSpec] = {}

    def visit(path: str, module: nn.Module) -> None:
        if not _has_linear_conv(module):  # nothing to quantize
            return
        if path not in inputs:  # never called: a container (ModuleList, ModuleDict) or unused
            for name, child in module.named_children():
                visit(_join(path, name), child)
            return
        kept = _kept_float_by_spec(spec, path)
        if kept is not None:
            left_float.append(FloatModule(path, type(module).__name__, kept))
            return
        sub_spec = spec_for_submodule(spec, path, module)
        try:
            prepared[path] = prepare(module, _positional(module, inputs[path]), sub_spec)
        except SpecError:
            raise
        except Exception as exc:  # TracingError, or prepare_fx failing in another way: try the children
            logger.debug("%s does not prepare whole: %s", _show(path), exc)
            left_float.append(FloatModule(path, type(module).__name__, _first_line(exc)))
            for name, child in module.named_children():
                visit(_join(path, name), child)
            return
        quantized.append(path)
        specs[path] = sub_spec

    visit("", model)
    return TracingPlan(tuple(quantized), tuple(left_float)), prepared, specs


def _working_copy(model: nn.Module, example_args: tuple[Any, ...]) -> tuple[nn.Module, dict[str, Inputs]]:
    work = copy.deepcopy(model).eval()
    return work, _capture_inputs(work, example_args)


def plan_submodules(model: nn.Module, example_args: tuple[Any, ...], spec: QuantSpec) -> TracingPlan:
    """Which of ``model``'s largest submodules ``prepare`` traces, and which are left float, and why.

    ``example_args`` are the positional args of one forward of ``model``; ``model`` is not modified.
    """
    work, inputs = _working_copy(model, example_args)
    return _plan(work, inputs, spec)[0]


def _check_plan(model: nn.Module, plan: TracingPlan) -> None:
    if plan.quantized:
        return
    errors = "; ".join(f"{_show(f.path)}: {f.reason}" for f in plan.left_float[:_MAX_LISTED]) or (
        "no module holding Linear/Conv parameters is called by forward"
    )
    raise TracingError(
        f"no submodule of {type(model).__name__} could be quantized: none that holds Linear/Conv parameters "
        f"and is called by forward traces ({errors}); fix: keep the untraceable parts out of tracing with "
        f"prepare_custom.non_traceable_module_names, or simplify their forward (no item assignment or "
        f"data-dependent control flow on tensors)"
    )


# --------------------------------------------------------------------------- quantizing


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

    def as_table(self) -> dict[str, list]:
        """Columns path, module_type, status, reason, linear_conv_params, quantized_params, float_ms."""
        fields = [f.name for f in dataclasses.fields(SubmoduleRow)]
        return {f: [getattr(r, f) for r in self.rows] for f in fields}

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
            lines.append(f"- embeddings outside them quantized weight-only: {', '.join(f'`{p}`' for p in self.weight_only)}")
        for row in self.left_float[:_MAX_LISTED]:
            lines.append(f"- left float: `{row.path or '<root>'}` ({row.module_type}): {row.reason}")
        if len(self.left_float) > _MAX_LISTED:
            lines.append(f"- and {len(self.left_float) - _MAX_LISTED} more left float")
        return "\n".join(lines)


@dataclasses.dataclass
class SubmoduleQuantization:
    """A model quantized submodule by submodule: eager glue around lowered GraphModules.

    ``references``, ``lowered`` and ``coverage`` (each submodule's coverage report, layer
    names relative to it) are keyed by full path.
    """

    model: nn.Module
    plan: TracingPlan
    references: dict[str, ReferenceModel]
    lowered: dict[str, GraphModule]
    coverage: dict[str, CoverageReport]
    report: SubmoduleCoverage


def _is_linear_conv_entry(entry: Any, float_module: nn.Module) -> bool:
    try:
        target = float_module.get_submodule(entry.name) if entry.name else float_module
    except AttributeError:
        target = None
    if isinstance(target, nn.Module):
        return isinstance(target, LINEAR_CONV)
    return entry.op.startswith(_LINEAR_CONV_OPS)


def _report(
    model: nn.Module,
    plan: TracingPlan,
    coverage: dict[str, CoverageReport],
    times: dict[str, float],
    total_ms: float | None,
) -> SubmoduleCoverage:
    modules = dict(model.named_modules())
    rows_at = list(plan.quantized) + [f.path for f in plan.left_float]
    attributed: dict[str, int] = dict.fromkeys(rows_at, 0)
    for name, count in _linear_conv_params(model).items():
        owner = max((p for p in rows_at if _covers(p, name)), key=len, default=None)
        if owner is not None:
            attributed[owner] += count
    rows = []
    for path in plan.quantized:
        entries = [e for e in coverage[path].entries if _is_linear_conv_entry(e, modules[path])]
        done = [e for e in entries if e.quantized]
        forms = sorted({e.reason for e in (done or entries)})
        reason = f"{', '.join(forms) or 'no Linear/Conv layer'} ({len(done)}/{len(entries)} Linear/Conv layers quantized)"
        status: Literal["quantized", "float"] = "quantized" if done else "float"
        rows.append(
            SubmoduleRow(path, type(modules[path]).__name__, status, reason, attributed[path],
                         sum(e.params for e in done), times.get(path))
        )
    for f in plan.left_float:
        rows.append(SubmoduleRow(f.path, f.module_type, "float", f.reason, attributed[f.path], 0, None))
    order = {path: i for i, path in enumerate(modules)}
    rows.sort(key=lambda r: order.get(r.path, len(order)))
    share = 0.0 if "" in plan.quantized else None  # the whole model traced: nothing runs outside
    if total_ms is not None:
        share = _share_outside((r.float_ms or 0.0 for r in rows if r.status == "quantized"), total_ms)
    return SubmoduleCoverage(tuple(rows), share)


def _check_mode(spec: QuantSpec) -> None:
    if spec.mode not in _MODES:
        raise SpecError(
            f"mode {spec.mode!r} is not supported here; allowed: {', '.join(_MODES)}; fix: a QAT model is "
            f"converted from its whole-model checkpoint (quant.qat.load_qat_checkpoint), or use mode 'static'"
        )


def _calibrate(model: nn.Module, calibration: Iterable[Any], spec: QuantSpec) -> int:
    seen = 0
    with torch.no_grad():
        for batch in calibration:
            if seen >= spec.calibration_batches:
                break
            _call(model, batch)
            seen += 1
    if seen == 0:
        raise DataError(
            "static mode got no calibration batches; allowed: an iterable of positional-argument tuples; "
            "fix: pass calibration data, or use mode 'dynamic'"
        )
    if seen < spec.calibration_batches:
        logger.warning("calibration saw %d batches, fewer than the %d asked for", seen, spec.calibration_batches)
    return seen


def quantize_submodules(
    model: nn.Module,
    spec: QuantSpec,
    example_args: tuple[Any, ...],
    calibration: Iterable[Any] = (),
    *,
    timing_repeats: int = 10,
) -> SubmoduleQuantization:
    """Quantize ``model``'s largest traceable submodules (see the module docstring).

    ``example_args`` are the positional args of one forward; ``calibration`` (static mode)
    an iterable of such tuples (a dict is passed as keyword args), of which the first
    ``spec.calibration_batches`` run through the whole model. ``model`` is not modified.
    The float time share is timed on ``example_args``, fastest of ``timing_repeats`` runs
    (0: not timed). Raises TracingError when no submodule can be quantized.
    """
    _check_mode(spec)
    float_model = copy.deepcopy(model).eval()
    work, inputs = _working_copy(model, example_args)
    plan, prepared, specs = _plan(work, inputs, spec)
    _check_plan(model, plan)
    logger.info("submodule plan: %s", plan.summary())
    for path in plan.quantized:
        work = _swap(work, path, prepared[path])
    if spec.mode == "static":
        seen = _calibrate(work, calibration, spec)
        logger.info("calibrated %d submodules on %d batches of the whole model", len(plan.quantized), seen)
        for path in plan.quantized:
            for message in degenerate_ranges(prepared[path]):
                logger.warning("degenerate calibration in %s: %s", _show(path), message)
    references: dict[str, ReferenceModel] = {}
    lowered: dict[str, GraphModule] = {}
    coverage: dict[str, CoverageReport] = {}
    for path in plan.quantized:
        references[path], lowered[path] = convert_with_spec(prepared[path], specs[path])
        coverage[path] = coverage_report(float_model.get_submodule(path), references[path], lowered[path])
        work = _swap(work, path, lowered[path])
    embeddings = _embeddings_outside(float_model, plan, spec)
    for path in embeddings:
        work = _swap(work, path, _fx.embedding_weight_only(float_model.get_submodule(path)))
    times: dict[str, float] = {}
    total_ms = None
    if timing_repeats > 0 and "" not in plan.quantized:
        times, total_ms = _float_times(float_model, plan.quantized, [example_args], timing_repeats)
    report = dataclasses.replace(_report(float_model, plan, coverage, times, total_ms), weight_only=embeddings)
    logger.info("submodule quantization: %s", report.summary().replace("\n", " "))
    return SubmoduleQuantization(work.eval(), plan, references, lowered, coverage, report)


def _embeddings_outside(model: nn.Module, plan: TracingPlan, spec: QuantSpec) -> tuple[str, ...]:
    """Dynamic mode quantizes embeddings weight-only (as the whole-model path does): those
    outside every quantized submodule, unless the spec keeps them (or their type) float."""
    if spec.mode != "dynamic":
        return ()
    from quant.spec import resolve_dotted

    skipped_types = tuple(t for t in (resolve_dotted(n) for n in spec.skip_object_types) if isinstance(t, type))
    out = []
    for path, module in model.named_modules():
        if not isinstance(module, (nn.Embedding, nn.EmbeddingBag)) or (skipped_types and isinstance(module, skipped_types)):
            continue
        if any(_covers(q, path) for q in plan.quantized) or _kept_float_by_spec(spec, path):
            continue
        out.append(path)
    return tuple(out)


# --------------------------------------------------------------------------- choosing the path


@dataclasses.dataclass
class AutoQuantization:
    """The quantized model and the path that made it.

    ``tracing`` is ``"whole"`` (``reference`` set, ``model`` is the lowered GraphModule) or
    ``"submodules"`` (``submodules`` set); ``fallback_reason`` is the whole-model TracingError
    message when ``auto`` fell back to submodules.
    """

    tracing: Literal["whole", "submodules"]
    model: nn.Module
    reference: ReferenceModel | None = None
    submodules: SubmoduleQuantization | None = None
    fallback_reason: str | None = None


def quantize_auto(
    model: nn.Module,
    spec: QuantSpec,
    example_args: tuple[Any, ...],
    calibration: Iterable[Any] = (),
    tracing: TracingMode = "auto",
) -> AutoQuantization:
    """Quantize ``model`` whole, by submodules, or whole with a fallback to submodules (``auto``)."""
    if tracing not in TRACING_MODES:
        raise SpecError(f"tracing {tracing!r} is unknown; allowed: {', '.join(TRACING_MODES)}")
    _check_mode(spec)
    if tracing == "submodules":
        result = quantize_submodules(model, spec, example_args, calibration)
        return AutoQuantization("submodules", result.model, submodules=result)
    try:
        prepared = prepare(model, example_args, spec)
    except TracingError as exc:
        if tracing == "whole":
            raise
        logger.info("%s does not trace as a whole (%s); quantizing its largest traceable submodules", type(model).__name__, exc)
        result = quantize_submodules(model, spec, example_args, calibration)
        return AutoQuantization("submodules", result.model, submodules=result, fallback_reason=str(exc))
    if spec.mode == "static":
        _calibrate(prepared, calibration, spec)
    reference, lowered = convert_with_spec(prepared, spec)
    return AutoQuantization("whole", lowered, reference=reference)
