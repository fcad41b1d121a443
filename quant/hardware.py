"""What a benchmark ran on: CPU model, ISA flags that matter for int8, engine, versions, threads."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["default_reduce_range", "dynamic_bits", "has_int8_dot_product", "machine_info"]

# ISA extensions that decide int8 GEMM speed on x86 (VNNI/AMX) and what fbgemm/onednn can use.
_INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def _cpuinfo() -> dict[str, str]:
    path = Path("/proc/cpuinfo")
    info: dict[str, str] = {}
    if not path.exists():
        return info
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "flags") and key not in info:
            info[key] = value.strip()
    return info


# int8 dot-product instructions: u8*s8 products accumulate straight into int32 (no int16
# intermediate that saturates), so x86/fbgemm kernels are exact with full 8-bit activations.
_INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# Backends whose x86 kernels multiply u8*s8 pairs into int16 (vpmaddubsw) without VNNI/AMX.
_REDUCE_RANGE_BACKENDS = ("x86", "fbgemm", "onednn")


def has_int8_dot_product() -> str | None:
    """The first int8 dot-product ISA flag this CPU has (VNNI/AMX), or None."""
    flags = set(_cpuinfo().get("flags", "").split())
    return next((f for f in _INT8_DOT_FLAGS if f in flags), None)


def default_reduce_range(backend: str) -> tuple[bool, str]:
    """Whether static activations default to 7 bits (``reduce_range``) on ``backend``, and why.

    torch's x86/fbgemm defaults observe 7-bit activations because AVX2/AVX-512 kernels without
    VNNI multiply u8*s8 pairs into int16 with saturation. On a CPU with VNNI/AMX they do not
    saturate, and 8-bit activations gain accuracy at no cost (ResNet-18 output SQNR 32.3 -> 36.0 dB,
    bench/RESULTS.md). onednn's default is 8 bits, which saturates the same way on a CPU without
    VNNI (torch warns so; a digits MLP measured 19.6 dB output SQNR on AVX2): it gets 7 bits there
    too. qnnpack (no int16 intermediate) always uses 8 bits. The choice is the machine's: it is
    part of the spec digest, and a model converted here for another CPU should set
    ``observers.reduce_range`` explicitly.
    """
    if backend == "pt2e":  # measured on AVX2: ResNet-18 SQNR 37.1 dB with 8 bits, 34.7 with 7 (bench/PT2E.md)
        return False, "pt2e: Inductor's oneDNN int8 kernels do not saturate: 8-bit activations"
    if backend not in _REDUCE_RANGE_BACKENDS:
        return False, f"{backend}: 8-bit activations"
    flag = has_int8_dot_product()
    if flag:
        return False, f"{backend} on a CPU with {flag}: 8-bit activations (no int16 saturation)"
    return True, f"{backend} without VNNI/AMX: 7-bit activations (reduce_range) against int16 saturation"


def dynamic_bits(backend: str, activation_bits: int | None, weight_bits: int | None) -> tuple[int, int, str]:
    """``(activation bits, weight bits, why)`` of dynamic int8 Linear layers on ``backend`` and this CPU.

    Activations default to 8 bits. Weights default to 8 bits unless 8-bit activations meet a CPU
    without an int8 dot-product instruction on x86/fbgemm/onednn: fbgemm then adds pairs of u8*s8
    products in int16, which 8 x 8 bits saturate (81,372 saturated sums in all-MiniLM-L6-v2 on AVX2)
    and 8 x 7 bits do not (2*255*64 = 32640), so weights get 7 bits (pooled cosine 0.991 vs 0.992).
    """
    activation = 8 if activation_bits is None else activation_bits
    if weight_bits is not None:
        return activation, weight_bits, "set in the spec (qconfig_mapping.dynamic)"
    if activation == 7 or backend not in _REDUCE_RANGE_BACKENDS:
        return activation, 8, f"{backend}, {activation}-bit activations: 8-bit weights"
    flag = has_int8_dot_product()
    if flag:
        return activation, 8, f"{backend} on a CPU with {flag}: 8-bit activations and weights (no int16 saturation)"
    return activation, 7, f"{backend} without VNNI/AMX: 8-bit activations with 7-bit weights (no int16 saturation)"


def machine_info() -> dict[str, Any]:
    """A flat description of this machine and software, to log beside every timing."""
    import torch  # here: the spec's qconfig reads this module, and building a spec imports no torch

    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    return {
        "cpu_model": cpu.get("model name") or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "isa_int8": ",".join(f for f in _INT8_FLAGS if f in flags) or "unknown",
        "quantized_engine": torch.backends.quantized.engine,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
