"""The PT2E engine (torch.export + torchao + AOTInductor) on small real models: what a spec may ask of
it, what it quantizes, that the lowered package matches the reference, ships and reloads."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from quantstage.flows.sweep_params import expand_grid
from quantstage.quant import FxSpec, Pt2eSpec, parse_spec, quantize
from quantstage.quant.config import first_error
from quantstage.quant.engines import get_engine
from quantstage.quant.errors import SpecError, TracingError
from quantstage.quant.measure.coverage import REASON_SKIPPED
from tests.models import DigitsMLP, GatedNet, SmallCNN


def _sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    noise = (ref - out).pow(2).sum()
    return math.inf if noise == 0 else float(10 * torch.log10(ref.pow(2).sum() / noise))


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"backend": "qnnpack"}, "backend 'qnnpack' with engine 'pt2e'"),
        ({"mode": "float16"}, "mode 'float16' with engine 'pt2e'"),
        ({"tracing": "submodules"}, "tracing = 'submodules' has no meaning for engine 'pt2e'"),
        ({"target": "reference"}, "target = 'reference' has no meaning for engine 'pt2e'"),
        ({"backend_config": "x86"}, "backend_config = 'x86' has no meaning for engine 'pt2e'"),
        ({"keep_original_weights": True}, "keep_original_weights = True"),
        ({"float_global_pool": False}, "float_global_pool = False"),
        (
            {"qconfig_mapping": {"overrides": [{"set": "module_name_regex", "key": "a.*", "qconfig": None}]}},
            "X86InductorQuantizer has no module_name_regex setter",
        ),
        ({"skip_object_types": ["operator.add"]}, "object type 'operator.add' cannot be configured"),
        (
            {"qconfig_mapping": {"preset": "static", "overrides": [{"set": "global", "qconfig": "weight_only"}]}},
            "qconfig 'weight_only' has no PT2E form",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else next(iter(v)),
)
def test_fields_pt2e_cannot_honour_are_refused_before_any_work(fields: dict, named: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_spec({"engine": "pt2e", **fields}, check=True)
    message = first_error(info.value)
    assert named in message and "\n" not in message, message
    assert "fix:" in message


def test_what_needs_torchao_is_the_engines_check() -> None:
    """Parsing stays framework-free: X86InductorQuantizer's object types are checked by the engine."""
    spec = parse_spec({"engine": "pt2e", "skip_object_types": ["operator.add"]})
    with pytest.raises(SpecError, match=r"object type 'operator\.add' cannot be configured.*fix:"):
        get_engine("pt2e").check(spec)
    with pytest.raises(SpecError, match="the PT2E engine takes a Pt2eSpec"):
        get_engine("pt2e").check(FxSpec())


def test_a_spec_written_for_fx_loads_with_engine_pt2e() -> None:
    """FX-only fields at FX's defaults (a dumped FxSpec, an old spec.json) mean nothing: dropped."""
    assert parse_spec(FxSpec().model_dump(mode="json") | {"engine": "pt2e"}) == Pt2eSpec()
    assert set(Pt2eSpec.model_fields) < set(FxSpec.model_fields)


def test_a_grid_field_of_another_engine_is_refused_naming_the_engine() -> None:
    with pytest.raises(ValueError, match=r"grid field 'backend_config' is not a QuantSpec field of engine 'pt2e'"):
        expand_grid(Pt2eSpec(), {"backend_config": ["x86"]})
    with pytest.raises(ValueError, match=r"of engine 'pt2e'; use a dotted path from \[.*'skip_modules'"):
        expand_grid(FxSpec(), {"engine": ["fx", "pt2e"], "keep_original_weights": [True]})


def test_pt2e_resolves_eight_bit_activations_and_its_own_digest() -> None:
    fx, pt2e = FxSpec(), Pt2eSpec()
    assert pt2e.resolved() == {"reduce_range": False}  # Inductor's oneDNN kernels do not saturate
    assert "Inductor" in pt2e.as_params()["resolved.reduce_range"]
    assert fx.digest() != pt2e.digest()


def test_engine_is_a_sweep_grid_field() -> None:
    labels = [label for label, _ in expand_grid(FxSpec(), {"engine": ["fx", "pt2e"]})]
    assert labels == ['engine="fx"', 'engine="pt2e"']
    for _, raw in expand_grid(FxSpec(), {"engine": ["fx", "pt2e"]}):
        parse_spec(raw)


def test_a_model_torch_export_cannot_capture_is_one_line_with_the_fix() -> None:
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(TracingError) as info:
        quantize(GatedNet().eval(), Pt2eSpec(), [x])
    message = str(info.value)
    assert "\n" not in message
    assert "torch.export cannot capture GatedNet" in message and "engine 'fx'" in message


@pytest.fixture(scope="module")
def cnn() -> tuple[torch.nn.Module, torch.Tensor, object]:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.rand(64, 1, 8, 8)
    quantized = quantize(model, Pt2eSpec(skip_modules=("head.3",)), [x[i : i + 16] for i in range(0, 64, 16)])
    return model, x, quantized


def test_static_pt2e_quantizes_what_it_should_and_skips_by_name(cnn: tuple) -> None:
    model, x, quantized = cnn
    assert quantized.engine == "pt2e" and quantized.tracing == "whole"
    entries = {e.name: e for e in quantized.coverage.entries}
    assert entries["head.3"].status == "float" and entries["head.3"].reason == REASON_SKIPPED
    assert all(entries[n].status == "quantized" for n in ("features.0", "features.3", "head.1"))
    assert "quantize_per_tensor" in quantized.reference.code
    with torch.no_grad():
        assert _sqnr(model(x), quantized.model(x)) > 25.0
        assert quantized.model(x[:1]).shape == (1, 10)  # exported with a dynamic batch
        assert torch.equal(quantized.model(x=x[:5]), quantized.model(x[:5]))  # called like the float model


def test_the_package_ships_reloads_and_the_reference_program_is_saved(cnn: tuple, tmp_path: Path) -> None:
    _, x, quantized = cnn
    engine = get_engine("pt2e")
    shipped = engine.ship(quantized.model, tmp_path / "model", [(x[:8],), (x[:1],)])
    variants = shipped.variants
    assert shipped.path.suffix == ".pt2" and shipped.path.exists() and variants[0].max_abs_diff == 0.0
    assert variants[0].name == "aoti_package" and variants[0].shippable
    assert shipped.form.flavor == "pyfunc" and shipped.form.files == {"package": str(shipped.path)}
    with torch.no_grad():
        assert torch.equal(shipped.module(x[:3]), quantized.model(x[:3]))
        assert torch.equal(engine.load(tmp_path / "model")(x[:3]), quantized.model(x[:3]))
    program = engine.save_reference(engine.reference_module(quantized.reference), tmp_path / "ref", [(x[:4],)])
    assert program.path.suffix == ".pt2" and program.method == "exported_program"
    loaded = torch.export.load(str(program.path)).module()
    with torch.no_grad():
        assert torch.equal(loaded(x[:4]), quantized.reference(x[:4]))


def test_sensitivity_names_every_layer_by_module_path(cnn: tuple) -> None:
    _, x, quantized = cnn
    layers = get_engine("pt2e").sensitivity(quantized.prepared, quantized.model, [(x[:16], None)], 1)
    names = {layer.name for layer in layers}
    assert {"features.0", "features.3", "head.1"} <= names
    assert all(layer.activation_sqnr_db is not None for layer in layers)
    quantized_layers = [layer for layer in layers if layer.name != "head.3"]
    assert all(layer.weight_sqnr_db is not None and layer.weight_sqnr_db > 30 for layer in quantized_layers)
    assert layers == sorted(layers, key=lambda layer: layer.score)


def test_dynamic_pt2e_quantizes_linear_layers() -> None:
    torch.manual_seed(0)
    model = DigitsMLP(width=32, depth=2).eval()
    x = torch.rand(16, 1, 8, 8)
    quantized = quantize(model, Pt2eSpec(mode="dynamic"), example_inputs=(x,))
    assert {e.reason for e in quantized.coverage.entries} == {"dynamic int8"}
    assert quantized.coverage.quantized_fraction == 1.0
    with torch.no_grad():
        assert _sqnr(model(x), quantized.model(x)) > 20.0


def test_qat_checkpoints_are_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="engine 'fx'"):
        get_engine("pt2e").load_qat(tmp_path / "ckpt.pt", SmallCNN(), (torch.rand(2, 1, 8, 8),))


def test_the_compiled_model_refuses_inputs_of_another_shape(cnn: tuple) -> None:
    """AOTInductor checks no shapes (a wrong one returns garbage): the lowered model does."""
    _, _, quantized = cnn
    from quantstage.quant.errors import DataError

    with pytest.raises(DataError, match=r"input 'x' of the compiled model is \(4, 1, 8, 9\).*\(N, 1, 8, 8\)"):
        quantized.model(torch.rand(4, 1, 8, 9))
    with pytest.raises(DataError, match="torch.float64"):
        quantized.model(torch.rand(4, 1, 8, 8, dtype=torch.float64))
