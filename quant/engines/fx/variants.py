"""The FX engine ships the fastest correct form of a quantized model.

The lowered FX GraphModule is what conversion produces, but not what serves best: the same
model as TorchScript, frozen TorchScript (``torch.jit.freeze``: weights and attributes
inlined as constants) or ``torch.jit.optimize_for_inference`` runs faster, especially at
small batches. Each variant is checked against the lowered model on the verification inputs
and timed round-robin (so drift hits all alike); the fastest one that matches bit-exactly
(or within a stated tolerance) is the one to ship.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

from quantstage.quant.errors import ArtifactError
from quantstage.quant.ship.jit import jit_quiet, max_abs_diff, to_torchscript
from quantstage.quant.ship.shipped import VariantResult

__all__ = ["Form", "select_variant", "torchscript_forms"]

logger = logging.getLogger(__name__)


Form = tuple[str, Callable[[], Any], bool]  # (name, build, shippable: saves and loads in another process)


def torchscript_forms(model: torch.nn.Module, example: tuple[Any, ...]) -> list[Form]:
    """The in-memory model and its TorchScript forms: scripted (or traced), frozen, optimized for inference."""

    cache: list[torch.jit.ScriptModule] = []

    def scripted() -> torch.jit.ScriptModule:  # built once: freezing and optimizing work on copies
        if not cache:
            cache.append(to_torchscript(model, example)[0].eval())
        return cache[0]

    def frozen() -> torch.jit.ScriptModule:
        with jit_quiet():
            return cast(torch.jit.ScriptModule, torch.jit.freeze(scripted()))  # freeze is unannotated: returns Any

    def optimized() -> torch.jit.ScriptModule:
        with jit_quiet():
            return torch.jit.optimize_for_inference(scripted())

    return [
        ("fx_graph_module", lambda: model, False),
        ("torchscript", scripted, True),
        ("torchscript_frozen", frozen, True),
        ("torchscript_optimized", optimized, True),
    ]


def _saves(module: torch.jit.ScriptModule) -> None:
    """Raise what saving ``module`` and loading it back raises (optimize_for_inference can fold a float
    convolution into MKLDNN constants that run but do not round-trip)."""
    buffer = io.BytesIO()
    with jit_quiet():
        torch.jit.save(module, buffer)
        buffer.seek(0)
        torch.jit.load(buffer)  # type: ignore[no-untyped-call]  # unannotated in torch


@torch.no_grad()
def select_variant(
    model: torch.nn.Module,
    verify_inputs: Sequence[tuple[Any, ...]],
    *,
    forms: Sequence[Form] | None = None,
    tolerance: float = 0.0,
    iterations: int = 30,
    warmup: int = 5,
    budget_s: float | None = None,
) -> tuple[str, torch.jit.ScriptModule, list[VariantResult]]:
    """Build, check and time every form (default: ``torchscript_forms``); return (name, module, results)
    of the fastest shippable one that matches ``model`` within ``tolerance``. Timing takes
    ``iterations`` round-robin rounds, or fewer (at least 3) when ``budget_s`` runs out first."""
    model.eval()
    example = verify_inputs[0]
    expected = [model(*inputs) for inputs in verify_inputs]
    built: dict[str, Any] = {}
    results: dict[str, VariantResult] = {}
    for name, build, shippable in forms if forms is not None else torchscript_forms(model, example):
        try:
            candidate = build()
            diff = max(max_abs_diff(e, candidate(*inputs)) for e, inputs in zip(expected, verify_inputs))
            if shippable:
                _saves(candidate)
        except Exception as exc:  # a variant that cannot be built (or saved) is reported, not fatal
            results[name] = VariantResult(name, None, None, False, shippable, str(exc).strip().splitlines()[0])
            continue
        built[name] = candidate
        results[name] = VariantResult(name, None, diff, diff <= tolerance, shippable)
    times: dict[str, list[float]] = {name: [] for name in built}
    for _ in range(warmup):
        for candidate in built.values():
            candidate(*example)
    started = time.perf_counter()
    for round_ in range(iterations):
        if budget_s is not None and round_ >= 3 and time.perf_counter() - started > budget_s:
            logger.info("form timing stopped after %d rounds: budget of %.0f s spent", round_, budget_s)
            break
        for name, candidate in built.items():
            start = time.perf_counter()
            candidate(*example)
            times[name].append(time.perf_counter() - start)
    for name, samples in times.items():
        p50 = float(torch.tensor(samples).median().item()) * 1000.0
        results[name] = dataclasses.replace(results[name], p50_ms=p50)
    eligible = [r for r in results.values() if r.shippable and r.matches and r.p50_ms is not None]
    if not eligible:
        problems = "; ".join(f"{r.name}: {r.error or f'max abs diff {r.max_abs_diff:g}'}" for r in results.values())
        raise ArtifactError(
            f"no TorchScript form of the model reproduces it within tolerance {tolerance:g} ({problems})"
        )
    best = min(eligible, key=lambda r: cast(float, r.p50_ms))  # not None: filtered into eligible
    logger.info(
        "variants (p50 ms): %s -> shipping %s",
        ", ".join(f"{r.name} {r.p50_ms:.3f}" for r in results.values() if r.p50_ms is not None),
        best.name,
    )
    return best.name, built[best.name], list(results.values())
