"""load_data on the digits source: shapes, counts, seeded splits; DataSpec's checks."""

import math

import pytest
import torch

from quantstage.quant.data.sources import Dataset, DataSpec, load_data


def test_load_data_shapes_and_counts(data: Dataset) -> None:
    for x, y in data.calibration + data.evaluation:
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8), x.shape
        assert y is not None and y.dtype == torch.long and y.shape == (x.shape[0],)
        assert 1 <= x.shape[0] <= 32
        assert 0.0 <= x.min().item() and x.max().item() <= 1.0
        assert 0 <= y.min().item() and y.max().item() <= 9
    assert sum(int(x.shape[0]) for x, _ in data.calibration) == 1347
    assert data.num_eval_samples == 450
    assert len(data.calibration) == math.ceil(1347 / 32)
    assert len(data.evaluation) == math.ceil(450 / 32)
    assert data.example_inputs[0].shape == (32, 1, 8, 8)
    assert torch.equal(data.example_inputs[0], data.evaluation[0][0])


def test_load_data_deterministic_per_seed(data: Dataset) -> None:
    again = load_data(DataSpec())
    other = load_data(DataSpec(seed=1))
    for (xa, ya), (xb, yb) in zip(
        data.calibration + data.evaluation, again.calibration + again.evaluation, strict=True
    ):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(data.calibration[0][0], other.calibration[0][0])


@pytest.mark.parametrize(
    ("spec", "calibration", "evaluation"),
    [
        (DataSpec(batch_size=100), 1347, 450),
        (DataSpec(test_fraction=0.5), 898, 899),
    ],
    ids=["batch-100", "half"],
)
def test_load_data_split_sizes(spec: DataSpec, calibration: int, evaluation: int) -> None:
    dataset = load_data(spec)
    assert sum(int(x.shape[0]) for x, _ in dataset.calibration) == calibration
    assert dataset.num_eval_samples == evaluation
    assert all(x.shape[0] <= spec.batch_size for x, _ in dataset.calibration + dataset.evaluation)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"source": "mnist"}, "source"),
        ({"sede": 1}, "sede"),
    ],
    ids=["batch_size", "test_fraction", "source", "extra"],
)
def test_data_spec_rejects(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DataSpec(**kwargs)
