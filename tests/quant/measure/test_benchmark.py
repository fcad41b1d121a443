"""Benchmark trustworthiness: noisy timings are flagged, the shipped form is the fastest correct one."""

import random
import time

import pytest
import torch
from torch import nn

from quantstage.quant.calibrate import calibrate
from quantstage.quant.engines import FxSpec
from quantstage.quant.engines.fx.convert import convert
from quantstage.quant.engines.fx.prepare import prepare
from quantstage.quant.engines.fx.variants import select_variant
from quantstage.quant.errors import ArtifactError
from quantstage.quant.hardware import machine_info
from quantstage.quant.measure.benchmark import benchmark, benchmark_table, latency_chart


class Jittery(nn.Module):
    """Sleeps 0.1 ms or 3 ms at random: a latency no number of repeats makes stable."""

    def __init__(self) -> None:
        super().__init__()
        self.rng = random.Random(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.rng.choice([0.0001, 0.003]))
        return x


def test_noisy_timings_are_marked_unstable() -> None:
    report = benchmark(nn.Identity(), Jittery(), (torch.ones(1, 4),), iterations=20, warmup=1, max_cv=0.2)
    assert not report.stable
    assert report.quant_latency.cv > 0.2
    assert report.as_metrics()["latency_stable"] == 0.0


def test_steady_timings_are_stable_and_threads_restored() -> None:
    before = torch.get_num_threads()
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256)).eval()
    report = benchmark(model, model, (torch.randn(32, 256),), iterations=30, warmup=5, num_threads=1, max_cv=5.0)
    assert report.stable and report.threads == 1
    assert torch.get_num_threads() == before
    assert len(report.float_times_ms) == len(report.quant_times_ms) == 30
    assert report.peak_rss_mib and report.peak_rss_mib > 10


def test_latency_chart_and_table(tmp_path) -> None:
    model = nn.Linear(8, 8).eval()
    reports = [benchmark(model, model, (torch.randn(b, 8),), iterations=5, warmup=1) for b in (1, 4)]
    png = latency_chart(reports, tmp_path / "latency.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    table = benchmark_table(reports)
    assert table["batch_size"] == [1, 4] and len(table["speedup"]) == 2


def test_machine_info_names_cpu_and_engine() -> None:
    info = machine_info()
    assert info["cpu_model"] and info["torch_version"].startswith("2.13.0")
    assert info["quantized_engine"] == torch.backends.quantized.engine


@pytest.fixture(scope="module")
def quantized() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10)).eval()
    x = torch.rand(16, 1, 8, 8)
    prepared = prepare(model, (x,), FxSpec())
    calibrate(prepared, [(x, None)], max_batches=1)
    return convert(prepared)


def test_select_variant_ships_fastest_matching_torchscript(quantized) -> None:
    inputs = [(torch.rand(16, 1, 8, 8),), (torch.rand(1, 1, 8, 8),)]
    name, module, results = select_variant(quantized, inputs, iterations=10)
    by_name = {r.name: r for r in results}
    assert set(by_name) == {"fx_graph_module", "torchscript", "torchscript_frozen", "torchscript_optimized"}
    assert not by_name["fx_graph_module"].shippable
    assert by_name[name].shippable and by_name[name].matches
    eligible = [r for r in results if r.shippable and r.matches]
    assert by_name[name].p50_ms == min(r.p50_ms for r in eligible)
    assert isinstance(module, torch.jit.ScriptModule)
    for x in inputs:
        assert torch.equal(module(*x), quantized(*x))


class Drifting(nn.Module):
    """Scriptable, but its TorchScript forms differ from the eager model by 0.5 (a stand-in for a lossy rewrite)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return x + 0.5
        return x


def test_select_variant_refuses_when_nothing_matches() -> None:
    with pytest.raises(ArtifactError, match=r"no TorchScript form of the model reproduces it within tolerance 0"):
        select_variant(Drifting(), [(torch.ones(2, 2),)], iterations=2, warmup=1)
    name, _, _ = select_variant(Drifting(), [(torch.ones(2, 2),)], tolerance=0.5, iterations=2, warmup=1)
    assert name.startswith("torchscript")
