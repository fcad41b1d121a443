"""PT2E speed against FX and OpenVINO int8, in one process: the measurement behind issue 22 item 2.

    python -m bench.pt2e_speed                       # resnet18 + encoder, batch 1 and 8, one thread
    python -m bench.pt2e_speed --models encoder --iterations 40
    python -m bench.pt2e_speed --models minilm       # all-MiniLM-L6-v2 (the hf extra; no --variant)
    python -m bench.pt2e_speed --variant 'autotune={"max_autotune": true}'   # extra PT2E builds

Builds ResNet-18 (static int8) and the bench encoder (dynamic int8) of ``bench/models.py``, converts them
with quantstage FX and PT2E (``quantize`` + the engine's ``ship``, as ``bench.peers`` does) and OpenVINO
int8 (NNCF, ``bench.peers.openvino``), then times every contestant round-robin in a fresh random order
per round, on the same inputs, one thread (``bench.peers.time_cell``). ``--variant name=JSON`` adds a
PT2E package compiled from the same reference model with extra Inductor settings (to compare settings
in one process); in its JSON, ``"static_batch": true`` compiles one package per timed batch size (batch
dimension static) and ``"-_name": true`` compiles without ``quant.engines.pt2e.package._name`` (one of the
compile-time corrections, to measure it). Latencies are only comparable within one run: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench import peers
from bench.run import log

__all__ = ["main"]


def pt2e_variant(reference: torch.nn.Module, name: str, configs: dict[str, Any]) -> peers.Contestant:
    """A PT2E contestant: ``reference`` compiled with the extra Inductor ``configs`` (see the module docstring)."""
    import contextlib

    from quantstage.quant.engines.pt2e import inductor_fixes, package

    ref: Any = reference
    folder = Path(tempfile.mkdtemp(prefix="pt2e-speed-"))
    configs = dict(configs)
    static = bool(configs.pop("static_batch", False))  # one package per timed batch size, batch dim static
    undo = {k[1:]: contextlib.nullcontext for k in list(configs) if k.startswith("-") and configs.pop(k)}
    saved = {k: getattr(inductor_fixes, k) for k in undo}  # "-_realized_qparams": true compiles without that patch
    modules: dict[int, Any] = {}
    seconds = 0.0
    try:
        for k, v in undo.items():
            setattr(inductor_fixes, k, v)
        for b in (1, 8) if static else (0,):
            args = tuple(a[:b] for a in ref.example_args) if static else ref.example_args
            shapes = tuple(None for _ in args) if static else ref.dynamic_shapes
            path, s = package.compile_package(ref, args, shapes, folder / f"{name}{b}.pt2", configs=configs)
            modules[b] = package.AotiModule(path, ref.names, ref, args, shapes, s)
            seconds += s
    finally:
        for k, v in saved.items():
            setattr(inductor_fixes, k, v)
    module = modules[max(modules)]
    return peers.Contestant(
        f"PT2E {name}",
        run=lambda *a: peers._as_tensor(module(*a)),
        timed=lambda n, b: modules[b] if static else module,
        convert_s=seconds,
        size_bytes=path.stat().st_size,
        method=json.dumps(configs),
        info={"compile_s": round(seconds, 1)},
    )


def run_case(case: peers.Case, work: Path, variants: dict[str, dict[str, Any]], ov: bool) -> list[dict[str, Any]]:
    log(case.label)
    live: dict[str, peers.Contestant] = {}
    for name, build in {
        "FX": lambda: peers.quantstage(case, "fx", work),
        "PT2E": lambda: peers.quantstage(case, "pt2e", work),
        **({"OpenVINO int8": lambda: peers.openvino(case, work, int8=True)} if ov else {}),
    }.items():
        t = time.perf_counter()
        live[name] = build()
        log(f"  {name}: ready in {time.perf_counter() - t:.1f} s {live[name].info.get('compile_s', '')}")
    if variants:
        from quantstage.quant import parse_spec
        from quantstage.quant.quantize import quantize

        reference = quantize(case.model, parse_spec({"mode": case.mode, "engine": "pt2e"}), list(case.calib))
        for name, configs in variants.items():
            live[f"PT2E {name}"] = pt2e_variant(reference.model.reference, name, configs)
            log(f"  PT2E {name}: compiled in {live[f'PT2E {name}'].info['compile_s']} s")
    with torch.no_grad():
        refs = [peers._as_tensor(case.model(*args)).float() for args in case.held_out]
    for name, c in live.items():
        acc = peers.accuracy(case, c, refs)
        cosine = (
            f", pooled cosine mean {acc['cosine_mean']:.4f} min {acc['cosine_min']:.4f}" if "cosine_mean" in acc else ""
        )
        log(f"  {name}: SQNR vs fp32 {acc['sqnr_db']:.2f} dB{cosine}")
    rows = []
    for b in case.timing:
        row = peers.time_cell(case, live, 1, b)
        base = row["p50_ms"].get("OpenVINO int8") or row["p50_ms"]["FX"]
        log("    ratios: " + ", ".join(f"{k} {v / base:.2f}" for k, v in row["p50_ms"].items()))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,encoder")
    parser.add_argument("--iterations", type=int, default=0, help="timed rounds per cell (0: bench.peers' counts)")
    parser.add_argument("--no-openvino", action="store_true")
    parser.add_argument("--variant", action="append", default=[], help="name=JSON of extra Inductor settings")
    args = parser.parse_args(argv)
    import quantstage.quant as api
    from quantstage.quant.quantize import quantize

    api.quantize = quantize  # bench.peers imports it from the package, where the submodule of that name can shadow it
    variants = {v.split("=", 1)[0]: json.loads(v.split("=", 1)[1]) for v in args.variant}
    torch.manual_seed(0)
    cases = {"resnet18": peers.case_resnet, "encoder": peers.case_encoder, "minilm": peers.case_minilm}
    with tempfile.TemporaryDirectory(prefix="pt2e-speed-") as tmp:
        for key in args.models.split(","):
            case = cases[key](False)
            if args.iterations:
                case.iterations = {b: args.iterations for b in case.timing}
            run_case(case, Path(tmp), variants, not args.no_openvino)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
