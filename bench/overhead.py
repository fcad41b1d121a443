"""Pipeline overhead: convert_flow's wall time against the sum of its task run times, on a
warm Prefect API, and the flow's reported speedup against a standalone measurement."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["measure_overhead", "temporary_store"]


def _task_seconds(flow_run_id: Any) -> tuple[float, dict[str, float]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    per_task: dict[str, float] = {}
    for run in runs:
        name = run.name.rsplit("-", 1)[0]
        per_task[name] = per_task.get(name, 0.0) + run.total_run_time.total_seconds()
    return sum(per_task.values()), per_task


@contextlib.contextmanager
def temporary_store(prefix: str) -> Iterator[str]:
    """A temporary SQLite MLflow store as the tracking URI, the working directory moved into it
    (so ./mlruns lands there too) and moved back after; yields the folder."""
    import mlflow

    workdir = tempfile.mkdtemp(prefix=prefix)
    previous = os.getcwd()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir}/mlflow.db"
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    os.chdir(workdir)
    try:
        yield workdir
    finally:
        os.chdir(previous)


def measure_overhead(runs: int = 3, iterations: int = 100) -> dict[str, Any]:
    """Train the demo model once, then run convert_flow ``runs`` times on a warm API (the first
    run after the API start is reported apart). A temporary MLflow store is used."""
    with temporary_store("quantstage-bench-"):
        import mlflow
        import torch

        from quantstage.flows.convert import ConvertParams, convert_flow
        from quantstage.flows.train_demo import train_demo
        from quantstage.quant.data.sources import DataSpec, load_data
        from quantstage.quant.measure.benchmark import benchmark

        started = time.perf_counter()
        train_demo(epochs=3)  # also starts the ephemeral API: later flows find it warm
        cold_start_s = time.perf_counter() - started
        rows = []
        for i in range(runs):
            params = ConvertParams(
                model_uri="models:/digits-cnn@champion",
                registered_name=f"overhead-{i}",
                benchmark_iterations=iterations,
            )
            t0 = time.perf_counter()
            state = convert_flow(params, return_state=True)
            wall = time.perf_counter() - t0
            result = state.result()
            compute, per_task = _task_seconds(state.state_details.flow_run_id)
            rows.append(
                {
                    "run": i + 1,
                    "wall_s": wall,
                    "tasks_s": compute,
                    "overhead_s": wall - compute,
                    "flow_speedup": result.metrics["speedup"],
                    "per_task_s": per_task,
                }
            )
        # standalone: each run's float model and shipped int8 model loaded from the registry, outside
        # any flow, measured as the flow does (median pair ratio), three times; the median is the reference
        data = load_data(DataSpec())
        float_model = mlflow.pytorch.load_model("models:/digits-cnn@champion")
        for i, row in enumerate(rows):
            speedups = []
            for _ in range(3):
                shipped = mlflow.pytorch.load_model(f"models:/overhead-{i}@champion")
                with torch.no_grad():
                    speedups.append(
                        benchmark(
                            float_model, shipped, data.example_inputs, iterations=iterations, num_threads=1
                        ).speedup
                    )
            row["standalone_speedups"] = speedups
            row["standalone_speedup"] = sorted(speedups)[1]
            row["deviation"] = abs(row["flow_speedup"] - row["standalone_speedup"]) / row["standalone_speedup"]
        return {
            "train_and_api_start_s": cold_start_s,
            "runs": rows,
            "standalone_speedup": rows[-1]["standalone_speedup"],
            "flow_vs_standalone": max(r["deviation"] for r in rows),
        }
