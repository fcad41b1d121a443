"""Skips that match nothing: a ``qconfig: null`` override whose key names no part of the model.

A skip with a typo (``head.fc`` for ``head.0``, ``torch.nn.Conv1d`` in a Conv2d model) is
silently ignored by torch and the layer it was meant for gets quantized. This module finds
such skips after ``prepare`` and reports each with the names it probably meant.

What "matches" means here is what torch's FX quantization matches against
(``torch/ao/quantization/fx/qconfig_mapping_utils.py``, ``_generate_node_name_to_qconfig``):
the nodes of the graph ``prepare_fx`` traced, fused and assigned qconfigs to — the
*prepared* graph, which is that graph plus observer ``call_module`` nodes (ignored here).
A separate ``torch.fx.symbolic_trace`` of the float model is deliberately not used: it
traces into modules prepare keeps as leaves (skipped, non-traceable, standalone — and may
fail on them), does not fuse, and so disagrees with what the qconfig mapping was applied to.

* ``module_name``: torch applies it to a node when the node's module path is the key or
  lies under it. Reported when the key is not a module of the model (with the nearest
  names), or when it is one but no node of the traced graph runs in it (it was fused into a
  neighbour, e.g. the BatchNorm of conv-bn-relu, or forward never calls it): either way the
  skip has no effect. A key inside a module prepare called as a leaf (non-traceable,
  standalone, custom) is not reported.
* ``module_name_regex``: torch uses ``re.match`` (anchored at the start) on node module
  paths; reported when it matches no module name of the model nor any node module path.
* ``object_type``: torch looks up ``type(module)`` of ``call_module`` nodes (exact type,
  fused forms are handled by their first op's type) and the ``target`` of
  ``call_function``/``call_method`` nodes. Reported when no module of the model is exactly
  of that class, no module of the prepared graph is (fused, QAT forms), and no
  ``call_function``/``call_method`` node of the prepared graph has it as target.
* ``module_name_object_type_order``: reproduces torch's per-parent call counting over the
  prepared graph; reported when no call of that type at that index runs in that module.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
import sys
import warnings
from collections import defaultdict
from typing import Any

from torch import nn
from torch.fx import GraphModule

from quantstage.quant.config.dotted import resolve_dotted
from quantstage.quant.config.qconfig import QConfigOverride
from quantstage.quant.engines.base import UnusedSkip
from quantstage.quant.engines.fx.spec import fx_spec
from quantstage.quant.engines.registry import QuantSpec
from quantstage.quant.errors import SpecError

__all__ = ["check_skips", "find_unused_skips"]

logger = logging.getLogger(__name__)

_OBSERVED_ATTRS = "_observed_graph_module_attrs"
_SKIP_KINDS = ("module_name", "module_name_regex", "object_type", "module_name_object_type_order")
# Namespaces tried, in order, to show an object by the dotted path a user would write.
_PUBLIC_NAMESPACES = (
    "torch.nn",
    "torch.nn.functional",
    "torch",
    "operator",
    "torch.ao.nn.intrinsic",
    "torch.ao.nn.qat",
    "torch.ao.nn.intrinsic.qat",
    "torch.ao.nn.quantizable",
)
_MAX_LISTED = 6


# --------------------------------------------------------------------------- the traced model


@dataclasses.dataclass
class _Traced:
    """What torch's qconfig matching sees of one model: names, node paths, types, targets."""

    model_name: str
    module_names: list[str]  # named_modules() of the float model, '' excluded, aliases included
    module_types: set[type]  # exact types of the float model's modules
    node_paths: set[str]  # module path of every (non-observer) node of the prepared graph
    leaf_paths: set[str]  # call_module targets: prepare called these as a whole
    scope_paths: set[str]  # every path the tracer recorded, incl. nodes fused away later
    graph_module_types: set[type]  # exact types of prepared call_module modules (fused, QAT)
    targets: list[Any]  # call_function / call_method targets of the prepared graph
    order_counts: dict[tuple[str, Any], int]  # (parent path, type/function) -> calls seen
    fused_into: dict[str, str]  # path fused away -> path of the fused module that absorbed it


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _trace_info(model: nn.Module, prepared: GraphModule) -> _Traced:
    attrs = prepared.meta.get(_OBSERVED_ATTRS)
    scope: dict[str, tuple[str, Any]] = dict(getattr(attrs, "node_name_to_scope", None) or {})
    modules = dict(prepared.named_modules(remove_duplicate=False))
    float_modules = dict(model.named_modules(remove_duplicate=False))

    node_paths: set[str] = set()
    leaf_paths: set[str] = set()
    graph_types: set[type] = set()
    targets: list[Any] = []
    counts: dict[tuple[str, Any], int] = defaultdict(int)
    graph_nodes = {node.name: node for node in prepared.graph.nodes}
    fused_into: dict[str, str] = {}
    last_fused: str | None = None
    for node in prepared.graph.nodes:
        if node.op == "call_module":
            target = str(node.target)
            if node.name in scope:
                path, module_type = scope[node.name]
            elif target in float_modules:  # no tracer scopes recorded (not a prepare_fx result)
                path, module_type = target, type(float_modules[target])
            else:  # observers/fake-quants inserted by prepare
                continue
            node_paths.add(target)
            leaf_paths.add(target)
            module = modules.get(target)
            if module is not None:
                graph_types.add(type(module))
            # torch counts a call_module in its parent module, by the type the tracer saw.
            counts[(_parent(path), module_type)] += 1
        elif node.op in ("call_function", "call_method"):
            targets.append(node.target)
            path = scope.get(node.name, ("", None))[0]
            node_paths.add(path)
            if node.op == "call_function":
                counts[(path, node.target)] += 1
        elif node.op == "get_attr":
            node_paths.add(_parent(str(node.target)))
    # Nodes the tracer saw but fusion removed: attribute each to the fused module before it.
    for name, (path, _type) in scope.items():
        node = graph_nodes.get(name)
        if node is not None:
            module = modules.get(str(node.target)) if node.op == "call_module" else None
            last_fused = str(node.target) if module is not None and _is_fused(module) else None
        elif last_fused is not None and path:
            fused_into[path] = last_fused
    return _Traced(
        model_name=type(model).__name__,
        module_names=[n for n in float_modules if n],
        module_types={type(m) for m in float_modules.values()},
        node_paths=node_paths,
        leaf_paths=leaf_paths,
        scope_paths={path for path, _ in scope.values()},
        graph_module_types=graph_types,
        targets=targets,
        order_counts=dict(counts),
        fused_into=fused_into,
    )


def _is_fused(module: nn.Module) -> bool:
    """torch's fused modules (ConvReLU2d, LinearReLU, ... and their QAT forms such as
    ConvBnReLU2d) are defined under torch.ao.nn.intrinsic."""
    return type(module).__module__.startswith("torch.ao.nn.intrinsic")


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


def _public_name(obj: Any) -> str:
    """``torch.nn.Linear`` rather than ``torch.nn.modules.linear.Linear``; strings as they are."""
    if isinstance(obj, str):
        return obj
    name = getattr(obj, "__name__", None)
    if name:
        for namespace in _PUBLIC_NAMESPACES:
            module = sys.modules.get(namespace)
            if module is not None and getattr(module, name, None) is obj:
                return f"{namespace}.{name}"
    module_name = (getattr(obj, "__module__", None) or "").removeprefix("_")
    qualname = getattr(obj, "__qualname__", None) or name or repr(obj)
    return f"{module_name}.{qualname}" if module_name else qualname


# --------------------------------------------------------------------------- suggestions


def _close_matches(word: str, possibilities: list[str], n: int, cutoff: float = 0.6) -> list[str]:
    """difflib.get_close_matches, but ties keep the order of ``possibilities`` (model order)
    instead of reverse-alphabetical: 'features.O' suggests 'features.0' before 'features.5'."""
    scored = []
    matcher = difflib.SequenceMatcher()
    matcher.set_seq2(word)
    for i, candidate in enumerate(possibilities):
        matcher.set_seq1(candidate)
        if matcher.real_quick_ratio() >= cutoff and matcher.quick_ratio() >= cutoff:
            ratio = matcher.ratio()
            if ratio >= cutoff:
                scored.append((-ratio, i, candidate))
    return [candidate for _, _, candidate in sorted(scored)[:n]]


def _nearest(key: str, names: list[str], n: int = 3, *, by_tail: bool = False) -> list[str]:
    """Up to ``n`` of ``names`` closest to ``key`` (case-insensitive), by whole dotted name and
    by last component (``by_tail`` first: for types and functions the name is what matters)."""
    names = list(dict.fromkeys(names))
    lowered: dict[str, list[str]] = defaultdict(list)
    tails: dict[str, list[str]] = defaultdict(list)
    for name in names:
        lowered[name.lower()].append(name)
        tails[name.rpartition(".")[2].lower()].append(name)

    def whole() -> list[str]:
        hits = _close_matches(key.lower(), list(lowered), n)
        return [name for hit in hits for name in lowered[hit]]

    def tail() -> list[str]:
        hits = _close_matches(key.rpartition(".")[2].lower(), list(tails), n)
        return [name for hit in hits for name in tails[hit]]

    first, second = (tail, whole) if by_tail else (whole, tail)
    return list(dict.fromkeys([*first(), *second()]))[:n] if first() else second()[:n]


def _did_you_mean(key: str, names: list[str], what: str, *, by_tail: bool = False) -> str:
    near = _nearest(key, names, by_tail=by_tail)
    if near:
        rest = f" (nearest {what}: {', '.join(repr(n) for n in near)})" if len(near) > 1 else ""
        return f"; did you mean {near[0]!r}?{rest}"
    listed = list(dict.fromkeys(names))
    if not listed:
        return ""
    shown = ", ".join(repr(n) for n in listed[:_MAX_LISTED])
    more = f", ... ({len(listed) - _MAX_LISTED} more)" if len(listed) > _MAX_LISTED else ""
    return f" ({what}: {shown}{more})"


# --------------------------------------------------------------------------- the checks


def _check_module_name(key: str, t: _Traced, label: str) -> str | None:
    head = f"{label} module_name {key!r}"
    if key == "":
        return (
            f"{head} matches no module of {t.model_name}: torch never applies module_name '' "
            f"(the root) to a node; to keep the whole model float use qconfig_mapping preset 'none'"
        )
    if key not in t.module_names:
        return f"{head} matches no module of {t.model_name}" + _did_you_mean(key, t.module_names, "names")
    if any(_under(p, key) for p in t.node_paths) or any(_under(key, leaf) for leaf in t.leaf_paths):
        return None
    if key in t.fused_into:
        fused = t.fused_into[key]
        return (
            f"{head} names a module of {t.model_name} that prepare fused into {fused!r}, so the skip "
            f"has no effect; did you mean {fused!r}? (skipping the fused module keeps all its parts float)"
        )
    if key in t.scope_paths:
        return (
            f"{head} names a module of {t.model_name} that no node of the traced graph runs in, "
            f"so the skip has no effect"
        )
    return (
        f"{head} names a module of {t.model_name} that forward never calls (it is not in the traced "
        f"graph), so the skip has no effect"
    )


def _check_regex(key: str, t: _Traced, label: str) -> str | None:
    names = [*t.module_names, *sorted(t.node_paths)]
    if any(re.match(key, name) for name in names):  # torch: re.match(regex, module_path)
        return None
    head = (
        f"{label} module_name_regex {key!r} matches no module name of {t.model_name} "
        f"(torch applies re.match, anchored at the start of the dotted path)"
    )
    inside = [n for n in t.module_names if re.search(key, n)]
    if inside:
        return f"{head}; it matches inside {inside[0]!r}: prefix it with '.*' (e.g. '.*{key}') to match there"
    return head + _did_you_mean(key, t.module_names, "names")


def _object_names(t: _Traced) -> list[str]:
    objects: list[Any] = [*t.module_types, *t.graph_module_types, *t.targets]
    # GraphModule subclasses are per instance (the prepared model itself): not user types.
    shown = [o for o in objects if o is not nn.Module and not (isinstance(o, type) and issubclass(o, GraphModule))]
    return sorted(dict.fromkeys(_public_name(o) for o in shown))


def _check_object_type(key: str, t: _Traced, label: str) -> str | None:
    obj = resolve_dotted(key)
    if isinstance(obj, type) and (obj in t.module_types or obj in t.graph_module_types):
        return None
    if any(target is obj or (not isinstance(target, str) and target == obj) for target in t.targets):
        return None
    head = (
        f"{label} object_type {key!r} matches no module, function or method call in the traced graph of {t.model_name}"
    )
    suggestion = _did_you_mean(key, _object_names(t), "types and functions present", by_tail=True)
    if not isinstance(obj, type) and "did you mean" not in suggestion:
        suggestion += (
            "; a function fused into a module (e.g. relu into LinearReLU) no longer appears as a "
            "call: skip the fused module's first type instead"
        )
    return head + suggestion


def _check_order(override: QConfigOverride, t: _Traced, label: str) -> str | None:
    key, index = override.key, override.index or 0
    obj = resolve_dotted(override.object_type or "")
    seen = t.order_counts.get((key, obj), 0)
    if index < seen:
        return None
    head = (
        f"{label} module_name_object_type_order ({key!r}, {override.object_type}, {index}) matches no call "
        f"in the traced graph of {t.model_name}"
    )
    paths = sorted({path for path, _ in t.order_counts})
    if key not in paths and key not in t.module_names:
        names = [p for p in paths if p] or t.module_names
        return head + f"; {key!r} is not a module path" + _did_you_mean(key, names, "names")
    where = f"module {key!r}" if key else "the root forward"
    if seen:
        return head + f"; {where} calls {_public_name(obj)} {seen} time(s) (index 0..{seen - 1})"
    called = sorted({_public_name(o) for (path, o), n in t.order_counts.items() if path == key and n})
    listed = f" (it calls: {', '.join(called[:_MAX_LISTED])})" if called else ""
    return head + f"; {where} never calls {_public_name(obj)} directly{listed}"


def _skips(spec: QuantSpec) -> list[tuple[str, QConfigOverride]]:
    found: dict[tuple[Any, ...], tuple[str, QConfigOverride]] = {}
    sources = [("skip", spec.mapping_spec())]
    convert_mapping = fx_spec(spec).convert_qconfig_mapping
    if convert_mapping is not None:
        sources.append(("convert-time skip", convert_mapping))
    for label, mapping in sources:
        for override in mapping.overrides:
            if override.qconfig is None and override.set in _SKIP_KINDS:
                key = (override.set, override.key, override.object_type, override.index)
                found.setdefault(key, (label, override))
    return list(found.values())


def find_unused_skips(model: nn.Module, prepared: GraphModule, spec: QuantSpec) -> list[UnusedSkip]:
    """The skips of ``spec`` that match nothing in ``model`` as ``prepared`` traced it.

    Skips are the ``qconfig: null`` overrides of ``spec.mapping_spec()`` (``skip_modules``
    and ``skip_object_types`` included) and of ``spec.convert_qconfig_mapping``, of kinds
    module_name, module_name_regex, object_type and module_name_object_type_order; a skip in
    both mappings is reported once. ``model`` is the float model given to ``prepare`` and
    ``prepared`` the GraphModule it returned. See the module docstring for the rules.
    """
    traced = _trace_info(model, prepared)
    unused: list[UnusedSkip] = []
    for label, override in _skips(spec):
        if override.set == "module_name":
            message = _check_module_name(override.key, traced, label)
        elif override.set == "module_name_regex":
            message = _check_regex(override.key, traced, label)
        elif override.set == "object_type":
            message = _check_object_type(override.key, traced, label)
        else:
            message = _check_order(override, traced, label)
        if message is not None:
            unused.append(UnusedSkip(override.set, override.key, message, override.object_type, override.index))
    return unused


def check_skips(model: nn.Module, prepared: GraphModule, spec: QuantSpec) -> list[UnusedSkip]:
    """Warn about (or, with ``spec.strict_skips``, reject) skips that match nothing.

    Each unused skip is logged as a warning and issued as a ``UserWarning``; with
    ``strict_skips: true`` a SpecError listing them all is raised instead. Returns the
    unused skips (empty when every skip matches).
    """
    unused = find_unused_skips(model, prepared, spec)
    if not unused:
        return unused
    if spec.strict_skips:
        lines = "\n".join(f"  - {u.message}" for u in unused)
        raise SpecError(
            f"{len(unused)} skip(s) match nothing in the traced {type(model).__name__} "
            f"(strict_skips is on):\n{lines}\n"
            f"fix: correct or remove them, or set strict_skips: false to only warn"
        )
    for u in unused:
        logger.warning("%s", u.message)
        warnings.warn(u.message, UserWarning, stacklevel=2)
    return unused
