"""Sensitivity stage: per-layer weight/activation SQNR (the engine's numeric comparison), as table and chart."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from quantstage.quant.data.sources import Dataset
from quantstage.quant.engines import get_engine
from quantstage.quant.measure.sensitivity import LayerSensitivity, sensitivity_chart, sensitivity_table
from quantstage.quant.quantize import Quantized
from quantstage.tasks._common import run_logger
from quantstage.tasks._gate import gated
from quantstage.tasks.report import artifact_key

__all__ = ["analyze_sensitivity"]


@task(name="analyze_sensitivity", cache_policy=NO_CACHE)
@gated("exclusive")  # the numeric suite traces the model
def analyze_sensitivity(
    quantized: Quantized, dataset: Dataset, out_dir: str, name: str, batches: int = 4
) -> tuple[list[LayerSensitivity], str | None]:
    """Rank layers by quantization error, worst first; write the PNG chart; publish a Prefect table.
    Needs the whole model's prepared form: on the submodule path there is none (empty result)."""
    logger = run_logger()
    if quantized.prepared is None:
        logger.info("per-layer sensitivity needs a whole-model trace; the model was quantized by submodules")
        return [], None
    logger.info("per-layer sensitivity on %d calibration batches", min(batches, len(dataset.calibration)))
    try:
        layers = get_engine(quantized.engine).sensitivity(
            quantized.prepared, quantized.model, dataset.calibration, batches
        )
    except Exception as exc:  # diagnostics must not block a conversion that is otherwise fine
        logger.warning("per-layer sensitivity is unavailable for this model: %s", str(exc).splitlines()[0])
        return [], None
    if not layers:
        return [], None
    chart = sensitivity_chart(layers, Path(out_dir) / "sensitivity" / "sensitivity.png")
    table = sensitivity_table(layers)
    rows = [dict(zip(table, values)) for values in zip(*table.values())]
    create_table_artifact(
        table=rows, key=f"sensitivity-{artifact_key(name)}", description=f"per-layer SQNR of {name}, worst first"
    )
    worst = layers[0]
    logger.info(
        "most sensitive layer: %s (%s), activation SQNR %s dB, weight SQNR %s dB",
        worst.name,
        worst.op,
        worst.activation_sqnr_db,
        worst.weight_sqnr_db,
    )
    return layers, str(chart)
