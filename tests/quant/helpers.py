"""What the quant stage tests share: seeded toy models and a digits quantize helper (FX engine),
fake accuracy and benchmark reports, and a config that turns every gate on.

Models are tiny and randomly initialised (seeded): the numeric bounds the tests put on them are on
output SQNR against float, which needs no training. Measured on torch 2.13.0 CPU over seeds 0-4
(calibrated on 8 digits batches, evaluated on the 450 held-out digits):
CNN 40.6-48.2 dB, MLP 36.8-43.0 dB, dynamic Linear-tanh-Linear 37.8-40.6 dB; top-1
agreement >= 0.984.
"""

# No ``from __future__ import annotations`` here: with string annotations FX generates
# ``x: _torch_Tensor_`` placeholders that torch.jit.script cannot resolve, and the export
# tests need models whose converted GraphModule scripts.
import torch
from torch import nn
from torch.fx import GraphModule

from quantstage.quant import QuantSpec
from quantstage.quant.calibrate import calibrate
from quantstage.quant.data.sources import Dataset
from quantstage.quant.engines.fx.convert import convert
from quantstage.quant.engines.fx.prepare import prepare
from quantstage.quant.measure.benchmark import BenchmarkReport, LatencyStats
from quantstage.quant.measure.evaluate import AccuracyReport
from quantstage.quant.measure.gates import GatesConfig
from tests.models import SmallCNN

SEED = 0
CALIBRATION_BATCHES = 8


class MLP(nn.Module):
    """Flatten, Linear-ReLU, Linear: (N, 1, 8, 8) -> (N, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LinearOnlyMLP(nn.Module):
    """Two Linears with nothing fusable between them (dynamic quantization target)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x.flatten(1))))


def toy_model(kind: str) -> nn.Module:
    """A seeded toy model in eval mode: ``cnn`` (SmallCNN), ``mlp`` or ``mlp-dynamic`` (LinearOnlyMLP)."""
    torch.manual_seed(SEED)
    return {"cnn": SmallCNN, "mlp": MLP, "mlp-dynamic": LinearOnlyMLP}[kind]().eval()


def quantize_fx(model: nn.Module, data: Dataset, spec: QuantSpec) -> GraphModule:
    """prepare, calibrate (static mode) and convert with the FX engine."""
    prepared = prepare(model, data.example_inputs, spec)
    if spec.mode == "static":
        calibrate(prepared, data.calibration, max_batches=spec.calibration_batches)
    return convert(prepared)


def accuracy_report(
    float_accuracy: float | None = 0.9, quant_accuracy: float | None = 0.9, agreement: float = 0.99, sqnr: float = 30.0
) -> AccuracyReport:
    return AccuracyReport(
        samples=100, float_accuracy=float_accuracy, quant_accuracy=quant_accuracy, agreement=agreement, sqnr_db=sqnr
    )


def bench_report(
    float_p50: float = 4.0, quant_p50: float = 2.0, float_size: int = 1000, quant_size: int = 250
) -> BenchmarkReport:
    def stats(p50: float) -> LatencyStats:
        return LatencyStats(p50, p50 * 1.5, p50 * 2.0, p50 * 1.1, 32 / (p50 / 1000.0))

    return BenchmarkReport(32, 1, 5, stats(float_p50), stats(quant_p50), float_size, quant_size)


ALL_GATES = GatesConfig(
    max_accuracy_drop=0.25, min_agreement=0.75, min_output_sqnr_db=20.0, min_speedup=1.5, max_size_ratio=0.5
)
