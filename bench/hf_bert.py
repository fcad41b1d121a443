"""The largest real model run through ``tracing: auto``: Hugging Face ``BertModel`` (transformers,
bert-base configuration, random weights — no download), dynamic int8 by submodules.

    .venv/bin/pip install transformers && .venv/bin/python -m bench.hf_bert

Prints the tracing path, the Linear coverage, the modules left float, SQNR against float on the
last hidden state, latency float vs int8 (1 thread, batch 1, seq 128, interleaved) and sizes.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import torch

from quantstage.quant.engines import FxSpec
from quantstage.quant.measure.benchmark import benchmark, serialized_size
from quantstage.quant.measure.evaluate import sqnr_db
from quantstage.quant.quantize import quantize
from quantstage.quant.tracing import SubmoduleCoverage


class LastHidden(torch.nn.Module):
    """BertModel returning its last hidden state as a tensor (what a serving graph consumes)."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def main() -> int:
    warnings.filterwarnings("ignore")
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    size = sys.argv[1] if len(sys.argv) > 1 else "base"
    config = (
        BertConfig()
        if size == "base"
        else BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
    )
    model = LastHidden(BertModel(config).eval()).eval()
    params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (1, 128), generator=g)
    mask = torch.ones(1, 128, dtype=torch.long)
    mask[:, 100:] = 0
    example = (ids, mask)
    t = time.perf_counter()
    result = quantize(model, FxSpec(mode="dynamic"), example_inputs=example)
    convert_s = time.perf_counter() - t
    with torch.no_grad():
        sqnr = sqnr_db(model(*example), result.model(*example))
    report = benchmark(model, result.model, example, iterations=30, warmup=3, num_threads=1)
    out = {
        "model": f"transformers BertModel ({size}: hidden {config.hidden_size}, {config.num_hidden_layers} layers)",
        "parameters": params,
        "tracing": result.tracing,
        "whole_model_error": result.reason[:200],
        "convert_s": round(convert_s, 1),
        "sqnr_db": round(sqnr, 1),
        "float_p50_ms": round(report.float_latency.p50_ms, 2),
        "int8_p50_ms": round(report.quant_latency.p50_ms, 2),
        "speedup": round(report.speedup, 2),
        "float_state_dict_mib": round(serialized_size(model) / 2**20, 1),
        "int8_state_dict_mib": round(serialized_size(result.model) / 2**20, 1),
    }
    cov = result.coverage
    if isinstance(cov, SubmoduleCoverage):
        out |= {
            "linear_conv_fraction": round(cov.quantized_fraction, 4),
            "quantized_submodules": cov.quantized_count,
            "left_float": len(cov.left_float),
            "float_time_share": cov.float_time_share,
            "first_left_float": [(r.path, r.reason[:120]) for r in cov.left_float[:3]],
        }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
