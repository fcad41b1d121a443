"""What a benchmark ran on: CPU model, ISA flags that matter for int8, engine, versions, threads."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["machine_info"]

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


def machine_info() -> dict[str, Any]:
    """A flat description of this machine and software, to log beside every timing."""
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
