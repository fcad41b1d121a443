"""coverage_report: which weighted layers a converted model runs quantized, and why not.

Driven through QuantSpec -> prepare -> calibrate -> reference_convert -> lower on tiny,
seeded models (no training needed: only the module classes of the result matter).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantstage.quant.calibrate import calibrate
from quantstage.quant.engines import FxSpec
from quantstage.quant.engines.fx.convert import lower, reference_convert
from quantstage.quant.engines.fx.coverage import coverage_report
from quantstage.quant.engines.fx.prepare import prepare
from quantstage.quant.measure.coverage import CoverageEntry, CoverageReport
from tests.models import SmallCNN

# --------------------------------------------------------------------------- models


class Recurrent(nn.Module):
    """Conv1d, LSTM, Linear over (N, T, 8) sequences: the dynamic and float16 target."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 1)
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


class Embedder(nn.Module):
    """Embedding then Linear over token ids (N, T)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(tokens).mean(1))


class FunctionalHead(nn.Module):
    """A Linear module and an F.linear on a root Parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.w = nn.Parameter(torch.randn(4, 8))
        self.b = nn.Parameter(torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.fc(x), self.w, self.b)


pytestmark = pytest.mark.filterwarnings(
    # torch's reference LSTM (built by reference_convert in dynamic mode) copies tensors this way.
    "ignore:To copy construct from a tensor:UserWarning"
)


class Gate(nn.Module):
    """Data-dependent control flow: FX cannot trace it, so it must stay a leaf."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if y.sum() > 0 else -y


class SharedAndUntraced(nn.Module):
    """One Linear called twice, an untraceable block, and a PReLU (quantized weight tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.gate = Gate()
        self.prelu = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(self.fc(x))
        return self.prelu(self.gate(x.view(-1, 1, 2, 2)))


IMAGE = (2, 1, 8, 8)


def _image() -> torch.Tensor:
    return torch.randn(*IMAGE)


def _sequence() -> torch.Tensor:
    return torch.randn(2, 5, 8)


def _tokens() -> torch.Tensor:
    return torch.randint(0, 50, (2, 6))


@pytest.fixture(autouse=True)
def _seed_and_restore_engine():
    """prepare() sets torch.backends.quantized.engine: put it back."""
    engine = torch.backends.quantized.engine
    torch.manual_seed(0)
    yield
    torch.backends.quantized.engine = engine


def _report(model: nn.Module, x: torch.Tensor, target: str = "native", **spec_fields) -> CoverageReport:
    model = model.eval()
    spec = FxSpec(calibration_batches=1, **spec_fields)
    prepared = prepare(model, (x,), spec)
    calibrate(prepared, [(x, None)], max_batches=1)
    reference = reference_convert(prepared)
    quantized = lower(reference, target=target)
    return coverage_report(model, reference, quantized)


def _params(model: nn.Module, path: str) -> int:
    return sum(p.numel() for p in model.get_submodule(path).parameters())


def _by_name(report: CoverageReport) -> dict[str, CoverageEntry]:
    return {e.name: e for e in report.entries}


# --------------------------------------------------------------------------- static


def test_all_quantized_static_model() -> None:
    model = SmallCNN()
    report = _report(model, _image())
    entries = _by_name(report)
    # Conv-BN-ReLU fused into features.0, Linear-ReLU into head.1; weightless layers are not listed.
    assert list(entries) == ["features.0", "features.3", "head.1", "head.3"]
    assert entries["features.0"].op == "ConvReLU2d" and entries["head.1"].op == "LinearReLU"
    assert all(e.status == "quantized" and e.reason == "static int8" for e in report.entries)
    assert report.float == [] and report.quantized_count == 4
    assert report.quantized_fraction == 1.0 and not report.quantizes_nothing
    assert {name: e.params for name, e in entries.items()} == {name: _params(model, name) for name in entries}
    assert report.summary() == "4/4 weighted layers quantized (100.0% of their parameters)"


def test_skipped_module_is_float_with_reason() -> None:
    model = SmallCNN()
    report = _report(model, _image(), skip_modules=("head.3",))
    entries = _by_name(report)
    assert entries["head.3"].status == "float"
    assert entries["head.3"].op == "Linear"
    assert entries["head.3"].reason.startswith("skipped by config")
    assert [e.name for e in report.float] == ["head.3"]
    total = sum(e.params for e in report.entries)
    assert report.quantized_fraction == pytest.approx((total - _params(model, "head.3")) / total)
    assert report.summary().startswith("3/4 weighted layers quantized (")
    assert report.summary().endswith("; float: head.3 (skipped by config)")


def test_skip_by_regex_and_type_reaches_fused_modules() -> None:
    report = _report(
        SmallCNN(),
        _image(),
        qconfig_mapping={
            "preset": "static",
            "overrides": [{"set": "module_name_regex", "key": r"features\.3", "qconfig": None}],
        },
        skip_object_types=("torch.nn.Linear",),  # also skips the fused LinearReLU
    )
    status = {e.name: e.status for e in report.entries}
    assert status == {"features.0": "quantized", "features.3": "float", "head.1": "float", "head.3": "float"}
    assert all(e.reason.startswith("skipped by config") for e in report.float)


def test_preset_none_quantizes_nothing() -> None:
    report = _report(SmallCNN(), _image(), qconfig_mapping={"preset": "none"})
    assert report.quantizes_nothing and report.quantized_count == 0
    assert report.quantized_fraction == 0.0
    assert len(report.float) == 4
    assert all(e.reason == "skipped by config (qconfig None)" for e in report.entries)
    assert report.summary().startswith("0/4 weighted layers quantized (0.0% of their parameters); float: features.0")


def test_functional_linear_is_an_entry() -> None:
    model = FunctionalHead()
    quantized = _by_name(_report(model, torch.randn(2, 8)))
    assert quantized["linear"].status == "quantized"
    assert quantized["linear"].op == "quantized.linear"
    assert quantized["linear"].params == 4 * 8 + 4  # weight + bias of the float model
    skipped = _by_name(_report(model, torch.randn(2, 8), skip_object_types=("torch.nn.functional.linear",)))
    assert skipped["linear"].status == "float" and skipped["linear"].op == "F.linear"
    assert skipped["linear"].reason.startswith("skipped by config")
    assert skipped["linear"].params == 36
    assert skipped["fc"].status == "quantized"


def test_reference_target_counts_as_quantized_reference() -> None:
    report = _report(SmallCNN(), _image(), target="reference")
    assert len(report.entries) == 4
    assert all(e.status == "quantized" and e.reason.startswith("reference") for e in report.entries)


def test_standalone_module_layers_are_walked() -> None:
    report = _report(SmallCNN(), _image(), prepare_custom={"standalone_module_names": ["head"]})
    entries = _by_name(report)
    assert {"head.1", "head.3"} <= set(entries)
    assert entries["head.1"].status == entries["head.3"].status == "quantized"
    assert entries["head.3"].params == 32 * 10 + 10


def test_static_mode_leaves_lstm_and_embedding_float_as_unsupported() -> None:
    entries = _by_name(_report(Recurrent(), _sequence()))
    assert entries["lstm"].status == "float"
    assert entries["lstm"].reason.startswith("not supported by backend_config")
    assert entries["conv"].status == entries["fc"].status == "quantized"
    emb = _by_name(_report(Embedder(), _tokens()))["emb"]
    assert emb.status == "float" and emb.reason.startswith("not supported by backend_config")


def test_shared_module_once_untraced_block_float_prelu_quantized() -> None:
    model = SharedAndUntraced()
    report = _report(model, torch.randn(2, 4), prepare_custom={"non_traceable_module_names": ["gate"]})
    assert [(e.name, e.op, e.status) for e in report.entries] == [
        ("fc", "Linear", "quantized"),
        ("gate", "Gate", "float"),
        ("prelu", "PReLU", "quantized"),
    ]
    gate = _by_name(report)["gate"]
    assert gate.reason.startswith("not supported by backend_config") and gate.params == 2
    skipped = _by_name(_report(model, torch.randn(2, 4), skip_modules=("gate",)))["gate"]
    assert skipped.reason.startswith("skipped by config")


# --------------------------------------------------------------------------- dynamic, float16, weight-only


def test_dynamic_mode_quantizes_linear_and_lstm_not_conv() -> None:
    model = Recurrent()
    report = _report(model, _sequence(), mode="dynamic")
    entries = _by_name(report)
    assert entries["lstm"].status == "quantized" and entries["lstm"].reason == "dynamic int8"
    assert entries["fc"].status == "quantized" and entries["fc"].reason == "dynamic int8"
    assert entries["conv"].status == "float"
    assert entries["conv"].reason.startswith("not supported by backend_config")
    assert entries["lstm"].params == _params(model, "lstm")
    conv = _params(model, "conv")
    assert report.quantized_fraction == pytest.approx(1 - conv / sum(_params(model, n) for n in entries))
    assert "float: conv (not supported by backend_config)" in report.summary()


def test_float16_mode_is_quantized_float16() -> None:
    entries = _by_name(_report(Recurrent(), _sequence(), mode="float16"))
    assert entries["lstm"].reason == entries["fc"].reason == "dynamic float16"
    assert entries["lstm"].status == entries["fc"].status == "quantized"
    assert entries["conv"].status == "float"


def test_weight_only_embedding() -> None:
    report = _report(
        Embedder(),
        _tokens(),
        qconfig_mapping={
            "preset": "none",
            "overrides": [{"set": "object_type", "key": "torch.nn.Embedding", "qconfig": "weight_only"}],
        },
    )
    entries = _by_name(report)
    assert entries["emb"].status == "quantized" and entries["emb"].reason == "weight-only int8"
    assert entries["emb"].op == "Embedding" and entries["emb"].params == 50 * 8
    assert entries["fc"].status == "float" and entries["fc"].reason.startswith("skipped by config")
    assert report.quantized_fraction == pytest.approx(400 / (400 + 8 * 3 + 3))


# --------------------------------------------------------------------------- the report itself


def test_as_table_columns() -> None:
    report = _report(SmallCNN(), _image(), skip_modules=("head.3",))
    table = report.as_table()
    assert list(table) == ["name", "op", "status", "reason", "params"]
    assert all(len(column) == len(report.entries) for column in table.values())
    assert table["name"] == [e.name for e in report.entries]
    assert table["status"][table["name"].index("head.3")] == "float"
    assert all(isinstance(p, int) for p in table["params"])


def test_empty_report() -> None:
    report = CoverageReport(())
    assert report.quantized_fraction == 0.0 and report.quantizes_nothing
    assert report.summary() == "no weighted layers found"
    assert report.as_table() == {"name": [], "op": [], "status": [], "reason": [], "params": []}


def test_summary_lists_at_most_a_few_float_layers() -> None:
    entries = tuple(CoverageEntry(f"l{i}", "Linear", "float", "skipped by config (qconfig None)", 10) for i in range(7))
    report = CoverageReport((CoverageEntry("q", "Linear", "quantized", "static int8", 30), *entries))
    assert report.summary(max_listed=2) == (
        "1/8 weighted layers quantized (30.0% of their parameters); "
        "float: l0 (skipped by config), l1 (skipped by config), and 5 more"
    )
