"""Calibration: run data through a prepared model so its observers see real activations.

Engine-agnostic: a prepared model of any engine (or a model with prepared parts inside) is
calibrated by calling it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from quantstage.quant.data.inputs import call
from quantstage.quant.data.sources import Batch

__all__ = ["calibrate", "run_inputs"]

logger = logging.getLogger(__name__)


def run_inputs(
    model: nn.Module,
    inputs: Iterable[Any],
    *,
    max_batches: int,
    on_batch: Callable[[int, int], None] | None = None,
) -> int:
    """Run up to ``max_batches`` batches of inputs (a tensor, a tuple of positional arguments or a
    dict of keyword arguments each) through ``model`` in eval mode; return how many ran."""
    seen = 0
    model.eval()
    with torch.no_grad():
        for batch in inputs:
            if seen >= max_batches:
                break
            call(model, batch)
            seen += 1
            if on_batch is not None:
                on_batch(seen, max_batches)
    if seen < max_batches:
        logger.warning("calibration saw %d batches, fewer than the %d asked for", seen, max_batches)
    return seen


def calibrate(
    prepared: nn.Module,
    batches: Iterable[Batch],
    *,
    max_batches: int,
    on_batch: Callable[[int, int], None] | None = None,
) -> int:
    """Run up to ``max_batches`` ``(inputs, targets)`` batches (as ``Dataset`` holds them) through
    ``prepared``'s observers; return how many ran."""
    return run_inputs(prepared, (inputs for inputs, _ in batches), max_batches=max_batches, on_batch=on_batch)
