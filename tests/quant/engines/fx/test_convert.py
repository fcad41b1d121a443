"""FX prepare, calibrate, convert end to end: static (every backend) and dynamic int8 against
float, by output SQNR and top-1 agreement on the digits."""

import pytest
import torch

from quantstage.quant import FxSpec
from quantstage.quant.config.spec import BACKENDS
from quantstage.quant.data.sources import Dataset
from quantstage.quant.measure.evaluate import evaluate, sqnr_db
from tests.quant.helpers import CALIBRATION_BATCHES, quantize_fx, toy_model

pytestmark = [
    pytest.mark.usefixtures("restore_torch_state"),
]

# Measured minimum over seeds 0-4 and all backends minus ~7 dB of margin (tests.quant.helpers: the measurements).
MIN_SQNR_DB = {"cnn": 33.0, "mlp": 30.0, "mlp-dynamic": 30.0}
MIN_AGREEMENT = 0.9


@pytest.mark.parametrize("backend", BACKENDS, ids=list(BACKENDS))
@pytest.mark.parametrize("kind", ["cnn", "mlp"], ids=["cnn", "mlp"])
def test_static_quantization_sqnr(data: Dataset, eval_inputs: torch.Tensor, kind: str, backend: str) -> None:
    model = toy_model(kind)
    quantized = quantize_fx(model, data, FxSpec(backend=backend, calibration_batches=CALIBRATION_BATCHES))
    with torch.no_grad():
        sqnr = sqnr_db(model(eval_inputs), quantized(eval_inputs))
    print(f"{kind}/{backend}: output SQNR {sqnr:.2f} dB")
    assert sqnr >= MIN_SQNR_DB[kind], f"SQNR {sqnr} too low"
    report = evaluate(model, quantized, data.evaluation)
    assert report.agreement >= MIN_AGREEMENT, f"agreement {report.agreement} too low"
    assert report.sqnr_db == pytest.approx(sqnr)


def test_dynamic_quantization_sqnr(data: Dataset, eval_inputs: torch.Tensor) -> None:
    model = toy_model("mlp-dynamic")
    quantized = quantize_fx(model, data, FxSpec(mode="dynamic"))
    assert any("dynamic" in type(m).__module__ for m in quantized.modules()), quantized
    with torch.no_grad():
        sqnr = sqnr_db(model(eval_inputs), quantized(eval_inputs))
    print(f"mlp-dynamic: output SQNR {sqnr:.2f} dB")
    assert sqnr >= MIN_SQNR_DB["mlp-dynamic"], f"SQNR {sqnr} too low"


def test_dynamic_quantization_of_linear_relu(data: Dataset, eval_inputs: torch.Tensor) -> None:
    model = toy_model("mlp")
    quantized = quantize_fx(model, data, FxSpec(mode="dynamic"))
    with torch.no_grad():
        assert sqnr_db(model(eval_inputs), quantized(eval_inputs)) >= MIN_SQNR_DB["mlp"]
