"""Data lineage: which data calibrated and evaluated a conversion, recorded on its MLflow run."""

from __future__ import annotations

import warnings
from typing import Any

import mlflow
import numpy as np
from prefect import task

from quantstage.quant.data.inputs import args_of, batch_len
from quantstage.quant.data.sources import Batch, Dataset, DataSpec, batches_digest
from quantstage.tasks._common import IO_RETRIES

__all__ = ["log_data_lineage"]


def _split_dataset(batches: list[Batch], names: tuple[str, ...] | None, source: str, context: str) -> Any:
    """The split as an MLflow dataset: arrays when the batches concatenate, else a digest-only record."""
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.numpy_dataset import from_numpy

    try:
        columns = list(zip(*(args_of(x) for x, _ in batches)))
        arrays = [np.concatenate([t.detach().numpy() for t in column]) for column in columns]
        features = (
            arrays[0] if len(arrays) == 1 else dict(zip(names or [f"input_{i}" for i in range(len(arrays))], arrays))
        )
        labels = [y for _, y in batches if y is not None]
        targets = np.concatenate([y.numpy() for y in labels]) if len(labels) == len(batches) else None
        with warnings.catch_warnings():  # a file path resolves to two equivalent local sources
            warnings.filterwarnings(
                "ignore", message=r"The specified dataset source can be interpreted in multiple ways"
            )
            return from_numpy(features, targets=targets, source=source, name=f"{context}:{source}")  # type: ignore[arg-type]  # None: no targets
    except Exception:  # ragged batches or a source MLflow cannot resolve: keep name, digest and sizes
        origin = HTTPDatasetSource("https://quantstage.invalid/" + source)  # type: ignore[no-untyped-call]
        return MetaDataset(origin, name=f"{context}:{source}", digest=batches_digest(batches)[:8])  # type: ignore[abstract]


@task(name="log_data_lineage", **IO_RETRIES)
def log_data_lineage(run_id: str, dataset: Dataset, spec: DataSpec) -> None:
    """Record with ``log_inputs`` which data calibrated and evaluated the model: source, digest,
    sample and batch counts, input shapes, overlap between the splits. The run stays RUNNING."""
    from mlflow.entities import DatasetInput, InputTag

    client = mlflow.MlflowClient()
    inputs = []
    for context, batches in (("calibration", dataset.calibration), ("evaluation", dataset.evaluation)):
        source = spec.evaluation_source if context == "evaluation" and spec.evaluation_source else spec.source
        entity = _split_dataset(batches, dataset.input_names, source, context)._to_mlflow_entity()
        tags = {
            "mlflow.data.context": context,
            "source": source,
            "samples": str(sum(batch_len(x) for x, _ in batches)),
            "batches": str(len(batches)),
            "inputs": dataset.describe(),
            "seed": str(spec.seed),
        }
        inputs.append(DatasetInput(entity, [InputTag(k, v) for k, v in tags.items()]))
    client.log_inputs(run_id, datasets=inputs)
    client.set_tag(run_id, "data.digest", dataset.digest())
    client.set_tag(run_id, "data.overlap_samples", str(dataset.overlap))
