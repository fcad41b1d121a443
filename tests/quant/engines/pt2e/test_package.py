"""The AOTInductor lowering: what quantstage corrects in Inductor's int8 code, and the package check."""

from __future__ import annotations

import os
import zipfile

import pytest
import torch

from quantstage.quant import Pt2eSpec, quantize
from quantstage.quant.engines.pt2e.inductor_fixes import _choose_qparams_tensor
from quantstage.quant.engines.pt2e.package import _sqnr, _within_quantization_noise
from quantstage.quant.errors import ConversionError
from tests.models import DigitsMLP


@pytest.mark.parametrize("offset", [1.0, -2.0, -0.5], ids=["positive", "negative", "both signs"])
def test_choose_qparams_is_the_references(offset: float) -> None:
    import torch.ao.quantization.fx._decomposed  # registers quantized_decomposed

    x = torch.rand(64, 32) + offset
    scale, zero_point = _choose_qparams_tensor(x, 0, 255, 2**-12, torch.uint8)
    want_scale, want_zero_point = torch.ops.quantized_decomposed.choose_qparams.tensor(x, 0, 255, 2**-12, torch.uint8)
    assert torch.allclose(scale.float(), want_scale.float().reshape(scale.shape)), (scale, want_scale)
    assert int(zero_point) == int(want_zero_point), (zero_point, want_zero_point)


def test_dynamic_package_matches_the_reference_on_one_sign_activations() -> None:
    """Inputs all in [1, 2): Inductor's own choose_qparams would saturate them; the package's digits stay the
    reference's, and no quantize runs a per-element ``roundf`` (AVX2 ``round_convert``)."""
    torch.manual_seed(0)
    model = DigitsMLP(width=32, depth=1).eval()
    x = torch.rand(16, 1, 8, 8) + 1.0
    lowered = quantize(model, Pt2eSpec(mode="dynamic"), example_inputs=(x,)).model
    with torch.no_grad():
        sqnr = _sqnr(lowered.reference(x), lowered(x))
    assert sqnr >= 30.0, f"SQNR {sqnr:.1f} dB to the reference is too low"
    if not os.environ.get("TORCHINDUCTOR_CPP_MARCH"):
        with zipfile.ZipFile(lowered.path) as archive:
            kernels = "".join(archive.read(n).decode() for n in archive.namelist() if n.endswith("kernel.cpp"))
        assert "round_convert" not in kernels


class _Quantized(torch.nn.Module):
    """A stand-in reference model: its float model is the identity."""

    float_graph = torch.nn.Identity()


@pytest.mark.parametrize("package_noise, accepted", [(1.0, True), (10.0, False)], ids=["as noisy", "noisier"])
def test_a_package_as_close_to_float_as_the_reference_is_accepted(package_noise: float, accepted: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 64)
    expected = x + 0.1 * torch.randn_like(x)
    got = x + 0.1 * package_noise * torch.randn_like(x)
    sqnr = _sqnr(expected, got)
    if accepted:
        _within_quantization_noise(_Quantized(), (x,), expected, got, sqnr, "example batch", 25.0)
    else:
        with pytest.raises(ConversionError, match=r"to the float model: package .* dB, reference .* dB"):
            _within_quantization_noise(_Quantized(), (x,), expected, got, sqnr, "example batch", 25.0)
