"""torchao PT2E + Inductor as a peer: export, X86InductorQuantizer, convert_pt2e, torch.compile.

Optional (the ``bench`` extra installs torchao); never a runtime dependency. The export is
static-shaped, so the peer is built and timed for one batch size.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["pt2e_available", "pt2e_int8"]


def pt2e_available() -> str | None:
    """None when torchao's PT2E quantizer imports, else the reason."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            import torchao.quantization.pt2e.quantize_pt2e
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def pt2e_int8(
    model: torch.nn.Module, calibration: Sequence[torch.Tensor], batch: int
) -> tuple[Callable[[torch.Tensor], Any], dict[str, Any]]:
    """A compiled PT2E int8 model for inputs of ``batch`` rows; calibration samples are fed ``batch`` at a time."""
    import torch._inductor.config as inductor_config
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    inductor_config.freezing = True  # without it Inductor keeps the quantized pattern unfused (fp32 speed)
    example = calibration[0][:batch]
    started = time.perf_counter()
    exported = torch.export.export(model.eval(), (example,)).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for images in calibration:
            for i in range(0, images.shape[0] - batch + 1, batch):
                prepared(images[i : i + batch])
    converted = convert_pt2e(prepared)
    convert_s = time.perf_counter() - started
    compiled = torch.compile(converted)
    started = time.perf_counter()
    with torch.no_grad():
        compiled(example)
    compile_s = time.perf_counter() - started

    def run(x: torch.Tensor) -> Any:
        return compiled(x)

    return run, {
        "convert_s": convert_s,
        "compile_s": compile_s,
        "batch": batch,
        "quantizer": "X86InductorQuantizer default (static, per-channel weights)",
        "inductor_freezing": True,
    }
