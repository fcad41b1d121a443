"""Load stage: model URI resolution and the errors users see."""

from __future__ import annotations

import re

import mlflow
import pytest
import torch

from quantstage.quant.data.sources import DataSpec
from quantstage.quant.errors import DataError, SourceError
from quantstage.quant.ship.jit import jit_quiet
from quantstage.tasks.load import load_dataset, load_model, resolve_model_uri
from tests.helpers import register
from tests.models import Flat100


@pytest.mark.parametrize(
    "uri",
    ["digits-cnn", "models:/", "models:/name/latest-ish", "s3://bucket/model"],
    ids=["bare", "empty", "bad-version", "s3"],
)
def test_unsupported_uri_forms(uri: str, mlflow_store: str) -> None:
    with pytest.raises(SourceError, match=rf"model URI '{re.escape(uri)}' is not of a supported form; use models:/"):
        resolve_model_uri(uri)


def test_resolve_alias_and_version(mlflow_store: str) -> None:
    register(Flat100(), "resolve-me", torch.randn(2, 100), alias="prod")
    name, version, run_id = resolve_model_uri("models:/resolve-me@prod")
    assert (name, version) == ("resolve-me", "1") and run_id
    assert resolve_model_uri("models:/resolve-me/1")[:2] == ("resolve-me", "1")
    with pytest.raises(SourceError, match=r"'models:/resolve-me@staging' does not resolve in the MLflow registry"):
        resolve_model_uri("models:/resolve-me@staging")
    with pytest.raises(SourceError, match=r"'models:/resolve-me/7' does not resolve"):
        resolve_model_uri("models:/resolve-me/7")
    assert resolve_model_uri(f"runs:/{run_id}/model") == (None, None, run_id)


def test_load_model_refuses_torchscript(mlflow_store: str) -> None:
    with jit_quiet():
        scripted = torch.jit.script(Flat100().eval())
    uri = register(scripted, "scripted-source", torch.randn(2, 100))
    with pytest.raises(SourceError, match=r"holds a RecursiveScriptModule, not an eager torch.nn.Module"):
        load_model.fn(uri)


def test_load_model_returns_lineage(mlflow_store: str) -> None:
    uri = register(Flat100(), "lineage-source", torch.randn(2, 100))
    source = load_model.fn(uri)
    assert isinstance(source.model, Flat100) and not source.model.training
    assert (source.name, source.version) == ("lineage-source", "1")
    assert source.run_id == mlflow.MlflowClient().get_model_version("lineage-source", "1").run_id


def test_load_dataset_checks_fit() -> None:
    with pytest.raises(DataError, match=r"data batch of shape \(16, 1, 8, 8\) does not fit Flat100\.forward"):
        load_dataset.fn(DataSpec(batch_size=16), Flat100())
