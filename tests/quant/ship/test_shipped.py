"""Engines own their artifacts: ``ship`` returns one ``Shipped`` (the verified form and how MLflow logs it as a
``ModelForm``), ``load`` opens what it saved; the FX engine's rebuild bundle is its fallback, shipped only when an
``Origin`` says how the model was made."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quantstage.quant.data.model_source import ModelSource
from quantstage.quant.engines import FxSpec, get_engine
from quantstage.quant.errors import ArtifactError
from quantstage.quant.quantize import quantize
from quantstage.quant.ship import ModelForm, Origin, served_form


class Unscriptable(torch.nn.Module):
    """Depth chosen from the data: FX cannot trace it, TorchScript cannot script the ModuleList index, and a
    trace bakes one depth in (it does not reproduce other inputs)."""

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


def _batches(n: int = 4, width: int = 16) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, width, generator=g),) for _ in range(n)]


@pytest.fixture(scope="module")
def unscriptable() -> tuple[torch.nn.Module, object]:
    model = build_unscriptable().eval()
    return model, quantize(model, FxSpec(mode="dynamic"), _batches())


def test_fx_ships_torchscript_as_a_pytorch_form_and_loads_it_back(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    batches = _batches()
    quantized = quantize(model, FxSpec(mode="dynamic"), batches)
    engine = get_engine("fx")
    shipped = engine.ship(served_form(quantized.model, None, None), tmp_path / "model", batches)
    assert shipped.method.startswith("torchscript") and shipped.path == tmp_path / "model" / "model_int8.pt"
    assert shipped.form.flavor == "pytorch" and shipped.form.module is shipped.module
    assert shipped.size_bytes == shipped.path.stat().st_size and not shipped.why and not shipped.note
    assert {"torchscript", "torchscript_frozen"} <= {v.name for v in shipped.variants}
    x = batches[0][0]
    with torch.no_grad():
        expected = quantized.model(x)
        for loaded in (shipped.module, shipped.load(), engine.load(tmp_path / "model"), engine.load(shipped.path)):
            assert torch.equal(loaded(x), expected)


def test_fx_ships_a_rebuild_bundle_when_no_torchscript_form_reproduces_the_model(
    unscriptable: tuple, tmp_path: Path
) -> None:
    _, quantized = unscriptable
    served, verify, engine = served_form(quantized.model, None, None), _batches(), get_engine("fx")
    with pytest.raises(ArtifactError, match="TorchScript"):  # no Origin: no fallback
        engine.ship(served, tmp_path / "alone", verify)
    source = ModelSource(factory="tests.quant.ship.test_shipped:build_unscriptable")
    origin = Origin(quantized.model, quantized.spec, quantized.tracing, source)
    shipped = engine.ship(served, tmp_path / "model", verify, origin=origin)
    assert shipped.method == "rebuild_bundle" and "TorchScript" in shipped.why
    assert "build_unscriptable" in shipped.note and shipped.size_bytes > 0
    assert shipped.form.flavor == "pyfunc" and shipped.form.files == {"bundle": str(shipped.path)}
    assert shipped.form.loader == "quantstage.tasks.rebuild_model:RebuildModel"
    assert shipped.form.requirements == ("quantstage",)
    x = verify[1][0]
    with torch.no_grad():
        assert torch.equal(engine.load(tmp_path / "model")(x), quantized.model(x))
        assert torch.equal(shipped.load()(x), quantized.model(x))


def test_a_bundle_needs_a_factory_source(unscriptable: tuple, tmp_path: Path) -> None:
    _, quantized = unscriptable
    origin = Origin(quantized.model, quantized.spec, quantized.tracing, ModelSource(uri="models:/m/1"))
    with pytest.raises(ArtifactError, match=r"needs a factory source: give model: \{factory: "):
        get_engine("fx").ship(served_form(quantized.model, None, None), tmp_path, _batches(), origin=origin)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"flavor": "onnx"}, "flavor 'onnx' is unknown; allowed: pytorch, pyfunc"),
        ({"flavor": "pytorch", "loader": "pkg.mod"}, "logs its module only, got files"),
        ({"flavor": "pyfunc", "files": {"package": "m.pt2"}}, "needs files and a loader"),
    ],
    ids=["unknown-flavor", "pytorch-with-loader", "pyfunc-without-loader"],
)
def test_a_model_form_says_what_is_wrong(fields: dict, match: str) -> None:
    with pytest.raises(ArtifactError, match=match):
        ModelForm(module=torch.nn.Identity(), **fields)


@pytest.mark.parametrize("engine", ["fx", "pt2e"])
def test_load_names_what_the_folder_holds(engine: str, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no model here")
    with pytest.raises(ArtifactError, match=r"holds 0 .*allowed: exactly one"):
        get_engine(engine).load(tmp_path)
