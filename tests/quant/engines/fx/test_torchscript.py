"""export_torchscript: scripted or traced, verified bit-exact against the lowered model, refused otherwise."""

# No ``from __future__ import annotations`` here: with string annotations FX generates
# ``x: _torch_Tensor_`` placeholders that torch.jit.script cannot resolve.
import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.fx import GraphModule

from quantstage.demo import DigitsCNN
from quantstage.quant import FxSpec
from quantstage.quant.data.sources import Dataset
from quantstage.quant.engines.fx.torchscript import export_torchscript, load_torchscript
from quantstage.quant.errors import ArtifactError
from tests.quant.helpers import SEED, quantize_fx

pytestmark = [
    pytest.mark.usefixtures("restore_torch_state"),
    # torch.jit.trace warns about the data-dependent branch of the trace-only model below.
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    # The tests script quantized models themselves too (outside quant's own calls).
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The TorchScript type system doesn't support instance-level:UserWarning"),
]


class VarArgs(nn.Module):
    """Not scriptable (``*args``), traceable: export falls back to torch.jit.trace."""

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return args[0] * 2 + 1


class VarArgsBranch(nn.Module):
    """Not scriptable; a trace freezes the branch of its first input, so later inputs differ."""

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        x = args[0]
        if x.sum() > 0:
            return x * 2
        return x * 3


class VarArgsDict(nn.Module):
    """Neither scriptable (``*args``) nor traceable in strict mode (dict output)."""

    def forward(self, *args: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": args[0]}


def test_export_torchscript_round_trip(cnn_pair: tuple[nn.Module, GraphModule], data: Dataset, tmp_path: Path) -> None:
    _, quantized = cnn_pair
    verify = [(x,) for x, _ in data.evaluation[:2]]
    path = tmp_path / "nested" / "model.pt"
    artifact = export_torchscript(quantized, path, verify)
    assert artifact.path == path and path.is_file()
    assert artifact.method == "script"
    assert artifact.size_bytes == path.stat().st_size > 0
    assert artifact.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    reloaded = load_torchscript(path)
    with torch.no_grad():
        for x, _ in data.evaluation[2:4]:
            assert torch.equal(reloaded(x), quantized(x))
            assert torch.equal(artifact.module(x), quantized(x))


def test_export_torchscript_digits_cnn(data: Dataset, tmp_path: Path) -> None:
    """The demo model: quant/models.py uses string annotations, so this may be a trace."""
    torch.manual_seed(SEED)
    model = DigitsCNN(width=4).eval()
    quantized = quantize_fx(model, data, FxSpec(calibration_batches=2))
    artifact = export_torchscript(quantized, tmp_path / "digits.pt", [data.example_inputs])
    print(f"DigitsCNN exported by torch.jit.{artifact.method}")
    with torch.no_grad():
        x = data.evaluation[1][0]
        assert torch.equal(load_torchscript(artifact.path)(x), quantized(x))


def test_export_torchscript_falls_back_to_trace(tmp_path: Path) -> None:
    x = torch.randn(3, 4)
    artifact = export_torchscript(VarArgs(), tmp_path / "trace.pt", [(x,)])
    assert artifact.method == "trace"
    assert torch.equal(load_torchscript(artifact.path)(x), x * 2 + 1)


def test_export_torchscript_needs_inputs(cnn_pair: tuple[nn.Module, GraphModule], tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="needs at least one input to verify the saved model"):
        export_torchscript(cnn_pair[1], tmp_path / "model.pt", [])
    assert not (tmp_path / "model.pt").exists()


def test_export_torchscript_refuses_a_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "branch.pt"
    with pytest.raises(
        ArtifactError,
        match=r"does not reproduce the lowered model on verification input 1 \(max abs difference 1, bit-exact required\); refusing",
    ):
        export_torchscript(VarArgsBranch(), path, [(torch.ones(2),), (-torch.ones(2),)])


def test_export_torchscript_neither_script_nor_trace(tmp_path: Path) -> None:
    with pytest.raises(
        ArtifactError,
        match=r"(?s)VarArgsDict can be neither scripted \(.*\) nor traced \(.*\); fix: make forward TorchScript-compatible",
    ):
        export_torchscript(VarArgsDict(), tmp_path / "dict.pt", [(torch.ones(2),)])
