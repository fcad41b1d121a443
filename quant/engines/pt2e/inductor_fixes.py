"""torch 2.13 Inductor corrections applied while a PT2E package compiles (``inductor_fixes()``), each a
context manager that patches Inductor for its duration only; measured with ``python -m bench.pt2e_speed``
(one thread, same process). See ``package.py``'s docstring for what each one fixes and gains.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["inductor_fixes"]


@contextlib.contextmanager
def inductor_fixes() -> Iterator[None]:
    """Every correction below, for one compile."""
    with (
        _qconv_channels_last(),
        _qconv_prepack_shapes(),
        _zero_in_dynamic_range(),
        _realized_qparams(),
        _vectorized_round_to_int8(),
    ):
        yield


@contextlib.contextmanager
def _qconv_channels_last() -> Iterator[None]:
    """Force a channels-last output layout on Inductor's quantized convolutions while compiling."""
    try:
        import torch._inductor.mkldnn_ir as mkldnn_ir
        from torch._inductor.ir import FixedLayout
        from torch._inductor.utils import convert_shape_to_inductor
        from torch._prims_common import make_channels_last_strides_for

        original = mkldnn_ir._prepare_convolution_fusion_create
    except (ImportError, AttributeError):  # a torch without the hook: the reference check still guards
        yield
        return

    signature = inspect.signature(original)

    def patched(*args: Any, **kwargs: Any) -> Any:
        inputs, constant_args, layout, req_stride_order, other = original(*args, **kwargs)
        quantized = signature.bind(*args, **kwargs).arguments.get("quantize_args")
        if quantized is not None and len(layout.size) in (4, 5):
            channels_last = make_channels_last_strides_for(layout.size)
            if list(layout.stride) != list(channels_last):
                layout = FixedLayout(layout.device, layout.dtype, layout.size, convert_shape_to_inductor(channels_last))
        return inputs, constant_args, layout, req_stride_order, other

    mkldnn_ir._prepare_convolution_fusion_create = patched
    try:
        yield
    finally:
        mkldnn_ir._prepare_convolution_fusion_create = original


def _choose_qparams_tensor(input: torch.Tensor, quant_min: int, quant_max: int, eps: float, dtype: torch.dtype) -> Any:
    """``quantized_decomposed.choose_qparams.tensor`` as the reference computes it (``determine_qparams``): the
    range always includes zero."""
    min_val, max_val = torch.aminmax(input)
    min_val = torch.clamp(min_val, max=0.0)
    max_val = torch.clamp(max_val, min=0.0)
    scale = torch.clamp((max_val - min_val) / float(quant_max - quant_min), min=eps)
    zero_point = torch.clamp(quant_min - torch.round(min_val / scale).to(torch.int), quant_min, quant_max)
    return scale.to(torch.float64), zero_point.to(torch.int64)


@contextlib.contextmanager
def _zero_in_dynamic_range() -> Iterator[None]:
    """Compile dynamic quantization's ``choose_qparams`` with the reference's range.

    torch 2.13's Inductor decomposition of ``choose_qparams.tensor`` takes the activation's min and max as they
    are, where the reference (``determine_qparams``) widens the range to include zero. For an activation of
    one sign (a positive-only or negative-only linear input) the package's zero point clamps while its scale
    shrinks, and the activation saturates: the compiled model then disagrees with the reference.
    """
    try:
        from torch._inductor import decomposition

        target = torch.ops.quantized_decomposed.choose_qparams.tensor
        table = decomposition.decompositions
        original = table[target]
    except (ImportError, AttributeError, KeyError):
        yield
        return
    table[target] = _choose_qparams_tensor
    try:
        yield
    finally:
        table[target] = original


@contextlib.contextmanager
def _realized_qparams() -> Iterator[None]:
    """Compute a dynamic quantization's scale and zero point once, not once per vector of the quantize loop.

    Inductor's lowering of ``quantize_per_tensor.tensor`` inlines the ``choose_qparams`` arithmetic (two
    divisions, a rounding, clamps) into the loop that quantizes the activation; the C++ compiler cannot hoist
    it (the uint8 output may alias the min/max it reads). Realizing scale and zero point first makes the loop
    read two scalars (bench encoder, one thread, batch 1: 15.0 -> 12.9 ms with this alone).
    """
    try:
        from torch._inductor import lowering

        target = torch.ops.quantized_decomposed.quantize_per_tensor.tensor
        original = lowering.lowerings[target]
    except (ImportError, AttributeError, KeyError):  # a torch without this lowering: nothing to speed up
        yield
        return

    def realized(input: Any, scale: Any, zero_point: Any, *args: Any, **kwargs: Any) -> Any:
        for box in (scale, zero_point):
            realize = getattr(box, "realize", None)
            if realize is not None:
                realize()
        return original(input, scale, zero_point, *args, **kwargs)

    lowering.lowerings[target] = realized
    try:
        yield
    finally:
        lowering.lowerings[target] = original


@contextlib.contextmanager
def _vectorized_round_to_int8() -> Iterator[None]:
    """Round float vectors to int8/uint8 with vector instructions in 256-bit (AVX2) kernels.

    Inductor emits ``at::vec::round_convert<uint8_t>`` for every quantize; torch 2.13's AVX2 headers have
    no specialisation of it (AVX-512's has one), so the generic one runs: a ``roundf`` library call per
    element. The portable (x86-64-v3) package spent most of its dynamic-int8 time there (bench encoder, one
    thread, batch 1: 12.9 -> 7.7 ms, after ``_realized_qparams``). Emitted instead: round to nearest even,
    clamp to the integer range, then the exact (vectorized) conversion: what AVX-512's ``round_convert``
    computes, and the reference's ``torch.round`` (the generic one rounds halves away from zero).
    """
    try:
        from torch._inductor.codegen import cpp

        kernel = cpp.CppVecKernel
        original: Callable[..., Any] = kernel.get_to_dtype_expr
    except (ImportError, AttributeError):  # a torch without this codegen: nothing to speed up
        yield
        return
    limits = {torch.uint8: (0, 255, "uint8_t"), torch.int8: (-128, 127, "int8_t")}

    def get_to_dtype_expr(
        self: Any, src: Any, dtype: torch.dtype, src_dtype: torch.dtype, rounding: bool = False
    ) -> Any:
        vectors = (
            (self._get_num_vectors(src_dtype), self._get_num_vectors(dtype)) if getattr(src, "is_vec", False) else ()
        )
        if (
            rounding
            and src_dtype == torch.float
            and dtype in limits
            and vectors == (1, 1)
            and self.vec_isa.bit_width() == 256
        ):
            low, high, ctype = limits[dtype]
            bounds = f"at::vec::Vectorized<float>({low}.0f), at::vec::Vectorized<float>({high}.0f)"
            return f"at::vec::convert<{ctype}>(at::vec::clamp(({src}).round(), {bounds}))"
        return original(self, src, dtype, src_dtype, rounding)

    setattr(kernel, "get_to_dtype_expr", get_to_dtype_expr)  # noqa: B010  (a method: mypy refuses the assignment)
    try:
        yield
    finally:
        setattr(kernel, "get_to_dtype_expr", original)  # noqa: B010


def _concrete_batch(shape: Any) -> list[int] | None:
    """``shape`` with a symbolic first (batch) dimension as 1; None when another dimension is symbolic."""
    from torch.fx.experimental.symbolic_shapes import is_concrete_int

    dims = list(shape)
    if not dims or not all(is_concrete_int(d) for d in dims[1:]):
        return None
    return [1] + [int(d) for d in dims[1:]]


@contextlib.contextmanager
def _qconv_prepack_shapes() -> Iterator[None]:
    """Pack quantized conv weights for a concrete input shape when the batch is dynamic.

    With a symbolic batch Inductor prepacks each int8 conv weight without an input shape, and oneDNN then
    picks a weight layout its kernel does not run on, reordering the weights on every call (a 512-channel
    3x3 conv at 7x7: 1.1 ms instead of 0.3 at batch 1). The weight layout does not depend on the batch:
    packing for batch 1 gives the static-shape layout at every batch.
    """
    try:
        from torch._inductor.fx_passes import mkldnn_fusion

        original: Callable[..., Any] = mkldnn_fusion._eliminate_duplicate_packed_nodes
        prepack = torch.ops.onednn.qconv_prepack.default
    except (ImportError, AttributeError):  # a torch without this pass: the packing stays shapeless
        yield
        return

    def with_shapes(gm: torch.fx.GraphModule) -> Any:
        for node in gm.graph.nodes:
            if node.target not in (prepack, torch.ops.onednn.qconv_prepack) or node.args[8] is not None:
                continue
            inputs = [u.args[0] for u in node.users if u.args and isinstance(u.args[0], torch.fx.Node)]
            values = [i.meta.get("val") for i in inputs]
            shapes = {tuple(s) for s in (_concrete_batch(v.shape) for v in values if isinstance(v, torch.Tensor)) if s}
            if len(shapes) == 1:
                node.args = (*node.args[:8], list(shapes.pop()))
        return original(gm)

    mkldnn_fusion._eliminate_duplicate_packed_nodes = with_shapes
    try:
        yield
    finally:
        mkldnn_fusion._eliminate_duplicate_packed_nodes = original
