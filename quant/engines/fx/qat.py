"""QAT input: a model prepared with ``prepare_qat_fx`` and trained elsewhere, as a checkpoint.

A checkpoint is a plain ``torch.save`` of ``{"format", "spec", "state_dict"}``: the spec that
prepared the model (JSON) and the trained prepared model's state_dict (weights, BN stats,
fake-quant observers). It is loaded with ``weights_only=True`` — no pickled code runs.
Converting it needs the float model's class (to re-trace it) but no calibration.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.fx import GraphModule

from quantstage.quant.engines.fx.prepare import prepare
from quantstage.quant.engines.registry import QuantSpec, parse_spec_json
from quantstage.quant.errors import SpecError

__all__ = ["CHECKPOINT_FORMAT", "load_qat_checkpoint", "save_qat_checkpoint"]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "quantstage.qat/1"


def save_qat_checkpoint(prepared: GraphModule, spec: QuantSpec, path: str | Path) -> Path:
    """Save a QAT-prepared (and trained) model's state with the spec that prepared it."""
    if spec.mode != "qat":
        raise SpecError(f"a QAT checkpoint needs a spec with mode 'qat', got mode {spec.mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "spec": spec.to_json(), "state_dict": prepared.state_dict()}, path)
    return path


def load_qat_checkpoint(
    path: str | Path, float_model: torch.nn.Module, example_inputs: tuple[Any, ...]
) -> tuple[GraphModule, QuantSpec]:
    """Rebuild the prepared QAT model from ``float_model`` and load the trained state.

    Returns the prepared model in eval mode (ready for ``reference_convert``) and its spec.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"QAT checkpoint {str(path)!r} does not exist; pass the file written by save_qat_checkpoint")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SpecError(
            f"QAT checkpoint {str(path)!r} cannot be loaded safely ({str(exc).splitlines()[0]}); "
            f"it must be a torch.save of plain tensors and strings (see quantstage.quant.save_qat_checkpoint)"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise SpecError(
            f"{str(path)!r} is not a quantstage QAT checkpoint (format {found!r}, expected "
            f"{CHECKPOINT_FORMAT!r}); write it with quantstage.quant.save_qat_checkpoint"
        )
    spec = parse_spec_json(data["spec"])
    prepared = prepare(float_model, example_inputs, spec)
    try:
        result = prepared.load_state_dict(data["state_dict"], strict=False)
    except RuntimeError as exc:  # shape mismatches
        mismatches = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line][:3]
        raise SpecError(
            f"QAT checkpoint {str(path)!r} does not match {type(float_model).__name__} prepared with its spec: "
            f"{'; '.join(mismatches) or str(exc).splitlines()[0]}; give the float model the checkpoint was trained from"
        ) from exc
    if result.missing_keys or result.unexpected_keys:
        raise SpecError(
            f"QAT checkpoint {str(path)!r} does not match {type(float_model).__name__} prepared with its spec: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}; "
            f"give the float model the checkpoint was trained from"
        )
    logger.info("loaded QAT checkpoint %s (%d tensors)", path, len(data["state_dict"]))
    return prepared.eval(), spec
