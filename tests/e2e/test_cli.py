"""The ``quantstage`` command line: bad input exits non-zero with one clear line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from quantstage.flows.cli import EXIT_BAD_INPUT, EXIT_GATE_FAILED, main
from tests.conftest import REPO_ROOT
from tests.flows.test_speedup_gate_flow import inputs
from tests.helpers import register
from tests.models import Flat100, GatedNet


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code, _, line = _run_out(capsys, *argv)
    return code, line


def _run_out(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout, and the last stderr line of one in-process CLI call."""
    code = main(list(argv))
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    return code, captured.out, err[-1] if err else ""


def test_console_script_rejects_unknown_backend_without_traceback() -> None:
    """The installed entry point, in a fresh process: one line, no traceback, exit 2."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "quantstage.flows.cli", "convert", "models:/x@champion", "--backend", "arm"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == EXIT_BAD_INPUT
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "spec.backend" in lines[0] and "'arm'" in lines[0] and "'x86'" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["convert", "digits-cnn"], r"model_uri 'digits-cnn' is not of a supported form; use models:/"),
        (
            ["convert", "models:/m@a", "--mode", "int4"],
            r"spec\.mode: .*'static', 'dynamic', 'float16' or 'qat'.*'int4'",
        ),
        (
            ["convert", "models:/m@a", "--calibration-batches", "0"],
            r"spec\.calibration_batches: .*greater than or equal to 1",
        ),
        (["convert", "models:/m@a", "--skip-object-type", "torch.nn.Lineer"], r"cannot resolve 'torch\.nn\.Lineer'"),
        (["convert", "--config", "/nonexistent/params.yaml"], r"config file '/nonexistent/params.yaml' does not exist"),
        (["convert"], r"no model given; pass MODEL_URI"),
        (
            ["convert", "models:/m@a", "--spec", "/nonexistent/spec.yaml"],
            r"spec file '/nonexistent/spec.yaml' does not exist",
        ),
        (
            ["convert", "models:/m@a", "--spec", str(REPO_ROOT / "deploy/specs/float16.yaml"), "--backend", "arm"],
            r"spec\.backend: .*'arm'",
        ),
    ],
    ids=[
        "uri-form",
        "mode",
        "calibration-batches",
        "object-type",
        "config-missing",
        "no-uri",
        "spec-missing",
        "spec-override",
    ],
)
def test_bad_parameters(capsys: pytest.CaptureFixture[str], argv: list[str], pattern: str) -> None:
    code, line = _run(capsys, *argv)
    assert code == EXIT_BAD_INPUT
    assert line.startswith("quantstage: error: ")
    assert re.search(pattern, line), line


def test_config_file_with_flag_override(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "params.yaml"
    config.write_text("model_uri: models:/m@a\nspec:\n  backend: qnnpack\n  mode: bogus\n")
    code, line = _run(capsys, "convert", "--config", str(config))
    assert code == EXIT_BAD_INPUT and "spec.mode" in line
    code, line = _run(capsys, "convert", "--config", str(config), "--mode", "static", "--backend", "sparc")
    assert code == EXIT_BAD_INPUT and "spec.backend" in line and "'sparc'" in line


@pytest.mark.flow
def test_unresolvable_model_uri(mlflow_store: str, prefect_harness: None, capsys) -> None:
    code, line = _run(capsys, "convert", "models:/no-such-model@champion")
    assert code == EXIT_BAD_INPUT
    assert "models:/no-such-model@champion' does not resolve in the MLflow registry" in line
    assert "register the model first or point MLFLOW_TRACKING_URI" in line


@pytest.mark.flow
def test_data_that_does_not_fit(mlflow_store: str, prefect_harness: None, capsys) -> None:
    uri = register(Flat100(), "flat100", torch.randn(2, 100))
    code, line = _run(capsys, "convert", uri)
    assert code == EXIT_BAD_INPUT
    assert "data batch of shape (32, 1, 8, 8) does not fit Flat100.forward" in line
    assert "fix: give data whose batches have the input shape" in line


@pytest.mark.flow
def test_untraceable_model_names_module(mlflow_store: str, prefect_harness: None, capsys) -> None:
    """``--tracing whole`` names the module that does not trace; the default (auto) quantizes the
    parts that do and says so."""
    uri = register(GatedNet(), "gated-net", torch.rand(2, 1, 8, 8))
    code, line = _run(capsys, "convert", uri, "--tracing", "whole")
    assert code == EXIT_BAD_INPUT
    assert "torch.fx cannot symbolically trace GatedNet (failed in module 'block'" in line
    assert "fix:" in line
    code, out, _ = _run_out(capsys, "convert", uri, "--max-accuracy-drop", "1")
    assert code == 0, out[-1500:]
    run_id = mlflow.MlflowClient().get_model_version_by_alias("gated-net-int8", "champion").run_id
    assert (
        mlflow.get_run(run_id)
        .data.params["resolved.tracing"]
        .startswith("submodules (torch.fx cannot symbolically trace")
    )


@pytest.mark.flow
def test_convert_then_gate_failure(digits_source: str, tmp_path, capsys) -> None:
    code, out, _ = _run_out(
        capsys,
        "convert",
        "models:/digits-cnn@champion",
        "--registered-name",
        "digits-cli",
        "--backend",
        "qnnpack",
        "--max-accuracy-drop",
        "0.05",
        "--min-speedup",
        "none",  # qnnpack on x86 may well be slower than float: this test is about the exit codes
    )
    assert code == 0
    assert "speedup" in out and "top-1 accuracy" in out
    assert "models:/digits-cli/1 (promoted: True)" in out
    assert "mlflow ui --backend-store-uri sqlite:" in out

    config = tmp_path / "strict.yaml"
    config.write_text(
        "model_uri: models:/digits-cnn@champion\nregistered_name: digits-cli\ngates:\n  min_output_sqnr_db: 500\n"
    )
    code, line = _run(capsys, "convert", "--config", str(config))
    assert code == EXIT_GATE_FAILED
    assert line.startswith("quantstage: gate failed: digits-cli version 2 failed its gates (output SQNR")
    assert "models:/digits-cli@champion was not moved" in line


@pytest.mark.flow
def test_int8_slower_than_float_exits_3_naming_both_latencies(
    mlflow_store: str, prefect_harness: None, tmp_path, capsys
) -> None:
    """The default speedup gate: a model whose int8 form is slower at the headline batch is not promoted."""
    config = tmp_path / "batch1.yaml"
    config.write_text("benchmark_batch_sizes: [1]\nbenchmark_iterations: 50\nsensitivity: false\n")
    argv = ["convert", "--model-factory", "tests.flows.test_speedup_gate_flow:build_slow", "--task", "regression"]
    argv += ["--data", inputs(tmp_path), "--registered-name", "slow-cli", "--config", str(config)]
    code, line = _run(capsys, *argv)
    assert code == EXIT_GATE_FAILED, line
    assert line.startswith("quantstage: gate failed: slow-cli version 1 failed its gates (speedup ")
    assert re.search(r"int8 p50 [0-9.]+ ms vs float p50 [0-9.]+ ms at batch 1, 1 thread", line), line
    assert "models:/slow-cli@champion was not moved" in line


def test_negative_accuracy_budget_rejected(capsys) -> None:
    code, line = _run(capsys, "convert", "models:/m@a", "--max-accuracy-drop", "-0.5")
    assert code == EXIT_BAD_INPUT and "gates.max_accuracy_drop" in line


@pytest.mark.flow
def test_errors_found_in_the_flow_print_no_traceback_and_no_error_logs(tmp_path: Path) -> None:
    """A fresh process, as a user runs it: a closed-port store is refused before Prefect starts;
    an error the flow finds (a model that does not resolve) is one `quantstage:` line, with none
    of Prefect's tracebacks or ERROR lines about it on the console (the Prefect UI keeps them)."""
    base = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    argv = [sys.executable, "-m", "quantstage.flows.cli", "convert", "models:/nowhere@champion"]
    closed = subprocess.run(
        argv, capture_output=True, text=True, cwd=tmp_path, env={**base, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    )
    assert closed.returncode == EXIT_BAD_INPUT
    assert closed.stderr.strip().splitlines() == [
        "quantstage: error: MLflow tracking server 'http://127.0.0.1:9' does not answer (connection refused or "
        "unreachable within 5 s); fix: start it, or point MLFLOW_TRACKING_URI at a server that runs (unset: a "
        "local store in this folder)"
    ]
    in_flow = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**base, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"},
    )
    assert in_flow.returncode == EXIT_BAD_INPUT, in_flow.stderr
    assert "Traceback" not in in_flow.stderr and "| ERROR" not in in_flow.stderr, in_flow.stderr
    ours = [line for line in in_flow.stderr.splitlines() if line.startswith("quantstage:")]
    assert len(ours) == 1 and "'models:/nowhere@champion' does not resolve" in ours[0], in_flow.stderr
