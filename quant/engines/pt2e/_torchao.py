"""torchao's PT2E imports, in one place: imported on first use, with one error when torchao is missing.

Importing ``x86_inductor_quantizer`` also registers the Inductor passes that fuse the quantized
patterns into oneDNN int8 kernels: every process that compiles a PT2E model imports it first.
On CPU, torchao prints a notice about its CUDA extensions on import; it is swallowed here.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import types
import warnings
from collections.abc import Iterator

from quantstage.quant.errors import SpecError

__all__ = ["TORCHAO_VERSION", "pt2e_quiet", "torchao"]

TORCHAO_VERSION = "0.18.0"


@functools.cache
def torchao() -> types.SimpleNamespace:
    """The torchao PT2E API quantstage uses (X86InductorQuantizer, prepare/convert, numeric debugger)."""
    # "Detected no triton": torchao's GPU int8 matmul kernels, never used on the CPU path
    logging.getLogger("torchao.kernel.intmm").setLevel(logging.ERROR)
    pytree_log = logging.getLogger("torch.utils._pytree")  # "register_constant() on Enum subclasses is deprecated"
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchao as _torchao
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
            from torchao.quantization.pt2e import (
                compare_results,
                extract_results_from_loggers,
                move_exported_model_to_eval,
                prepare_for_propagation_comparison,
            )
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as exc:
        raise SpecError(
            f"engine 'pt2e' needs torchao {TORCHAO_VERSION}, which does not import here ({exc}); fix: "
            f"pip install 'quantstage[pt2e]' (or torchao=={TORCHAO_VERSION}), or use engine 'fx'"
        ) from None
    finally:
        pytree_log.setLevel(level)
    version = getattr(_torchao, "__version__", "unknown")
    if not str(version).startswith(TORCHAO_VERSION.rsplit(".", 1)[0]):
        raise SpecError(
            f"engine 'pt2e' is built for torchao {TORCHAO_VERSION}, found {version}; fix: pip install "
            f"torchao=={TORCHAO_VERSION}"
        )
    return types.SimpleNamespace(
        version=version,
        xiq=xiq,
        prepare_pt2e=prepare_pt2e,
        convert_pt2e=convert_pt2e,
        move_exported_model_to_eval=move_exported_model_to_eval,
        prepare_for_propagation_comparison=prepare_for_propagation_comparison,
        extract_results_from_loggers=extract_results_from_loggers,
        compare_results=compare_results,
    )


@contextlib.contextmanager
def pt2e_quiet() -> Iterator[None]:
    """Silence the notices torch and torchao raise inside their own PT2E code (not about the user's model)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
        )
        warnings.filterwarnings("ignore", message=r"To copy construct from a tensor", category=UserWarning)
        yield
