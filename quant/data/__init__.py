"""Where models and data come from, and how a batch of inputs reaches ``forward``."""

from quantstage.quant.data.inputs import args_of, batch_len, bind_to_forward, call, check_inputs_fit, describe, head
from quantstage.quant.data.model_source import (
    ModelSource,
    build_from_factory,
    load_pickled_module,
    load_state_dict_file,
    load_weights,
)
from quantstage.quant.data.sources import Batch, Dataset, DataSpec, batches_digest, digits_split, load_data

__all__ = [
    "Batch",
    "DataSpec",
    "Dataset",
    "ModelSource",
    "args_of",
    "batch_len",
    "batches_digest",
    "bind_to_forward",
    "build_from_factory",
    "call",
    "check_inputs_fit",
    "describe",
    "digits_split",
    "head",
    "load_data",
    "load_pickled_module",
    "load_state_dict_file",
    "load_weights",
]
