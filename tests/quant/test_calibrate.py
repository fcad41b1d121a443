"""calibrate: counts batches, stops at max_batches, warns on fewer, fills the observers."""

import logging
import math

import pytest
import torch

from quantstage.quant import FxSpec
from quantstage.quant.calibrate import calibrate
from quantstage.quant.data.sources import Dataset
from quantstage.quant.engines.fx.prepare import prepare
from tests.quant.helpers import toy_model

pytestmark = [
    pytest.mark.usefixtures("restore_torch_state"),
]


def test_calibrate_counts_and_respects_max_batches(data: Dataset) -> None:
    prepared = prepare(toy_model("mlp"), data.example_inputs, FxSpec())
    calls: list[tuple[int, int]] = []
    seen = calibrate(prepared, data.calibration, max_batches=3, on_batch=lambda i, n: calls.append((i, n)))
    assert seen == 3
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_calibrate_with_fewer_batches_than_asked(data: Dataset, caplog: pytest.LogCaptureFixture) -> None:
    prepared = prepare(toy_model("mlp"), data.example_inputs, FxSpec())
    with caplog.at_level(logging.WARNING, logger="quantstage.quant.engines.fx.prepare"):
        seen = calibrate(prepared, data.calibration[:2], max_batches=5)
    assert seen == 2
    assert "calibration saw 2 batches, fewer than the 5 asked for" in caplog.text


def test_calibrate_updates_observers(data: Dataset) -> None:
    prepared = prepare(toy_model("mlp"), data.example_inputs, FxSpec())
    observers = [m for m in prepared.modules() if isinstance(m, torch.ao.quantization.ObserverBase)]
    assert observers
    calibrate(prepared, data.calibration, max_batches=1)
    first = observers[0]
    assert math.isfinite(first.min_val.item()) and math.isfinite(first.max_val.item())
