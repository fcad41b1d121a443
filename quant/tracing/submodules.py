"""Models that do not trace as a whole: quantize their largest traceable submodules.

A Hugging Face style encoder's root ``forward`` (and often each attention block) cannot be
symbolically traced (``'Proxy' object does not support item assignment``, data-dependent
``if``/loops), while the Linear-bearing parts inside trace fine. ``prepare_submodules``
copies the model, plans which submodules the engine prepares on their own
(``quant.tracing.plan``) and swaps the prepared ones into the copy, so calibration runs the
*whole* copy and every submodule is calibrated on what it really sees. ``assemble`` puts the
lowered submodules into a copy that shares the float weights, quantizes embeddings outside
them weight-only (dynamic mode, as the whole-model path does) and measures the report
(``quant.tracing.report``). The model given is never modified. ``quant.quantize`` composes
these with the engine's reference and lowering steps.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from quantstage.quant.config.dotted import resolve_dotted
from quantstage.quant.engines.base import Engine
from quantstage.quant.engines.registry import QuantSpec
from quantstage.quant.errors import SpecError
from quantstage.quant.measure.coverage import CoverageReport
from quantstage.quant.tracing.failures import float_copy
from quantstage.quant.tracing.plan import FloatModule, PlannedParts, TracingPlan, check_plan, plan_parts
from quantstage.quant.tracing.report import SubmoduleCoverage, float_times, submodule_coverage
from quantstage.quant.tracing.reroot import covers, kept_float_by_spec

__all__ = ["SUBMODULE_MODES", "assemble", "check_mode", "embeddings_outside", "prepare_submodules", "swap"]

logger = logging.getLogger(__name__)

SUBMODULE_MODES = ("static", "dynamic", "float16")

# torch.fx.graph_module._USER_PRESERVED_ATTRIBUTES_KEY: GraphModule.__deepcopy__ restores these attributes
_PRESERVED_KEY = "_user_preserved_attributes"


def check_mode(spec: QuantSpec) -> None:
    """SpecError unless ``spec.mode`` can be quantized submodule by submodule."""
    if spec.mode not in SUBMODULE_MODES:
        raise SpecError(
            f"mode {spec.mode!r} is not supported by submodules; allowed: {', '.join(SUBMODULE_MODES)}; fix: a QAT "
            f"model is converted from its whole-model checkpoint (quantize(..., qat_checkpoint=...)), or use mode 'static'"
        )


def swap(model: nn.Module, path: str, new: nn.Module, attributes: Mapping[str, Any] | None = None) -> nn.Module:
    """Put ``new`` at ``path`` in ``model``, carrying the plain ``attributes`` the code around it
    reads (those ``new`` lacks); return the (possibly new) root."""
    carried = {name: value for name, value in (attributes or {}).items() if not hasattr(new, name)}
    for name, value in carried.items():
        setattr(new, name, value)
    meta = getattr(new, "meta", None)
    if carried and isinstance(meta, dict):  # a GraphModule: its deepcopy keeps only the attributes listed here
        meta.setdefault(_PRESERVED_KEY, {}).update(carried)
    if not path:
        return new
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, name, new)
    return model


def prepare_submodules(
    engine: Engine, model: nn.Module, spec: QuantSpec, example_inputs: Any
) -> tuple[nn.Module, PlannedParts]:
    """A working copy of ``model`` with its largest preparable submodules prepared in place, and the plan.

    TracingError when no submodule holding Linear/Conv parameters prepares."""
    check_mode(spec)
    work = copy.deepcopy(model).eval()
    parts = plan_parts(engine, work, example_inputs, spec)
    check_plan(model, parts.plan)
    logger.info("submodule plan: %s", parts.plan.summary())
    for path in parts.plan.quantized:
        work = swap(work, path, parts.prepared[path], parts.attributes.get(path))
    return work, parts


def _sharing_copy(work: nn.Module, keep: Mapping[str, nn.Module]) -> nn.Module:
    """A copy of ``work`` that shares its parameters and the modules in ``keep`` (replaced next)."""
    memo: dict[int, Any] = {id(p): p for p in work.parameters()}
    memo.update({id(m): m for m in keep.values()})
    return copy.deepcopy(work, memo)


def _anchor_parameter_properties(model: nn.Module, final: nn.Module) -> list[str]:
    """Give each module of ``final`` whose class reads its parameters in a ``device``/``dtype``
    property (Hugging Face's ``PreTrainedModel``: ``next(self.parameters())``) and that has no float
    parameter left once its parts are quantized a 0-element float parameter, so those properties
    (and TorchScript's attribute scan, which calls them) keep working; return their paths."""
    anchored = []
    float_modules = dict(model.named_modules())
    for path, module in final.named_modules():
        cls = type(module)
        if not any(isinstance(getattr(cls, n, None), property) for n in ("device", "dtype")):
            continue
        if any(p.is_floating_point() for p in module.parameters()) or path not in float_modules:
            continue
        like = next((p for p in float_modules[path].parameters() if p.is_floating_point()), None)
        if like is None:
            continue
        module.register_parameter(
            "quantstage_dtype_anchor",
            nn.Parameter(torch.empty(0, dtype=like.dtype, device=like.device), requires_grad=False),
        )
        anchored.append(path)
    return anchored


def embeddings_outside(model: nn.Module, plan: TracingPlan, spec: QuantSpec) -> tuple[str, ...]:
    """Dynamic mode quantizes embeddings weight-only (as the whole-model path does): those
    outside every quantized submodule, unless the spec keeps them (or their type) float."""
    if spec.mode != "dynamic":
        return ()
    skipped_types = tuple(t for t in (resolve_dotted(n) for n in spec.skip_object_types) if isinstance(t, type))
    out = []
    for path, module in model.named_modules():
        if not isinstance(module, (nn.Embedding, nn.EmbeddingBag)) or (
            skipped_types and isinstance(module, skipped_types)
        ):
            continue
        if any(covers(q, path) for q in plan.quantized) or kept_float_by_spec(spec, path):
            continue
        out.append(path)
    return tuple(out)


def _why_float(engine: Engine, embedding: nn.Module) -> str:
    base = nn.EmbeddingBag if isinstance(embedding, nn.EmbeddingBag) else nn.Embedding
    if type(embedding).forward is not base.forward:
        return (
            f"embedding outside the quantized parts: {type(embedding).__name__} overrides nn.{base.__name__}.forward "
            f"(weight-only int8 would drop what it adds); kept float"
        )
    return f"embedding outside the quantized parts: the {engine.name} engine has no weight-only form for it; kept float"


def assemble(
    engine: Engine,
    model: nn.Module,
    spec: QuantSpec,
    work: nn.Module,
    parts: PlannedParts,
    lowered: Mapping[str, nn.Module],
    coverage: Mapping[str, CoverageReport],
    example_inputs: Any,
    *,
    timing_repeats: int = 10,
    dropped: Sequence[str] = (),
) -> tuple[nn.Module, SubmoduleCoverage]:
    """The quantized model (lowered submodules in a copy of ``work`` that shares its float weights)
    and its report; the float time share is timed on ``example_inputs``, fastest of
    ``timing_repeats`` runs (0: not timed). ``model`` and ``spec`` are the float model and spec given;
    the parts at ``dropped`` (prepared, then left float: they failed to convert or to run) are put back float."""
    plan = parts.plan
    final = _sharing_copy(work, parts.prepared)
    for path in plan.quantized:
        final = swap(final, path, lowered[path], parts.attributes.get(path))
    for path in dropped:
        final = swap(final, path, float_copy(model.get_submodule(path)))
    weight_only, kept_float = [], []
    for path in embeddings_outside(model, plan, spec):
        embedding = model.get_submodule(path)
        quantized = engine.weight_only(embedding)
        if quantized is not None:
            final = swap(final, path, quantized)
            weight_only.append(path)
        else:
            kept_float.append(FloatModule(path, type(embedding).__name__, _why_float(engine, embedding)))
    anchored = _anchor_parameter_properties(model, final)
    if anchored:
        logger.info("no float parameter left in %s: a 0-element one keeps their device/dtype properties", anchored)
    times: dict[str, float] = {}
    total_ms = None
    if timing_repeats > 0 and "" not in plan.quantized:
        times, total_ms = float_times(model, plan.quantized, [example_inputs], timing_repeats)
    report = submodule_coverage(model, plan, dict(coverage), times, total_ms, tuple(weight_only), kept_float)
    logger.info("submodule quantization: %s", report.summary().replace("\n", " "))
    return final.eval(), report
