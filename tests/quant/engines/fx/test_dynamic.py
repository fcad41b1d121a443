"""8-bit dynamic activations: the swap keeps each layer's function, ships as TorchScript, follows the CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from quantstage.quant import FxSpec, QuantSpec, quantize, sqnr_db
from quantstage.quant.engines.fx.dynamic import DynamicLinear8, DynamicLinearReLU8
from quantstage.quant.engines.fx.torchscript import export_torchscript
from tests.models import SmallCNN, build_encoder, encoder_batches


def _spec(**dynamic: object) -> QuantSpec:
    return FxSpec(mode="dynamic", calibration_batches=4, qconfig_mapping={"preset": "dynamic", "dynamic": dynamic})


def test_fused_linear_relu_keeps_its_relu() -> None:
    """A LinearReLU becomes DynamicLinearReLU8 (not a plain Linear): SQNR stays at torch's level."""
    torch.manual_seed(0)
    model = SmallCNN().eval()
    batches = [(torch.rand(4, 1, 8, 8),) for _ in range(4)]
    reference = torch.cat([model(*b) for b in batches])
    ours = quantize(model, _spec(weight_bits=7), batches).model
    torch_default = quantize(model, _spec(weight="per_tensor", activation_bits=7), batches).model
    assert isinstance(ours.get_submodule("head.1"), DynamicLinearReLU8)
    assert isinstance(ours.get_submodule("head.3"), DynamicLinear8)
    with torch.no_grad():
        sqnr = sqnr_db(reference, torch.cat([ours(*b) for b in batches]))
        baseline = sqnr_db(reference, torch.cat([torch_default(*b) for b in batches]))
    assert sqnr >= 45.0 and sqnr >= baseline - 5.0, (sqnr, baseline)  # measured 55.1 vs 57.2 dB


def test_the_swapped_model_ships_bit_exact_and_loads_without_quantstage(tmp_path) -> None:
    model = build_encoder().eval()
    batches = encoder_batches(4)
    quantized = quantize(model, _spec(weight_bits=7), batches, timing_repeats=0).model
    assert any(isinstance(m, DynamicLinear8) for m in quantized.modules())
    inputs = [(b["input_ids"], b["attention_mask"]) for b in batches]
    artifact = export_torchscript(quantized, tmp_path / "m.pt", inputs)  # verifies bit-exactness on reload
    torch.save(inputs[0], tmp_path / "x.pt")
    torch.save(quantized(*inputs[0]), tmp_path / "y.pt")
    script = (
        f"import torch; m = torch.jit.load({str(artifact.path)!r}); x = torch.load({str(tmp_path / 'x.pt')!r}); "
        f"assert torch.equal(m(*x), torch.load({str(tmp_path / 'y.pt')!r})); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.parametrize("isa", ["avx512_vnni", None])
def test_weights_get_seven_bits_only_without_vnni(monkeypatch: pytest.MonkeyPatch, isa: str | None) -> None:
    from quantstage.quant import hardware

    monkeypatch.setattr(hardware, "has_int8_dot_product", lambda: isa)
    model = nn.Sequential(nn.Linear(16, 8)).eval()
    quantized = quantize(model, FxSpec(mode="dynamic"), [torch.randn(4, 16)]).model
    layer = next(m for m in quantized.modules() if isinstance(m, DynamicLinear8))
    weight, _ = layer._packed_params._weight_bias()
    assert int(weight.int_repr().abs().max()) <= (127 if isa else 64)
    assert int(weight.int_repr().abs().max()) > (64 if isa else 32)
