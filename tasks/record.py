"""What a conversion puts in MLflow, built in one place from what it measured (pure: no I/O).

``conversion_record`` turns the results of one conversion unit into the run's params, metrics,
documents, tables and files; ``conversion_metrics`` the metric set alone (gates and ranking
read it); ``lineage`` the tags of a registry version. ``tasks.log_model`` logs a record,
``tasks.publish`` registers with the lineage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from quantstage.quant.data.inputs import batch_len
from quantstage.quant.data.sources import Dataset, DataSpec
from quantstage.quant.engines import QuantSpec
from quantstage.quant.measure.benchmark import BenchmarkReport, benchmark_table
from quantstage.quant.measure.coverage import Coverage
from quantstage.quant.measure.evaluate import AccuracyReport
from quantstage.quant.measure.gates import GateResult
from quantstage.quant.measure.sensitivity import LayerSensitivity, sensitivity_table
from quantstage.quant.quantize import Quantized
from quantstage.quant.search.engines import EngineChoice, engines_table
from quantstage.quant.ship.shipped import VariantResult

__all__ = ["ConversionRecord", "conversion_metrics", "conversion_record", "lineage"]


@dataclasses.dataclass
class ConversionRecord:
    """Everything one conversion logs to its MLflow run (the shipped model aside)."""

    params: dict[str, str]
    metrics: dict[str, float]
    documents: dict[str, str]  # artifact path -> text
    json_documents: dict[str, Any]  # artifact path -> JSON-able data
    tables: dict[str, dict[str, list[Any]]]  # artifact path -> columns (MLflow tables)
    files: dict[str, str]  # local path -> artifact folder


def conversion_metrics(
    accuracy: AccuracyReport, benchmarks: Sequence[BenchmarkReport], gates: Sequence[GateResult], coverage: Coverage
) -> dict[str, float]:
    """Accuracy, the headline benchmark (the first configuration), the other configurations'
    latencies (``<metric>_bs<batch>_t<threads>``), peak memory, gate verdicts and coverage."""
    metrics = accuracy.as_metrics() | benchmarks[0].as_metrics()
    for b in benchmarks[1:]:
        metrics |= {f"{k}_bs{b.batch_size}_t{b.threads}": v for k, v in b.latency_metrics().items()}
    if benchmarks[0].peak_rss_mib is not None:
        metrics["peak_rss_mib"] = benchmarks[0].peak_rss_mib
    metrics |= {f"gate.{g.name}.passed": float(g.passed) for g in gates}
    metrics["gates_passed"] = float(all(g.passed for g in gates))
    metrics |= {"quantized_layers": float(coverage.quantized_count), "quantized_fraction": coverage.quantized_fraction}
    return metrics


def _compile_metrics(quantized: Quantized) -> dict[str, float]:
    """``compile_s``: the ahead-of-time compile of a lowered model that has one (PT2E's AOTInductor package)."""
    seconds = getattr(quantized.model, "compile_s", None)
    return {"compile_s": float(seconds)} if isinstance(seconds, (int, float)) else {}


def _code_documents(quantized: Quantized) -> dict[str, str]:
    """The generated code of the shipped model and of the reference model, one file per part."""
    if quantized.tracing == "whole":
        return {"code/quantized.py": quantized.code()[""], "reference/reference.py": quantized.reference_code()[""]}
    documents = {f"code/submodules/{path}.py": code for path, code in quantized.code().items()}
    documents |= {f"reference/submodules/{path}.py": code for path, code in quantized.reference_code().items()}
    return documents


def _variants_table(variants: Sequence[VariantResult]) -> dict[str, list[Any]]:
    return {k: [getattr(v, k) for v in variants] for k in ("name", "p50_ms", "max_abs_diff", "matches", "shippable")}


def _engine_params(engines: EngineChoice | None) -> dict[str, str]:
    """The race's verdict as params: the engine requested (auto), the one chosen, and why."""
    if engines is None:
        return {}
    return {"engine.requested": "auto", "engine.chosen": engines.chosen, "engine.why": engines.why[:500]}


def conversion_record(
    *,
    spec: QuantSpec,
    quantized: Quantized,
    accuracy: AccuracyReport,
    benchmarks: Sequence[BenchmarkReport],
    gates: Sequence[GateResult],
    dataset: Dataset,
    data: DataSpec,
    source_label: str,
    source_version: str | None,
    shipped_as: str,
    report: str,
    variants: Sequence[VariantResult] = (),
    sensitivity: Sequence[LayerSensitivity] = (),
    machine: Mapping[str, Any] | None = None,
    files: Mapping[str, str] | None = None,
    extra_params: Mapping[str, str] | None = None,
    extra_metrics: Mapping[str, float] | None = None,
    documents: Mapping[str, str] | None = None,
    engines: EngineChoice | None = None,
) -> ConversionRecord:
    """The MLflow record of one conversion (see the module docstring); ``engines``: the engine race of an auto
    spec (``engines.json``, ``engine.chosen``)."""
    tracing = quantized.tracing + (f" ({quantized.reason[:200]})" if quantized.tracing == "submodules" else "")
    params = {
        **spec.as_params(),
        "source_uri": source_label,
        "source_version": source_version or "",
        "resolved.tracing": tracing,
        "resolved.engine": quantized.engine,
        "data.source": data.source,
        "data.evaluation_source": data.evaluation_source or "",
        "data.batch_size": str(batch_len(dataset.evaluation[0][0])),
        "data.inputs": dataset.describe()[:500],
        "export.method": shipped_as,
        **{f"machine.{k}": str(v) for k, v in (machine or {}).items()},
        **(extra_params or {}),
        **_engine_params(engines),
    }
    tables = {
        "benchmark/latency.json": benchmark_table(benchmarks),
        "export/variants.json": _variants_table(variants),
        "coverage/coverage.json": quantized.coverage.as_table(),
        "sensitivity/sensitivity.json": sensitivity_table(sensitivity),
        **({"engines.json": engines_table(engines.rows)} if engines is not None else {}),
    }
    return ConversionRecord(
        params=params,
        metrics=conversion_metrics(accuracy, benchmarks, gates, quantized.coverage)
        | _compile_metrics(quantized)
        | dict(extra_metrics or {}),
        documents={"report.md": report, "spec.json": spec.to_json(), **_code_documents(quantized), **(documents or {})},
        json_documents={"gates.json": [g.as_dict() for g in gates]},
        tables=tables,
        files=dict(files or {}),
    )


def lineage(
    *,
    source_label: str,
    source_name: str | None,
    source_version: str | None,
    source_run_id: str | None,
    spec: QuantSpec,
    passed: bool,
    run_id: str,
    flow_run_id: str,
    idempotency_key: str,
    eval_digest: str,
    promote_if: str,
    flow_run_url: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The lineage tags of a registry version (see the README: *Idempotent runs and trusted promotion*)."""
    tags = {
        "source_uri": source_label,
        "source_name": source_name or "",
        "source_version": source_version or "",
        "source_run_id": source_run_id or "",
        "spec_hash": spec.digest(),
        "backend": spec.backend,
        "mode": spec.mode,
        "engine": spec.engine,
        "gates_passed": str(passed).lower(),
        "flow_run_id": flow_run_id,
        "mlflow_run_id": run_id,
        "idempotency_key": idempotency_key,
        "eval_digest": eval_digest,
        "promote_if": promote_if,
        **(extra or {}),
    }
    if flow_run_url:
        tags["flow_run_url"] = flow_run_url
    return tags
