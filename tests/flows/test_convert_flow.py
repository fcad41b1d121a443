"""convert_flow end to end under the Prefect test harness, against a temporary MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import mlflow
import pytest
from prefect.artifacts import Artifact

from quantstage.flows.convert import ConvertParams, GateFailure, convert_flow
from quantstage.quant.measure.gates import GatesConfig
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.flow


@pytest.fixture(scope="module")
def converted(digits_source: str):
    params = ConvertParams(model_uri="models:/digits-cnn@champion", benchmark_iterations=20)
    return convert_flow(params)


def test_flow_registers_and_promotes(converted) -> None:
    client = mlflow.MlflowClient()
    mv = client.get_model_version_by_alias("digits-cnn-int8", "champion")
    assert str(mv.version) == converted.version
    assert converted.promoted
    source = client.get_model_version_by_alias("digits-cnn", "champion")
    assert mv.tags["source_uri"] == "models:/digits-cnn@champion"
    assert mv.tags["source_version"] == str(source.version)
    assert mv.tags["backend"] == "x86"
    assert mv.tags["gates_passed"] == "true"
    assert mv.tags["torch_version"].startswith("2.13.0")
    assert mv.tags["mlflow_run_id"] == converted.run_id


def test_flow_logs_run(converted) -> None:
    client = mlflow.MlflowClient()
    run = client.get_run(converted.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["spec.backend"] == "x86"
    assert run.data.params["source_uri"] == "models:/digits-cnn@champion"
    metrics = run.data.metrics
    for key in (
        "float_accuracy",
        "int8_accuracy",
        "agreement",
        "output_sqnr_db",
        "speedup",
        "float_latency_p50_ms",
        "int8_latency_p99_ms",
        "float_size_bytes",
        "int8_size_bytes",
    ):
        assert key in metrics, f"metric {key} missing from {sorted(metrics)}"
    assert metrics["float_accuracy"] - metrics["int8_accuracy"] <= 0.01
    assert metrics["output_sqnr_db"] >= 20, f"SQNR {metrics['output_sqnr_db']} dB is too low"
    assert metrics["int8_size_bytes"] < 0.5 * metrics["float_size_bytes"]
    artifacts = {a.path for a in client.list_artifacts(converted.run_id)}
    assert {"report.md", "spec.json", "gates.json", "params.json", "code", "reference"} <= artifacts
    reference = {a.path for a in client.list_artifacts(converted.run_id, "reference")}
    assert reference == {"reference/model_reference.pt", "reference/reference.py"}, reference
    gates = json.loads(open(client.download_artifacts(converted.run_id, "gates.json")).read())
    defaults = ["quantized_any", "max_accuracy_drop", "min_agreement", "min_speedup"]
    assert [g["name"] for g in gates] == defaults
    assert all(g["passed"] for g in gates)
    assert metrics["quantized_fraction"] == 1.0 and metrics["quantized_layers"] == 5
    coverage = json.loads(open(client.download_artifacts(converted.run_id, "coverage/coverage.json")).read())
    assert set(coverage["columns"]) >= {"name", "op", "status", "reason", "params"}
    assert run.data.params["export.method"] in ("torchscript", "torchscript_frozen", "torchscript_optimized")
    assert run.data.params["machine.torch_version"].startswith("2.13.0")
    assert "machine.isa_int8" in run.data.params and "peak_rss_mib" in metrics
    variants = json.loads(open(client.download_artifacts(converted.run_id, "export/variants.json")).read())
    rows = {row[0]: dict(zip(variants["columns"], row)) for row in variants["data"]}
    shipped = rows[run.data.params["export.method"]]
    assert shipped["matches"] and shipped["shippable"]
    assert shipped["p50_ms"] == min(r["p50_ms"] for r in rows.values() if r["shippable"] and r["matches"])
    benchmark = {a.path for a in client.list_artifacts(converted.run_id, "benchmark")}
    assert benchmark == {"benchmark/latency.json", "benchmark/latency.png"}
    sensitivity = {a.path for a in client.list_artifacts(converted.run_id, "sensitivity")}
    assert sensitivity == {"sensitivity/sensitivity.json", "sensitivity/sensitivity.png"}
    report = open(client.download_artifacts(converted.run_id, "report.md")).read()
    assert "all gates passed" in report and "promoted to `@champion`" in report
    assert "## Quantized coverage" in report and "## Per-layer sensitivity" in report


def test_flow_publishes_prefect_report(converted) -> None:
    artifact = Artifact.get("quantstage-digits-cnn-int8")
    assert artifact is not None and "## Gates" in artifact.data


def test_registered_model_loads_in_new_process(converted, mlflow_store: str) -> None:
    """What users do after the flow: load the alias elsewhere and get float-level accuracy."""
    script = textwrap.dedent(
        """
        import json, mlflow, torch
        from quantstage.quant.data.sources import digits_split
        _, _, x, y = digits_split()
        q = mlflow.pytorch.load_model("models:/digits-cnn-int8@champion")
        f = mlflow.pytorch.load_model("models:/digits-cnn@champion")
        with torch.no_grad():
            acc = lambda m: (m(x).argmax(-1) == y).float().mean().item()
            print(json.dumps({"type": type(q).__name__, "int8": acc(q), "float": acc(f)}))
        """
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["type"] == "RecursiveScriptModule"
    assert abs(result["float"] - result["int8"]) <= 0.01, result


def test_failed_gate_fails_flow_and_keeps_alias(converted) -> None:
    client = mlflow.MlflowClient()
    params = ConvertParams(
        model_uri="models:/digits-cnn@champion",
        gates=GatesConfig(min_output_sqnr_db=500.0),
        benchmark_iterations=5,
    )
    state = convert_flow(params, return_state=True)
    assert state.is_failed()
    with pytest.raises(GateFailure, match=r"min_output_sqnr_db|output SQNR"):
        state.result()
    # the alias still points at the earlier, passing version
    assert client.get_model_version_by_alias("digits-cnn-int8", "champion").version == int(converted.version)
    # ... while the failing conversion is registered, tagged, and its run kept as FAILED
    versions = client.search_model_versions("name='digits-cnn-int8'")
    failed = [v for v in versions if v.tags.get("gates_passed") == "false"]
    assert failed, "the failing version should still be registered for inspection"
    run = client.get_run(failed[0].tags["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.metrics["gates_passed"] == 0.0


def test_qat_checkpoint_converts_without_calibration(converted, tmp_path) -> None:
    """A model QAT-trained elsewhere (prepare_qat_fx + fine-tuning) is converted from its checkpoint."""

    from quantstage.demo import train_classifier
    from quantstage.quant.data.sources import digits_split
    from quantstage.quant.engines import FxSpec
    from quantstage.quant.engines.fx.prepare import prepare
    from quantstage.quant.engines.fx.qat import save_qat_checkpoint

    float_model = mlflow.pytorch.load_model("models:/digits-cnn@champion")
    x_train, y_train, _, _ = digits_split()
    spec = FxSpec(mode="qat", backend="qnnpack")
    prepared = prepare(float_model, (x_train[:8],), spec)
    train_classifier(prepared, x_train, y_train, epochs=1, lr=1e-4)  # QAT fine-tuning
    checkpoint = save_qat_checkpoint(prepared, spec, tmp_path / "qat.pt")

    result = convert_flow(
        ConvertParams(
            model_uri="models:/digits-cnn@champion",
            qat_checkpoint=str(checkpoint),
            registered_name="digits-cnn-qat-int8",
            gates=GatesConfig(min_speedup=None),  # qnnpack's kernels on x86 may be slower than float: not judged here
            benchmark_iterations=5,
        )
    )
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.params["spec.mode"] == "qat" and run.data.params["spec.backend"] == "qnnpack"
    assert result.metrics["float_accuracy"] - result.metrics["int8_accuracy"] <= 0.01
    mv = client.get_model_version_by_alias("digits-cnn-qat-int8", "champion")
    assert mv.tags["spec_hash"] == spec.digest()


def test_qat_checkpoint_with_conflicting_spec_is_refused(converted, tmp_path) -> None:
    from quantstage.quant.data.sources import digits_split
    from quantstage.quant.engines import FxSpec
    from quantstage.quant.engines.fx.prepare import prepare
    from quantstage.quant.engines.fx.qat import save_qat_checkpoint
    from quantstage.quant.errors import SpecError

    float_model = mlflow.pytorch.load_model("models:/digits-cnn@champion")
    x_train, _, _, _ = digits_split()
    spec = FxSpec(mode="qat")
    checkpoint = save_qat_checkpoint(prepare(float_model, (x_train[:8],), spec), spec, tmp_path / "qat.pt")
    state = convert_flow(
        ConvertParams(
            model_uri="models:/digits-cnn@champion",
            qat_checkpoint=str(checkpoint),
            spec=FxSpec(backend="fbgemm"),
            benchmark_iterations=5,
        ),
        return_state=True,
    )
    with pytest.raises(SpecError, match=r"differs from the one that prepared the QAT checkpoint"):
        state.result()


def test_spec_that_quantizes_nothing_fails_its_gate(converted) -> None:
    params = ConvertParams(
        model_uri="models:/digits-cnn@champion",
        registered_name="digits-cnn-nothing",
        spec={"qconfig_mapping": {"preset": "none"}},
        sensitivity=False,
        benchmark_iterations=5,
    )
    state = convert_flow(params, return_state=True)
    with pytest.raises(
        GateFailure, match=r"the spec quantized nothing: no weighted layer ended as a quantized op \(0/5"
    ):
        state.result()
    client = mlflow.MlflowClient()
    version = client.search_model_versions("name='digits-cnn-nothing'")[0]
    coverage = json.loads(
        open(client.download_artifacts(version.tags["mlflow_run_id"], "coverage/coverage.json")).read()
    )
    rows = [dict(zip(coverage["columns"], row)) for row in coverage["data"]]
    assert rows and all(r["status"] == "float" for r in rows)
