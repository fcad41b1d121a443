"""Architectures users bring, through the command line as a new user runs it: a transformers model
class from a small config (``tests.zoo:build``), dict batches, defaults. The run ends converted and
registered (exit 0) or with a failed gate (exit 3) — never ``unexpected`` (exit 1)."""

from __future__ import annotations

import mlflow
import pytest

from quantstage.flows.cli import EXIT_GATE_FAILED, main

pytest.importorskip("transformers")

pytestmark = [pytest.mark.flow]


def _argv(family: str, mode: str, task: str, *extra: str) -> list[str]:
    return [
        "convert",
        "--model-factory", "tests.zoo:build", "--model-kwarg", f"family={family}",
        "--data", "tests.zoo:batches", "--data-kwarg", f"family={family}",
        "--mode", mode, "--task", task, "--registered-name", f"zoo-{family}-int8", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("family", "mode", "task"),
    [("gpt2", "dynamic", "embedding"), ("mobilenet-v2", "static", "classification")],
)
def test_family_converts_through_the_cli(
    family: str, mode: str, task: str, mlflow_store: str, prefect_harness: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # the speed gate is the CPU's verdict, not the architecture's: switched off, every other default gate kept
    code = main(_argv(family, mode, task, "--min-speedup", "none"))
    err = capsys.readouterr().err
    assert "quantstage: unexpected" not in err, err[-2000:]
    assert code in (0, EXIT_GATE_FAILED), err[-2000:]
    (version,) = mlflow.MlflowClient().search_model_versions(f"name='zoo-{family}-int8'")
    run = mlflow.get_run(version.run_id)
    assert run.data.metrics["quantized_fraction"] > 0.5, run.data.metrics
