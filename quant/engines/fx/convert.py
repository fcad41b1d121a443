"""``convert_fx``, decomposed: reference conversion, then lowering to native quantized ops.

``convert(prepared, ...)`` is a drop-in for ``torch.ao.quantization.quantize_fx.convert_fx``
with its signature, implemented as ``lower(reference_convert(...))``. Splitting it lets a
pipeline log, inspect or ship the reference model (the form compilers consume) and lower
it as a separate, timed step — with the same generated code and bit-identical outputs.

Neither function mutates the model it is given.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any, Literal

import torch
from torch.fx import GraphModule

from quantstage.quant.engines.fx import _torch as _fx
from quantstage.quant.engines.fx import configs
from quantstage.quant.engines.registry import QuantSpec
from quantstage.quant.errors import ConversionError

__all__ = ["ReferenceModel", "convert", "convert_with_spec", "lower", "reference_convert"]

logger = logging.getLogger(__name__)

_OBSERVED_ATTRS = "_observed_graph_module_attrs"


@dataclasses.dataclass
class ReferenceModel:
    """A reference quantized GraphModule plus the context its lowering needs.

    ``node_name_to_qconfig`` and ``node_name_to_scope`` are captured from the prepared
    model (after applying a convert-time ``qconfig_mapping``, exactly as torch does);
    ``preserved_attributes`` are the ``convert_custom_config.preserved_attributes`` found
    on the prepared model.
    """

    graph_module: GraphModule
    node_name_to_qconfig: dict[str, Any]
    node_name_to_scope: dict[str, tuple[str, type]]
    preserved_attributes: dict[str, Any]
    is_qat: bool = False
    # module path -> (node_name_to_qconfig, node_name_to_scope) of each standalone submodule:
    # torch converts those with their own lowering context, so lower() lowers them too.
    standalone: dict[str, tuple[dict[str, Any], dict[str, tuple[str, type]]]] = dataclasses.field(default_factory=dict)

    @property
    def code(self) -> str:
        """The generated Python code of the reference model."""
        return self.graph_module.code


def _require_prepared(prepared: torch.nn.Module) -> GraphModule:
    if not isinstance(prepared, GraphModule):
        raise ConversionError(
            f"expected a prepared model (torch.fx.GraphModule from prepare_fx/prepare_qat_fx), "
            f"got {type(prepared).__name__}; prepare it first (quantstage.quant.prepare)"
        )
    if _OBSERVED_ATTRS not in prepared.meta:
        raise ConversionError(
            "the GraphModule carries no observer metadata (meta['_observed_graph_module_attrs']): "
            "it was not produced by prepare_fx/prepare_qat_fx, or was already converted; "
            "pass the prepared (and calibrated) model"
        )
    return prepared


def _copy_graph_module(gm: GraphModule) -> GraphModule:
    """A copy of ``gm`` that conversion can rewrite without touching the original.

    Graph, submodules, observers and buffers are copied; conversion only ever reads the
    float weights, so Parameters are shared instead of paying for a copy of every weight.
    """
    memo: dict[int, Any] = {id(p): p for _, p in gm.named_parameters(remove_duplicate=False)}
    return copy.deepcopy(gm, memo)


def _lowering_copy(reference: ReferenceModel) -> GraphModule:
    """A copy of the reference model that lowering can rewrite, at a third of a deep copy's cost.

    Lowering rewrites the graph and swaps modules on their parents, never mutates a leaf module, so
    the copy gets a new graph and new parent modules while leaf modules are shared (a standalone
    submodule, lowered in place, is copied whole); ``_own_modules`` unshares what qconfig removal
    would touch.
    """
    gm = reference.graph_module
    model = GraphModule(gm, copy.deepcopy(gm.graph), class_name=type(gm).__name__)
    model.meta = dict(gm.meta)
    for path in reference.standalone:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, name, _copy_graph_module(getattr(parent, name)))
    return model


def _own_modules(model: torch.nn.Module, shared: set[int]) -> None:
    """Replace every module under ``model`` that another model holds too (``shared`` ids) by a shallow copy
    with its own attribute dicts (same tensors), so deleting attributes leaves the other model untouched."""
    for name, child in list(model.named_children()):
        if id(child) in shared:
            owned = copy.copy(child)
            for attr in ("_modules", "_parameters", "_buffers", "_forward_hooks", "_forward_pre_hooks"):
                if attr in child.__dict__:
                    owned.__dict__[attr] = copy.copy(child.__dict__[attr])
            setattr(model, name, owned)
            child = owned
        _own_modules(child, shared)


def _convert_time_node_name_to_qconfig(model: GraphModule, qconfig_mapping: Any, backend_config: Any) -> dict[str, Any]:
    """The node_name_to_qconfig torch's ``convert`` derives from a convert-time mapping.

    Mirrors ``torch/ao/quantization/fx/convert.py`` so the lowering step sees exactly the
    qconfigs the reference step used (``None`` entries skip quantization).
    """
    attrs = model.meta[_OBSERVED_ATTRS]
    mapping = copy.deepcopy(qconfig_mapping)
    if isinstance(mapping, dict):
        mapping = _fx.QConfigMapping.from_dict(mapping)
    if backend_config is None:
        backend_config = _fx.backend_config_for("native")
    modules_copy = copy.deepcopy(dict(model.named_modules(remove_duplicate=False)))
    with _fx.fx_quiet():
        if attrs.is_qat:
            _fx._update_qconfig_for_qat(mapping, backend_config)
        _fx._update_qconfig_for_fusion(model, mapping)
        return _fx._generate_node_name_to_qconfig(model, modules_copy, model.graph, mapping, attrs.node_name_to_scope)


def reference_convert(
    prepared: GraphModule,
    *,
    convert_custom_config: Any = None,
    qconfig_mapping: Any = None,
    backend_config: Any = None,
) -> ReferenceModel:
    """Convert a prepared and calibrated (or QAT-trained) model to a reference quantized model.

    Observers become quantize/dequantize pairs and weighted modules become reference
    quantized modules; nothing is lowered yet. ``prepared`` is not modified.
    """
    source = _require_prepared(prepared)
    model = _copy_graph_module(source)
    attrs = model.meta[_OBSERVED_ATTRS]
    node_name_to_scope = dict(attrs.node_name_to_scope)
    if qconfig_mapping:
        given = _fx.QConfigMapping.from_dict(qconfig_mapping) if isinstance(qconfig_mapping, dict) else qconfig_mapping
        if attrs.qconfig_mapping is not None:  # convert_fx's rule, checked before torch asserts deep inside
            configs.check_convert_mapping(attrs.qconfig_mapping, given)
        node_name_to_qconfig = _convert_time_node_name_to_qconfig(model, qconfig_mapping, backend_config)
    else:
        node_name_to_qconfig = dict(attrs.node_name_to_qconfig)

    standalone = {
        path: (dict(sub.meta[_OBSERVED_ATTRS].node_name_to_qconfig), dict(sub.meta[_OBSERVED_ATTRS].node_name_to_scope))
        for path, sub in model.named_modules()
        if path
        and isinstance(sub, GraphModule)
        and _OBSERVED_ATTRS in sub.meta
        and sub.meta[_OBSERVED_ATTRS].is_observed_standalone_module
    }
    custom = convert_custom_config
    if isinstance(custom, dict):
        custom = _fx.ConvertCustomConfig.from_dict(custom)
    preserved_names = custom.preserved_attributes if custom is not None else []
    preserved = {name: getattr(model, name) for name in preserved_names if hasattr(model, name)}

    with _fx.fx_quiet():
        reference = _fx.fx_convert(
            model,
            is_reference=True,
            convert_custom_config=custom,
            _remove_qconfig_flag=False,
            qconfig_mapping=qconfig_mapping,
            backend_config=backend_config,
        )
    _fx.attach_preserved_attrs_to_model(reference, preserved)
    logger.debug("reference model:\n%s", reference.code)
    return ReferenceModel(
        graph_module=reference,
        node_name_to_qconfig=node_name_to_qconfig,
        node_name_to_scope=node_name_to_scope,
        preserved_attributes=preserved,
        is_qat=bool(attrs.is_qat),
        standalone=standalone,
    )


def lower(
    reference: ReferenceModel,
    *,
    keep_original_weights: bool = False,
    remove_qconfig: bool = True,
    target: Literal["native", "reference"] = "native",
) -> GraphModule:
    """Lower a reference quantized model to the native quantized ops.

    fbgemm, x86, qnnpack and onednn share this lowering. ``target="reference"`` skips the
    lowering and returns the reference model, finalised like a converted one (qconfig
    removed, unused submodules deleted), for compilers that consume reference models.
    ``reference`` is not modified.
    """
    if not isinstance(reference, ReferenceModel):
        raise ConversionError(
            f"lower() takes the ReferenceModel returned by reference_convert(), got {type(reference).__name__}"
        )
    if target not in ("native", "reference"):
        raise ConversionError(f"lower() target {target!r} is unknown; allowed: 'native', 'reference'")
    model = _lowering_copy(reference)
    if target == "native":
        with _fx.fx_quiet():
            for path, (qconfigs, scopes) in reference.standalone.items():
                _lower_standalone(model, path, qconfigs, scopes)
            model = _fx.lower_to_fbgemm(
                model,
                reference.node_name_to_qconfig,
                reference.node_name_to_scope,
                keep_original_weights,
            )
    if remove_qconfig:
        _own_modules(model, {id(m) for m in reference.graph_module.modules()})
        _fx._remove_qconfig(model)  # type: ignore[no-untyped-call]  # unannotated in torch
    model.delete_all_unused_submodules()
    model.meta.pop(_OBSERVED_ATTRS, None)
    _fx.attach_preserved_attrs_to_model(model, reference.preserved_attributes)
    return model


def _lower_standalone(model: GraphModule, path: str, qconfigs: dict[str, Any], scopes: dict[str, Any]) -> None:
    """Lower a standalone submodule in place, as torch's convert_fx does for it (its own context)."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    lowered = _fx.lower_to_fbgemm(getattr(parent, name), qconfigs, scopes, False)
    _fx._remove_qconfig(lowered)  # type: ignore[no-untyped-call]  # unannotated in torch
    lowered.delete_all_unused_submodules()
    setattr(parent, name, lowered)


def convert(
    prepared: GraphModule,
    convert_custom_config: Any = None,
    _remove_qconfig: bool = True,
    qconfig_mapping: Any = None,
    backend_config: Any = None,
    keep_original_weights: bool = False,
) -> GraphModule:
    """Drop-in for ``torch.ao.quantization.quantize_fx.convert_fx``: reference, then lower."""
    reference = reference_convert(
        prepared,
        convert_custom_config=convert_custom_config,
        qconfig_mapping=qconfig_mapping,
        backend_config=backend_config,
    )
    return lower(
        reference,
        keep_original_weights=keep_original_weights,
        remove_qconfig=_remove_qconfig,
    )


def convert_with_spec(prepared: GraphModule, spec: QuantSpec) -> tuple[ReferenceModel, GraphModule]:
    """``reference_convert`` then ``lower`` with every convert-time setting of a ``QuantSpec``
    (custom config, convert-time mapping, backend config, weights kept, qconfig removal, target)."""
    reference = reference_convert(prepared, **configs.reference_convert_kwargs(spec))
    return reference, lower(reference, **configs.lower_kwargs(spec))
