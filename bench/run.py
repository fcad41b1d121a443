"""Benchmark the quantstage conversion: conversion time, latency, size, peers, accuracy, repeatability.

Run from the repository root::

    python -m bench.run            # full run (a few minutes on a 2-core machine)
    python -m bench.run --quick    # a much shorter smoke run (numbers are indicative only)

Writes ``bench/RESULTS.md`` and ``bench/results.json``. Peers (ONNX Runtime) are measured
only when their packages import and the export/quantization succeeds; otherwise the exact
error is recorded in the results instead of a number.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from bench.models import bert_encoder, resnet18
from bench.pt2e import pt2e_available, pt2e_int8
from quantstage.demo import DigitsCNN, train_classifier
from quantstage.quant.calibrate import calibrate
from quantstage.quant.data.sources import DataSpec, digits_split, load_data
from quantstage.quant.engines import FxSpec, QuantSpec, parse_spec
from quantstage.quant.engines.fx import _torch as _fx
from quantstage.quant.engines.fx.convert import convert, lower, reference_convert
from quantstage.quant.engines.fx.prepare import prepare
from quantstage.quant.engines.fx.variants import select_variant
from quantstage.quant.hardware import machine_info
from quantstage.quant.measure.benchmark import LatencyStats, benchmark, serialized_size, threads
from quantstage.quant.measure.evaluate import sqnr_db
from quantstage.quant.quantize import quantize
from quantstage.quant.ship.jit import jit_quiet

HERE = Path(__file__).resolve().parent
SEQ = 128
VOCAB = 30522


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _err(exc: BaseException) -> str:
    lines = [l for l in str(exc).strip().splitlines() if l.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:500]


# --------------------------------------------------------------------------------------- data
def images(n_batches: int, batch: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 224, 224, generator=g) for _ in range(n_batches)]


def token_ids(n_batches: int, batch: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (batch, SEQ), generator=g) for _ in range(n_batches)]


def prepared_model(model: torch.nn.Module, spec: QuantSpec, batches: list[torch.Tensor]) -> Any:
    p = prepare(model, (batches[0],), spec)
    calibrate(p, [(b, None) for b in batches], max_batches=len(batches))
    return p


# ---------------------------------------------------------------------- a. conversion time
def conversion_time(name: str, prepared: Any, reps: int) -> dict[str, Any]:
    """Best-of-``reps`` wall time: decomposed convert vs torch convert_fx (with and without its deepcopy)."""
    decomposed, direct_copy, direct_nocopy = [], [], []
    with _fx.fx_quiet():
        for _ in range(reps):  # interleaved so drift hits all three alike
            t = time.perf_counter()
            lower(reference_convert(prepared))
            decomposed.append(time.perf_counter() - t)
            t = time.perf_counter()
            _fx.convert_fx(copy.deepcopy(prepared))
            direct_copy.append(time.perf_counter() - t)
            c = copy.deepcopy(prepared)
            t = time.perf_counter()
            _fx.convert_fx(c)
            direct_nocopy.append(time.perf_counter() - t)
    row = {
        "model": name,
        "reps": reps,
        "decomposed_s": min(decomposed),
        "convert_fx_deepcopy_s": min(direct_copy),
        "convert_fx_nocopy_s": min(direct_nocopy),
    }
    row["ratio_vs_deepcopy"] = row["decomposed_s"] / row["convert_fx_deepcopy_s"]
    row["ratio_vs_nocopy"] = row["decomposed_s"] / row["convert_fx_nocopy_s"]
    log(
        f"convert {name}: decomposed {row['decomposed_s']:.3f}s, convert_fx(deepcopy) {row['convert_fx_deepcopy_s']:.3f}s "
        f"(ratio {row['ratio_vs_deepcopy']:.3f}), convert_fx(no copy) {row['convert_fx_nocopy_s']:.3f}s "
        f"(ratio {row['ratio_vs_nocopy']:.3f})"
    )
    return row


# ---------------------------------------------------------------------------- ONNX Runtime
def ort_available() -> str | None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        from onnxruntime.quantization import quantize_dynamic, quantize_static  # noqa: F401
    except Exception as exc:
        return _err(exc)
    return None


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, input_name: str) -> str:
    """Export with a dynamic batch axis: the TorchScript exporter first, then the dynamo one. Returns which."""
    errors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=[input_name],
                output_names=["output"],
                dynamic_axes={input_name: {0: "batch"}, "output": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
            return "torch.onnx.export(dynamo=False), opset 17"
        except Exception as exc:
            errors.append(f"dynamo=False: {_err(exc)}")
        try:
            batch = torch.export.Dim("batch", min=1, max=64)
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=[input_name],
                output_names=["output"],
                dynamic_shapes=({0: batch},),
                dynamo=True,
            )
            return "torch.onnx.export(dynamo=True)"
        except Exception as exc:
            errors.append(f"dynamo=True: {_err(exc)}")
    raise RuntimeError("; ".join(errors))


def ort_session(path: Path, n_threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = n_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_runner(session: Any, input_name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {input_name: x.numpy()})[0])

    return run


def ort_resnet_int8(model: torch.nn.Module, calib: list[torch.Tensor], workdir: Path) -> tuple[Path, dict[str, Any]]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    info: dict[str, Any] = {}
    fp32 = workdir / "resnet18_fp32.onnx"
    info["export"] = export_onnx(model, calib[0][:1], fp32, "input")
    source = fp32
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = workdir / "resnet18_pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        source, info["pre_process"] = pre, "quant_pre_process"
    except Exception as exc:
        info["pre_process"] = f"skipped ({_err(exc)})"

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"input": b.numpy()} for b in calib])

        def get_next(self) -> dict | None:
            return next(self._it, None)

    out = workdir / "resnet18_int8_qdq.onnx"
    quantize_static(
        str(source),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    info["quantization"] = (
        "quantize_static QDQ, activations QUInt8, weights QInt8 per-channel, "
        f"MinMax calibration on the same {len(calib)}x{calib[0].shape[0]} images"
    )
    info["fp32_onnx_bytes"] = fp32.stat().st_size
    info["int8_onnx_bytes"] = out.stat().st_size
    return out, info


def ort_encoder_int8(model: torch.nn.Module, example: torch.Tensor, workdir: Path) -> tuple[Path, dict[str, Any]]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    info: dict[str, Any] = {}
    fp32 = workdir / "encoder_fp32.onnx"
    info["export"] = export_onnx(model, example, fp32, "input_ids")
    out = workdir / "encoder_int8_dynamic.onnx"
    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
    info["quantization"] = "quantize_dynamic, weights QInt8 (default op types: MatMul, Gather, ...)"
    info["fp32_onnx_bytes"] = fp32.stat().st_size
    info["int8_onnx_bytes"] = out.stat().st_size
    return out, info


@torch.no_grad()
def interleaved(runners: dict[str, Callable[[], Any]], iterations: int, warmup: int) -> dict[str, LatencyStats]:
    """Round-robin timing of several callables, like quant.benchmark but N-way, in a fresh seeded
    random order every round: each runner follows each other one equally often (a 45 ms fp32 call
    flushes the caches for whoever runs next; a fixed or merely rotated order favours someone)."""
    import random

    rng = random.Random(0)
    for _ in range(warmup):
        for fn in runners.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in runners}
    order = list(runners.items())
    for _ in range(iterations):
        rng.shuffle(order)
        for name, fn in order:
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


# ------------------------------------------------------------------------------- sections
def shipped(lowered: torch.nn.Module, verify: list[tuple[torch.Tensor, ...]], iterations: int) -> tuple[str, Any, list]:
    name, module, results = select_variant(lowered, verify, iterations=iterations, warmup=2)
    return name, module, [r.as_row() for r in results]


def stats_row(s: LatencyStats) -> dict[str, float]:
    return {"p50_ms": s.p50_ms, "p90_ms": s.p90_ms, "p99_ms": s.p99_ms, "cv": s.cv}


def fresh(module: Any) -> Any:
    """A freshly loaded copy of a TorchScript module, as a server loads the shipped file: a module
    that has already run other input shapes re-specializes and runs slower (measured in [b])."""
    if not isinstance(module, torch.jit.ScriptModule):
        return module
    buffer = io.BytesIO()
    with jit_quiet():
        torch.jit.save(module, buffer)
        buffer.seek(0)
        return torch.jit.load(buffer).eval()


def latency_rows(
    label: str,
    fp32: torch.nn.Module,
    int8: Any,
    inputs: dict[int, torch.Tensor],
    iters: dict[int, int],
    thread_counts: list[int],
) -> list[dict[str, Any]]:
    rows = []
    for n in thread_counts:
        for b, x in inputs.items():
            r = benchmark(
                fp32, fresh(int8), (x,), iterations=iters[b], warmup=max(2, iters[b] // 10), num_threads=n, max_cv=0.25
            )
            rows.append(
                {
                    "model": label,
                    "threads": n,
                    "batch": b,
                    "iterations": iters[b],
                    "fp32": stats_row(r.float_latency),
                    "int8": stats_row(r.quant_latency),
                    "speedup": r.speedup,
                    "stable": r.stable,
                    "load1": os.getloadavg()[0],
                }
            )
            log(
                f"latency {label} t={n} b={b}: fp32 {r.float_latency.p50_ms:.2f} ms, int8 {r.quant_latency.p50_ms:.2f} ms, "
                f"speedup {r.speedup:.2f}x{'' if r.stable else ' (unstable)'}"
            )
    return rows


def peer_rows(
    label: str,
    fp32: torch.nn.Module,
    int8: Any,
    onnx_path: Path,
    input_name: str,
    inputs: dict[int, torch.Tensor],
    iters: dict[int, int],
    thread_counts: list[int],
) -> list[dict[str, Any]]:
    rows = []
    for n in thread_counts:
        session = ort_session(onnx_path, n)
        run = ort_runner(session, input_name)
        with threads(n):
            for b, x in inputs.items():
                int8_b = fresh(int8)
                times = interleaved(
                    {
                        "torch_fp32": lambda: fp32(x),
                        "torch_int8": lambda: int8_b(x),
                        "ort_int8": lambda: run(x),
                    },
                    iters[b],
                    max(2, iters[b] // 10),
                )
                st = {k: LatencyStats.from_times(v, b) for k, v in times.items()}
                row = {
                    "model": label,
                    "threads": n,
                    "batch": b,
                    "iterations": iters[b],
                    **{k: stats_row(v) for k, v in st.items()},
                    "ort_over_torch_int8": st["ort_int8"].p50_ms / st["torch_int8"].p50_ms,
                    "load1": os.getloadavg()[0],
                }
                rows.append(row)
                log(
                    f"peers {label} t={n} b={b}: torch fp32 {st['torch_fp32'].p50_ms:.2f}, torch int8 "
                    f"{st['torch_int8'].p50_ms:.2f}, ORT int8 {st['ort_int8'].p50_ms:.2f} ms "
                    f"(ORT/torch-int8 p50 {row['ort_over_torch_int8']:.2f})"
                )
        del session
    return rows


def versions(
    packages: tuple[str, ...] = ("torch", "numpy", "onnx", "onnxruntime", "onnxscript", "scikit-learn"),
) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="much shorter run (indicative numbers only)")
    parser.add_argument("--out", default=str(HERE), help="folder for RESULTS.md and results.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*")
    warnings.filterwarnings("ignore", message=r".*reduce_range.*")
    quick = args.quick
    started = time.time()
    conv_reps = 2 if quick else 5
    calib_batches = 2 if quick else 8
    thread_counts = [1, 2]
    variant_iters = 5 if quick else 20
    iters = {
        "resnet": ({1: 5, 8: 2} if quick else {1: 100, 8: 10}),
        "encoder": ({1: 5, 8: 2} if quick else {1: 100, 8: 20}),
    }
    x86 = FxSpec(backend="x86", mode="static")
    dyn = FxSpec(backend="x86", mode="dynamic")
    results: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "command": " ".join(
            [Path(sys.executable).name, "-m", "bench.run", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": machine_info(),
        "versions": versions(),
        "errors": {},
        "notes": [],
        "load_average_start": list(os.getloadavg()),
    }
    log(
        f"mode {results['mode']}; machine {results['machine']['cpu_model']} ({results['machine']['cpu_count']} cpus, "
        f"int8 ISA {results['machine']['isa_int8']})"
    )

    # models and data
    rn = resnet18(seed=0)
    calib = images(calib_batches, 8, seed=0)
    held_out = images(2, 8, seed=1000)
    enc = bert_encoder(seed=0)
    ids = token_ids(2, 8, seed=0)

    log("preparing + calibrating ResNet-18 (static x86), encoder (dynamic), DigitsCNN (static x86)")
    rn_prepared = prepared_model(rn, x86, calib)
    enc_prepared = prepared_model(enc, dyn, ids[:1])
    data = load_data(DataSpec())
    x_train, y_train, _, _ = digits_split()
    digits = train_classifier(DigitsCNN(), x_train, y_train, epochs=3, seed=0)
    digits_prepared = prepare(digits, data.example_inputs, x86)
    calibrate(digits_prepared, data.calibration, max_batches=x86.calibration_batches)

    # a. conversion time
    log(f"[a] conversion time, best of {conv_reps}")
    results["conversion"] = [
        conversion_time("ResNet-18 static x86", rn_prepared, conv_reps),
        conversion_time("encoder dynamic", enc_prepared, conv_reps),
        conversion_time("DigitsCNN static x86", digits_prepared, conv_reps),
    ]

    # shipped models
    log("[b] lowering and selecting the shipped TorchScript variants")
    rn_lowered = convert(rn_prepared)
    rn_inputs = {1: held_out[0][:1], 8: held_out[0]}
    rn_name, rn_int8, rn_variants = shipped(rn_lowered, [(rn_inputs[1],)], variant_iters)
    enc_lowered = convert(enc_prepared)
    enc_inputs = {1: ids[1][:1], 8: ids[1]}
    enc_name, enc_int8, enc_variants = shipped(enc_lowered, [(enc_inputs[1],)], variant_iters)
    with torch.no_grad():
        rn_b8_exact = bool(torch.equal(rn_lowered(rn_inputs[8]), rn_int8(rn_inputs[8])))
        enc_b8_exact = bool(torch.equal(enc_lowered(enc_inputs[8]), enc_int8(enc_inputs[8])))
    log(
        f"shipped: ResNet-18 {rn_name} (batch-8 bit-exact {rn_b8_exact}), encoder {enc_name} (batch-8 bit-exact {enc_b8_exact})"
    )
    with torch.no_grad():
        rn_ts = torch.jit.trace(rn, (rn_inputs[1],))
        enc_ts = torch.jit.trace(enc, (enc_inputs[1],))
    results["shipped"] = {
        "resnet18": {"variant": rn_name, "batch8_bit_exact": rn_b8_exact, "variants": rn_variants},
        "encoder": {"variant": enc_name, "batch8_bit_exact": enc_b8_exact, "variants": enc_variants},
    }
    results["size"] = []
    for label, fp32_ts, fp32_eager, int8 in (
        ("ResNet-18 static x86", rn_ts, rn, rn_int8),
        ("encoder dynamic", enc_ts, enc, enc_int8),
    ):
        row = {
            "model": label,
            "fp32_torchscript_bytes": serialized_size(fp32_ts),
            "fp32_state_dict_bytes": serialized_size(fp32_eager),
            "int8_torchscript_bytes": serialized_size(int8),
        }
        row["ratio_fp32_ts_over_int8"] = row["fp32_torchscript_bytes"] / row["int8_torchscript_bytes"]
        results["size"].append(row)
        log(
            f"size {label}: fp32 TorchScript {row['fp32_torchscript_bytes'] / 2**20:.1f} MiB, int8 TorchScript "
            f"{row['int8_torchscript_bytes'] / 2**20:.1f} MiB ({row['ratio_fp32_ts_over_int8']:.2f}x smaller)"
        )

    log("[b] latency, interleaved (quant.benchmark.benchmark)")
    results["latency"] = latency_rows(
        "ResNet-18 static x86", rn, rn_int8, rn_inputs, iters["resnet"], thread_counts
    ) + latency_rows("encoder dynamic", enc, enc_int8, enc_inputs, iters["encoder"], thread_counts)

    # c. peers
    log("[c] peers: ONNX Runtime int8")
    results["peers"] = {"rows": [], "info": {}}
    missing = ort_available()
    ort_outputs: dict[str, torch.Tensor] = {}
    if missing:
        results["errors"]["onnxruntime"] = f"peer skipped: import failed: {missing}"
        log(results["errors"]["onnxruntime"])
    else:
        workdir = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
        for key, build, fp32, int8, inputs, name, it in (
            ("resnet18", lambda: ort_resnet_int8(rn, calib, workdir), rn, rn_int8, rn_inputs, "input", iters["resnet"]),
            (
                "encoder",
                lambda: ort_encoder_int8(enc, enc_inputs[1], workdir),
                enc,
                enc_int8,
                enc_inputs,
                "input_ids",
                iters["encoder"],
            ),
        ):
            try:
                path, info = build()
                results["peers"]["info"][key] = info
                log(f"ORT {key}: {info}")
                if key == "resnet18":
                    run1 = ort_runner(ort_session(path, 2), name)
                    ort_outputs["resnet18"] = torch.cat([run1(x) for x in held_out])
                label = "ResNet-18 static x86" if key == "resnet18" else "encoder dynamic"
                results["peers"]["rows"] += peer_rows(label, fp32, int8, path, name, inputs, it, thread_counts)
            except Exception as exc:
                results["errors"][f"onnxruntime_{key}"] = _err(exc)
                log(f"ORT {key} failed: {_err(exc)}")
                traceback.print_exc()

    # c2. peer: torchao PT2E + Inductor (batch 1, static export)
    log("[c2] peers: torchao PT2E + torch.compile (ResNet-18, batch 1)")
    results["pt2e"] = {"rows": []}
    pt2e_missing = pt2e_available()
    pt2e_run = None
    if pt2e_missing:
        results["errors"]["pt2e"] = f"peer skipped: {pt2e_missing}"
    else:
        try:
            pt2e_run, results["pt2e"]["info"] = pt2e_int8(rn, calib, batch=1)
            x1 = rn_inputs[1]
            for n in thread_counts:
                with threads(n):
                    it = iters["resnet"][1]
                    ours = fresh(rn_int8)
                    times = interleaved(
                        {"torch_int8": lambda: ours(x1), "pt2e_int8": lambda: pt2e_run(x1)}, it, max(2, it // 10)
                    )
                st = {k: LatencyStats.from_times(v, 1) for k, v in times.items()}
                results["pt2e"]["rows"].append(
                    {
                        "threads": n,
                        "iterations": it,
                        "torch_int8_p50_ms": st["torch_int8"].p50_ms,
                        "pt2e_int8_p50_ms": st["pt2e_int8"].p50_ms,
                        "pt2e_over_torch_int8": st["pt2e_int8"].p50_ms / st["torch_int8"].p50_ms,
                        "load1": os.getloadavg()[0],
                    }
                )
                log(f"PT2E t={n}: torch int8 {st['torch_int8'].p50_ms:.2f} ms, PT2E {st['pt2e_int8'].p50_ms:.2f} ms")
        except Exception as exc:
            results["errors"]["pt2e"] = _err(exc)
            log(f"PT2E failed: {_err(exc)}")

    # d. accuracy
    log("[d] ResNet-18 output SQNR on held-out random images")
    with torch.no_grad():
        ref = torch.cat([rn(x) for x in held_out])
        reduce_range, why = x86.mapping_spec().effective_reduce_range("x86")
        acc = {
            f"shipped (x86 default: reduce_range={reduce_range}, {why})": sqnr_db(
                ref, torch.cat([rn_int8(x) for x in held_out])
            )
        }
        for act in ("histogram", "minmax", "moving_average"):
            spec = FxSpec(
                backend="x86",
                mode="static",
                qconfig_mapping={"preset": "static", "observers": {"activation": act, "weight": "per_channel"}},
            )
            try:
                q = quantize(rn, spec, calib).model
                acc[f"observers {act} / per_channel"] = sqnr_db(ref, torch.cat([q(x) for x in held_out]))
            except Exception as exc:
                results["errors"][f"sqnr_{act}"] = _err(exc)
            log(f"SQNR {act}: {acc.get(f'observers {act} / per_channel')}")
        extras = {  # beside the presets: torch's 7-bit x86 default, and the output layer kept float
            "extra: histogram / per_channel, reduce_range=True (torch's x86 default)": {
                "qconfig_mapping": {
                    "preset": "static",
                    "observers": {"activation": "histogram", "weight": "per_channel", "reduce_range": True},
                }
            },
            "extra: output layer float (skip_modules: [fc])": {"skip_modules": ["fc"]},
            "extra: pooling quantized too (float_global_pool: false)": {"float_global_pool": False},
        }
        for label, fields in extras.items():
            try:
                q = quantize(rn, parse_spec({"backend": "x86", "mode": "static", **fields}), calib).model
                acc[label] = sqnr_db(ref, torch.cat([q(x) for x in held_out]))
                if "output layer" in label:
                    q_ts = torch.jit.freeze(torch.jit.script(q).eval())
                    ours = fresh(rn_int8)
                    t = interleaved(
                        {"shipped": lambda: ours(rn_inputs[1]), "fc_float": lambda: q_ts(rn_inputs[1])},
                        30 if not quick else 5,
                        3,
                    )
                    results["fc_float_latency_ratio"] = (
                        LatencyStats.from_times(t["fc_float"], 1).p50_ms
                        / LatencyStats.from_times(t["shipped"], 1).p50_ms
                    )
            except Exception as exc:
                results["errors"][f"sqnr {label}"] = _err(exc)
        if pt2e_run is not None:
            acc["torchao PT2E (X86InductorQuantizer)"] = sqnr_db(
                ref, torch.cat([pt2e_run(x[i : i + 1]) for x in held_out for i in range(x.shape[0])])
            )
        if "resnet18" in ort_outputs:
            acc["ONNX Runtime QDQ (MinMax)"] = sqnr_db(ref, ort_outputs["resnet18"])
        enc_ref = torch.cat([enc(x) for x in ids])
        acc_enc = {"shipped dynamic": sqnr_db(enc_ref, torch.cat([enc_int8(x) for x in ids]))}
    presets = {k: v for k, v in acc.items() if k.startswith("observers")}
    results["accuracy"] = {
        "resnet18_sqnr_db": acc,
        "encoder_sqnr_db": acc_enc,
        "best_observer_preset": max(presets, key=presets.get) if presets else None,
        "held_out": f"{len(held_out)}x{held_out[0].shape[0]} images, seed 1000",
    }
    log(f"SQNR: {acc} encoder {acc_enc}")

    # e. demo repeatability
    log("[e] DigitsCNN speedup, measured twice")
    d_lowered = convert(digits_prepared)
    d_verify = [(x,) for x, _ in data.evaluation[:2]]
    d_name, d_int8, _ = shipped(d_lowered, d_verify, variant_iters)
    d_iters = 50 if quick else 300
    reps = []
    for i in range(2):
        r = benchmark(digits, fresh(d_int8), data.example_inputs, iterations=d_iters, warmup=20, num_threads=1)
        reps.append(
            {
                "float_p50_ms": r.float_latency.p50_ms,
                "int8_p50_ms": r.quant_latency.p50_ms,
                "speedup": r.speedup,
                "stable": r.stable,
            }
        )
        log(f"DigitsCNN run {i + 1}: speedup {r.speedup:.2f}x")
    mixed = fresh(d_int8)  # the same file after it has run other batch sizes (as in a server with mixed batches)
    with torch.no_grad():
        for n in (32, 1, 7, 32, 1, 3):
            for _ in range(3):
                mixed(data.example_inputs[0][:n])
    r = benchmark(digits, mixed, data.example_inputs, iterations=d_iters, warmup=20, num_threads=1)
    mixed_row = {
        "float_p50_ms": r.float_latency.p50_ms,
        "int8_p50_ms": r.quant_latency.p50_ms,
        "speedup": r.speedup,
        "stable": r.stable,
    }
    log(f"DigitsCNN after mixed batch sizes: speedup {r.speedup:.2f}x")
    s1, s2 = reps[0]["speedup"], reps[1]["speedup"]
    results["demo"] = {
        "variant": d_name,
        "batch": int(data.example_inputs[0].shape[0]),
        "iterations": d_iters,
        "runs": reps,
        "relative_difference": abs(s1 - s2) / ((s1 + s2) / 2),
        "after_mixed_shapes": mixed_row,
    }

    # f. pipeline overhead on a warm Prefect API
    log("[f] convert_flow overhead: wall time vs its tasks, on a warm API")
    try:
        from bench.overhead import measure_overhead

        results["overhead"] = measure_overhead(runs=2 if quick else 3, iterations=30 if quick else 100)
        log(f"overhead: {[round(r['overhead_s'], 2) for r in results['overhead']['runs']]} s")
    except Exception as exc:
        results["errors"]["overhead"] = _err(exc)

    results["elapsed_s"] = time.time() - started
    results["load_average_end"] = list(os.getloadavg())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "RESULTS.md").write_text(render(results))
    log(f"done in {results['elapsed_s']:.0f}s: wrote {out / 'RESULTS.md'} and {out / 'results.json'}")
    return 0


# -------------------------------------------------------------------------------- report
def _f(v: float, d: int = 2) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "–"
    return "inf" if isinstance(v, float) and math.isinf(v) else f"{v:.{d}f}"


def render(r: dict[str, Any]) -> str:
    m, v = r["machine"], r["versions"]
    L = [f"# quantstage benchmarks ({r['mode']} run)", ""]
    if r["mode"] == "quick":
        L += ["> **Quick run**: few iterations and calibration batches; numbers are indicative only.", ""]
    L += [
        f"Command: `{r['command']}` (from the repository root; `make bench` runs the full one). "
        f"Total time {r['elapsed_s']:.0f} s."
        + (
            f" Load average (1/5/15 min) at start {', '.join(f'{x:.2f}' for x in r['load_average_start'])}, at end "
            f"{', '.join(f'{x:.2f}' for x in r['load_average_end'])}; the `load1` columns give the 1-minute load "
            f"after each row: a load above {m.get('cpu_count')} means other processes competed for the cores."
            if "load_average_start" in r
            else ""
        ),
        "",
        *[f"> **Note:** {n}" for n in r.get("notes", [])],
        *([""] if r.get("notes") else []),
        "## Machine",
        "",
        "| key | value |",
        "|---|---|",
    ]
    L += [f"| {k} | {val} |" for k, val in m.items()]
    L += ["", "Packages: " + ", ".join(f"{k} {val}" for k, val in v.items()), ""]
    L += [
        "Models (bench/models.py): ResNet-18 (BasicBlock [2,2,2,2], 1000 classes, 224x224, random seeded weights, "
        "randomized BN stats) and a BERT-like encoder (vocab 30522, hidden 384, 6 layers, 6 heads, FFN 1536, seq 128, "
        "random seeded weights). Inputs are random images / random token ids. The int8 model timed is the one the stage "
        "ships: `select_variant` (fastest TorchScript form bit-exact to the lowered model).",
        "",
    ]

    L += [
        "## a. Conversion time (best of %d)" % r["conversion"][0]["reps"],
        "",
        "`decomposed` = `lower(reference_convert(p))` (== `quant.convert.convert`, does not mutate p); "
        "`convert_fx(deepcopy(p))` is the fair comparison (convert_fx mutates its input); the last column copies outside the timer. "
        "Target: decomposed / convert_fx(deepcopy) ≤ 1.05.",
        "",
        "| model | decomposed (s) | convert_fx(deepcopy) (s) | ratio | convert_fx, copy untimed (s) | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for c in r["conversion"]:
        L.append(
            f"| {c['model']} | {c['decomposed_s']:.3f} | {c['convert_fx_deepcopy_s']:.3f} | **{c['ratio_vs_deepcopy']:.3f}** "
            f"| {c['convert_fx_nocopy_s']:.3f} | {c['ratio_vs_nocopy']:.3f} |"
        )

    L += [
        "",
        "## b. Latency (interleaved, `quant.benchmark.benchmark`) and size",
        "",
        f"Shipped variants: ResNet-18 `{r['shipped']['resnet18']['variant']}`, encoder `{r['shipped']['encoder']['variant']}` "
        f"(batch-8 outputs bit-exact to the lowered model: {r['shipped']['resnet18']['batch8_bit_exact']}, "
        f"{r['shipped']['encoder']['batch8_bit_exact']}).",
        "",
        "| model | threads | batch | iters | fp32 p50 / p90 / p99 (ms) | int8 p50 / p90 / p99 (ms) | speedup (p50) | stable | load1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["latency"]:
        a, b = x["fp32"], x["int8"]
        L.append(
            f"| {x['model']} | {x['threads']} | {x['batch']} | {x['iterations']} | {_f(a['p50_ms'])} / {_f(a['p90_ms'])} / "
            f"{_f(a['p99_ms'])} | {_f(b['p50_ms'])} / {_f(b['p90_ms'])} / {_f(b['p99_ms'])} | **{_f(x['speedup'])}x** | {x['stable']} | {_f(x.get('load1', float('nan')))} |"
        )
    L += [
        "",
        "| model | fp32 TorchScript (MiB) | fp32 state_dict (MiB) | int8 TorchScript shipped (MiB) | fp32 TS / int8 |",
        "|---|---|---|---|---|",
    ]
    for s in r["size"]:
        L.append(
            f"| {s['model']} | {s['fp32_torchscript_bytes'] / 2**20:.2f} | {s['fp32_state_dict_bytes'] / 2**20:.2f} | "
            f"{s['int8_torchscript_bytes'] / 2**20:.2f} | **{s['ratio_fp32_ts_over_int8']:.2f}x** |"
        )
    L += [
        "",
        "Encoder size target: ≥ 3.5x smaller (the dynamic preset quantizes Linear int8 dynamic and Embedding int8 weight-only).",
    ]

    L += ["", "## c. Peers: ONNX Runtime int8", ""]
    peer_errors = {k: e for k, e in r["errors"].items() if k.startswith("onnxruntime")}
    for k, e in peer_errors.items():
        L.append(f"- **{k} not measured**: `{e}`")
    for k, info in r["peers"]["info"].items():
        L.append(f"- {k}: " + "; ".join(f"{a}: {b}" for a, b in info.items()))
    if r["peers"]["rows"]:
        L += [
            "",
            'ORT sessions: `intra_op_num_threads` = threads, `session.intra_op.allow_spinning = "0"`, sequential, '
            "all graph optimizations; timed round-robin with the torch models in one loop (torch fp32, torch int8, ORT int8).",
            "",
            "| model | threads | batch | iters | torch fp32 p50 (ms) | torch int8 shipped p50 (ms) | ORT int8 p50 (ms) | ORT / torch int8 (>1: torch faster) | load1 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for x in r["peers"]["rows"]:
            L.append(
                f"| {x['model']} | {x['threads']} | {x['batch']} | {x['iterations']} | {_f(x['torch_fp32']['p50_ms'])} | "
                f"{_f(x['torch_int8']['p50_ms'])} | {_f(x['ort_int8']['p50_ms'])} | **{_f(x['ort_over_torch_int8'])}** | {_f(x.get('load1', float('nan')))} |"
            )

    acc = r["accuracy"]
    L += [
        "",
        "## d. Accuracy: output SQNR vs fp32 (dB, higher is better)",
        "",
        f"Held-out: {acc['held_out']}; calibration: the same random images for FX and ORT. "
        "ResNet-18 has random weights and the inputs are noise, so these SQNRs are only indicative of "
        "quantization error, not of accuracy on real data.",
        "",
        "| ResNet-18 int8 | SQNR (dB) |",
        "|---|---|",
    ]
    L += [f"| {k} | {_f(val)} |" for k, val in acc["resnet18_sqnr_db"].items()]
    ratio = r.get("fc_float_latency_ratio")
    L += [
        "",
        f"Best of the three observer presets: **{acc['best_observer_preset']}** (8-bit activations on this CPU). "
        "torch's x86 default observes 7-bit activations (`reduce_range`) against int16 saturation in kernels without "
        "VNNI; quantstage keeps 7 bits only where the CPU lacks VNNI/AMX (`quant.hardware.default_reduce_range`, "
        "logged as `resolved.reduce_range`), and runs global average pooling in float so the pooled features get their "
        "own observer (`float_global_pool`, default on). ORT's QDQ uses full 8-bit uint8 activations. Keeping the output layer "
        "float (`skip_modules: [fc]`) removes the last requantization, as PT2E's x86 recipe does (its linear emits fp32)"
        + (f"; latency cost at batch 1, 1 thread: {ratio:.3f}x the shipped default." if ratio else "."),
        "",
        "Encoder (dynamic) hidden-state SQNR: "
        + ", ".join(f"{k} {_f(val)} dB" for k, val in acc["encoder_sqnr_db"].items())
        + ".",
    ]

    d = r["demo"]
    L += [
        "",
        "## e. Demo repeatability (DigitsCNN, 3 epochs on digits, static x86)",
        "",
        f"Shipped variant `{d['variant']}`, batch {d['batch']}, 1 thread, {d['iterations']} iterations per call, two separate "
        "`quant.benchmark.benchmark` calls. Target: within 10%.",
        "",
        "| run | fp32 p50 (ms) | int8 p50 (ms) | speedup | stable |",
        "|---|---|---|---|---|",
    ]
    for i, x in enumerate(d["runs"], 1):
        L.append(f"| {i} | {x['float_p50_ms']:.3f} | {x['int8_p50_ms']:.3f} | {x['speedup']:.2f}x | {x['stable']} |")
    L += ["", f"Relative difference of the two speedups: **{100 * d['relative_difference']:.1f}%**."]
    if d.get("after_mixed_shapes"):
        x = d["after_mixed_shapes"]
        L += [
            "",
            f"The same shipped file after it has run batch sizes 32, 1, 7 and 3 (TorchScript's profiling executor "
            f"re-specializes): int8 p50 {x['int8_p50_ms']:.3f} ms, speedup {x['speedup']:.2f}x. Every timing here and in the "
            "flow's benchmark task therefore uses a freshly loaded copy per batch size, as a server loading the model sees it.",
        ]
    p = r.get("pt2e") or {}
    if p.get("rows"):
        info = p.get("info", {})
        L += [
            "",
            "## c2. Peer: torchao PT2E + torch.compile (ResNet-18, batch 1)",
            "",
            f"{info.get('quantizer')}, Inductor freezing on; convert {info.get('convert_s', 0):.1f} s, first compile "
            f"{info.get('compile_s', 0):.1f} s. Static-shape export: timed at batch 1 only, interleaved with the shipped int8.",
            "",
            "| threads | iters | shipped int8 p50 (ms) | PT2E int8 p50 (ms) | PT2E / shipped (>1: shipped faster) |",
            "|---|---|---|---|---|",
        ]
        for x in p["rows"]:
            L.append(
                f"| {x['threads']} | {x['iterations']} | {x['torch_int8_p50_ms']:.2f} | {x['pt2e_int8_p50_ms']:.2f} | "
                f"**{x['pt2e_over_torch_int8']:.2f}** |"
            )
    o = r.get("overhead")
    if o:
        L += [
            "",
            "## f. Pipeline overhead (convert_flow on the demo model, warm ephemeral Prefect API)",
            "",
            f"Training + API start: {o['train_and_api_start_s']:.1f} s (not counted). Overhead = flow wall time "
            "minus the summed run time of its tasks (the tasks include MLflow logging). Target: ≤ 3 s per run.",
            "",
            "| run | wall (s) | tasks (s) | overhead (s) | flow speedup | standalone speedup (median of 3) | difference |",
            "|---|---|---|---|---|---|---|",
        ]
        for x in o["runs"]:
            L.append(
                f"| {x['run']} | {x['wall_s']:.2f} | {x['tasks_s']:.2f} | **{x['overhead_s']:.2f}** | {x['flow_speedup']:.2f}x | "
                f"{x.get('standalone_speedup', float('nan')):.2f}x ({', '.join(f'{v:.2f}' for v in x.get('standalone_speedups', []))}) | "
                f"{100 * x.get('deviation', float('nan')):.1f}% |"
            )
        L += [
            "",
            "Standalone: the same float model and the run's shipped int8 model loaded from the registry outside "
            "any flow, timed as the flow times them (interleaved, median pair ratio) three times. Largest difference "
            f"between the flow's reported speedup and the standalone one: **{100 * o['flow_vs_standalone']:.1f}%** "
            "(target ≤ 10%).",
        ]
        slowest = sorted(o["runs"][-1]["per_task_s"].items(), key=lambda kv: -kv[1])[:6]
        L += ["", "Slowest tasks of the last run: " + ", ".join(f"{k} {v:.2f} s" for k, v in slowest) + "."]
    other = {k: e for k, e in r["errors"].items() if not k.startswith("onnxruntime")}
    if other:
        L += ["", "## Errors", ""] + [f"- {k}: `{e}`" for k, e in other.items()]
    minilm = HERE / "MINILM.md"
    if minilm.exists():  # the real pretrained transformer (python -m bench.minilm, hf + bench extras)
        L += ["", *("#" + line if line.startswith("# ") else line for line in minilm.read_text().splitlines())]
    engines = HERE / "ENGINES.md"
    if engines.exists():  # the PT2E engine column beside FX (python -m bench.engines)
        L += ["", *("#" + line if line.startswith("#") else line for line in engines.read_text().splitlines())]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
