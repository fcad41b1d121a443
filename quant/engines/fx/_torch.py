"""The one seam to torch's FX graph-mode quantization.

Every ``torch.ao.quantization`` import of the project lives here so that a PT2E engine
(``prepare_pt2e``/``convert_pt2e``) can stand beside it later without touching callers.
FX quantization is deprecated in favour of torchao PT2E; its deprecation warning is
silenced here, narrowly (that message, that category, only around our own calls).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from typing import cast

import torch
import torch.ao.ns._numeric_suite_fx as numeric_suite
import torch.ao.quantization as ao_quantization
from torch.ao.ns.fx.utils import compute_sqnr
from torch.ao.quantization import ObserverBase, QConfigMapping
from torch.ao.quantization.backend_config import (
    BackendConfig,
    get_fbgemm_backend_config,
    get_native_backend_config,
    get_onednn_backend_config,
    get_qnnpack_backend_config,
)
from torch.ao.quantization.backend_config.executorch import get_executorch_backend_config
from torch.ao.quantization.backend_config.tensorrt import get_tensorrt_backend_config
from torch.ao.quantization.backend_config.x86 import get_x86_backend_config
from torch.ao.quantization.fx.convert import convert as fx_convert
from torch.ao.quantization.fx.custom_config import ConvertCustomConfig, PrepareCustomConfig
from torch.ao.quantization.fx.lower_to_fbgemm import lower_to_fbgemm
from torch.ao.quantization.fx.qconfig_mapping_utils import (
    _generate_node_name_to_qconfig,
    _update_qconfig_for_fusion,
    _update_qconfig_for_qat,
)
from torch.ao.quantization.qconfig import QConfigAny, qconfig_equals
from torch.ao.quantization.qconfig_mapping import (
    _get_default_qconfig_mapping_with_default_qconfig,
    get_default_qat_qconfig_mapping,
    get_default_qconfig_mapping,
)
from torch.ao.quantization.quant_type import QuantType
from torch.ao.quantization.quantize import _remove_qconfig
from torch.ao.quantization.quantize_fx import (
    attach_preserved_attrs_to_model,
    convert_fx,
    prepare_fx,
    prepare_qat_fx,
)

__all__ = [
    "BackendConfig",
    "ObserverBase",
    "QuantType",
    "ao_quantization",
    "qconfig_equals",
    "ConvertCustomConfig",
    "PrepareCustomConfig",
    "QConfigAny",
    "QConfigMapping",
    "_generate_node_name_to_qconfig",
    "_get_default_qconfig_mapping_with_default_qconfig",
    "_remove_qconfig",
    "_update_qconfig_for_fusion",
    "_update_qconfig_for_qat",
    "attach_preserved_attrs_to_model",
    "backend_config_for",
    "embedding_weight_only",
    "compute_sqnr",
    "numeric_suite",
    "convert_fx",
    "fx_convert",
    "fx_quiet",
    "get_default_qat_qconfig_mapping",
    "get_default_qconfig_mapping",
    "lower_to_fbgemm",
    "prepare_fx",
    "prepare_qat_fx",
]

# The exact start of torch's DEPRECATION_WARNING (torch/ao/quantization/utils.py).
_FX_DEPRECATION = r"torch\.ao\.quantization is deprecated"

_REDUCE_RANGE = r"Please use quant_min and quant_max to specify the range for observers"

# Lowering creates quantized tensors, which torch 2.13 flags as deprecated (PT2E is the future).
_QTENSOR_DEPRECATION = r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized"

_BACKEND_CONFIGS = {
    "native": get_native_backend_config,
    "x86": get_x86_backend_config,
    "fbgemm": get_fbgemm_backend_config,
    "qnnpack": get_qnnpack_backend_config,
    "onednn": get_onednn_backend_config,
    "executorch": get_executorch_backend_config,
    "tensorrt": get_tensorrt_backend_config,
}


def backend_config_for(name: str) -> BackendConfig:
    """The BackendConfig torch ships under ``name`` (``native``, ``x86``, ``fbgemm``, ...)."""
    try:
        factory = _BACKEND_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown backend_config {name!r}; allowed: {sorted(_BACKEND_CONFIGS)}") from None
    return factory()


@contextlib.contextmanager
def fx_quiet() -> Iterator[None]:
    """Silence FX quantization's deprecation warning (only that one) for our own calls."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_FX_DEPRECATION, category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=_FX_DEPRECATION, category=FutureWarning)
        # x86/fbgemm default qconfigs still pass reduce_range to their observers.
        warnings.filterwarnings("ignore", message=_REDUCE_RANGE, category=UserWarning)
        warnings.filterwarnings("ignore", message=_QTENSOR_DEPRECATION, category=UserWarning)
        yield


def embedding_weight_only(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of an ``nn.Embedding``/``nn.EmbeddingBag`` as torch's weight-only int8 form
    (``float_qparams_weight_only_qconfig``: per-row scale and offset), as FX lowers it."""
    from torch.ao.nn import quantized as nnq

    float_module = copy.deepcopy(module)
    # nn.Module types its dynamic attributes as Tensor | Module
    float_module.qconfig = ao_quantization.float_qparams_weight_only_qconfig  # type: ignore[assignment]
    cls = nnq.EmbeddingBag if isinstance(module, torch.nn.EmbeddingBag) else nnq.Embedding
    return cast(torch.nn.Module, cls.from_float(float_module))  # type: ignore[no-untyped-call]  # unannotated in torch
