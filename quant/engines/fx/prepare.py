"""Prepare a float model with FX (``prepare_fx``/``prepare_qat_fx``) and read its calibrated observers."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch.fx import GraphModule

from quantstage.quant.config.dotted import resolve_dotted
from quantstage.quant.engines.fx import _torch as _fx
from quantstage.quant.engines.fx import configs
from quantstage.quant.engines.fx.spec import FxSpec, fx_spec
from quantstage.quant.engines.registry import QuantSpec
from quantstage.quant.errors import SpecError, TracingError, raised_by_quantstage, stage_error

__all__ = ["degenerate_ranges", "prepare"]

logger = logging.getLogger(__name__)


class _ScopeTracer(torch.fx.Tracer):
    """A plain FX tracer that remembers which submodule it was inside when tracing failed."""

    def __init__(self, leaves: Sequence[str] = ()) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.leaves = set(leaves)

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: torch.nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        name = self.path_of_module(m)
        self.stack.append(name)
        result = super().call_module(m, forward, args, kwargs)
        self.stack.pop()
        return result


def _failing_scope(model: torch.nn.Module, leaves: Sequence[str] = ()) -> str | None:
    tracer = _ScopeTracer(leaves)
    try:
        tracer.trace(model)
    except Exception:
        return tracer.stack[-1] if tracer.stack else ""
    return None


def _standalone_inputs(
    model: torch.nn.Module, example_inputs: tuple[Any, ...], names: Sequence[str]
) -> dict[str, tuple[Any, ...]]:
    """The positional inputs each named submodule receives in one forward of ``model``."""
    captured: dict[str, tuple[Any, ...]] = {}
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise SpecError(
            f"standalone module {missing[0]!r} is not a submodule of {type(model).__name__}; "
            f"use a path from model.named_modules()"
        )
    hooks = [
        modules[name].register_forward_pre_hook(lambda _m, args, name=name: captured.setdefault(name, args))
        for name in names
    ]
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def _prepare_custom_config(model: torch.nn.Module, example_inputs: tuple[Any, ...], spec: FxSpec) -> Any:
    config = configs.prepare_custom_config(spec)
    p = spec.prepare_custom
    if not (p.standalone_module_names or p.standalone_module_classes):
        return config
    model = copy.deepcopy(model).eval()  # the input capture runs a forward with hooks: not on the caller's model
    mapping, backend = configs.qconfig_mapping(spec), configs.backend_config(spec)
    classes = tuple(resolve_dotted(c) for c in p.standalone_module_classes)
    modules = dict(model.named_modules())
    by_class = [n for n, m in modules.items() if classes and isinstance(m, classes)]
    inputs = _standalone_inputs(model, example_inputs, [*p.standalone_module_names, *by_class])
    for name in p.standalone_module_names:
        config.set_standalone_module_name(name, mapping, inputs[name], None, backend)
    for cls in classes:
        first = next((n for n in by_class if isinstance(modules[n], cls)), None)
        if first is not None:
            config.set_standalone_module_class(cls, mapping, inputs[first], None, backend)
    return config


_POOLS = (torch.nn.AdaptiveAvgPool1d, torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool3d)


def _global_pools(model: torch.nn.Module, spec: FxSpec) -> list[str]:
    """Global average pooling modules that ``float_global_pool`` keeps float (static/qat modes,
    no explicit convert-time mapping, not skipped already by the spec's own mapping)."""
    if not spec.float_global_pool or spec.mode not in ("static", "qat") or spec.convert_qconfig_mapping is not None:
        return []
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, _POOLS)
        and all(s == 1 for s in torch.nn.modules.utils._ntuple(3)(m.output_size) if s is not None)  # type: ignore[no-untyped-call]  # unannotated in torch
    ]


def prepare(model: torch.nn.Module, example_inputs: tuple[Any, ...], spec: QuantSpec) -> GraphModule:
    """Prepare a copy of ``model`` for ``spec``; tracing failures name the module and the fix.

    ``prepare_fx`` in eval mode, or ``prepare_qat_fx`` in train mode when ``spec.mode`` is qat.
    """
    spec = fx_spec(spec)
    qat = spec.mode == "qat"
    float_model = copy.deepcopy(model).train(qat)
    mapping = configs.qconfig_mapping(spec)
    pools = _global_pools(model, spec)
    for name in pools:
        mapping.set_module_name(name, None)
    if pools:
        mapping.set_object_type(torch.flatten, None)
        logger.info("global average pooling %s and flatten run in float (float_global_pool)", pools)
    torch.backends.quantized.engine = spec.backend
    prepare_fn = _fx.prepare_qat_fx if qat else _fx.prepare_fx
    try:
        custom = _prepare_custom_config(model, example_inputs, spec)
        with _fx.fx_quiet():
            return prepare_fn(
                float_model,
                mapping,
                example_inputs,
                prepare_custom_config=custom,
                backend_config=configs.backend_config(spec),
            )
    except SpecError:
        raise
    except Exception as exc:
        if isinstance(exc, LookupError) and "During fusion" in str(exc):
            raise SpecError(
                f"qconfig_mapping gives the parts of a fused pattern different qconfigs ({str(exc).splitlines()[0]}); "
                f"fix: give every type of the pattern (e.g. Linear and ReLU) the same qconfig, or override "
                f"by module_name instead of object_type"
            ) from exc
        if raised_by_quantstage(exc):
            raise
        raise _prepare_error(model, spec, exc) from exc


def _prepare_error(model: torch.nn.Module, spec: FxSpec, exc: Exception) -> TracingError:
    """The one-line TracingError for ``prepare_fx`` failing on ``model``: where tracing fails, or
    (when plain tracing works) that preparing failed, with the fix."""
    leaves = [*spec.skip_modules, *spec.prepare_custom.non_traceable_module_names]
    scope = _failing_scope(copy.deepcopy(model).eval(), leaves)
    if scope is None:  # plain tracing works: preparing itself failed (shape propagation, fusion, observers)
        return stage_error(
            TracingError,
            "preparing (prepare_fx)",
            type(model).__name__,
            exc,
            "keep the layer it names float with skip_modules, quantize by parts with tracing: submodules "
            "(a failing part is left float), or use engine pt2e",
        )
    where = f"module {scope!r}" if scope else f"the root forward of {type(model).__name__}"
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    fix = (
        f"keep that module float and untraced with prepare_custom.non_traceable_module_names: "
        f"[{scope!r}] (or skip_modules: [{scope!r}])"
        if scope
        else "make the root forward traceable, or quantize its traceable submodules"
    )
    return TracingError(
        f"torch.fx cannot symbolically trace {type(model).__name__} (failed in {where}: "
        f"{first_line}); fix: make that forward free of data-dependent control flow, or {fix}"
    )


def _observed_name(node: torch.fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    if node.op == "placeholder":
        return f"input {node.name!r}"
    return f"{node.name} ({getattr(node.target, '__name__', node.target)})"


def degenerate_ranges(prepared: GraphModule) -> list[str]:
    """One message per activation observer whose calibrated range cannot quantize well.

    Never observed (calibration did not reach it), a zero range (a constant tensor: scale
    collapses to epsilon), or a non-finite range (inf/NaN in the data): each names the
    module or node whose output the observer watches.
    """
    modules = dict(prepared.named_modules())
    messages = []
    for node in prepared.graph.nodes:
        observer = modules.get(str(node.target)) if node.op == "call_module" else None
        if not isinstance(observer, _fx.ObserverBase) or not hasattr(observer, "min_val") or not node.args:
            continue
        where = _observed_name(node.args[0])
        # nn.Module types its attributes as Tensor | Module; an observer's min_val/max_val are tensors
        lo, hi = cast(torch.Tensor, observer.min_val), cast(torch.Tensor, observer.max_val)
        if lo.numel() == 0 or bool((lo > hi).any()):
            messages.append(f"calibration never reached the output of {where}: its observer saw no data")
        elif not (bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all())):
            messages.append(
                f"the output of {where} has a non-finite range [{lo.min().item()}, {hi.max().item()}]: scale would be infinite"
            )
        elif bool((hi - lo == 0).all()):
            messages.append(
                f"the output of {where} was constant ({lo.min().item()}) during calibration: zero range, degenerate scale"
            )
    return messages
