"""Custom module mappings from the spec: static LSTM through torch's quantizable/quantized LSTM."""

import copy

import torch
from torch import nn

from quantstage.quant.engines import FxSpec
from quantstage.quant.engines.fx import _torch as _fx
from quantstage.quant.engines.fx import configs as fx_configs
from quantstage.quant.engines.fx.convert import convert, lower, reference_convert
from quantstage.quant.engines.fx.prepare import prepare

SPEC = FxSpec(
    backend="x86",
    prepare_custom={"float_to_observed": {"static": {"torch.nn.LSTM": "torch.ao.nn.quantizable.LSTM"}}},
    convert_custom={
        "observed_to_quantized": {"static": {"torch.ao.nn.quantizable.LSTM": "torch.ao.nn.quantized.LSTM"}}
    },
)


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(8, 16)
        self.lstm = nn.LSTM(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # torch's static LSTM custom module needs the (input, (h0, c0)) call form
        y, _ = self.lstm(self.proj(x), (h, c))
        return self.head(y)


def test_static_lstm_custom_module_parity() -> None:
    model = Tagger().eval()
    x = (torch.randn(5, 3, 8), torch.zeros(1, 3, 16), torch.zeros(1, 3, 16))
    prepared = prepare(model, x, SPEC)
    assert isinstance(prepared.lstm, torch.ao.nn.quantizable.LSTM)
    with torch.no_grad():
        for _ in range(3):
            prepared(torch.randn(5, 3, 8), x[1], x[2])
    custom = fx_configs.convert_custom_config(SPEC)
    with _fx.fx_quiet():
        expected = _fx.convert_fx(copy.deepcopy(prepared), convert_custom_config=custom)
    for got in (
        convert(prepared, convert_custom_config=custom),
        lower(reference_convert(prepared, convert_custom_config=custom)),
    ):
        assert got.code == expected.code
        assert isinstance(got.lstm, torch.ao.nn.quantized.LSTM)
        assert torch.equal(got(*x), expected(*x))
