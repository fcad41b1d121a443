"""Which submodules of a model that does not trace as a whole can be quantized on their own.

``plan_parts`` walks the module tree top-down. A module the engine prepares is taken whole;
one that fails is left float with its first error (one line) and its children are tried.
Only modules holding Linear/Conv parameters that ``forward`` really calls (seen by hooks on
one run of the example inputs) are tried; a module the spec skips (skip_modules, a
``module_name`` override set to null on it or a parent, non_traceable_module_names) is left
float untried. Each submodule is prepared with the inputs it really receives in the whole
model (args and kwargs captured by forward pre-hooks) and its spec re-rooted onto it.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
from typing import Any

import torch
from torch import nn

from quantstage.quant.data.inputs import call
from quantstage.quant.engines.base import Engine
from quantstage.quant.engines.registry import QuantSpec
from quantstage.quant.errors import QuantStageError, SpecError, TracingError, raised_by_quantstage
from quantstage.quant.tracing.linear_like import with_linear_equivalents
from quantstage.quant.tracing.reads import copyable_attributes, watch_reads
from quantstage.quant.tracing.reroot import join, kept_float_by_spec, spec_for_submodule

__all__ = [
    "LINEAR_CONV",
    "FloatModule",
    "PlannedParts",
    "TracingPlan",
    "capture",
    "capture_inputs",
    "check_plan",
    "plan_parts",
    "plan_submodules",
    "show",
]

logger = logging.getLogger(__name__)

LINEAR_CONV = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
MAX_LISTED = 5

Captured = tuple[tuple[Any, ...], dict[str, Any]]


def show(path: str) -> str:
    """A module path for messages (``<root>`` for the model itself)."""
    return repr(path) if path else "<root>"


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
        shown = "; ".join(f"{show(f.path)}: {f.reason}" for f in self.left_float[:MAX_LISTED])
        more = f"; and {len(self.left_float) - MAX_LISTED} more" if len(self.left_float) > MAX_LISTED else ""
        return f"{len(self.quantized)} submodules traced, {len(self.left_float)} left float" + (
            f" ({shown}{more})" if shown else ""
        )


@dataclasses.dataclass
class PlannedParts:
    """The plan, and for each planned submodule its prepared module and re-rooted spec (full paths)."""

    plan: TracingPlan
    prepared: dict[str, nn.Module]
    specs: dict[str, QuantSpec]
    attributes: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # read by the glue: kept

    def without(self, path: str, module_type: str, reason: str) -> PlannedParts:
        """A copy of these parts with the part at ``path`` left float for ``reason`` (its children are
        not tried); ``self`` is not modified."""
        plan = TracingPlan(
            tuple(p for p in self.plan.quantized if p != path),
            (*self.plan.left_float, FloatModule(path, module_type, reason)),
        )
        keep = [p for p in self.plan.quantized if p != path]
        return PlannedParts(
            plan,
            {p: self.prepared[p] for p in keep if p in self.prepared},
            {p: self.specs[p] for p in keep if p in self.specs},
            {p: a for p, a in self.attributes.items() if p != path},
        )


def _first_line(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, TracingError) and exc.__cause__ is not None else exc
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[0]}" if text else type(cause).__name__


def _has_linear_conv(module: nn.Module) -> bool:
    return any(isinstance(m, LINEAR_CONV) for m in module.modules())


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def capture_inputs(model: nn.Module, example_inputs: Any) -> dict[str, Captured]:
    """The (args, kwargs) each module receives at its first call in one forward of ``model``."""
    return capture(model, example_inputs)[0]


def capture(model: nn.Module, example_inputs: Any) -> tuple[dict[str, Captured], dict[str, set[str]]]:
    """What each module receives at its first call in one forward of ``model`` ((args, kwargs) by
    path), and which of its attributes the code around it reads (``quant.tracing.reads``)."""
    captured: dict[str, Captured] = {}

    def hook(path: str) -> Any:
        def record(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured.setdefault(path, (_detached(args), _detached(kwargs)))

        return record

    handles = [m.register_forward_pre_hook(hook(path), with_kwargs=True) for path, m in model.named_modules()]
    try:
        with torch.no_grad(), watch_reads(model) as reads:
            call(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return captured, reads


def _positional(module: nn.Module, inputs: Captured) -> tuple[Any, ...]:
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


def plan_parts(engine: Engine, work: nn.Module, example_inputs: Any, spec: QuantSpec) -> PlannedParts:
    """Plan on ``work`` (a working copy, called once with ``example_inputs`` to capture what each
    module receives): prepare the largest submodules that prepare, leave the rest float."""
    inputs, reads = capture(work, example_inputs)
    attributes: dict[str, dict[str, Any]] = {}
    quantized: list[str] = []
    left_float: list[FloatModule] = []
    prepared: dict[str, nn.Module] = {}
    specs: dict[str, QuantSpec] = {}

    def visit(path: str, module: nn.Module) -> None:
        if not _has_linear_conv(module):  # nothing to quantize
            return
        if path not in inputs:  # never called: a container (ModuleList, ModuleDict) or unused
            for name, child in module.named_children():
                visit(join(path, name), child)
            return
        kept = kept_float_by_spec(spec, path)
        if kept is not None:
            left_float.append(FloatModule(path, type(module).__name__, kept))
            return
        plain, tensors = copyable_attributes(module, reads.get(path, set()))
        if tensors:  # the glue reads its weights: a quantized replacement would break it
            reason = (
                f"the code around it reads its {', '.join(repr(t) for t in tensors)}, which a quantized part "
                f"does not have; kept float, its children tried"
            )
            left_float.append(FloatModule(path, type(module).__name__, reason))
            for name, child in module.named_children():
                visit(join(path, name), child)
            return
        sub_spec = spec_for_submodule(spec, path, module)
        try:
            prepared[path] = engine.prepare(module, _positional(module, inputs[path]), sub_spec)
        except SpecError:
            raise
        except Exception as exc:  # TracingError, or torch failing to prepare it: try the children
            if not isinstance(exc, QuantStageError) and raised_by_quantstage(exc):
                raise  # a bug in quantstage, not a module that does not prepare
            logger.debug("%s does not prepare whole: %s", show(path), exc)
            left_float.append(FloatModule(path, type(module).__name__, _first_line(exc)))
            for name, child in module.named_children():
                visit(join(path, name), child)
            return
        quantized.append(path)
        specs[path] = sub_spec
        if plain:
            attributes[path] = plain

    visit("", work)
    return PlannedParts(TracingPlan(tuple(quantized), tuple(left_float)), prepared, specs, attributes)


def plan_submodules(
    model: nn.Module, example_inputs: Any, spec: QuantSpec, engine: Engine | None = None
) -> TracingPlan:
    """Which of ``model``'s largest submodules prepare on their own, and which are left float, and why.
    ``model`` is not modified."""
    from quantstage.quant.engines import engine_for

    work = with_linear_equivalents(copy.deepcopy(model))[0].eval()
    return plan_parts(engine or engine_for(spec), work, example_inputs, spec).plan


def check_plan(model: nn.Module, plan: TracingPlan) -> None:
    """TracingError naming the first failures when no submodule could be quantized."""
    if plan.quantized:
        return
    errors = "; ".join(f"{show(f.path)}: {f.reason}" for f in plan.left_float[:MAX_LISTED]) or (
        "no module holding Linear/Conv parameters is called by forward"
    )
    raise TracingError(
        f"no submodule of {type(model).__name__} could be quantized: none that holds Linear/Conv parameters "
        f"and is called by forward traces ({errors}); fix: keep the untraceable parts out of tracing with "
        f"prepare_custom.non_traceable_module_names, or simplify their forward (no item assignment or "
        f"data-dependent control flow on tensors)"
    )
