"""The FX engine's artifact of last resort: a quantized model that neither ``torch.jit.script`` nor
``torch.jit.trace`` reproduces, shipped as what rebuilds it.

A bundle is a folder:

- ``rebuild.json``: the factory entry point (``package.module:callable``), its ``kwargs`` and
  ``folder``, the QuantSpec, the tracing path (``whole`` or ``submodules``), the input names,
  torch's version;
- ``state_dict.pt``: the quantized model's state_dict (quantized weights, scales and zero
  points; loadable with ``torch.load(weights_only=True)``);
- ``example_inputs.pt``: one batch of positional inputs, enough to rebuild the structure, and
  ``example_output.pt``: what the shipped model returns for it (a check after rebuilding);
- ``REBUILD.md``: these steps for a human.

``rebuild(bundle)`` builds the float model with the factory, quantizes its structure again with
the same spec (observers run once on the example: their values are then overwritten), and loads
the state_dict: the result reproduces the shipped model bit-exactly (``save_bundle`` verifies
that before anything is logged). The factory, and its folder, must be available where the
model is rebuilt.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from quantstage.quant.data.model_source import build_from_factory
from quantstage.quant.data.outputs import with_output
from quantstage.quant.engines.registry import QuantSpec, parse_spec
from quantstage.quant.errors import ArtifactError
from quantstage.quant.ship.jit import max_abs_diff

__all__ = ["MANIFEST", "example", "rebuild", "save_bundle"]

MANIFEST = "rebuild.json"  # the file that makes a folder a bundle

_README = """# Rebuilding this quantized model

It could be neither scripted nor traced faithfully (TorchScript), so it ships as what rebuilds it:

```python
from quantstage.quant import rebuild
model = rebuild("{path}")          # needs quantstage and the factory {factory!r} importable
output = model(*inputs)             # positional inputs: {names}
```

or through MLflow: `mlflow.pyfunc.load_model(uri).predict({{name: array, ...}})`.

Steps: build the float model with `{factory}(**kwargs)` (rebuild.json), quantize its structure
with the spec in rebuild.json (tracing: {tracing}), load state_dict.pt.
"""


def _quantize_structure(
    model: torch.nn.Module, spec: QuantSpec, tracing: str, example: tuple[Any, ...]
) -> torch.nn.Module:
    from quantstage.quant.quantize import quantize

    # the tracing path the shipped model took; one calibration batch: the observers are overwritten by the state_dict
    same = spec.model_copy(update={"tracing": tracing, "calibration_batches": 1})
    return quantize(model, same, [example], example_inputs=example, timing_repeats=0).model


def example(bundle: str | Path) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, list[str]]:
    """``(inputs, output, input names)`` stored in a bundle: one batch and what the shipped model returned."""
    bundle = Path(bundle)
    names = json.loads((bundle / MANIFEST).read_text())["input_names"]
    inputs = tuple(torch.load(bundle / "example_inputs.pt", weights_only=True))
    return inputs, torch.load(bundle / "example_output.pt", weights_only=True), names


def rebuild(bundle: str | Path) -> torch.nn.Module:
    """The quantized model of a bundle written by ``save_bundle``."""
    bundle = Path(bundle)
    try:
        meta = json.loads((bundle / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise ArtifactError(f"{str(bundle)!r} is not a quantstage rebuild bundle (no rebuild.json)") from exc
    spec = parse_spec(meta["spec"])
    example = tuple(torch.load(bundle / "example_inputs.pt", weights_only=True))
    model = build_from_factory(meta["factory"], meta.get("kwargs", {}), meta.get("folder")).eval()
    with torch.no_grad():
        quantized = _quantize_structure(model, spec, meta["tracing"], example)
    # packed int8 weights are torch-registered ScriptObjects (LinearPackedParams...): allowed explicitly,
    # still with weights_only (no arbitrary classes or code).
    with torch.serialization.safe_globals([torch.ScriptObject]), warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"TypedStorage is deprecated", category=UserWarning
        )  # packed params' own
        state = torch.load(bundle / "state_dict.pt", weights_only=True)
    result = quantized.load_state_dict(state, strict=False)
    for key in result.unexpected_keys:  # packed-weight attributes a lowered graph reads (not registered as buffers)
        owner, _, attr = key.rpartition(".")
        if not isinstance(state[key], torch.ScriptObject):
            raise ArtifactError(
                f"rebuild bundle {str(bundle)!r}: state_dict key {key!r} has no place in the rebuilt model"
            )
        setattr(quantized.get_submodule(owner), attr, state[key])
    if result.missing_keys:
        raise ArtifactError(
            f"rebuild bundle {str(bundle)!r} lacks {len(result.missing_keys)} weight(s) of the rebuilt model "
            f"(first: {result.missing_keys[0]}); was it written by another quantstage or factory version?"
        )
    return with_output(quantized.eval(), meta.get("output"))


def save_bundle(
    quantized: torch.nn.Module,
    out_dir: str | Path,
    *,
    factory: str,
    kwargs: dict[str, Any],
    folder: str | None,
    spec: QuantSpec,
    tracing: str,
    verify_inputs: Sequence[tuple[Any, ...]],
    input_names: Sequence[str] | None = None,
    output: str | None = None,
) -> Path:
    """Write the bundle, rebuild from it, and check the rebuilt model reproduces ``quantized``
    bit-exactly on ``verify_inputs``; return the bundle folder. ``output`` names the part of a
    structured forward output the rebuilt model returns (``quant.data.outputs``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "factory": factory,
        "kwargs": kwargs,
        "folder": folder,
        "spec": spec.model_dump(mode="json"),
        "tracing": tracing,
        "input_names": list(input_names or []),
        "output": output,
        "torch_version": torch.__version__,
    }
    (out / MANIFEST).write_text(json.dumps(meta, indent=2, default=str))
    torch.save(quantized.state_dict(), out / "state_dict.pt")
    torch.save(tuple(verify_inputs[0]), out / "example_inputs.pt")
    (out / "REBUILD.md").write_text(
        _README.format(path=out.name, factory=factory, names=", ".join(input_names or ["x"]), tracing=tracing)
    )
    rebuilt = rebuild(out)
    quantized = with_output(quantized, output)
    with torch.no_grad():
        torch.save(quantized(*verify_inputs[0]), out / "example_output.pt")
        for i, inputs in enumerate(verify_inputs):
            diff = max_abs_diff(quantized(*inputs), rebuilt(*inputs))
            if diff != 0.0:
                raise ArtifactError(
                    f"the rebuild bundle at {str(out)!r} does not reproduce the quantized model on verification input {i} "
                    f"(max abs difference {diff:g}); refusing to ship it"
                )
    return out
