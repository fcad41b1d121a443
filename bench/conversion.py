"""Conversion time: quantstage's decomposed conversion against torch's ``convert_fx`` (``python -m bench.conversion``).

``lower(reference_convert(p))`` — what the pipeline runs, and ``quant.convert`` — against
``convert_fx(copy.deepcopy(p))`` (convert_fx mutates its input, so a fair caller copies), on the same
prepared and calibrated models, in alternating pairs (drift and load hit both alike), one intra-op thread.
The target: the median ratio of the pairs ≤ 1.05. Writes bench/CONVERSION.md and bench/conversion.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.models import bert_encoder, resnet18
from quantstage.demo import DigitsCNN
from quantstage.quant.calibrate import calibrate
from quantstage.quant.engines import FxSpec
from quantstage.quant.engines.fx import _torch as _fx
from quantstage.quant.engines.fx.convert import lower, reference_convert
from quantstage.quant.engines.fx.prepare import prepare
from quantstage.quant.hardware import machine_info

__all__ = ["main", "pairs"]

HERE = Path(__file__).resolve().parent


def _prepared(model: torch.nn.Module, spec: FxSpec, batches: list[torch.Tensor]) -> Any:
    prepared = prepare(model.eval(), (batches[0],), spec)
    calibrate(prepared, [(b, None) for b in batches], max_batches=len(batches))
    return prepared


def _models() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(8, 3, 224, 224, generator=g) for _ in range(2)]
    digits = [torch.randn(8, 1, 8, 8, generator=g) for _ in range(2)]
    ids = [torch.randint(0, 30522, (8, 128), generator=g) for _ in range(2)]
    static, dynamic = FxSpec(backend="x86", mode="static"), FxSpec(backend="x86", mode="dynamic")
    return {
        "ResNet-18 static x86": _prepared(resnet18(seed=0), static, images),
        "encoder dynamic": _prepared(bert_encoder(seed=0), dynamic, ids),
        "DigitsCNN static x86": _prepared(DigitsCNN(), static, digits),
    }


def pairs(prepared: Any, n: int) -> dict[str, Any]:
    """``n`` alternating (decomposed, convert_fx(deepcopy)) timings and their ratios."""
    ours, theirs = [], []
    with _fx.fx_quiet():
        lower(reference_convert(prepared))  # warm-up of both paths
        _fx.convert_fx(copy.deepcopy(prepared))
        for _ in range(n):
            started = time.perf_counter()
            lower(reference_convert(prepared))
            ours.append(time.perf_counter() - started)
            started = time.perf_counter()
            _fx.convert_fx(copy.deepcopy(prepared))
            theirs.append(time.perf_counter() - started)
    ratios = [a / b for a, b in zip(ours, theirs)]
    return {
        "pairs": n,
        "decomposed_median_s": statistics.median(ours),
        "convert_fx_median_s": statistics.median(theirs),
        "median_ratio": statistics.median(ratios),
        "best_ratio": min(ours) / min(theirs),
        "load1": round(os.getloadavg()[0], 2),
    }


def _render(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        "# Conversion time: decomposed vs convert_fx",
        "",
        f"Command: `python -m bench.conversion` ({results['pairs']} alternating pairs per model, one intra-op "
        f"thread). Machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, int8 ISA {machine['isa_int8']}; "
        f"load average at start {results['load_start']}. `decomposed` = `lower(reference_convert(p))` (the pipeline "
        "and `quant.convert`; does not mutate `p`), `convert_fx` = `convert_fx(copy.deepcopy(p))` (it mutates its "
        "input). Target: median ratio ≤ 1.05.",
        "",
        "| model | decomposed median (s) | convert_fx median (s) | **median ratio** | best-of ratio | load1 |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results["models"].items():
        lines.append(
            f"| {name} | {row['decomposed_median_s']:.4f} | {row['convert_fx_median_s']:.4f} | "
            f"**{row['median_ratio']:.3f}** | {row['best_ratio']:.3f} | {row['load1']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.conversion", description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "pairs": args.pairs,
        "machine": machine_info(),
        "load_start": round(os.getloadavg()[0], 2),
    }
    results["models"] = {name: pairs(prepared, args.pairs) for name, prepared in _models().items()}
    out = Path(args.out)
    (out / "conversion.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "CONVERSION.md").write_text(_render(results))
    print(_render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
