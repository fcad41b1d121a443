"""The default speedup gate end to end: a model whose int8 form is slower than float is registered with
gates_passed=false and its alias stays where it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from torch import nn

from quantstage.flows.convert import ConvertParams, GateFailure, convert_flow
from quantstage.quant.measure.gates import GatesConfig

pytestmark = pytest.mark.flow

NAME = "slow-int8"
FACTORY = "tests.flows.test_speedup_gate_flow:build_slow"


class SlowInt8(nn.Module):
    """(N, 1, 8, 8) -> (N, 3, 128, 128): nearest upsampling, then a 1x1 convolution with 3 channels. At batch
    1 its int8 form (quantize 16 K values, an int8 convolution x86 has no fast kernel for at 3 channels,
    dequantize 49 K values) runs about 3x slower than float here (0.31-0.33x over 3 runs on 2 cores)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=16.0))


def build_slow() -> SlowInt8:
    torch.manual_seed(0)
    return SlowInt8().eval()


def inputs(folder: Path) -> str:
    """96 digit-shaped inputs without labels (the output is an image: SQNR is what is compared)."""
    path = folder / "x.pt"
    torch.save(torch.rand(96, 1, 8, 8, generator=torch.Generator().manual_seed(0)), path)
    return str(path)


def _params(data: str, **kwargs: Any) -> ConvertParams:
    return ConvertParams.model_validate(
        {
            "model": {"factory": FACTORY},
            "data": {"source": data, "batch_size": 8},
            "registered_name": NAME,
            "evaluation": {"task": "regression"},
            "benchmark_batch_sizes": [1],  # the headline: batch 1, where int8 loses
            "benchmark_iterations": 50,
            "sensitivity": False,
            **kwargs,
        }
    )


def test_int8_slower_than_float_is_not_promoted_by_default(mlflow_store: str, prefect_harness: None, tmp_path) -> None:
    client, data = mlflow.MlflowClient(), inputs(tmp_path)
    first = convert_flow(_params(data, gates=GatesConfig(min_speedup=None)))  # speed not judged: promoted
    assert first.promoted, first.gates
    assert [g["name"] for g in first.gates] == ["quantized_any", "min_output_sqnr_db"]

    state = convert_flow(_params(data), return_state=True)  # the default gates: min_speedup 1.0 beyond the noise
    assert state.is_failed()
    with pytest.raises(GateFailure) as failure:
        state.result()
    message = str(failure.value)
    assert f"{NAME} version 2 failed its gates (speedup " in message
    assert "< 1.00 (+noise" in message and "int8 p50" in message and "float p50" in message
    assert "at batch 1, 1 thread" in message and f"models:/{NAME}@champion was not moved" in message

    assert str(client.get_model_version_by_alias(NAME, "champion").version) == first.version  # alias unmoved
    failed = client.get_model_version(NAME, "2")
    assert failed.tags["gates_passed"] == "false" and failed.tags["promoted"] == "false"
    gates = {g["name"]: g for g in json.load(open(client.download_artifacts(failed.run_id, "gates.json")))}
    assert gates["min_output_sqnr_db"]["passed"] and gates["quantized_any"]["passed"]
    speedup = gates["min_speedup"]
    assert not speedup["passed"] and speedup["threshold"] == 1.0 and speedup["value"] < 1.0, speedup
    metrics = client.get_run(failed.run_id).data.metrics
    assert metrics["int8_latency_p50_ms"] > metrics["float_latency_p50_ms"]
    assert metrics["gate.min_speedup.passed"] == 0.0 and metrics["gates_passed"] == 0.0
