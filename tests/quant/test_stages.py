"""The pipeline stages: data, prepare, calibrate, evaluate, benchmark, export, gates, report.

Models are tiny and randomly initialised (seeded): the numeric bounds below are on output
SQNR against float, which needs no training. Measured on torch 2.13.0 CPU over seeds 0-4
(calibrated on 8 digits batches, evaluated on the 450 held-out digits):
CNN 40.6-48.2 dB, MLP 36.8-43.0 dB, dynamic Linear-tanh-Linear 37.8-40.6 dB; top-1
agreement >= 0.984.
"""

# No ``from __future__ import annotations`` here: with string annotations FX generates
# ``x: _torch_Tensor_`` placeholders that torch.jit.script cannot resolve, and the export
# tests need models whose converted GraphModule scripts.
import hashlib
import logging
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.fx import GraphModule

from quantstage.demo import DigitsCNN
from quantstage.quant.calibrate import calibrate
from quantstage.quant.config.spec import BACKENDS, QuantSpec
from quantstage.quant.data.inputs import check_inputs_fit
from quantstage.quant.data.sources import Dataset, DataSpec, load_data
from quantstage.quant.engines.fx.convert import convert
from quantstage.quant.engines.fx.prepare import prepare
from quantstage.quant.errors import ArtifactError, DataError, TracingError
from quantstage.quant.measure.benchmark import BenchmarkReport, LatencyStats, benchmark, serialized_size, threads
from quantstage.quant.measure.evaluate import AccuracyReport, EvaluationSpec, evaluate, sqnr_db
from quantstage.quant.measure.gates import GatesConfig, check_gates
from quantstage.quant.report.markdown import render_report, summary_rows
from quantstage.quant.ship.torchscript import export_torchscript, load_torchscript
from tests.models import SmallCNN

SEED = 0
CALIBRATION_BATCHES = 8
# Measured minimum over seeds 0-4 and all backends minus ~7 dB of margin.
MIN_SQNR_DB = {"cnn": 33.0, "mlp": 30.0, "mlp-dynamic": 30.0}
MIN_AGREEMENT = 0.9

pytestmark = [
    # torch.jit.trace warns about the data-dependent branch of the trace-only model below.
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    # The tests script quantized models themselves too (outside quant's own calls).
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The TorchScript type system doesn't support instance-level:UserWarning"),
]


# --------------------------------------------------------------------------- models


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


class DataDependentBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return x


class WithDataDependentBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 8)
        self.block = DataDependentBlock()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


class NestedDataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(8, 8), DataDependentBlock())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DataDependentRoot(DataDependentBlock):
    """The same data-dependent block, as the whole model (its root forward does not trace)."""


class Scale(nn.Module):
    """Multiplies the logits column-wise: lets a test choose the argmax it wants."""

    def __init__(self, factors: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("factors", factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factors


class VarArgs(nn.Module):
    """Not scriptable (``*args``), traceable: export falls back to torch.jit.trace."""

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return args[0] * 2 + 1


class VarArgsBranch(nn.Module):
    """Not scriptable; a trace freezes the branch of its first input, so later inputs differ."""

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        x = args[0]
        if x.sum() > 0:
            return x * 2
        return x * 3


class VarArgsDict(nn.Module):
    """Neither scriptable (``*args``) nor traceable in strict mode (dict output)."""

    def forward(self, *args: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": args[0]}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _restore_global_torch_state():
    """prepare() sets the quantized engine and benchmark() the thread count: put both back."""
    engine, num_threads = torch.backends.quantized.engine, torch.get_num_threads()
    yield
    torch.backends.quantized.engine = engine
    torch.set_num_threads(num_threads)


@pytest.fixture(scope="module")
def data() -> Dataset:
    return load_data(DataSpec())


@pytest.fixture(scope="module")
def eval_inputs(data: Dataset) -> torch.Tensor:
    return torch.cat([x for x, _ in data.evaluation])


def _model(kind: str) -> nn.Module:
    torch.manual_seed(SEED)
    return {"cnn": SmallCNN, "mlp": MLP, "mlp-dynamic": LinearOnlyMLP}[kind]().eval()


def _quantize(model: nn.Module, data: Dataset, spec: QuantSpec) -> GraphModule:
    prepared = prepare(model, data.example_inputs, spec)
    if spec.mode == "static":
        calibrate(prepared, data.calibration, max_batches=spec.calibration_batches)
    return convert(prepared)


@pytest.fixture(scope="module")
def cnn_pair(data: Dataset) -> tuple[nn.Module, GraphModule]:
    """A float SmallCNN and its x86 int8 conversion."""
    engine = torch.backends.quantized.engine
    model = _model("cnn")
    try:
        return model, _quantize(model, data, QuantSpec(calibration_batches=CALIBRATION_BATCHES))
    finally:
        torch.backends.quantized.engine = engine


# --------------------------------------------------------------------------- data


def test_load_data_shapes_and_counts(data: Dataset) -> None:
    for x, y in data.calibration + data.evaluation:
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8), x.shape
        assert y is not None and y.dtype == torch.long and y.shape == (x.shape[0],)
        assert 1 <= x.shape[0] <= 32
        assert 0.0 <= x.min().item() and x.max().item() <= 1.0
        assert 0 <= y.min().item() and y.max().item() <= 9
    assert sum(int(x.shape[0]) for x, _ in data.calibration) == 1347
    assert data.num_eval_samples == 450
    assert len(data.calibration) == math.ceil(1347 / 32)
    assert len(data.evaluation) == math.ceil(450 / 32)
    assert data.example_inputs[0].shape == (32, 1, 8, 8)
    assert torch.equal(data.example_inputs[0], data.evaluation[0][0])


def test_load_data_deterministic_per_seed(data: Dataset) -> None:
    again = load_data(DataSpec())
    other = load_data(DataSpec(seed=1))
    for (xa, ya), (xb, yb) in zip(
        data.calibration + data.evaluation, again.calibration + again.evaluation, strict=True
    ):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(data.calibration[0][0], other.calibration[0][0])


@pytest.mark.parametrize(
    ("spec", "calibration", "evaluation"),
    [
        (DataSpec(batch_size=100), 1347, 450),
        (DataSpec(test_fraction=0.5), 898, 899),
    ],
    ids=["batch-100", "half"],
)
def test_load_data_split_sizes(spec: DataSpec, calibration: int, evaluation: int) -> None:
    dataset = load_data(spec)
    assert sum(int(x.shape[0]) for x, _ in dataset.calibration) == calibration
    assert dataset.num_eval_samples == evaluation
    assert all(x.shape[0] <= spec.batch_size for x, _ in dataset.calibration + dataset.evaluation)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"source": "mnist"}, "source"),
        ({"sede": 1}, "sede"),
    ],
    ids=["batch_size", "test_fraction", "source", "extra"],
)
def test_data_spec_rejects(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DataSpec(**kwargs)


# --------------------------------------------------------------------------- prepare / calibrate / convert


@pytest.mark.parametrize("backend", BACKENDS, ids=list(BACKENDS))
@pytest.mark.parametrize("kind", ["cnn", "mlp"], ids=["cnn", "mlp"])
def test_static_quantization_sqnr(data: Dataset, eval_inputs: torch.Tensor, kind: str, backend: str) -> None:
    model = _model(kind)
    quantized = _quantize(model, data, QuantSpec(backend=backend, calibration_batches=CALIBRATION_BATCHES))
    with torch.no_grad():
        sqnr = sqnr_db(model(eval_inputs), quantized(eval_inputs))
    print(f"{kind}/{backend}: output SQNR {sqnr:.2f} dB")
    assert sqnr >= MIN_SQNR_DB[kind], f"SQNR {sqnr} too low"
    report = evaluate(model, quantized, data.evaluation)
    assert report.agreement >= MIN_AGREEMENT, f"agreement {report.agreement} too low"
    assert report.sqnr_db == pytest.approx(sqnr)


def test_dynamic_quantization_sqnr(data: Dataset, eval_inputs: torch.Tensor) -> None:
    model = _model("mlp-dynamic")
    quantized = _quantize(model, data, QuantSpec(mode="dynamic"))
    assert any("dynamic" in type(m).__module__ for m in quantized.modules()), quantized
    with torch.no_grad():
        sqnr = sqnr_db(model(eval_inputs), quantized(eval_inputs))
    print(f"mlp-dynamic: output SQNR {sqnr:.2f} dB")
    assert sqnr >= MIN_SQNR_DB["mlp-dynamic"], f"SQNR {sqnr} too low"


def test_dynamic_quantization_of_linear_relu(data: Dataset, eval_inputs: torch.Tensor) -> None:
    model = _model("mlp")
    quantized = _quantize(model, data, QuantSpec(mode="dynamic"))
    with torch.no_grad():
        assert sqnr_db(model(eval_inputs), quantized(eval_inputs)) >= MIN_SQNR_DB["mlp"]


def test_skip_modules_stay_float(data: Dataset) -> None:
    model = _model("cnn")
    quantized = _quantize(model, data, QuantSpec(skip_modules=("head.3",)))
    head = dict(quantized.named_modules())["head.3"]
    assert type(head) is nn.Linear, type(head)
    assert torch.equal(head.weight, model.head[3].weight)


def test_prepare_copies_the_model_and_sets_the_engine(data: Dataset) -> None:
    model = _model("cnn").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = prepare(model, data.example_inputs, QuantSpec(backend="qnnpack"))
    assert isinstance(prepared, GraphModule)
    assert not prepared.training
    assert model.training, "prepare must not switch the caller's model to eval"
    assert type(model.features[0]) is nn.Conv2d, "prepare must not fuse the caller's model"
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.backends.quantized.engine == "qnnpack"


def test_calibrate_counts_and_respects_max_batches(data: Dataset) -> None:
    prepared = prepare(_model("mlp"), data.example_inputs, QuantSpec())
    calls: list[tuple[int, int]] = []
    seen = calibrate(prepared, data.calibration, max_batches=3, on_batch=lambda i, n: calls.append((i, n)))
    assert seen == 3
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_calibrate_with_fewer_batches_than_asked(data: Dataset, caplog: pytest.LogCaptureFixture) -> None:
    prepared = prepare(_model("mlp"), data.example_inputs, QuantSpec())
    with caplog.at_level(logging.WARNING, logger="quantstage.quant.engines.fx.prepare"):
        seen = calibrate(prepared, data.calibration[:2], max_batches=5)
    assert seen == 2
    assert "calibration saw 2 batches, fewer than the 5 asked for" in caplog.text


def test_calibrate_updates_observers(data: Dataset) -> None:
    prepared = prepare(_model("mlp"), data.example_inputs, QuantSpec())
    observers = [m for m in prepared.modules() if isinstance(m, torch.ao.quantization.ObserverBase)]
    assert observers
    calibrate(prepared, data.calibration, max_batches=1)
    first = observers[0]
    assert math.isfinite(first.min_val.item()) and math.isfinite(first.max_val.item())


def test_check_inputs_fit_accepts_the_right_shape(data: Dataset) -> None:
    output = check_inputs_fit(_model("cnn"), data.example_inputs)  # what forward returned: its output is read next
    assert isinstance(output, torch.Tensor) and output.shape == (data.example_inputs[0].shape[0], 10)


@pytest.mark.parametrize(
    ("kind", "inputs", "shape"),
    [
        ("cnn", (torch.rand(4, 3, 8, 8),), r"\(4, 3, 8, 8\)"),
        ("mlp", (torch.rand(4, 1, 6, 6),), r"\(4, 1, 6, 6\)"),
        ("cnn", (torch.rand(4, 1, 8, 8), "extra"), r"\(4, 1, 8, 8\), str"),
    ],
    ids=["cnn-channels", "mlp-features", "extra-arg"],
)
def test_check_inputs_fit_names_the_shapes(kind: str, inputs: tuple, shape: str) -> None:
    model = _model(kind)
    with pytest.raises(
        DataError,
        match=rf"data batch of shape {shape} does not fit {type(model).__name__}\.forward: .*; fix: give data",
    ):
        check_inputs_fit(model, inputs)


@pytest.mark.parametrize(
    ("model", "where"),
    [
        (WithDataDependentBlock(), "module 'block'"),
        (NestedDataDependent(), "module 'layers.1'"),
        (DataDependentRoot(), "the root forward of DataDependentRoot"),
    ],
    ids=["block", "nested", "root"],
)
def test_prepare_tracing_error_names_the_module(model: nn.Module, where: str) -> None:
    expected = (
        f"torch.fx cannot symbolically trace {type(model).__name__} (failed in {where}: "
        "symbolically traced variables cannot be used as inputs to control flow); "
        "fix: make that forward free of data-dependent control flow"
    )
    with pytest.raises(TracingError, match=re.escape(expected)):
        prepare(model, (torch.randn(4, 8),), QuantSpec())


def test_tracing_error_suggests_the_exact_skip() -> None:
    with pytest.raises(
        TracingError,
        match=re.escape("prepare_custom.non_traceable_module_names: ['layers.1'] (or skip_modules: ['layers.1'])"),
    ):
        prepare(NestedDataDependent(), (torch.randn(4, 8),), QuantSpec())


@pytest.mark.parametrize("model", [WithDataDependentBlock(), NestedDataDependent()], ids=["block", "nested"])
def test_skipped_untraceable_module_stays_float_and_rest_quantizes(model: nn.Module) -> None:
    """The fix the tracing error suggests works: the skipped module is neither traced nor quantized."""
    scope = "block" if isinstance(model, WithDataDependentBlock) else "layers.1"
    inputs = torch.randn(16, 8)
    prepared = prepare(model, (inputs,), QuantSpec(skip_modules=(scope,)))
    calibrate(prepared, [(inputs, None)], max_batches=1)
    quantized = convert(prepared)
    modules = dict(quantized.named_modules())
    assert type(modules[scope]) is type(dict(model.named_modules())[scope]), "skipped module must stay as it was"
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in modules.values()), quantized
    with torch.no_grad():
        sqnr = sqnr_db(model.eval()(inputs), quantized(inputs))
    assert sqnr >= 20, f"SQNR {sqnr} too low"


@pytest.mark.parametrize("path", ["torch.nn.Linear", "torch.nn.Conv2d"], ids=["linear", "conv"])
def test_skip_object_type_covers_fused_modules(data: Dataset, path: str) -> None:
    """Skipping a type also keeps its fused forms (LinearReLU, ConvReLU2d, ...) float."""
    quantized = _quantize(_model("cnn"), data, QuantSpec(skip_object_types=(path,)))
    float_type, quantized_forms = {
        "torch.nn.Linear": (nn.Linear, (torch.ao.nn.quantized.Linear, torch.ao.nn.intrinsic.quantized.LinearReLU)),
        "torch.nn.Conv2d": (nn.Conv2d, (torch.ao.nn.quantized.Conv2d, torch.ao.nn.intrinsic.quantized.ConvReLU2d)),
    }[path]
    leftovers = [name for name, m in quantized.named_modules() if isinstance(m, quantized_forms)]
    assert not leftovers, f"{path} skipped but still quantized: {leftovers}"
    n_float = sum(isinstance(m, float_type) for m in quantized.modules())
    assert n_float == sum(isinstance(m, float_type) for m in _model("cnn").modules())


# --------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize(
    ("amplitude", "expected"),
    [(1.0, 0.0), (0.1, 20.0), (0.01, 40.0), (10.0, -20.0)],
    ids=["0dB", "20dB", "40dB", "-20dB"],
)
def test_sqnr_db_known_values(amplitude: float, expected: float) -> None:
    torch.manual_seed(SEED)
    reference = torch.randn(1000)
    noise = torch.randn(1000)
    noise = noise * (reference.norm() / noise.norm()) * amplitude
    assert sqnr_db(reference, reference + noise) == pytest.approx(expected, abs=1e-3)


def test_sqnr_db_edge_cases() -> None:
    x = torch.randn(10)
    assert sqnr_db(x, x.clone()) == math.inf
    assert sqnr_db(torch.zeros(4), torch.zeros(4)) == math.inf
    assert sqnr_db(torch.zeros(4), torch.ones(4)) == -math.inf
    assert sqnr_db(torch.ones(4, dtype=torch.float64), torch.ones(4, dtype=torch.float16) * 1.1) == pytest.approx(
        20.0, abs=0.1
    )


def _logit_batches(rows: list[list[float]], targets: list[int] | None, batch_size: int = 2) -> list:
    x = torch.tensor(rows)
    y = torch.tensor(targets) if targets is not None else None
    return [
        (x[i : i + batch_size], y[i : i + batch_size] if y is not None else None)
        for i in range(0, len(rows), batch_size)
    ]


# Inputs are the logits themselves: argmax rows are 0, 1, 2, 0.
ROWS = [[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 4.0], [5.0, 4.5, 0.0]]
QUANT_FACTORS = torch.tensor([1.0, 4.0, 2.0])  # argmax rows become 1, 1, 2, 1


def test_evaluate_identity_models() -> None:
    report = evaluate(nn.Identity(), nn.Identity(), _logit_batches(ROWS, [0, 1, 2, 0]))
    assert report.samples == 4
    assert report.agreement == 1.0
    assert report.sqnr_db == math.inf
    assert report.float_accuracy == 1.0 and report.quant_accuracy == 1.0
    assert report.accuracy_drop == 0.0


def test_evaluate_exact_accuracy_and_agreement() -> None:
    # The "quantized" model scales the columns by 1, 4, 2: rows 0 and 3 now predict 1, not 0.
    quant_model = Scale(QUANT_FACTORS)
    batches = _logit_batches(ROWS, [0, 1, 1, 0])
    report = evaluate(nn.Identity(), quant_model, batches)
    assert report.samples == 4
    assert report.float_accuracy == 0.75  # predicts 0, 1, 2, 0 against 0, 1, 1, 0
    assert report.quant_accuracy == 0.25  # predicts 1, 1, 2, 1
    assert report.agreement == 0.5
    assert report.accuracy_drop == 0.5
    x = torch.tensor(ROWS)
    assert report.sqnr_db == pytest.approx(sqnr_db(x, quant_model(x)))
    assert report.as_metrics() == {
        "agreement": 0.5,
        "output_sqnr_db": report.sqnr_db,
        "float_accuracy": 0.75,
        "int8_accuracy": 0.25,
        "accuracy_drop": 0.5,
        # 3 classes: top-5 holds every label
        "float_top5_accuracy": 1.0,
        "int8_top5_accuracy": 1.0,
    }
    top2 = evaluate(nn.Identity(), quant_model, batches, EvaluationSpec(top_k=2)).as_metrics()
    assert top2["float_top2_accuracy"] >= top2["float_accuracy"]


def test_evaluate_regression_and_embedding_metrics() -> None:
    x = torch.randn(32, 8)
    batches = [(x[:16], x[:16]), (x[16:], x[16:])]  # targets = the float outputs
    noisy = Scale(torch.full((8,), 1.01))
    regression = evaluate(nn.Identity(), noisy, batches, EvaluationSpec(task="regression")).as_metrics()
    assert regression["float_mse"] == 0.0
    assert regression["int8_mse"] == pytest.approx(regression["output_mse"])
    assert regression["cosine_similarity"] == pytest.approx(1.0)
    assert "agreement" not in regression and "float_accuracy" not in regression
    embedding = evaluate(nn.Identity(), noisy, [(x, None)], EvaluationSpec(task="embedding")).as_metrics()
    assert set(embedding) == {
        "output_sqnr_db",
        "output_mse",
        "cosine_similarity",
        "embedding_cosine_mean",
        "embedding_cosine_min",
        "embedding_sqnr_db",
    }
    assert embedding["output_sqnr_db"] == pytest.approx(40.0, abs=0.1)  # 1% amplitude error
    assert embedding["embedding_sqnr_db"] == pytest.approx(40.0, abs=0.1)  # (batch, hidden): compared as they are
    assert embedding["embedding_cosine_min"] <= embedding["embedding_cosine_mean"] <= 1.0


def max_abs_error(f: torch.Tensor, q: torch.Tensor, y) -> float:
    return (f - q).abs().max().item()


def test_evaluate_user_metric() -> None:
    x = torch.randn(8, 3)
    spec = EvaluationSpec(task="embedding", metric="tests.quant.test_stages:max_abs_error")
    metrics = evaluate(nn.Identity(), Scale(torch.full((3,), 2.0)), [(x, None)], spec).as_metrics()
    assert metrics["metric.max_abs_error"] == pytest.approx(x.abs().max().item())
    with pytest.raises(ValueError, match=r"metric 'nope' must be 'module:function'"):
        EvaluationSpec(metric="nope")


def test_relative_accuracy_drop_gate() -> None:
    report = AccuracyReport(samples=10, float_accuracy=0.5, quant_accuracy=0.45, agreement=0.9, sqnr_db=30.0)
    absolute = check_gates(GatesConfig(max_accuracy_drop=0.06), report)[0]
    relative = check_gates(GatesConfig(max_accuracy_drop=0.06, accuracy_drop_relative=True), report)[0]
    assert absolute.passed and absolute.value == pytest.approx(0.05)
    assert not relative.passed and relative.value == pytest.approx(0.1)
    assert "relative accuracy drop" in relative.reason


def test_evaluate_without_targets() -> None:
    report = evaluate(nn.Identity(), Scale(QUANT_FACTORS), _logit_batches(ROWS, None))
    assert report.float_accuracy is None
    assert report.quant_accuracy is None
    assert report.accuracy_drop is None
    assert report.agreement == 0.5
    assert set(report.as_metrics()) == {"agreement", "output_sqnr_db"}


def test_evaluate_partly_labelled_counts_as_unlabelled() -> None:
    batches = _logit_batches(ROWS, [0, 1, 2, 0])
    batches[1] = (batches[1][0], None)
    report = evaluate(nn.Identity(), nn.Identity(), batches)
    assert report.float_accuracy is None and report.quant_accuracy is None


# --------------------------------------------------------------------------- benchmark


def test_benchmark(cnn_pair: tuple[nn.Module, GraphModule], data: Dataset) -> None:
    model, quantized = cnn_pair
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        report = benchmark(model, quantized, data.example_inputs, iterations=5, warmup=1, num_threads=1)
        assert torch.get_num_threads() == 2, "benchmark must restore the thread count"
    finally:
        torch.set_num_threads(before)
    assert report.threads == 1
    assert report.batch_size == 32
    assert report.iterations == 5
    for stats in (report.float_latency, report.quant_latency):
        assert 0.0 < stats.p50_ms <= stats.p90_ms <= stats.p99_ms, stats
        assert stats.mean_ms > 0.0
        assert stats.throughput == pytest.approx(32 / (stats.p50_ms / 1000.0))
    pairs = sorted(f / q for f, q in zip(report.float_times_ms, report.quant_times_ms))
    assert report.speedup == pytest.approx(
        torch.tensor(pairs, dtype=torch.float64).median().item()
    )  # median pair ratio
    assert report.p50_ratio == pytest.approx(report.float_latency.p50_ms / report.quant_latency.p50_ms)
    assert report.float_size_bytes == serialized_size(model)
    assert report.quant_size_bytes == serialized_size(quantized)
    assert report.size_ratio < 0.5, f"int8 state_dict is {report.size_ratio:.2f} of float"
    metrics = report.as_metrics()
    assert metrics["speedup"] == report.speedup
    assert {"float_latency_p50_ms", "int8_latency_p99_ms", "int8_throughput_sps", "size_ratio"} <= set(metrics)


def test_benchmark_uses_the_size_models(cnn_pair: tuple[nn.Module, GraphModule], data: Dataset) -> None:
    model, quantized = cnn_pair
    scripted = torch.jit.script(quantized)
    report = benchmark(
        model,
        quantized,
        data.example_inputs,
        iterations=2,
        warmup=0,
        num_threads=None,
        float_size_model=nn.Linear(2, 2),
        quant_size_model=scripted,
    )
    assert report.float_size_bytes == serialized_size(nn.Linear(2, 2))
    assert report.quant_size_bytes == serialized_size(scripted)
    assert report.threads == torch.get_num_threads()


def test_latency_stats_from_times() -> None:
    stats = LatencyStats.from_times([i / 1000.0 for i in range(1, 101)], batch_size=10)
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.mean_ms == pytest.approx(50.5)
    assert stats.throughput == pytest.approx(10 / 0.0505)


@pytest.mark.parametrize("n", [1, 2, None], ids=["one", "two", "unchanged"])
def test_threads_restores(n: int | None) -> None:
    before = torch.get_num_threads()
    with threads(n) as inside:
        assert inside == torch.get_num_threads()
        assert inside == (n if n is not None else before)
    assert torch.get_num_threads() == before


def test_threads_restores_on_error() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"), threads(1 if before != 1 else 2):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_serialized_size(cnn_pair: tuple[nn.Module, GraphModule]) -> None:
    model, quantized = cnn_pair
    scripted = torch.jit.script(quantized)
    assert isinstance(scripted, torch.jit.ScriptModule)
    for m in (model, quantized, scripted):
        assert serialized_size(m) > 0, type(m)
    assert serialized_size(scripted) > serialized_size(quantized), "TorchScript also carries the code"


# --------------------------------------------------------------------------- export


def test_export_torchscript_round_trip(cnn_pair: tuple[nn.Module, GraphModule], data: Dataset, tmp_path: Path) -> None:
    _, quantized = cnn_pair
    verify = [(x,) for x, _ in data.evaluation[:2]]
    path = tmp_path / "nested" / "model.pt"
    artifact = export_torchscript(quantized, path, verify)
    assert artifact.path == path and path.is_file()
    assert artifact.method == "script"
    assert artifact.size_bytes == path.stat().st_size > 0
    assert artifact.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    reloaded = load_torchscript(path)
    with torch.no_grad():
        for x, _ in data.evaluation[2:4]:
            assert torch.equal(reloaded(x), quantized(x))
            assert torch.equal(artifact.module(x), quantized(x))


def test_export_torchscript_digits_cnn(data: Dataset, tmp_path: Path) -> None:
    """The demo model: quant/models.py uses string annotations, so this may be a trace."""
    torch.manual_seed(SEED)
    model = DigitsCNN(width=4).eval()
    quantized = _quantize(model, data, QuantSpec(calibration_batches=2))
    artifact = export_torchscript(quantized, tmp_path / "digits.pt", [data.example_inputs])
    print(f"DigitsCNN exported by torch.jit.{artifact.method}")
    with torch.no_grad():
        x = data.evaluation[1][0]
        assert torch.equal(load_torchscript(artifact.path)(x), quantized(x))


def test_export_torchscript_falls_back_to_trace(tmp_path: Path) -> None:
    x = torch.randn(3, 4)
    artifact = export_torchscript(VarArgs(), tmp_path / "trace.pt", [(x,)])
    assert artifact.method == "trace"
    assert torch.equal(load_torchscript(artifact.path)(x), x * 2 + 1)


def test_export_torchscript_needs_inputs(cnn_pair: tuple[nn.Module, GraphModule], tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="needs at least one input to verify the saved model"):
        export_torchscript(cnn_pair[1], tmp_path / "model.pt", [])
    assert not (tmp_path / "model.pt").exists()


def test_export_torchscript_refuses_a_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "branch.pt"
    with pytest.raises(
        ArtifactError,
        match=r"does not reproduce the lowered model on verification input 1 \(max abs difference 1, bit-exact required\); refusing",
    ):
        export_torchscript(VarArgsBranch(), path, [(torch.ones(2),), (-torch.ones(2),)])


def test_export_torchscript_neither_script_nor_trace(tmp_path: Path) -> None:
    with pytest.raises(
        ArtifactError,
        match=r"(?s)VarArgsDict can be neither scripted \(.*\) nor traced \(.*\); fix: make forward TorchScript-compatible",
    ):
        export_torchscript(VarArgsDict(), tmp_path / "dict.pt", [(torch.ones(2),)])


# --------------------------------------------------------------------------- gates


def _accuracy(
    float_accuracy: float | None = 0.9, quant_accuracy: float | None = 0.9, agreement: float = 0.99, sqnr: float = 30.0
) -> AccuracyReport:
    return AccuracyReport(
        samples=100, float_accuracy=float_accuracy, quant_accuracy=quant_accuracy, agreement=agreement, sqnr_db=sqnr
    )


def _bench(
    float_p50: float = 4.0, quant_p50: float = 2.0, float_size: int = 1000, quant_size: int = 250
) -> BenchmarkReport:
    def stats(p50: float) -> LatencyStats:
        return LatencyStats(p50, p50 * 1.5, p50 * 2.0, p50 * 1.1, 32 / (p50 / 1000.0))

    return BenchmarkReport(32, 1, 5, stats(float_p50), stats(quant_p50), float_size, quant_size)


def test_default_gates_check_accuracy_drop_and_agreement() -> None:
    results = check_gates(GatesConfig().for_task("classification"), _accuracy(1.0, 0.995, agreement=0.97), _bench())
    assert [r.name for r in results] == ["max_accuracy_drop", "min_agreement"]
    assert all(r.passed for r in results) and [r.threshold for r in results] == [0.01, 0.90]
    unlabeled = check_gates(GatesConfig().for_task("classification"), _accuracy(None, None, agreement=0.97), _bench())
    assert [r.name for r in unlabeled] == ["min_agreement"]  # the default accuracy drop needs labels
    explicit = check_gates(
        GatesConfig(max_accuracy_drop=0.02).for_task("classification"), _accuracy(None, None, agreement=0.5), None
    )
    assert [(r.name, r.passed) for r in explicit] == [("max_accuracy_drop", False), ("min_agreement", False)]


def test_all_gates_disabled() -> None:
    config = GatesConfig(max_accuracy_drop=None)
    assert check_gates(config, _accuracy(None, None), None) == []


ALL_GATES = GatesConfig(
    max_accuracy_drop=0.25, min_agreement=0.75, min_output_sqnr_db=20.0, min_speedup=1.5, max_size_ratio=0.5
)


@pytest.mark.parametrize(
    ("name", "accuracy", "bench", "passed", "reason"),
    [
        ("max_accuracy_drop", _accuracy(1.0, 0.875), _bench(), True, "accuracy drop 0.125 <= 0.25: passed"),
        ("max_accuracy_drop", _accuracy(1.0, 0.75), _bench(), True, "accuracy drop 0.25 <= 0.25: passed"),
        ("max_accuracy_drop", _accuracy(1.0, 0.5), _bench(), False, "accuracy drop 0.5 <= 0.25: FAILED"),
        ("max_accuracy_drop", _accuracy(None, None), _bench(), False, "accuracy drop could not be measured"),
        ("min_agreement", _accuracy(agreement=0.75), _bench(), True, "top-1 agreement 0.75 >= 0.75: passed"),
        ("min_agreement", _accuracy(agreement=0.5), _bench(), False, "top-1 agreement 0.5 >= 0.75: FAILED"),
        ("min_output_sqnr_db", _accuracy(sqnr=math.inf), _bench(), True, "output SQNR (dB) inf >= 20: passed"),
        ("min_output_sqnr_db", _accuracy(sqnr=19.5), _bench(), False, "output SQNR (dB) 19.5 >= 20: FAILED"),
        ("min_output_sqnr_db", _accuracy(sqnr=math.nan), _bench(), False, "output SQNR (dB) could not be measured"),
        ("min_speedup", _accuracy(), _bench(3.0, 2.0), True, "speedup 1.5 >= 1.5: passed"),
        ("min_speedup", _accuracy(), _bench(2.0, 2.0), False, "speedup 1 >= 1.5: FAILED"),
        ("min_speedup", _accuracy(), None, False, "speedup could not be measured"),
        ("max_size_ratio", _accuracy(), _bench(float_size=1000, quant_size=500), True, "size ratio 0.5 <= 0.5: passed"),
        (
            "max_size_ratio",
            _accuracy(),
            _bench(float_size=1000, quant_size=600),
            False,
            "size ratio 0.6 <= 0.5: FAILED",
        ),
        ("max_size_ratio", _accuracy(), None, False, "size ratio could not be measured"),
    ],
    ids=[
        "drop-pass",
        "drop-equal",
        "drop-fail",
        "drop-unmeasured",
        "agreement-pass",
        "agreement-fail",
        "sqnr-inf",
        "sqnr-fail",
        "sqnr-nan",
        "speedup-pass",
        "speedup-fail",
        "speedup-no-bench",
        "size-pass",
        "size-fail",
        "size-no-bench",
    ],
)
def test_gate(name: str, accuracy: AccuracyReport, bench: BenchmarkReport | None, passed: bool, reason: str) -> None:
    results = {r.name: r for r in check_gates(ALL_GATES, accuracy, bench)}
    assert list(results) == [
        "max_accuracy_drop",
        "min_agreement",
        "min_output_sqnr_db",
        "min_speedup",
        "max_size_ratio",
    ]
    result = results[name]
    assert result.passed is passed, result
    assert result.reason == reason
    assert result.threshold == getattr(ALL_GATES, name)
    if "could not be measured" in reason:
        assert result.value is None
    assert result.as_dict()["name"] == name


THRESHOLD_GATES = ["max_accuracy_drop", "min_agreement", "min_output_sqnr_db", "min_speedup", "max_size_ratio"]


@pytest.mark.parametrize("disabled", THRESHOLD_GATES, ids=THRESHOLD_GATES)
def test_none_disables_a_gate(disabled: str) -> None:
    config = ALL_GATES.model_copy(update={disabled: None})
    names = [r.name for r in check_gates(config, _accuracy(), _bench())]
    assert disabled not in names
    assert len(names) == 4


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_accuracy_drop": -0.1}, "max_accuracy_drop"),
        ({"max_accuracy_drop": 1.5}, "max_accuracy_drop"),
        ({"min_agreement": 1.1}, "min_agreement"),
        ({"min_speedup": 0.0}, "min_speedup"),
        ({"max_size_ratio": 0.0}, "max_size_ratio"),
        ({"min_sqnr": 20.0}, "min_sqnr"),
    ],
    ids=["drop-negative", "drop-above-1", "agreement-above-1", "speedup-zero", "size-zero", "extra"],
)
def test_gates_config_rejects(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        GatesConfig(**kwargs)


# --------------------------------------------------------------------------- report


def _render(gates_config: GatesConfig, accuracy: AccuracyReport, promoted_alias: str | None = None) -> str:
    bench = _bench()
    return render_report(
        source_uri="models:/digits/3",
        spec=QuantSpec(),
        accuracy=accuracy,
        benchmarks=[bench, _bench(8.0, 3.0)],
        gates=check_gates(gates_config, accuracy, bench),
        registered="digits-int8/1",
        promoted_alias=promoted_alias,
    )


def test_render_report_passing() -> None:
    text = _render(ALL_GATES, _accuracy(1.0, 0.875, agreement=0.9375, sqnr=31.25), promoted_alias="champion")
    assert text.startswith("# quantstage: models:/digits/3\n")
    assert "**Verdict:** all gates passed; promoted to `@champion`" in text
    assert f"spec hash `{QuantSpec().digest()}`, registered as `digits-int8/1`" in text
    assert "| gate | measured | threshold | result |" in text
    assert "| max_accuracy_drop | 0.125 | 0.25 | pass |" in text
    assert "| min_agreement | 0.9375 | 0.75 | pass |" in text
    assert "| min_output_sqnr_db | 31.25 | 20 | pass |" in text
    assert "| min_speedup | 2 | 1.5 | pass |" in text
    assert "| max_size_ratio | 0.25 | 0.5 | pass |" in text
    assert "| top-1 accuracy | 100.00% | 87.50% |" in text
    assert "| 32 | 1 | 4.000 / 6.000 / 8.000 | 2.000 / 3.000 / 4.000 | 2.00x |" in text
    assert "| 32 | 1 | 8.000 / 12.000 / 16.000 | 3.000 / 4.500 / 6.000 | 2.67x |" in text
    assert "Top-1 agreement 0.9375, output SQNR 31.25 dB over 100 samples." in text


def test_render_report_failing() -> None:
    text = _render(ALL_GATES, _accuracy(None, None, agreement=0.5))
    assert "**Verdict:** GATES FAILED; alias not moved" in text
    assert "| max_accuracy_drop | n/a | 0.25 | FAIL |" in text
    assert "| min_agreement | 0.5 | 0.75 | FAIL |" in text
    assert "| top-1 accuracy | n/a | n/a |" in text


def test_summary_rows() -> None:
    rows = summary_rows(_accuracy(0.5, 0.25), _bench())
    assert rows == [
        ("top-1 accuracy", "50.00%", "25.00%"),
        ("p50 latency (batch 32)", "4.000 ms", "2.000 ms"),
        ("speedup", "1.00x", "2.00x"),
        ("size", "1.0 KiB", "0.2 KiB"),
    ]
