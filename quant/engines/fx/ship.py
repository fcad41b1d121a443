"""What the FX engine ships, and how it loads it again.

The fastest TorchScript form that reproduces the lowered model (``variants``; a scripted wrapper with the float
model's argument names when the call signature is known, ``named``), saved, loaded back and verified; MLflow logs
it with the pytorch flavor, so ``mlflow.pytorch.load_model`` returns the ScriptModule, called like the float
model. When no TorchScript form reproduces the model, a rebuild bundle (``rebuild``: factory + spec + quantized
state_dict, verified by rebuilding) ships instead, as a pyfunc model whose loader
(``quantstage.tasks.rebuild_model``) rebuilds it. ``load_shipped`` opens either from the folder ``ship`` saved
in or from the logged model's folder.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from quantstage.quant.engines.fx.named import check_patterns, named_forms
from quantstage.quant.engines.fx.rebuild import MANIFEST, rebuild, save_bundle
from quantstage.quant.engines.fx.torchscript import TorchScriptArtifact, export_torchscript, load_torchscript
from quantstage.quant.engines.fx.variants import select_variant, torchscript_forms
from quantstage.quant.errors import ArtifactError
from quantstage.quant.ship.shipped import ModelForm, Origin, Shipped, VariantResult, size_of
from quantstage.quant.ship.signature import Pattern, split_signature

__all__ = [
    "BUNDLE_FOLDER",
    "BUNDLE_METHOD",
    "REBUILD_LOADER",
    "TORCHSCRIPT_FILE",
    "load_shipped",
    "ship_bundle",
    "ship_torchscript",
    "shipped_torchscript",
]

logger = logging.getLogger(__name__)

TORCHSCRIPT_FILE = "model_int8.pt"  # what ``ship`` saves in its folder
BUNDLE_FOLDER = "rebuild"  # the rebuild bundle's folder in it
BUNDLE_METHOD = "rebuild_bundle"  # the ``export.method`` of a bundle
REBUILD_LOADER = "quantstage.tasks.rebuild_model:RebuildModel"  # MLflow's pyfunc of a bundle (needs quantstage)
_TORCHSCRIPT_SUFFIXES = (".pt", ".pth")  # ``ship``'s file; MLflow's pytorch flavor saves ``data/model.pth``

_Named = tuple[tuple[str, ...], Callable[[], list[Pattern]]]  # a named forward's argument names and its patterns


def _select(
    served: nn.Module, verify_inputs: Sequence[tuple[Any, ...]], tolerance: float, budget_s: float | None
) -> tuple[str, nn.Module, list[VariantResult], _Named | None]:
    """The fastest form that reproduces ``served``: named (the float model's argument names) when its call
    signature is known and a named form works, else positional; and the patterns a named form serves."""
    model, signature = split_signature(served)  # a signature: ship forward with the float model's names
    if signature is not None:
        forms, patterns = named_forms(model, signature, verify_inputs, tolerance)
        try:
            method, module, variants = select_variant(
                model, verify_inputs, forms=forms, tolerance=tolerance, budget_s=budget_s
            )
            return method, module, variants, (signature.names, patterns)
        except ArtifactError as exc:  # not even with the names: positional TorchScript, as before
            logger.warning("no named TorchScript forward (%s); shipping positional arguments", exc)
    forms = torchscript_forms(model, verify_inputs[0])
    method, module, variants = select_variant(model, verify_inputs, forms=forms, tolerance=tolerance, budget_s=budget_s)
    return method, module, variants, None


def ship_torchscript(
    served: nn.Module,
    path: Path,
    verify_inputs: Sequence[tuple[Any, ...]],
    *,
    tolerance: float = 0.0,
    budget_s: float | None = None,
) -> tuple[TorchScriptArtifact, list[VariantResult]]:
    """Save the fastest TorchScript form that reproduces ``served`` (within ``tolerance``; forms timed for at
    most ``budget_s`` seconds) at ``path``, load it back and verify it; also return every form tried."""
    model, _ = split_signature(served)
    method, module, variants, named = _select(served, verify_inputs, tolerance, budget_s)
    artifact = export_torchscript(module, path, verify_inputs, reference=model, tolerance=tolerance, method=method)
    if named is not None:  # the saved file, loaded back, on every pattern it serves
        names, patterns = named
        check_patterns(artifact.module, model, names, patterns(), verify_inputs, tolerance)
    return artifact, variants


def shipped_torchscript(artifact: TorchScriptArtifact, variants: list[VariantResult]) -> Shipped:
    """A verified TorchScript file as ``Shipped``: its ScriptModule, logged with MLflow's pytorch flavor."""
    return Shipped(
        method=artifact.method,
        path=artifact.path,
        size_bytes=artifact.size_bytes,
        form=ModelForm("pytorch", artifact.module),
        load=functools.partial(load_torchscript, artifact.path),
        variants=variants,
    )


def bundle_note(factory: str | None) -> str:
    """The report's paragraph on a model that ships as a rebuild bundle."""
    return (
        "No TorchScript form (script, trace, frozen) reproduces this model, so it ships as the factory "
        f"`{factory}`, the spec and the quantized state_dict (`model/artifacts/bundle/`, "
        "verified bit-exact by rebuilding). Load it with `mlflow.pyfunc.load_model(uri)` or "
        "`quantstage.quant.rebuild(folder)`; the factory must be importable there."
    )


def ship_bundle(
    served: nn.Module, folder: Path, verify_inputs: Sequence[tuple[Any, ...]], origin: Origin, why: str
) -> Shipped:
    """The factory + spec + quantized state_dict that rebuild ``origin.model``, saved in ``folder`` and verified
    by rebuilding (``why``: why no TorchScript form ships); ArtifactError when the source has no factory."""
    source = origin.source
    if source.factory is None:
        raise ArtifactError(
            f"{why}; a model that no deployable form reproduces ships as a rebuild bundle, which needs a factory "
            f"source: give model: {{factory: 'package.module:callable', weights: ...}} instead of {source.label!r}"
        )
    bundle = save_bundle(
        origin.model,
        folder,
        output=origin.output,
        factory=source.factory,
        kwargs=dict(source.kwargs),
        folder=source.folder,
        spec=origin.spec,
        tracing=origin.tracing,
        verify_inputs=verify_inputs,
        input_names=origin.input_names,
    )
    logger.info("no TorchScript form reproduces the model (%s); shipping rebuild bundle %s", why[:300], bundle)
    form = ModelForm(
        "pyfunc", served, files={"bundle": str(bundle)}, loader=REBUILD_LOADER, requirements=("quantstage",)
    )
    return Shipped(
        method=BUNDLE_METHOD,
        path=bundle,
        size_bytes=size_of(bundle),
        form=form,
        load=lambda: served,  # loading a bundle quantizes again: the model it rebuilds bit-exactly is this one
        why=why,
        note=bundle_note(source.factory),
    )


def load_shipped(folder: Path) -> nn.Module:
    """What the FX engine shipped in ``folder`` (the folder ``ship`` saved in, or a logged model's folder
    downloaded from MLflow): the rebuild bundle rebuilt, else the TorchScript file loaded."""
    if folder.is_file():
        return load_torchscript(folder)
    bundles = sorted(folder.rglob(MANIFEST))
    if bundles:
        return rebuild(bundles[0].parent)
    found = sorted(p for p in folder.rglob("*") if p.suffix in _TORCHSCRIPT_SUFFIXES and p.is_file())
    if len(found) != 1:
        raise ArtifactError(
            f"{str(folder)!r} holds {len(found)} TorchScript files ({', '.join(p.name for p in found) or 'none'}) "
            f"and no rebuild bundle ({MANIFEST}); allowed: exactly one of them; fix: give the folder the FX engine "
            f"shipped, or the logged model's folder"
        )
    return load_torchscript(found[0])
