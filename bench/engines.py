"""FX vs PT2E, each as quantstage ships it: ResNet-18 static and the BERT-like encoder dynamic.

For each engine: ``quantize`` (prepare, calibrate, convert, lower; for PT2E the lowering is the
AOTInductor compile, reported apart), the engine's ``ship`` (FX: the fastest TorchScript form;
PT2E: the ``.pt2`` package) loaded back, then output SQNR vs fp32 on held-out batches, package size,
and latency of fp32 eager vs both shipped models, interleaved in a random order every round, at 1
and 2 threads x batch 1 and 8. Writes bench/ENGINES.md and bench/engines.json.

    python -m bench.engines [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.models import bert_encoder, resnet18
from bench.run import images, interleaved, log, token_ids
from quantstage.quant import FxSpec, QuantSpec, quantize
from quantstage.quant.engines import get_engine
from quantstage.quant.hardware import machine_info
from quantstage.quant.measure.benchmark import threads

HERE = Path(__file__).resolve().parent


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum().clamp_min(1e-30)))


def convert(
    name: str,
    model: torch.nn.Module,
    spec: QuantSpec,
    calib: list[torch.Tensor],
    held_out: list[torch.Tensor],
    work: Path,
) -> dict[str, Any]:
    """Quantize and ship ``model`` with ``spec``; the shipped module and its figures (or the error)."""
    started = time.perf_counter()
    try:
        quantized = quantize(model, spec, calib)
    except Exception as exc:  # a model an engine cannot take is a result too
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    quantize_s = time.perf_counter() - started
    compile_s = float(getattr(quantized.model, "compile_s", 0.0))
    engine = get_engine(spec.engine)
    verify = [(x,) for x in held_out] + [(held_out[0][:1],)]
    started = time.perf_counter()
    artifact = engine.ship(quantized.model, work / f"{name}_{spec.engine}", verify)
    ship_s = time.perf_counter() - started
    module = artifact.module
    with torch.no_grad():
        ref = torch.cat([model(x) for x in held_out])
        out = torch.cat([module(x) for x in held_out])
    return {
        "module": module,
        "method": artifact.method,
        "sqnr_db": sqnr_db(ref, out),
        "size_mib": artifact.size_bytes / 2**20,
        "quantize_s": quantize_s - compile_s,
        "compile_s": compile_s,
        "ship_s": ship_s,
        "coverage": quantized.coverage.summary(),
    }


def latency(
    runners: dict[str, Callable[[torch.Tensor], Any]], inputs: torch.Tensor, iterations: int
) -> dict[str, float]:
    with torch.no_grad():
        times = interleaved({k: (lambda f=f: f(inputs)) for k, f in runners.items()}, iterations, warmup=3)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def case(
    label: str,
    model: torch.nn.Module,
    base: QuantSpec,
    calib: list[torch.Tensor],
    held_out: list[torch.Tensor],
    iterations: dict[int, int],
    work: Path,
) -> dict[str, Any]:
    log(f"{label}: converting with fx and pt2e")
    engines = {
        e: convert(label, model, base.model_copy(update={"engine": e}), calib, held_out, work) for e in ("fx", "pt2e")
    }
    runners: dict[str, Callable[[torch.Tensor], Any]] = {"fp32 eager": model}
    runners |= {f"{e} shipped": r["module"] for e, r in engines.items() if "module" in r}
    rows = []
    for n_threads in (1, 2):
        for batch, reps in iterations.items():
            with threads(n_threads):
                p50 = latency(runners, held_out[0][:batch] if batch <= held_out[0].shape[0] else held_out[0], reps)
            rows.append({"threads": n_threads, "batch": batch, **p50})
            log(f"  {n_threads} thread(s), batch {batch}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in p50.items()))
    return {
        "label": label,
        "engines": {e: {k: v for k, v in r.items() if k != "module"} for e, r in engines.items()},
        "latency": rows,
    }


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# FX vs PT2E engines, as shipped (bench/engines.py)",
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, int8 ISA {m['isa_int8']}; torch {torch.__version__}, "
        f"torchao {results['torchao']}; load average at start {results['load_average_start']}. "
        "FX ships TorchScript (the fastest form that reproduces the lowered model); PT2E ships an "
        "AOTInductor package (x86-64-v3 target). Latency: median of interleaved calls, fresh random order every "
        "round; SQNR of the shipped model's outputs vs fp32 on 16 held-out inputs.",
        "",
    ]
    for c in results["cases"]:
        lines += [
            f"## {c['label']}",
            "",
            "| engine | shipped as | SQNR vs fp32 (dB) | size (MiB) | quantize (s) | compile (s) | ship (s) | coverage |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e, r in c["engines"].items():
            if "error" in r:
                lines.append(f"| {e} | fails: {r['error']} | | | | | | |")
                continue
            lines.append(
                f"| {e} | {r['method']} | {r['sqnr_db']:.2f} | {r['size_mib']:.1f} | {r['quantize_s']:.1f} | "
                f"{r['compile_s']:.1f} | {r['ship_s']:.1f} | {r['coverage']} |"
            )
        names = [k for k in c["latency"][0] if k not in ("threads", "batch")]
        lines += [
            "",
            "| threads | batch | " + " | ".join(f"{n} (ms)" for n in names) + " | pt2e / fx |",
            "|---|---|" + "---|" * (len(names) + 1),
        ]
        for row in c["latency"]:
            ratio = (
                row["pt2e shipped"] / row["fx shipped"]
                if "pt2e shipped" in row and "fx shipped" in row
                else float("nan")
            )
            lines.append(
                f"| {row['threads']} | {row['batch']} | "
                + " | ".join(f"{row[n]:.2f}" for n in names)
                + f" | {ratio:.2f} |"
            )
        lines.append("")
    lines += [
        "## Reading",
        "",
        "- ResNet-18 static: PT2E ships the more accurate model (histogram observers with 8-bit activations on "
        "Inductor's oneDNN kernels, which do not saturate; FX's fbgemm kernels need 7-bit activations on a CPU "
        "without VNNI) and is as fast or faster: its package fuses conv + add + ReLU into one oneDNN int8 kernel "
        "and runs without TorchScript's interpreter. What it costs: the AOTInductor compile, tens of seconds per "
        "conversion (the compile column), and a package tied to x86-64 (built for x86-64-v3).",
        "- Encoder dynamic: FX is faster. PT2E's graph computes each activation's scale "
        "(choose_qparams, quantize) in Inductor-generated code before each oneDNN int8 matmul, where fbgemm's "
        "dynamic Linear does it inside one op; its "
        "package also keeps the embedding tables fp32 (X86InductorQuantizer has no embedding pattern; FX "
        "quantizes them weight-only), hence the size.",
        "- So the engine is a sweep dimension (`--grid 'engine=[fx, pt2e]'`): the measured winner ships.",
        "- Figures taken on a shared 2-core machine (load average above): ratios between engines are "
        "interleaved and fair; absolute milliseconds are not comparable across runs.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few iterations (a smoke run)")
    args = parser.parse_args(argv)
    from quantstage.quant.engines.pt2e._torchao import torchao

    results: dict[str, Any] = {
        "machine": machine_info(),
        "torchao": torchao().version,
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "cases": [],
    }
    with tempfile.TemporaryDirectory(prefix="quantstage-engines-") as tmp:
        work = Path(tmp)
        rn_iters = {1: 5, 8: 2} if args.quick else {1: 60, 8: 10}
        results["cases"].append(
            case(
                "ResNet-18 static x86",
                resnet18(seed=0),
                FxSpec(),
                images(4, 8, seed=0),
                images(2, 8, seed=1000),
                rn_iters,
                work,
            )
        )
        enc_iters = {1: 10, 8: 5} if args.quick else {1: 200, 8: 60}
        results["cases"].append(
            case(
                "encoder dynamic",
                bert_encoder(seed=0),
                FxSpec(mode="dynamic"),
                token_ids(1, 8, seed=0),
                token_ids(2, 8, seed=1),
                enc_iters,
                work,
            )
        )
    (HERE / "engines.json").write_text(json.dumps(results, indent=2, default=str))
    (HERE / "ENGINES.md").write_text(render(results))
    log("wrote bench/ENGINES.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
