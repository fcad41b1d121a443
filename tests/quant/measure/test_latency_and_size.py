"""benchmark's numbers: latency percentiles, speedup, serialized sizes, thread count set and restored."""

import pytest
import torch
from torch import nn
from torch.fx import GraphModule

from quantstage.quant.data.sources import Dataset
from quantstage.quant.measure.benchmark import LatencyStats, benchmark, serialized_size, threads

pytestmark = [
    pytest.mark.usefixtures("restore_torch_state"),
    # The tests script quantized models themselves too (outside quant's own calls).
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The TorchScript type system doesn't support instance-level:UserWarning"),
]


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
