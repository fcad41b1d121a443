"""A spec's module-name keys re-rooted onto a submodule, so they keep meaning full paths.

When a submodule is quantized on its own, its module names are relative to it: a
``module_name`` override on ``layers.0.ffn.fc1`` must become ``fc1`` for the submodule at
``layers.0.ffn``, keys outside it must go, and an override on the submodule itself or a
parent becomes its global qconfig.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from quantstage.quant.config.qconfig import QConfigMappingSpec, QConfigName, QConfigOverride
from quantstage.quant.engines import FxSpec, QuantSpec

__all__ = ["covers", "join", "kept_float_by_spec", "spec_for_submodule"]


def join(prefix: str, name: str) -> str:
    """``prefix.name`` (``name`` alone under the root)."""
    return f"{prefix}.{name}" if prefix else name


def covers(key: str, path: str) -> bool:
    """``path`` is ``key`` or lies under it (``""`` is the root, above everything)."""
    return not key or path == key or path.startswith(key + ".")


def _qconfig_over(mapping: QConfigMappingSpec, path: str) -> tuple[bool, QConfigName | None]:
    """(found, qconfig) of the deepest module_name override on ``path`` or a parent of it."""
    keys: dict[str, QConfigName | None] = {}
    for o in mapping.overrides:
        if o.set == "module_name":
            keys[o.key] = o.qconfig
    covering = [k for k in keys if k and covers(k, path)]
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
                if name not in matched and re.match(o.key, join(path, name) if name else path):
                    matched.add(name)
                    overrides.append(o.model_copy(update={"key": re.escape(name) + r"\Z"}))
        elif o.key and covers(path, o.key) and o.key != path:  # strictly inside the submodule
            overrides.append(o.model_copy(update={"key": o.key[len(path) + 1 :]}))
        elif o.set == "module_name_object_type_order" and o.key == path:
            overrides.append(o.model_copy(update={"key": ""}))
    if found:
        start = QConfigOverride(set="global", qconfig=covering)
        return QConfigMappingSpec(preset="none", overrides=(start, *overrides))
    return mapping.model_copy(update={"overrides": tuple(overrides)})


def _reroot_names(names: Sequence[str], path: str) -> tuple[str, ...]:
    return tuple(n[len(path) + 1 :] for n in names if n.startswith(path + "."))


def spec_for_submodule(spec: QuantSpec, path: str, submodule: nn.Module) -> QuantSpec:
    """``spec`` re-rooted onto the submodule at ``path``: its module-name keys stay full paths.

    ``skip_modules``, non-traceable and standalone module names and the module-name keys of
    both qconfig mappings lose the ``path.`` prefix, keys outside the submodule are dropped;
    root attributes to preserve belong to the whole model and are dropped too.
    """
    if not path:
        return spec
    names = [name for name, _ in submodule.named_modules()]
    update = {
        "qconfig_mapping": _reroot_mapping(spec.mapping_spec(), path, names),  # the skips are in it already
        "skip_object_types": (),
        "skip_modules": _reroot_names(spec.skip_modules, path),
    }
    if isinstance(spec, FxSpec):
        update |= _reroot_fx(spec, path, names)
    return spec.model_copy(update=update)


def _reroot_fx(spec: FxSpec, path: str, names: Sequence[str]) -> dict[str, object]:
    """The FX engine's own module-name fields, re-rooted (see ``spec_for_submodule``)."""
    convert_spec = spec.convert_mapping_spec()
    p = spec.prepare_custom
    return {
        "convert_qconfig_mapping": None if convert_spec is None else _reroot_mapping(convert_spec, path, names),
        "prepare_custom": p.model_copy(
            update={
                "non_traceable_module_names": _reroot_names(p.non_traceable_module_names, path),
                "standalone_module_names": _reroot_names(p.standalone_module_names, path),
                "preserved_attributes": (),
            }
        ),
        "convert_custom": spec.convert_custom.model_copy(update={"preserved_attributes": ()}),
    }


def kept_float_by_spec(spec: QuantSpec, path: str) -> str | None:
    """Why the spec keeps the whole module at ``path`` float, or None."""
    if not path:
        return None
    fx = spec if isinstance(spec, FxSpec) else None
    for name in fx.prepare_custom.non_traceable_module_names if fx else ():
        if covers(name, path):
            return f"kept float by spec: prepare_custom.non_traceable_module_names has {name!r}"
    mappings = [("qconfig_mapping", spec.mapping_spec())]
    if fx is not None and fx.convert_qconfig_mapping is not None:
        mappings.append(("convert_qconfig_mapping", fx.convert_qconfig_mapping))
    for where, mapping in mappings:
        found, qconfig = _qconfig_over(mapping, path)
        if found and qconfig is None:
            return f"kept float by spec: {where} (or skip_modules) sets module_name on it or a parent to null"
    return None
