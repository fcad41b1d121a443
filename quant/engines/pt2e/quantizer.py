"""A ``Pt2eSpec`` as torchao's ``X86InductorQuantizer``, and what only torchao can say of a spec.

The spec fields mean the same as for FX where PT2E has the same notion:

- ``mode: static`` / ``dynamic`` → ``get_default_x86_inductor_quantization_config(is_dynamic=…)``;
- ``qconfig_mapping.observers`` → the activation observer (histogram, min/max, moving average)
  and the weight granularity (per channel, per tensor) of the static config, ``reduce_range``
  its 7-bit activations (default on this engine: 8 bits, see ``quant.hardware``);
- ``qconfig_mapping.dynamic.activation_bits: 7`` → ``reduce_range`` of the dynamic config;
- overrides ``global`` / ``object_type`` / ``module_name`` → ``set_global`` /
  ``set_module_type_qconfig`` (``set_function_type_qconfig`` for functions) /
  ``set_module_name_qconfig``; a ``null`` qconfig keeps that part float, as with FX;
- ``skip_modules`` / ``skip_object_types`` → ``set_module_name_qconfig(name, None)`` /
  ``set_module_type_qconfig(type, None)``.

What only FX understands is refused when the spec is validated (``quant.engines.pt2e.spec``);
``check_spec`` — the engine's ``check``, before any work — adds what needs torchao: which object
types X86InductorQuantizer can configure.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from quantstage.quant.config.dotted import resolve_dotted
from quantstage.quant.engines.pt2e._torchao import torchao
from quantstage.quant.engines.pt2e.spec import Pt2eSpec
from quantstage.quant.engines.registry import QuantSpec
from quantstage.quant.errors import SpecError

__all__ = ["build_quantizer", "check_spec", "float_only", "supported_object_types"]


def check_spec(spec: QuantSpec) -> None:
    """Raise SpecError for what X86InductorQuantizer cannot honour and only torchao knows (before any work)."""
    if not isinstance(spec, Pt2eSpec):
        raise SpecError(
            f"the PT2E engine takes a Pt2eSpec (engine 'pt2e'), got a {type(spec).__name__} (engine "
            f"{spec.engine!r}); fix: quantize with the engine the spec names (quant.engines.engine_for(spec))"
        )
    for override in spec.mapping_spec().overrides:
        if override.set == "object_type" and resolve_dotted(override.key) not in supported_object_types():
            raise SpecError(f"qconfig_mapping override {override.describe()}: {_object_type_refusal(override.key)}")


def supported_object_types() -> dict[Any, Any]:
    """Module classes and functions X86InductorQuantizer can configure by type (→ their aten op)."""
    return dict(torchao().xiq.X86InductorQuantizer.module_function_to_aten_operator_type)


def _type_name(obj: Any) -> str:
    """The public dotted name users write for a module class or function (``torch.nn.Conv2d``, ``torch.cat``)."""
    import torch.nn.functional as F

    if isinstance(obj, type):
        name: str = obj.__name__
        return f"torch.nn.{name}" if getattr(torch.nn, name, None) is obj else obj.__qualname__
    for prefix, namespace in (("torch.nn.functional", F), ("torch", torch)):
        for attr, value in vars(namespace).items():
            if value is obj and not attr.startswith("_"):
                return f"{prefix}.{attr}"
    return getattr(obj, "__name__", repr(obj))


def _object_type_refusal(key: str) -> str:
    names = sorted({_type_name(t) for t in supported_object_types()})
    return (
        f"object type {key!r} cannot be configured by X86InductorQuantizer; allowed: {', '.join(names)}; fix: "
        f"skip the module by name (skip_modules), or use engine 'fx'"
    )


def _config(spec: QuantSpec) -> Any:
    """The quantization config the spec's mode and settings imply."""
    xiq = torchao().xiq
    mapping = spec.mapping_spec()
    if spec.mode == "dynamic":
        bits = mapping.effective_dynamic(spec.kernels)[1]
        return xiq.get_default_x86_inductor_quantization_config(is_dynamic=True, reduce_range=bits == 7)
    reduce_range = mapping.effective_reduce_range(spec.kernels)[0]
    config = xiq.get_default_x86_inductor_quantization_config(is_dynamic=False, reduce_range=reduce_range)
    observers = mapping.observers
    if observers is None or (observers.activation == "histogram" and observers.weight == "per_channel"):
        return config
    return _with_observers(config, observers.activation, observers.weight)


def _with_observers(config: Any, activation: str, weight: str) -> Any:
    """``config`` with the activation observer and weight granularity the spec names."""
    import dataclasses

    from torchao.quantization.pt2e.observer import (
        MinMaxObserver,
        MovingAverageMinMaxObserver,
    )

    act = config.input_activation
    if activation != "histogram":
        ctr = MinMaxObserver if activation == "minmax" else MovingAverageMinMaxObserver
        act = dataclasses.replace(act, observer_or_fake_quant_ctr=ctr.with_args(eps=2**-12))
    wgt = config.weight
    if weight == "per_tensor":
        wgt = dataclasses.replace(
            wgt,
            qscheme=torch.per_tensor_symmetric,
            ch_axis=None,
            observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12),
        )
    return dataclasses.replace(config, input_activation=act, output_activation=act, weight=wgt)


def _floating(node: Any) -> bool:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return not isinstance(value, torch.Tensor) or value.dtype.is_floating_point


def float_only(graph: Any) -> int:
    """Drop the annotations X86InductorQuantizer puts on integer tensors (RoBERTa's position ids:
    ``cumsum(mask) * mask`` is an int32 ``mul``/``add`` it annotates like a float one, and
    Inductor's ``choose_qparams`` then refuses int32 at compile time); return how many it dropped."""
    dropped = 0
    for node in graph.graph.nodes:
        annotation = node.meta.get("quantization_annotation")
        if annotation is None:
            continue
        for arg in [a for a in annotation.input_qspec_map if not _floating(a)]:
            del annotation.input_qspec_map[arg]
            dropped += 1
        if annotation.output_qspec is not None and not _floating(node):
            annotation.output_qspec = None
            dropped += 1
    return dropped


def build_quantizer(spec: QuantSpec) -> Any:
    """The ``X86InductorQuantizer`` for ``spec`` (``check_spec`` has passed), annotating float tensors only."""
    xiq = torchao().xiq
    config = _config(spec)
    quantizer = xiq.X86InductorQuantizer()
    annotate = quantizer.annotate

    def annotate_floats(model: Any) -> Any:
        annotated = annotate(model)
        float_only(model)
        return annotated

    quantizer.annotate = annotate_floats
    mapping = spec.mapping_spec()
    if mapping.preset != "none":
        quantizer.set_global(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchao warns (and ignores) what it cannot honour: make that an error
        try:
            for override in mapping.overrides:
                value = None if override.qconfig is None else config
                if override.set == "global":
                    if value is not None:
                        quantizer.set_global(value)
                    else:
                        quantizer.global_config = None
                elif override.set == "module_name":
                    quantizer.set_module_name_qconfig(override.key, value)
                elif override.set == "object_type":
                    target = resolve_dotted(override.key)
                    if isinstance(target, type) and issubclass(target, nn.Module):
                        quantizer.set_module_type_qconfig(target, value)
                    else:
                        quantizer.set_function_type_qconfig(target, value)
        except (UserWarning, AssertionError, ValueError) as exc:
            raise SpecError(
                f"X86InductorQuantizer refused the spec's qconfig_mapping: {str(exc).splitlines()[0]}; fix: "
                f"change that override, or use engine 'fx'"
            ) from None
    return quantizer
