"""Fixtures the quant stage tests share: the digits data, a float SmallCNN with its int8 conversion,
and a guard for torch's global quantized engine and thread count."""

from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.fx import GraphModule

from quantstage.quant import FxSpec
from quantstage.quant.data.sources import Dataset, DataSpec, load_data
from tests.quant.helpers import CALIBRATION_BATCHES, quantize_fx, toy_model


@pytest.fixture
def restore_torch_state() -> Iterator[None]:
    """prepare() sets the quantized engine and benchmark() the thread count: put both back
    (``pytestmark = pytest.mark.usefixtures("restore_torch_state")``)."""
    engine, num_threads = torch.backends.quantized.engine, torch.get_num_threads()
    yield
    torch.backends.quantized.engine = engine
    torch.set_num_threads(num_threads)


@pytest.fixture(scope="module")
def data() -> Dataset:
    """The digits data (DataSpec's defaults)."""
    return load_data(DataSpec())


@pytest.fixture(scope="module")
def eval_inputs(data: Dataset) -> torch.Tensor:
    """Every evaluation input, as one batch."""
    return torch.cat([x for x, _ in data.evaluation])


@pytest.fixture(scope="module")
def cnn_pair(data: Dataset) -> tuple[nn.Module, GraphModule]:
    """A float SmallCNN and its x86 int8 conversion."""
    engine = torch.backends.quantized.engine
    model = toy_model("cnn")
    try:
        return model, quantize_fx(model, data, FxSpec(calibration_batches=CALIBRATION_BATCHES))
    finally:
        torch.backends.quantized.engine = engine
