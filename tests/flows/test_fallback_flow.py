"""The accuracy-aware fallback inside convert_flow: nested trial runs, a replayable spec, gates."""

from __future__ import annotations

import mlflow
import pytest
import torch
import yaml

from quantstage.flows.convert import ConvertParams, GateFailure, convert_flow
from quantstage.quant.engines import Pt2eSpec, parse_spec
from quantstage.quant.measure.gates import GatesConfig
from quantstage.quant.search.fallback import FallbackConfig
from tests.helpers import register
from tests.models import sensitive_digits_mlp

pytestmark = pytest.mark.flow


@pytest.fixture(scope="module")
def sensitive_uri(mlflow_store: str, prefect_harness: None) -> str:
    return register(sensitive_digits_mlp(), "sensitive-mlp", torch.rand(2, 1, 8, 8))


def _params(uri: str, **kwargs) -> ConvertParams:
    gates = GatesConfig(max_accuracy_drop=0.02, min_speedup=None)  # about accuracy: the tiny MLP's int8 can be slower
    return ConvertParams(model_uri=uri, gates=gates, benchmark_iterations=5, **kwargs)


def test_without_fallback_the_gate_fails(sensitive_uri: str) -> None:
    state = convert_flow(_params(sensitive_uri, registered_name="sensitive-plain"), return_state=True)
    with pytest.raises(GateFailure, match=r"accuracy drop"):
        state.result()


def test_fallback_keeps_the_sensitive_layer_float(sensitive_uri: str) -> None:
    fallback = FallbackConfig(enabled=True, max_float_layers=4, max_evaluations=6)
    result = convert_flow(_params(sensitive_uri, registered_name="sensitive-int8", fallback=fallback))
    assert result.promoted and result.float_layers == ["layers.3"]
    assert result.metrics["float_accuracy"] - result.metrics["int8_accuracy"] <= 0.02
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    evaluations = int(run.data.metrics["fallback_evaluations"])
    assert evaluations < 8, f"{evaluations} evaluations for 8 Linear layers"
    trials = client.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert len(trials) == evaluations
    assert all({"accuracy_drop", "int8_latency_p50_ms", "passed"} <= set(t.data.metrics) for t in trials)
    assert any(t.data.params["float_layers"] == "layers.3" and t.data.metrics["passed"] == 1.0 for t in trials)
    # the chosen spec is a plain file that reproduces the result without searching
    chosen = yaml.safe_load(open(client.download_artifacts(result.run_id, "fallback/spec.yaml")).read())
    spec = parse_spec(chosen)
    assert spec.skip_modules == ("layers.3",)
    replay = convert_flow(_params(sensitive_uri, registered_name="sensitive-replay", spec=spec))
    assert replay.promoted and replay.metrics["int8_accuracy"] == result.metrics["int8_accuracy"]
    report = open(client.download_artifacts(result.run_id, "report.md")).read()
    assert "## Accuracy-aware fallback" in report and "kept float: layers.3" in report


def test_fallback_that_cannot_pass_reports_best_trial(sensitive_uri: str) -> None:
    """Also: the fallback runs with sensitivity off (it measures the ranking it needs)."""
    fallback = FallbackConfig(enabled=True, max_float_layers=1, max_evaluations=3)
    params = ConvertParams(
        model_uri=sensitive_uri,
        registered_name="sensitive-hopeless",
        fallback=fallback,
        sensitivity=False,
        gates=GatesConfig(max_accuracy_drop=0.0, min_agreement=1.0),
        benchmark_iterations=5,
    )
    state = convert_flow(params, return_state=True)
    with pytest.raises(
        GateFailure, match=r"the fallback ran \d trial\(s\) and none passed, best: float \['layers\.3'\]"
    ):
        state.result()


def test_pt2e_fallback_keeps_the_sensitive_layer_float(sensitive_uri: str) -> None:
    """The same search on the PT2E engine: torchao's numeric debugger ranks the layers and the trials
    skip them with set_module_name_qconfig(name, None)."""
    fallback = FallbackConfig(enabled=True, max_float_layers=2, max_evaluations=4)
    result = convert_flow(_params(sensitive_uri, registered_name="sensitive-pt2e", fallback=fallback, spec=Pt2eSpec()))
    assert result.promoted and result.float_layers == ["layers.3"]
    assert result.metrics["float_accuracy"] - result.metrics["int8_accuracy"] <= 0.02
    run = mlflow.MlflowClient().get_run(result.run_id)
    assert run.data.params["spec.engine"] == "pt2e" and run.data.params["export.method"] == "aoti_package"
