"""Calibration that holds up: observer choice per spec, and warnings on degenerate ranges."""

import pytest
import torch
from torch import nn

from quantstage.quant.calibrate import calibrate
from quantstage.quant.engines import FxSpec, QuantSpec
from quantstage.quant.engines.fx.convert import convert
from quantstage.quant.engines.fx.prepare import degenerate_ranges, prepare
from quantstage.quant.measure.evaluate import sqnr_db


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(16, 32)
        self.dead = nn.Linear(32, 8)
        self.fc2 = nn.Linear(32, 4)
        with torch.no_grad():
            self.dead.weight.zero_()
            self.dead.bias.fill_(-1.0)  # relu(dead(x)) is always 0: a constant tensor

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.fc1(x))
        return self.fc2(h), torch.relu(self.dead(h))


def _spec(activation: str, weight: str = "per_channel") -> QuantSpec:
    return FxSpec(qconfig_mapping={"preset": "static", "observers": {"activation": activation, "weight": weight}})


@pytest.mark.parametrize("activation", ["minmax", "moving_average", "histogram"])
@pytest.mark.parametrize("weight", ["per_channel", "per_tensor"])
def test_observer_choice_converts_and_holds_accuracy(activation: str, weight: str) -> None:
    model = Net().eval()
    x = torch.randn(64, 16)
    prepared = prepare(model, (x,), _spec(activation, weight))
    observers = {type(m).__name__ for m in prepared.modules()}
    expected = {
        "minmax": "MinMaxObserver",
        "moving_average": "MovingAverageMinMaxObserver",
        "histogram": "HistogramObserver",
    }
    assert expected[activation] in observers
    weight_observer = type(prepared.fc1.qconfig.weight()).__name__  # weights are observed at convert
    assert weight_observer == {"per_channel": "PerChannelMinMaxObserver", "per_tensor": "MinMaxObserver"}[weight]
    calibrate(prepared, [(x, None)], max_batches=1)
    quantized = convert(prepared)
    sqnr = sqnr_db(model(x)[0], quantized(x)[0])
    assert sqnr >= 25, f"{activation}/{weight}: SQNR {sqnr:.1f} dB too low"


def test_observers_only_with_static_preset() -> None:
    with pytest.raises(ValueError, match="observers apply to the static preset, not 'dynamic'"):
        FxSpec(mode="dynamic", qconfig_mapping={"preset": "dynamic", "observers": {"activation": "minmax"}})


def test_degenerate_ranges_name_the_module() -> None:
    model = Net().eval()
    x = torch.randn(8, 16)
    prepared = prepare(model, (x,), _spec("minmax"))
    before = degenerate_ranges(prepared)
    assert any("calibration never reached the output of fc1" in m for m in before), before
    calibrate(prepared, [(x, None)], max_batches=1)
    after = degenerate_ranges(prepared)
    assert any("was constant" in m and "dead" in m for m in after), after
    assert not any("fc1" in m for m in after)
