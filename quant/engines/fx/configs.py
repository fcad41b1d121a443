"""The torch FX configuration objects, built from a QuantSpec in this one module.

``QConfigMapping`` (prepare- and convert-time), ``BackendConfig``, ``PrepareCustomConfig`` and
``ConvertCustomConfig`` come from the spec's data; the convert-time mapping rule of
``convert_fx`` is checked here too (``check_convert_mapping``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from quantstage.quant.config.dotted import resolve_dotted
from quantstage.quant.config.qconfig import ObserverSpec, QConfigMappingSpec, QConfigOverride
from quantstage.quant.engines.fx import _torch as _fx
from quantstage.quant.engines.fx.spec import BACKEND_CONFIG_NAMES, fx_spec
from quantstage.quant.engines.fx.spec import QuantType as QuantTypeName
from quantstage.quant.engines.registry import QuantSpec
from quantstage.quant.errors import SpecError
from quantstage.quant.hardware import default_reduce_range

__all__ = [
    "MAPPING_PRESETS",
    "QCONFIG_PRESETS",
    "backend_config",
    "build_mapping",
    "check_convert_mapping",
    "convert_custom_config",
    "convert_qconfig_mapping",
    "lower_kwargs",
    "observer_qconfig",
    "prepare_custom_config",
    "qconfig_for",
    "qconfig_mapping",
    "reference_convert_kwargs",
]

_qc = _fx.ao_quantization

# name -> factory(backend) of a torch QConfig.
QCONFIG_PRESETS: dict[str, Callable[[str], Any]] = {
    "default": lambda backend: _qc.get_default_qconfig(backend),  # type: ignore[no-untyped-call]  # unannotated in torch
    "qat": lambda backend: _qc.get_default_qat_qconfig(backend),  # type: ignore[no-untyped-call]  # unannotated in torch
    "per_tensor": lambda backend: _qc.default_qconfig,
    "dynamic": lambda backend: _qc.default_dynamic_qconfig,
    "per_channel_dynamic": lambda backend: _qc.per_channel_dynamic_qconfig,
    "float16_dynamic": lambda backend: _qc.float16_dynamic_qconfig,
    "float16_static": lambda backend: _qc.float16_static_qconfig,
    "weight_only": lambda backend: _qc.float_qparams_weight_only_qconfig,
}


def _global_mapping(qconfig: Any) -> Any:
    return _fx.QConfigMapping().set_global(qconfig)


_RNN_TYPES = (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNNCell, torch.nn.LSTMCell, torch.nn.GRUCell)


def _dynamic_mapping(spec: QConfigMappingSpec | None = None, backend: str = "x86") -> Any:
    """The dynamic preset: Linear weights per channel (or per tensor), in 8 or 7 bits (``DynamicSpec``,
    resolved for this CPU); LSTM/GRU/RNN cells keep torch's per-tensor dynamic qconfig; embeddings get
    int8 weight-only (float qparams), so an encoder's largest tables shrink ~4x like ONNX Runtime's."""
    weight, _, weight_bits, _ = (spec or QConfigMappingSpec(preset="dynamic")).effective_dynamic(backend)
    if weight_bits == 8:
        linear = _qc.per_channel_dynamic_qconfig if weight == "per_channel" else _qc.default_dynamic_qconfig
    else:
        observer = _qc.PerChannelMinMaxObserver if weight == "per_channel" else _qc.MinMaxObserver
        scheme = torch.per_channel_symmetric if weight == "per_channel" else torch.per_tensor_symmetric
        linear = _qc.QConfig(  # type: ignore[no-untyped-call]  # unannotated in torch
            activation=_qc.default_dynamic_quant_observer,
            weight=observer.with_args(dtype=torch.qint8, qscheme=scheme, quant_min=-64, quant_max=63),
        )
    mapping = _global_mapping(linear)
    for rnn in _RNN_TYPES:
        mapping.set_object_type(rnn, _qc.default_dynamic_qconfig)
    return mapping.set_object_type(torch.nn.Embedding, _qc.float_qparams_weight_only_qconfig).set_object_type(
        torch.nn.EmbeddingBag, _qc.float_qparams_weight_only_qconfig
    )


# preset -> factory(backend) of a torch QConfigMapping.
MAPPING_PRESETS: dict[str, Callable[[str], Any]] = {
    "static": lambda backend: _fx.get_default_qconfig_mapping(backend),
    "qat": lambda backend: _fx.get_default_qat_qconfig_mapping(backend),
    # Global, not per-type: prepare_fx fuses Linear+ReLU etc. and needs one qconfig across a
    # fused pattern. Only what the BackendConfig supports dynamically gets quantized.
    "dynamic": lambda backend: _dynamic_mapping(backend=backend),
    "float16": lambda backend: _global_mapping(_qc.float16_dynamic_qconfig),
    "none": lambda backend: _fx.QConfigMapping(),
}

_ACTIVATION_OBSERVERS: dict[str, type[_fx.ObserverBase]] = {
    "minmax": _qc.MinMaxObserver,
    "moving_average": _qc.MovingAverageMinMaxObserver,
    "histogram": _qc.HistogramObserver,
}


def qconfig_for(name: str | None, backend: str) -> Any:
    """The torch QConfig a preset name stands for (``None`` stays ``None``: skip)."""
    return None if name is None else QCONFIG_PRESETS[name](backend)


def observer_qconfig(observers: ObserverSpec, backend: str) -> Any:
    """The static int8 QConfig an ``ObserverSpec`` describes on ``backend``."""
    reduce_range = observers.reduce_range if observers.reduce_range is not None else default_reduce_range(backend)[0]
    activation = _ACTIVATION_OBSERVERS[observers.activation].with_args(dtype=torch.quint8, reduce_range=reduce_range)
    weight = (
        _qc.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        if observers.weight == "per_channel"
        else _qc.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    )
    return _qc.QConfig(activation=activation, weight=weight)  # type: ignore[no-untyped-call]  # unannotated in torch


def _apply(override: QConfigOverride, mapping: Any, backend: str) -> None:
    qconfig = qconfig_for(override.qconfig, backend)
    if override.set == "global":
        mapping.set_global(qconfig)
    elif override.set == "object_type":
        mapping.set_object_type(resolve_dotted(override.key), qconfig)
    elif override.set == "module_name":
        mapping.set_module_name(override.key, qconfig)
    elif override.set == "module_name_regex":
        mapping.set_module_name_regex(override.key, qconfig)
    else:
        assert override.object_type is not None and override.index is not None  # checked by the model
        mapping.set_module_name_object_type_order(
            override.key, resolve_dotted(override.object_type), override.index, qconfig
        )


def build_mapping(spec: QConfigMappingSpec, backend: str) -> Any:
    """The torch ``QConfigMapping`` of a mapping spec on ``backend`` (preset, observers, overrides in order)."""
    if spec.observers is not None:
        static = observer_qconfig(spec.observers, backend)
        mapping = _fx._get_default_qconfig_mapping_with_default_qconfig(False, backend, static)
        if backend in ("x86", "fbgemm"):  # as torch's defaults: no per-channel weights for ConvTranspose there
            transpose = _qc.QConfig(  # type: ignore[no-untyped-call]  # unannotated in torch
                activation=static.activation,
                weight=_qc.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
            )
            for cls in (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d):
                mapping.set_object_type(cls, transpose)
    elif spec.preset == "dynamic":
        mapping = _dynamic_mapping(spec, backend)
    elif spec.preset == "static":
        with warnings.catch_warnings():  # torch's onednn notice about CPUs without VNNI: handled right below
            warnings.filterwarnings("ignore", message=r"Default qconfig of oneDNN backend", category=UserWarning)
            mapping = MAPPING_PRESETS["static"](backend)
        mapping = _activation_bits(mapping, reduce_range=default_reduce_range(backend)[0])
    else:
        mapping = MAPPING_PRESETS[spec.preset](backend)
    for override in spec.overrides:
        _apply(override, mapping, backend)
    return mapping


def _activation_bits(mapping: Any, *, reduce_range: bool) -> Any:
    """``mapping`` with every activation observer that sets ``reduce_range`` setting it to ``reduce_range``
    (7 bits when True); torch's defaults otherwise unchanged (ConvTranspose, LayerNorm, fixed qparams)."""

    def adjust(qconfig: Any) -> Any:
        p = getattr(qconfig.activation, "p", None) if qconfig is not None else None
        if p is None or "reduce_range" not in p.keywords or p.keywords["reduce_range"] == reduce_range:
            return qconfig
        activation = p.func.with_args(**{**p.keywords, "reduce_range": reduce_range})
        return _qc.QConfig(activation=activation, weight=qconfig.weight)  # type: ignore[no-untyped-call]  # unannotated in torch

    mapping.set_global(adjust(mapping.global_qconfig))
    for key, qconfig in list(mapping.object_type_qconfigs.items()):
        mapping.set_object_type(key, adjust(qconfig))
    return mapping


# --------------------------------------------------------------------------- from a QuantSpec


def qconfig_mapping(spec: QuantSpec) -> Any:
    """The QConfigMapping for prepare_fx / prepare_qat_fx."""
    mapping = build_mapping(spec.mapping_spec(), spec.backend)
    _skip_fused_forms(mapping, backend_config(spec))
    return mapping


def convert_qconfig_mapping(spec: QuantSpec) -> Any | None:
    """The convert-time QConfigMapping for convert_fx, or None (use prepare's)."""
    convert_spec = fx_spec(spec).convert_mapping_spec()
    if convert_spec is None:
        return None
    mapping = build_mapping(convert_spec, spec.backend)
    _skip_fused_forms(mapping, backend_config(spec))
    return mapping


def backend_config(spec: QuantSpec) -> Any:
    """The torch BackendConfig named by ``spec.backend_config``."""
    name = fx_spec(spec).backend_config
    if name in BACKEND_CONFIG_NAMES:
        return _fx.backend_config_for(name)
    config = resolve_dotted(name)()
    if not isinstance(config, _fx.BackendConfig):
        raise SpecError(
            f"backend_config factory {name!r} returned {type(config).__name__}, "
            f"not a torch BackendConfig; fix: return torch.ao.quantization.backend_config.BackendConfig"
        )
    return config


def prepare_custom_config(spec: QuantSpec) -> Any:
    """The PrepareCustomConfig (standalone modules also need example inputs: see ``prepare``)."""
    p = fx_spec(spec).prepare_custom
    config = _fx.PrepareCustomConfig()
    # Skipped modules are left untraced too: a submodule FX cannot trace can be skipped.
    untraced = list(dict.fromkeys([*p.non_traceable_module_names, *spec.skip_modules]))
    config.set_non_traceable_module_names(untraced)
    config.set_non_traceable_module_classes([resolve_dotted(c) for c in p.non_traceable_module_classes])
    config.set_preserved_attributes(list(p.preserved_attributes))
    for float_cls, observed_cls, quant_type in _class_pairs(p.float_to_observed):
        config.set_float_to_observed_mapping(float_cls, observed_cls, quant_type)
    return config


def convert_custom_config(spec: QuantSpec) -> Any:
    """The ConvertCustomConfig for convert_fx."""
    c = fx_spec(spec).convert_custom
    config = _fx.ConvertCustomConfig()
    config.set_preserved_attributes(list(c.preserved_attributes))
    for observed_cls, quantized_cls, quant_type in _class_pairs(c.observed_to_quantized):
        config.set_observed_to_quantized_mapping(observed_cls, quantized_cls, quant_type)
    return config


def reference_convert_kwargs(spec: QuantSpec) -> dict[str, Any]:
    """Keyword arguments of ``reference_convert`` for this spec."""
    return {
        "convert_custom_config": convert_custom_config(spec),
        "qconfig_mapping": convert_qconfig_mapping(spec),
        "backend_config": backend_config(spec),
    }


def lower_kwargs(spec: QuantSpec) -> dict[str, Any]:
    """Keyword arguments of ``lower`` for this spec."""
    fx = fx_spec(spec)
    return {
        "keep_original_weights": fx.keep_original_weights,
        "remove_qconfig": fx.remove_qconfig,
        "target": fx.target,
    }


def _class_pairs(by_quant_type: dict[QuantTypeName, dict[str, str]]) -> list[tuple[Any, Any, Any]]:
    """``(from_class, to_class, torch QuantType)`` for a ``{quant_type: {from_path: to_path}}`` mapping."""
    return [
        (resolve_dotted(src), resolve_dotted(dst), _quant_type(quant_type))
        for quant_type, mapping in by_quant_type.items()
        for src, dst in mapping.items()
    ]


def _quant_type(name: str) -> Any:
    return {"static": _fx.QuantType.STATIC, "dynamic": _fx.QuantType.DYNAMIC, "weight_only": _fx.QuantType.WEIGHT_ONLY}[
        name
    ]


def _skip_fused_forms(mapping: Any, config: Any) -> None:
    """A type or op skipped with ``None`` also skips the fused modules whose pattern holds it.

    Fusion turns Linear+ReLU into LinearReLU, Conv+add into ConvAdd2d (onednn), and so on;
    the fused module would otherwise still get the global qconfig and be quantized although
    a part of it was asked to stay float (a fused module is quantized whole or not at all).
    """
    skipped = [t for t, q in mapping.object_type_qconfigs.items() if q is None]
    if not skipped:
        return
    for entry in config.configs:
        if entry.fused_module is None or entry.fused_module in mapping.object_type_qconfigs:
            continue
        pattern = entry.pattern if entry.pattern is not None else entry._pattern_complex_format
        members = set(_flatten(pattern))
        if any(obj in members for obj in skipped):
            mapping.set_object_type(entry.fused_module, None)


def _flatten(pattern: Any) -> list[Any]:
    if isinstance(pattern, tuple):
        return [leaf for part in pattern for leaf in _flatten(part)]
    return [pattern]


# --------------------------------------------------------------------------- the convert-time rule


def _name(key: Any) -> str:
    if isinstance(key, str):
        return repr(key)
    module = (getattr(key, "__module__", None) or "").removeprefix("_")
    qualname = getattr(key, "__qualname__", None) or getattr(key, "__name__", None) or repr(key)
    return f"{module}.{qualname}" if module else str(qualname)


def _observer(factory: Any) -> str:
    """An observer factory as ``Class(arg=value, ...)``: the with_args keywords tell presets apart."""
    p = getattr(factory, "p", None)
    func = getattr(p, "func", p)
    name = getattr(func, "__name__", None)
    if name is None:
        return repr(factory)
    kwargs = ", ".join(f"{k}={v}" for k, v in (getattr(p, "keywords", None) or {}).items())
    return f"{name}({kwargs})" if kwargs else str(name)


def _show(qconfig: Any) -> str:
    if qconfig is None:
        return "None"
    return f"QConfig(activation={_observer(qconfig.activation)}, weight={_observer(qconfig.weight)})"


_RULE = (
    "rule: a convert-time qconfig_mapping keeps every prepare-time key with the same qconfig "
    "or null (skip), and may add keys only with null"
)


def check_convert_mapping(prepare_mapping: Any, convert_mapping: Any) -> None:
    """Raise SpecError unless ``convert_mapping`` is a valid convert-time mapping for ``prepare_mapping``.

    The rule (convert_fx's documentation): every key of the prepare-time mapping is present
    with the same qconfig or ``None``; extra keys are allowed only with ``None``.
    """
    equals = _fx.qconfig_equals
    before_global, after_global = prepare_mapping.global_qconfig, convert_mapping.global_qconfig
    if not equals(before_global, after_global) and not (before_global is None and after_global is None):
        raise SpecError(
            f"convert-time qconfig_mapping changes the global qconfig: prepare {_show(before_global)}, "
            f"convert {_show(after_global)}; the global qconfig must stay the same "
            f"(skip parts with null overrides instead); {_RULE}"
        )
    tables = [
        ("object_type", prepare_mapping.object_type_qconfigs, convert_mapping.object_type_qconfigs),
        ("module_name", prepare_mapping.module_name_qconfigs, convert_mapping.module_name_qconfigs),
        ("module_name_regex", prepare_mapping.module_name_regex_qconfigs, convert_mapping.module_name_regex_qconfigs),
        (
            "module_name_object_type_order",
            prepare_mapping.module_name_object_type_order_qconfigs,
            convert_mapping.module_name_object_type_order_qconfigs,
        ),
    ]
    for kind, before, after in tables:
        for key, value in before.items():
            if key not in after:
                raise SpecError(
                    f"convert-time qconfig_mapping lacks {kind} {_name(key)} (prepare: {_show(value)}); "
                    f"fix: add it with the same qconfig or null; {_RULE}"
                )
            new = after[key]
            if new is not None and not equals(value, new):
                raise SpecError(
                    f"convert-time qconfig_mapping changes {kind} {_name(key)}: prepare {_show(value)}, "
                    f"convert {_show(new)}; fix: use the prepare-time qconfig or null; {_RULE}"
                )
        for key, new in after.items():
            if key not in before and new is not None:
                raise SpecError(
                    f"convert-time qconfig_mapping adds {kind} {_name(key)} with {_show(new)}, which was not "
                    f"in the prepare-time mapping; fix: set it to null (skip) or add it at prepare; {_RULE}"
                )


def check_spec(spec: QuantSpec) -> None:
    """What the FX engine checks of a spec before any work: the convert-time mapping rule (it needs torch.ao)."""
    if fx_spec(spec).convert_qconfig_mapping is not None:
        mapping = convert_qconfig_mapping(spec)
        check_convert_mapping(qconfig_mapping(spec), mapping)
