"""Model and data sources: safe loading, clear refusals, dict batches bound to forward, splits."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from quantstage.quant.data.inputs import check_inputs_fit
from quantstage.quant.data.model_source import (
    ModelSource,
    build_from_factory,
    load_pickled_module,
    load_state_dict_file,
    load_weights,
)
from quantstage.quant.data.sources import DataSpec, load_data
from quantstage.quant.errors import DataError, SourceError
from quantstage.quant.ship.jit import jit_quiet
from tests.models import build_encoder, encoder_batches


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bias: float = 0.0) -> torch.Tensor:
        return self.fc(x) * scale + bias


def dict_batches(n: int = 6) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        {"x": torch.randn(2, 4, generator=g), "scale": torch.ones(2, 1), "labels": torch.tensor([0, 1])}
        for _ in range(n)
    ]


# ------------------------------------------------------------------------------- models
def test_untrusted_pickle_is_refused(tmp_path) -> None:
    path = tmp_path / "model.pt"
    torch.save(TwoInputs(), path)
    with pytest.raises(
        ValueError, match=r"refusing to unpickle .*arbitrary code.*factory.*weights.*trust_pickle: true"
    ):
        ModelSource(path=str(path))
    with pytest.raises(SourceError, match=r"refusing to unpickle"):
        load_pickled_module(path, trust_pickle=False)
    assert isinstance(load_pickled_module(path, trust_pickle=True), TwoInputs)
    with pytest.raises(SourceError, match=r"not a plain state_dict: torch.load\(weights_only=True\) refused it"):
        load_state_dict_file(path)  # a pickled module given as weights: no code runs, clear refusal


def test_torchscript_input_is_refused(tmp_path) -> None:
    path = tmp_path / "scripted.pt"
    with jit_quiet():
        torch.jit.script(TwoInputs()).save(str(path))
    for load in (lambda: load_state_dict_file(path), lambda: load_pickled_module(path, trust_pickle=True)):
        with pytest.raises(
            SourceError, match=r"is a TorchScript archive: FX quantization prepares the eager Python model"
        ):
            load()


def test_weights_mismatch_names_keys_and_shapes(tmp_path) -> None:
    state = build_encoder(hidden=64).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["layers.0.ffn.fc1.bias"]
    path = tmp_path / "w.pt"
    torch.save(state, path)
    model = build_encoder(hidden=32)
    with pytest.raises(SourceError) as info:
        load_weights(model, load_state_dict_file(path), str(path))
    message = str(info.value)
    assert "1 missing (first: layers.0.ffn.fc1.bias)" in message
    assert "1 unexpected (first: extra.weight)" in message
    assert "shape mismatch(es) (first: embed.weight: file (1000, 64) vs model (1000, 32)" in message
    assert "fix: build the model with the factory kwargs it was trained with" in message


def test_checkpoint_dicts_and_safetensors_load(tmp_path) -> None:
    from safetensors.torch import save_file

    state = TwoInputs().state_dict()
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pt")
    save_file(state, str(tmp_path / "w.safetensors"))
    for name in ("ckpt.pt", "w.safetensors"):
        loaded = load_state_dict_file(tmp_path / name)
        assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_factory_errors() -> None:
    with pytest.raises(
        SourceError, match=r"model factory 'tests.nope:build' is not importable .*fix: give 'package.module:callable'"
    ):
        build_from_factory("tests.nope:build", {})
    with pytest.raises(SourceError, match=r"rejected its arguments"):
        build_from_factory("tests.models:build_encoder", {"hiddden": 3})
    with pytest.raises(SourceError, match=r"model folder '/nonexistent' does not exist"):
        build_from_factory("tests.models:build_encoder", {}, folder="/nonexistent")
    with pytest.raises(ValueError, match=r"exactly one of uri, factory or path"):
        ModelSource(uri="models:/m@a", factory="a:b")
    with pytest.raises(ValueError, match=r"weights, folder and kwargs belong to a factory source"):
        ModelSource(uri="models:/m@a", weights="w.pt")


# --------------------------------------------------------------------------------- data
def test_dict_batches_are_bound_to_forward() -> None:
    model = TwoInputs()
    data = load_data(DataSpec(source="tests.quant.data.test_sources:dict_batches"), model)
    assert data.input_names == ("x", "scale")
    inputs, targets = data.evaluation[0]
    assert isinstance(inputs, tuple) and len(inputs) == 2 and targets.tolist() == [0, 1]
    assert len(data.calibration) + len(data.evaluation) == 6
    check_inputs_fit(model, data.example_inputs, data.input_names)


def test_dict_batch_errors_name_the_argument() -> None:
    model = TwoInputs()
    with pytest.raises(
        DataError, match=r"data batch key 'y' is not an argument of TwoInputs.forward\(x, scale, bias\)"
    ):
        load_data(DataSpec(source="tests.quant.data.test_sources:dict_batches_wrong_key"), model)
    with pytest.raises(DataError, match=r"data batch has no 'scale', a required argument of TwoInputs.forward"):
        load_data(DataSpec(source="tests.quant.data.test_sources:dict_batches_missing"), model)


def dict_batches_wrong_key() -> list[dict]:
    return [{"x": torch.zeros(2, 4), "y": torch.zeros(2)} for _ in range(3)]


def dict_batches_missing() -> list[dict]:
    return [{"x": torch.zeros(2, 4)} for _ in range(3)]


def test_data_that_does_not_fit_names_arguments_and_shapes() -> None:
    model = build_encoder()
    bad = [{"input_ids": b["input_ids"][:, :5], "attention_mask": b["attention_mask"]} for b in encoder_batches(2)]
    with pytest.raises(
        DataError,
        match=r"data batch of shape input_ids=\(4, 5\), attention_mask=\(4, 16\) does not fit Encoder.forward",
    ):
        check_inputs_fit(model, (bad[0]["input_ids"], bad[0]["attention_mask"]), ("input_ids", "attention_mask"))


def test_file_sources_split_seeded_and_subsampled(tmp_path) -> None:
    x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    y = np.arange(40) % 3
    np.savez(tmp_path / "d.npz", x=x, labels=y)
    np.save(tmp_path / "d.npy", x)
    torch.save((torch.from_numpy(x), torch.from_numpy(y)), tmp_path / "d.pt")
    spec = DataSpec(source=str(tmp_path / "d.npz"), batch_size=8, test_fraction=0.25, seed=3)
    a, b = load_data(spec), load_data(spec)
    assert a.digest() == b.digest()
    assert a.num_eval_samples == 10 and a.num_calibration_samples == 30
    assert a.digest() != load_data(spec.model_copy(update={"seed": 4})).digest()
    pt = load_data(DataSpec(source=str(tmp_path / "d.pt"), batch_size=8, seed=3))
    assert pt.digest() == a.digest()  # same samples, targets and order from either format
    npy = load_data(
        DataSpec(source=str(tmp_path / "d.npy"), batch_size=8, calibration_samples=12, evaluation_samples=5)
    )
    assert npy.num_calibration_samples == 12 and npy.num_eval_samples == 5 and not npy.has_targets


def test_overlapping_splits_warn(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    x = torch.randn(16, 4)
    torch.save(x, tmp_path / "cal.pt")
    torch.save(x[:6], tmp_path / "eval.pt")
    with caplog.at_level(logging.WARNING, logger="quantstage.quant.data.sources"):
        data = load_data(DataSpec(source=str(tmp_path / "cal.pt"), evaluation_source=str(tmp_path / "eval.pt")))
    assert data.overlap == 6
    assert "6 evaluation sample(s) also occur in the calibration data" in caplog.text


def test_pickled_data_file_is_refused(tmp_path) -> None:
    torch.save({"x": TwoInputs()}, tmp_path / "d.pt")
    with pytest.raises(
        DataError, match=r"could not be loaded with torch.load\(weights_only=True\).*never pickled objects"
    ):
        load_data(DataSpec(source=str(tmp_path / "d.pt")))


def test_bad_source_forms() -> None:
    with pytest.raises(ValueError, match=r"data source 'data.csv' is not a data source; use 'digits'"):
        DataSpec(source="data.csv")
    with pytest.raises(DataError, match=r"data source 'tests.nope:fn' is not importable"):
        load_data(DataSpec(source="tests.nope:fn"))


def from_folder(folder: str, dropout: float = 0.0) -> nn.Module:
    """A Hugging Face-style factory: config.json + model.safetensors in one folder."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    config = json.loads((Path(folder) / "config.json").read_text())
    model = nn.Sequential(
        nn.Linear(config["in"], config["hidden"]), nn.Dropout(dropout), nn.Linear(config["hidden"], 2)
    )
    model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
    return model


def test_factory_reads_a_checkpoint_folder(tmp_path) -> None:
    import json

    from safetensors.torch import save_file

    trained = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.0), nn.Linear(8, 2))
    (tmp_path / "config.json").write_text(json.dumps({"in": 4, "hidden": 8}))
    save_file(trained.state_dict(), str(tmp_path / "model.safetensors"))
    source = ModelSource(
        factory="tests.quant.data.test_sources:from_folder", folder=str(tmp_path), kwargs={"dropout": 0.1}
    )
    model = build_from_factory(source.factory, source.kwargs, source.folder)
    x = torch.randn(3, 4)
    assert torch.equal(model.eval()(x), trained.eval()(x))
    assert source.label == "test_sources.from_folder"  # module and function: the default registered name
