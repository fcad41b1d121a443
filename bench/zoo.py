"""The architecture zoo, as a table users can read: ``python -m bench.zoo`` → bench/ZOO.md (+ zoo.json).

Every family of ``tests.zoo`` (transformers' own classes from small configs, random weights, and
torchvision-style CNNs) × engine (fx, pt2e), through quantstage's library path with defaults: converts?
(or the one-line refusal), tracing, share of Linear/Conv parameters quantized, output SQNR and — for
embedding families — mean-pooled cosine vs fp32, the shipped form's speedup over the float model **as
the user runs it** (as built: transformers' own attention implementation) at batch 1 and 8 on one
thread (interleaved A/B, p50), conversion time (quantize + evaluate + ship), and why any layer stayed float.

    python -m bench.zoo                      # every family, both engines
    python -m bench.zoo --engines fx --families bert gpt2
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path
from typing import Any

import torch

from quantstage.quant.data.inputs import args_of, bind_to_forward
from quantstage.quant.hardware import machine_info
from quantstage.quant.measure.benchmark import benchmark
from tests import zoo

HERE = Path(__file__).resolve().parent


def _inputs(model: torch.nn.Module, family: str, batch: int) -> tuple[Any, ...]:
    example = zoo.example(family, batch=batch, seed=100)
    return bind_to_forward(model, example)[0] if isinstance(example, dict) else args_of(example)


def _speed(out: zoo.Outcome, batch: int) -> dict[str, float]:
    inputs = _inputs(out.model, out.family, batch)
    shipped = out.shipped.module
    with torch.no_grad():
        report = benchmark(out.model, shipped, inputs, iterations=60, warmup=5, num_threads=1, budget_s=6.0)
    return {
        f"float_p50_ms_b{batch}": report.float_latency.p50_ms,
        f"int8_p50_ms_b{batch}": report.quant_latency.p50_ms,
        f"speedup_b{batch}": report.speedup,
    }


def row(family: str, engine: str) -> dict[str, Any]:
    out = zoo.convert(family, engine)
    r: dict[str, Any] = {
        "family": family,
        "engine": engine,
        "mode": out.mode,
        "converted": out.converted,
        "error": out.error,
        "unexpected": out.unexpected,
        "tracing": out.tracing,
        "quantized_fraction": out.quantized_fraction,
        "float_layers": out.float_layers,
        "shipped_as": out.shipped_as,
        "conversion_s": out.seconds,
        "sqnr_db": out.metrics.get("output_sqnr_db"),
        "cosine_mean": out.metrics.get("embedding_cosine_mean"),
        "cosine_min": out.metrics.get("embedding_cosine_min"),
        "agreement": out.metrics.get("agreement"),
    }
    if out.converted:
        for batch in (1, 8):
            try:
                r |= _speed(out, batch)
            except Exception as exc:  # a shipped form that cannot take batch 8 is a finding, not a crash
                r[f"speed_error_b{batch}"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    print(
        f"{family:16s} {engine:5s} {'ok' if out.converted else 'REFUSED' if not out.unexpected else 'UNEXPECTED'} "
        f"{r.get('speedup_b1', float('nan')):.2f}x/{r.get('speedup_b8', float('nan')):.2f}x "
        f"sqnr {r['sqnr_db'] if r['sqnr_db'] is not None else float('nan'):.1f} {out.seconds:.1f}s {out.error[:160]}",
        flush=True,
    )
    return r


def _f(v: Any, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def _engine_line(engine: str, ok: list[dict[str, Any]]) -> str:
    def median(key: str) -> str:
        values = [r[key] for r in ok if r.get(key) is not None]
        return f"{statistics.median(values):.2f}x" if values else "–"

    slower = sorted({r["family"] for r in ok for k in ("speedup_b1", "speedup_b8") if r.get(k, 2.0) < 1.0})
    return (
        f"- {engine}: median speedup {median('speedup_b1')} at batch 1, {median('speedup_b8')} at batch 8; "
        f"slower than fp32 somewhere: {', '.join(slower) or 'none'} (the default speed gate refuses a model slower at its headline batch)"
    )


def render(rows: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    ok = [r for r in rows if r["converted"]]
    unexpected = [r for r in rows if r["unexpected"]]
    lines = [
        "# The architecture zoo",
        "",
        "Written by `python -m bench.zoo` (`tests/zoo.py`: transformers' own model classes from small configs, random "
        "weights, and torchvision-style CNNs) through quantstage's library path with defaults (`tracing: auto`, "
        "static for CNNs/`-static`, dynamic for transformers). Speedup: the shipped, verified model (loaded back) "
        "against the float model as the user runs it, one thread, interleaved, p50. Conversion: quantize + evaluate "
        "+ ship. Random-weight models: SQNR separates working from broken, not final accuracy (the gates decide that "
        "on real data).",
        "",
        f"Machine: {machine.get('cpu_model', '?')}, {machine.get('cpu_count', '?')} cores; int8 ISA: "
        f"{machine.get('isa_int8') or 'none'}; torch {machine.get('torch_version', torch.__version__)}.",
        "",
        f"**{len(ok)} of {len(rows)} family × engine cases convert; {len(unexpected)} unexpected errors.**",
        "",
        *[
            _engine_line(engine, [r for r in ok if r["engine"] == engine])
            for engine in dict.fromkeys(r["engine"] for r in rows)
        ],
        "",
        "| family | engine | mode | result | tracing | quantized | SQNR dB | cosine mean / min | speedup b1 | "
        "speedup b8 | int8 p50 b1 ms | conversion s | shipped as |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        result = "converts" if r["converted"] else ("**unexpected**" if r["unexpected"] else "refused")
        cos = "–" if r["cosine_mean"] is None else f"{r['cosine_mean']:.3f} / {r['cosine_min']:.3f}"
        lines.append(
            f"| {r['family']} | {r['engine']} | {r['mode']} | {result} | {r['tracing'] or '–'} | "
            f"{_f(r['quantized_fraction'] * 100 if r['converted'] else None, '.0f')}{'%' if r['converted'] else ''} | "
            f"{_f(r['sqnr_db'], '.1f')} | {cos} | {_f(r.get('speedup_b1'), '.2f')} | {_f(r.get('speedup_b8'), '.2f')} | "
            f"{_f(r.get('int8_p50_ms_b1'), '.2f')} | {r['conversion_s']:.1f} | {r['shipped_as'] or '–'} |"
        )
    lines += ["", "## Refusals and layers left float", ""]
    for r in rows:
        if r["error"]:
            lines.append(f"- **{r['family']} / {r['engine']}**: {r['error'][:400]}")
        elif r["float_layers"]:
            shown = "; ".join(r["float_layers"][:4])
            more = f" (+{len(r['float_layers']) - 4} more)" if len(r["float_layers"]) > 4 else ""
            lines.append(f"- {r['family']} / {r['engine']}: float: {shown}{more}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.zoo", description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["fx", "pt2e"])
    parser.add_argument("--families", nargs="+", default=list(zoo.FAMILIES))
    parser.add_argument("--out", default=str(HERE / "ZOO.md"))
    parser.add_argument("--render", action="store_true", help="rewrite ZOO.md from zoo.json beside it, measure nothing")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.render:
        saved = json.loads((out.parent / "zoo.json").read_text())
        out.write_text(render(saved["rows"], saved["machine"]))
        return 0
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    rows = [row(family, engine) for engine in args.engines for family in args.families]
    info = machine_info()
    out.write_text(render(rows, info))
    (out.parent / "zoo.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
