"""convert_flow with ``engine: auto``: the candidate engines raced inside the unit, the winner registered with its
own engine in the lineage, ``engines.json`` and the report's "Engine choice" logged; a rerun skips; the CLI flag."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch

from quantstage.flows.cli import main
from quantstage.flows.cli.common import BadInput
from quantstage.flows.convert import ConvertParams, ConvertResult, convert_flow
from quantstage.quant.data.sources import digits_split
from quantstage.quant.engines import AutoSpec, FxSpec, Pt2eSpec
from quantstage.quant.measure.gates import GatesConfig
from quantstage.quant.search.fallback import FallbackConfig
from tests.helpers import register
from tests.models import sensitive_digits_mlp

pytestmark = pytest.mark.flow

NAME = "digits-cnn-auto"


def _params() -> ConvertParams:
    return ConvertParams(
        model_uri="models:/digits-cnn@champion",
        spec=AutoSpec(),
        registered_name=NAME,
        benchmark_iterations=20,
        sensitivity=False,
    )


@pytest.fixture(scope="module")
def converted(digits_source: str) -> ConvertResult:
    return convert_flow(_params())


def test_the_race_is_logged_and_the_winner_registered(converted: ConvertResult) -> None:
    client = mlflow.MlflowClient()
    run = client.get_run(converted.run_id)
    chosen = run.data.params["engine.chosen"]
    assert chosen in ("fx", "pt2e") and run.data.params["engine.requested"] == "auto"
    assert run.data.params["spec.engine"] == chosen  # the winner's concrete spec, not the auto one
    table = json.loads(open(client.download_artifacts(converted.run_id, "engines.json")).read())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [r["engine"] for r in rows] == ["fx", "pt2e"]
    assert [r["status"] for r in rows if r["engine"] == chosen] == ["chosen"]
    assert all(r["status"] in ("chosen", "passed", "failed gates") and r["p50_ms"] for r in rows), rows
    report = open(client.download_artifacts(converted.run_id, "report.md")).read()
    assert "## Engine choice (engine: auto)" in report and f"**Chosen: `{chosen}`**" in report
    version = client.get_model_version_by_alias(NAME, "champion")
    assert str(version.version) == converted.version and converted.promoted
    assert version.tags["engine"] == chosen and version.tags["gates_passed"] == "true"
    expected = FxSpec() if chosen == "fx" else Pt2eSpec()
    assert version.tags["spec_hash"] == expected.digest()


def test_the_champion_loads_and_serves(converted: ConvertResult) -> None:
    _, _, x, y = digits_split()
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    outputs = np.asarray(model.predict(x.numpy()))
    assert outputs.shape == (len(x), 10)
    accuracy = float((torch.from_numpy(outputs).argmax(-1) == y).float().mean())
    assert abs(accuracy - converted.metrics["int8_accuracy"]) <= 0.01, accuracy


def test_a_rerun_of_the_auto_spec_skips(converted: ConvertResult) -> None:
    again = convert_flow(_params())
    assert again.skipped and again.version == converted.version
    assert again.idempotency_key == converted.idempotency_key


def test_the_fallback_on_the_winner_ships_its_own_model(mlflow_store: str, prefect_harness: None) -> None:
    """The race's winner fails the accuracy gate; the fallback's model is shipped anew, not the race's form."""
    uri = register(sensitive_digits_mlp(), "sensitive-mlp-auto", torch.rand(2, 1, 8, 8))
    params = ConvertParams(
        model_uri=uri,
        spec=AutoSpec(engines=("fx",)),  # one candidate: the fallback's re-quantizations stay quick
        registered_name="sensitive-auto",
        gates=GatesConfig(max_accuracy_drop=0.02, min_speedup=None),
        fallback=FallbackConfig(enabled=True, max_float_layers=4, max_evaluations=6),
        benchmark_iterations=5,
    )
    result = convert_flow(params)
    assert result.promoted and result.float_layers == ["layers.3"]
    run = mlflow.MlflowClient().get_run(result.run_id)
    assert run.data.params["engine.chosen"] == "fx" and run.data.params["spec.skip_modules"] == "layers.3"
    _, _, x, y = digits_split()
    served = mlflow.pyfunc.load_model(f"models:/sensitive-auto/{result.version}").predict(x.numpy())
    accuracy = float((torch.from_numpy(np.asarray(served)).argmax(-1) == y).float().mean())
    assert accuracy == pytest.approx(result.metrics["int8_accuracy"], abs=0.005)  # the fallback's model, shipped


def test_the_cli_engine_flag_takes_auto() -> None:
    from quantstage.flows.cli import _parser
    from quantstage.flows.cli.convert import _convert_params

    params = _convert_params(_parser().parse_args(["convert", "models:/m@a", "--engine", "auto", "--mode", "dynamic"]))
    assert params.spec == AutoSpec(mode="dynamic")
    with pytest.raises(BadInput, match=r"spec.engine: Input should be 'fx', 'pt2e' or 'auto' \(got 'autp'\)"):
        _convert_params(_parser().parse_args(["convert", "models:/m@a", "--engine", "autp"]))


def test_a_spec_file_no_race_can_use_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: pytest.TempPathFactory
) -> None:
    spec = tmp_path / "auto.yaml"  # type: ignore[operator]
    spec.write_text("engine: auto\nengines: [fx, tvm]\n")
    assert main(["convert", "models:/m@a", "--spec", str(spec)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("quantstage:")]
    assert len(lines) == 1 and "engines ['fx', 'tvm'] must list candidate engines once each" in lines[0], lines
