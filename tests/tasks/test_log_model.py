"""The logging stage logs any engine's ``ModelForm`` without knowing the engine, and what it logged loads back:
through MLflow (``mlflow.pytorch.load_model``, ``mlflow.pyfunc.load_model``) and through the engine that shipped
it (the sweep's quiet re-benchmark: ``Engine.load`` on the downloaded model folder)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch

from quantstage.quant.data.model_source import ModelSource
from quantstage.quant.engines import FxSpec, get_engine
from quantstage.quant.quantize import quantize
from quantstage.quant.ship import Origin, served_form
from quantstage.tasks.log_model import log_model_form
from quantstage.tasks.sweep import _load_shipped
from tests.quant.ship.test_shipped import build_unscriptable


def _batches(n: int = 4, width: int = 16) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)  # batches of different depths for Unscriptable: no trace reproduces it
    return [(torch.randn(8, width, generator=g),) for _ in range(n)]


def _run_id(name: str) -> str:
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name) or client.get_experiment(client.create_experiment(name))
    return client.create_run(experiment.experiment_id).info.run_id


@pytest.mark.parametrize("form", ["torchscript", "rebuild_bundle"])
def test_a_logged_form_loads_back_through_mlflow_and_its_engine(form: str, mlflow_store: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    if form == "torchscript":
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16)).eval()
    else:
        model = build_unscriptable().eval()
    batches = _batches()
    spec = FxSpec(mode="dynamic")
    quantized = quantize(model, spec, batches)
    source = ModelSource(factory="tests.quant.ship.test_shipped:build_unscriptable")
    origin = Origin(quantized.model, quantized.spec, quantized.tracing, source)
    shipped = get_engine("fx").ship(served_form(quantized.model, None, None), tmp_path, batches, origin=origin)
    assert shipped.method.startswith(form)

    uri = log_model_form(_run_id("log-model-form"), shipped.form, batches[0][0][:2])
    x = batches[2][0]
    with torch.no_grad():
        expected = quantized.model(x)
    info = mlflow.models.get_model_info(uri)
    assert info.signature is not None and info.saved_input_example_info is not None
    predicted = mlflow.pyfunc.load_model(uri).predict(x.numpy())
    assert torch.equal(torch.as_tensor(predicted), expected)
    if shipped.form.flavor == "pytorch":  # the champion loads as the module, called like the float model
        with torch.no_grad():
            assert torch.equal(mlflow.pytorch.load_model(uri)(x), expected)
    with torch.no_grad():
        assert torch.equal(_load_shipped(uri, spec, str(tmp_path / "download"))(x), expected)
