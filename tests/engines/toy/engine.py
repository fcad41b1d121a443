"""``ToyEngine``: every ``nn.Linear`` (but ``skip_modules``) becomes a dynamic int8 ``ToyLinear`` — int8 weights
with one scale per output row, activations quantized per tensor on the fly, the int8 product accumulated in float32
— in plain torch; shipped as TorchScript, logged with MLflow's pytorch flavor."""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from quantstage.quant.data.sources import Batch
from quantstage.quant.engines.base import Reference, UnusedSkip
from quantstage.quant.errors import ArtifactError, SpecError
from quantstage.quant.measure.coverage import FLOAT, QUANTIZED, REASON_SKIPPED, CoverageEntry, CoverageReport
from quantstage.quant.measure.sensitivity import LayerSensitivity
from quantstage.quant.ship.jit import jit_quiet, max_abs_diff, to_torchscript
from quantstage.quant.ship.shipped import ModelForm, Origin, Shipped, VariantResult
from quantstage.quant.ship.signature import split_signature

from .spec import ToySpec

__all__ = ["TOY_ENGINE", "ToyEngine", "ToyLinear", "ToyReference"]

SHIPPED_FILE = "model_int8.pt"
FORM = "dynamic int8"


def _int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 of ``weight``, one scale per output row: (int8 values, scales)."""
    scale = weight.detach().abs().amax(dim=1).clamp(min=1e-8) / 127.0
    return torch.round(weight.detach() / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def _quantize_input(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = x.abs().amax().clamp(min=1e-8) / 127.0
    return torch.round(x / scale).clamp(-127, 127), scale


class FakeQuantLinear(nn.Module):
    """The reference form: quantize/dequantize around a float linear (int8 weights, one scale per row)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight, scale = _int8(linear.weight)
        bias = linear.bias.detach().clone() if linear.bias is not None else torch.zeros(linear.out_features)
        self.register_buffer("weight_int8", weight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, x_scale = _quantize_input(x)
        return F.linear(q * x_scale, self.weight_int8.float() * self.scale[:, None], self.bias)


class ToyLinear(nn.Module):
    """The lowered form: the int8 product of int8 inputs and weights, scaled once."""

    def __init__(self, fake: FakeQuantLinear) -> None:
        super().__init__()
        self.register_buffer("weight_int8", fake.weight_int8.clone())
        self.register_buffer("scale", fake.scale.clone())
        self.register_buffer("bias", fake.bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, x_scale = _quantize_input(x)
        return F.linear(q, self.weight_int8.float()) * (x_scale * self.scale) + self.bias


class ToyReference(nn.Module):
    """The reference quantized model: ``FakeQuantLinear`` in place of every quantized Linear (``names``)."""

    def __init__(self, prepared: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = _swapped(prepared, names, FakeQuantLinear)
        self.names = tuple(names)

    @property
    def code(self) -> str:
        return "".join(
            f"{name}: linear(dequantize(quantize_per_tensor(x)), dequantize(int8 weight))\n" for name in self.names
        )

    def forward(self, *args: Any) -> Any:
        return self.model(*args)


def _linears(model: nn.Module, spec: ToySpec) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in spec.skip_modules]


def _swapped(model: nn.Module, names: Sequence[str], make: Any) -> nn.Module:
    out = copy.deepcopy(model)
    for name in names:
        parent, _, attr = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, attr, make(out.get_submodule(name)))
    return out


def _toy_reference(reference: Reference) -> ToyReference:
    if not isinstance(reference, ToyReference):
        raise ArtifactError(f"the toy engine takes the ToyReference its reference() made, got {type(reference)}")
    return reference


def _toy_spec(spec: Any) -> ToySpec:
    if not isinstance(spec, ToySpec):
        raise SpecError(f"the toy engine takes a ToySpec (engine 'toy'), got engine {spec.engine!r}")
    return spec


@dataclasses.dataclass(frozen=True)
class SavedScript:
    """A TorchScript file saved, loaded back and verified (``ShippedFile``)."""

    path: Path
    module: torch.jit.ScriptModule
    method: str
    size_bytes: int
    max_abs_diff: float


def _save(model: nn.Module, path: Path, verify_inputs: Sequence[tuple[Any, ...]], tolerance: float) -> SavedScript:
    scripted, method = to_torchscript(model.eval(), verify_inputs[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with jit_quiet():
        torch.jit.save(scripted, str(path))
    loaded = _load_script(path)
    with torch.no_grad():
        worst = max(max_abs_diff(model(*args), loaded(*args)) for args in verify_inputs)
    if worst > tolerance:
        raise ArtifactError(
            f"TorchScript at {str(path)!r} differs from the model by {worst:g} (tolerance {tolerance:g})"
        )
    return SavedScript(path, loaded, method, path.stat().st_size, worst)


def _load_script(path: Path) -> torch.jit.ScriptModule:
    with jit_quiet():
        return torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]


class ToyEngine:
    """``quant.engines.Engine`` for dynamic int8 Linear layers in plain torch."""

    name = "toy"
    supports_submodules = False

    def check(self, spec: Any) -> None:
        _toy_spec(spec)

    def prepare(self, model: nn.Module, example_args: tuple[Any, ...], spec: Any) -> nn.Module:
        return copy.deepcopy(model).eval()  # dynamic: nothing to observe

    def load_qat(
        self, checkpoint: str | Path, model: nn.Module, example_args: tuple[Any, ...]
    ) -> tuple[nn.Module, Any]:
        raise SpecError(f"QAT checkpoint {str(checkpoint)!r} with engine 'toy': it has no QAT; fix: use engine 'fx'")

    def unused_skips(self, model: nn.Module, prepared: nn.Module, spec: Any) -> list[UnusedSkip]:
        names = {n for n, _ in model.named_modules()}
        return [
            UnusedSkip("module_name", key, f"skip module_name {key!r} matches no module of {type(model).__name__}")
            for key in _toy_spec(spec).skip_modules
            if key not in names
        ]

    def degenerate_ranges(self, prepared: nn.Module) -> list[str]:
        return []

    def reference(self, prepared: nn.Module, spec: Any) -> ToyReference:
        return ToyReference(prepared, _linears(prepared, _toy_spec(spec)))

    def lower(self, reference: Reference, spec: Any) -> nn.Module:
        ref = _toy_reference(reference)
        return _swapped(ref.model, ref.names, ToyLinear)

    def reference_module(self, reference: Reference) -> nn.Module:
        return _toy_reference(reference)

    def save_reference(self, module: nn.Module, path: Path, verify_inputs: Sequence[tuple[Any, ...]]) -> SavedScript:
        return _save(module, path.with_suffix(".pt"), verify_inputs, 0.0)

    def coverage(self, float_model: nn.Module, reference: Reference, lowered: nn.Module) -> CoverageReport:
        quantized = set(_toy_reference(reference).names)
        entries = tuple(
            CoverageEntry(
                name,
                "Linear",
                QUANTIZED if name in quantized else FLOAT,
                FORM if name in quantized else REASON_SKIPPED,
                sum(p.numel() for p in module.parameters()),
            )
            for name, module in float_model.named_modules()
            if isinstance(module, nn.Linear)
        )
        return CoverageReport(entries)

    def sensitivity(
        self, prepared: nn.Module, lowered: nn.Module, batches: Sequence[Batch], max_batches: int
    ) -> list[LayerSensitivity]:
        return []

    def weight_only(self, module: nn.Module) -> nn.Module | None:
        return None

    def ship(
        self,
        served: nn.Module,
        folder: Path,
        verify_inputs: Sequence[tuple[Any, ...]],
        *,
        origin: Origin | None = None,
        tolerance: float = 0.0,
        budget_s: float | None = None,
    ) -> Shipped:
        model, _ = split_signature(served)  # positional TorchScript: the toy ships no named forward
        saved = _save(model, folder / SHIPPED_FILE, verify_inputs, tolerance)
        variant = VariantResult("toy_torchscript", None, saved.max_abs_diff, True, True)
        return Shipped(
            method="toy_torchscript",
            path=saved.path,
            size_bytes=saved.size_bytes,
            form=ModelForm("pytorch", saved.module),
            load=functools.partial(_load_script, saved.path),
            variants=[variant],
        )

    def load(self, folder: Path) -> nn.Module:
        if folder.is_file():
            return _load_script(folder)
        found = sorted(p for p in folder.rglob("*") if p.suffix in (".pt", ".pth"))
        if len(found) != 1:
            raise ArtifactError(f"{str(folder)!r} holds {len(found)} TorchScript files; allowed: exactly one")
        return _load_script(found[0])


TOY_ENGINE = ToyEngine()
