"""Real model and data sources end to end: a factory + safetensors/state_dict weights, dict-input
data from a function, an encoder whose forward does not FX-trace (quantized by submodules), the
CLI with the same sources, and the data lineage MLflow records."""

from __future__ import annotations

import mlflow
import pytest
import torch

from quantstage.flows.cli import main
from quantstage.flows.convert import ConvertParams, convert_flow
from quantstage.quant.measure.evaluate import sqnr_db
from tests.models import build_encoder, encoder_batches

pytestmark = pytest.mark.flow

DATA = {"source": "tests.models:encoder_batches", "kwargs": {"num_batches": 8, "batch_size": 4}}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The trained weights: the encoder built with seed 7, saved as a plain state_dict."""
    path = tmp_path_factory.mktemp("encoder") / "encoder.pt"
    torch.save(build_encoder(seed=7).state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def converted(mlflow_store: str, prefect_harness: None, weights: str):
    params = ConvertParams.model_validate(
        {
            "model": {
                "factory": "tests.models:build_encoder",
                "weights": weights,
            },  # built with seed 0, weights of seed 7
            "data": DATA,
            "spec": {"mode": "dynamic"},
            "evaluation": {"task": "embedding"},
            "gates": {"max_accuracy_drop": None, "min_output_sqnr_db": 30.0, "min_quantized_fraction": 0.95},
            "registered_name": "encoder-int8",
            "benchmark_iterations": 10,
        }
    )
    return convert_flow(params)


def test_untraceable_encoder_is_quantized_by_submodules(converted) -> None:
    assert converted.promoted, converted.gates
    assert converted.metrics["quantized_fraction"] >= 0.95
    assert converted.metrics["output_sqnr_db"] >= 30.0
    run = mlflow.get_run(converted.run_id)
    assert run.data.params["resolved.tracing"].startswith("submodules (")
    assert "item assignment" in run.data.params["resolved.tracing"]
    assert run.data.params["data.inputs"] == "input_ids=(4, 16), attention_mask=(4, 16)"
    report = mlflow.artifacts.load_text(f"runs:/{converted.run_id}/report.md")
    assert "by submodules" in report and "left float" in report


def test_registered_encoder_loads_and_takes_keyword_tensors(converted) -> None:
    """What the registry serves is the quantized whole model as TorchScript, called like the float
    model (keyword or positional tensors), close to the float model with the same weights."""
    loaded = mlflow.pytorch.load_model("models:/encoder-int8@champion")
    assert isinstance(loaded, torch.jit.ScriptModule)
    reference = build_encoder(seed=7).eval()
    batch = encoder_batches(num_batches=1, batch_size=4, seed=99)[0]
    with torch.no_grad():
        by_name = loaded(**batch)
        assert torch.equal(by_name, loaded(batch["input_ids"], batch["attention_mask"]))
        assert sqnr_db(reference(**batch), by_name) >= 30.0
    example = mlflow.artifacts.load_dict(f"runs:/{converted.run_id}/model/input_example.json")
    assert set(example) == {"input_ids", "attention_mask"}
    info = mlflow.models.get_model_info(converted.model_uri)
    assert [spec.name for spec in info.signature.inputs.inputs] == ["input_ids", "attention_mask"]


def test_data_lineage_is_logged(converted) -> None:
    run = mlflow.get_run(converted.run_id)
    contexts = {}
    for item in run.inputs.dataset_inputs:
        tags = {t.key: t.value for t in item.tags}
        contexts[tags["mlflow.data.context"]] = tags
    assert set(contexts) == {"calibration", "evaluation"}
    assert contexts["calibration"]["source"] == "tests.models:encoder_batches"
    assert int(contexts["calibration"]["samples"]) + int(contexts["evaluation"]["samples"]) == 32
    assert len(run.data.tags["data.digest"]) == 64
    assert run.data.tags["data.overlap_samples"] == "0"


def test_cli_with_factory_and_dict_data(capsys: pytest.CaptureFixture[str], converted, weights: str, tmp_path) -> None:
    from safetensors.torch import save_file

    tensors = tmp_path / "encoder.safetensors"
    save_file(build_encoder(seed=7).state_dict(), str(tensors))
    code = main(
        [
            "convert",
            "--model-factory",
            "tests.models:build_encoder",
            "--weights",
            str(tensors),
            "--data",
            DATA["source"],
            "--data-kwarg",
            "num_batches=8",
            "--data-kwarg",
            "batch_size=4",
            "--mode",
            "dynamic",
            "--task",
            "embedding",
            "--min-quantized-fraction",
            "0.95",
            "--registered-name",
            "encoder-cli-int8",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out[-2000:]
    version = mlflow.MlflowClient().get_model_version_by_alias("encoder-cli-int8", "champion")
    assert version.tags["source_uri"] == "tests.models:build_encoder"  # the full factory path


class Unscriptable(torch.nn.Module):
    """Depth chosen from the data: FX cannot trace it, TorchScript cannot script the ModuleList
    index, and a trace bakes one depth in (so it does not reproduce other inputs)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width))
            for _ in range(3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depth = 1 + int(x[:, 0].gt(0).sum()) % 3
        for i in range(depth):
            x = self.blocks[i](x)
        return x


def build_unscriptable(width: int = 16) -> torch.nn.Module:
    torch.manual_seed(0)
    return Unscriptable(width)


def test_model_torchscript_cannot_reproduce_ships_as_rebuild_bundle(
    mlflow_store: str, prefect_harness: None, tmp_path
) -> None:
    """Neither script nor trace reproduces it: the flow logs factory + spec + quantized state_dict,
    verified by rebuilding, registers it as a pyfunc model, and says so in the report."""
    g = torch.Generator().manual_seed(0)
    torch.save(torch.randn(96, 16, generator=g), tmp_path / "x.pt")
    result = convert_flow(
        ConvertParams.model_validate(
            {
                "model": {"factory": "tests.flows.test_sources_flow:build_unscriptable", "kwargs": {"width": 16}},
                "data": {"source": str(tmp_path / "x.pt"), "batch_size": 8},
                "spec": {"mode": "dynamic"},
                "evaluation": {"task": "regression"},
                "gates": {"min_output_sqnr_db": 25.0, "min_speedup": None},  # its int8 is slower (0.49x)
                "registered_name": "unscriptable-int8",
                "benchmark_iterations": 10,
                "sensitivity": False,
            }
        )
    )
    assert result.promoted, result.gates
    run = mlflow.get_run(result.run_id)
    assert run.data.params["export.method"] == "rebuild_bundle"
    report = mlflow.artifacts.load_text(f"runs:/{result.run_id}/report.md")
    assert "Shipped as a rebuild bundle" in report and "build_unscriptable" in report
    served = mlflow.pyfunc.load_model("models:/unscriptable-int8@champion")
    x = torch.randn(8, 16, generator=g)
    with torch.no_grad():
        assert sqnr_db(build_unscriptable()(x), torch.from_numpy(served.predict(x.numpy()))) >= 25.0
