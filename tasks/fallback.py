"""Fallback stage: keep the most harmful layers float until the accuracy gates pass.

Every trial is an MLflow run nested under the conversion run (layers kept float, accuracy,
latency); the chosen configuration is written back as a plain spec file.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlflow
import torch
import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE

from quantstage.quant.data.sources import Dataset
from quantstage.quant.engines import QuantSpec
from quantstage.quant.measure.benchmark import benchmark
from quantstage.quant.measure.evaluate import EvaluationSpec
from quantstage.quant.measure.gates import GatesConfig
from quantstage.quant.search.fallback import (
    FallbackConfig,
    FallbackResult,
    Trial,
    convert_and_check,
    search_fallback,
    spec_with_float_layers,
)
from quantstage.tasks._common import run_logger
from quantstage.tasks._gate import gated

__all__ = ["search_float_layers"]


def _log_trial(client: mlflow.MlflowClient, experiment_id: str, run_id: str, number: int, trial: Trial) -> str:
    """One fallback trial as a finished MLflow run nested under ``run_id``; its id."""
    nested = client.create_run(
        experiment_id,
        run_name=f"fallback trial {number}: {len(trial.float_layers)} float layer(s)",
        tags={"mlflow.parentRunId": run_id, "quantstage.trial": str(number)},
    )
    client.log_param(nested.info.run_id, "float_layers", ",".join(trial.float_layers) or "(none)")
    client.log_param(nested.info.run_id, "num_float_layers", len(trial.float_layers))
    for key, value in trial.metrics.items():
        client.log_metric(nested.info.run_id, key, value)
    client.log_metric(nested.info.run_id, "passed", float(trial.passed))
    client.set_terminated(nested.info.run_id)
    return str(nested.info.run_id)


@task(name="search_float_layers", cache_policy=NO_CACHE)
@gated("exclusive")  # every trial prepares (traces) the model again
def search_float_layers(
    run_id: str,
    model: torch.nn.Module,
    dataset: Dataset,
    spec: QuantSpec,
    gates: GatesConfig,
    ranking: Sequence[str],
    config: FallbackConfig,
    evaluation: EvaluationSpec | None = None,
) -> tuple[FallbackResult, QuantSpec | None]:
    """Search for layers to keep float; log each trial as a nested run; return the result and chosen spec."""
    logger = run_logger()
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    example = dataset.example_inputs

    def evaluate(float_layers: tuple[str, ...]) -> Trial:
        trial, quantized = convert_and_check(model, dataset, spec, gates, float_layers, evaluation)
        latency = benchmark(model, quantized, example, iterations=20, warmup=3).quant_latency.p50_ms
        trial.metrics["int8_latency_p50_ms"] = latency
        trials_logged.append(_log_trial(client, experiment_id, run_id, len(trials_logged) + 1, trial))
        logger.info(
            "fallback trial %d: float %s -> accuracy drop %.4f, int8 p50 %.3f ms, %s",
            len(trials_logged),
            list(float_layers) or "none",
            trial.accuracy_drop,
            latency,
            "pass" if trial.passed else "fail",
        )
        return trial

    trials_logged: list[str] = []
    logger.info(
        "accuracy gate failed: searching up to %d float layers in at most %d evaluations over %d ranked layers",
        config.max_float_layers,
        config.max_evaluations,
        len(ranking),
    )
    result = search_fallback(ranking, evaluate, config)
    chosen_spec = spec_with_float_layers(spec, result.chosen.float_layers) if result.chosen else None
    client.log_metric(run_id, "fallback_evaluations", result.evaluations)
    if chosen_spec is not None:
        client.log_text(
            run_id,
            "# Spec chosen by the accuracy-aware fallback: reproduces the result without searching.\n"
            + yaml.safe_dump(chosen_spec.model_dump(mode="json"), sort_keys=False),
            "fallback/spec.yaml",
        )
    return result, chosen_spec
