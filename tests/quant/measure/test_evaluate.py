"""sqnr_db on known values; evaluate: exact accuracy, agreement, SQNR, the task metrics, user metrics."""

import math

import pytest
import torch
from torch import nn

from quantstage.quant.measure.evaluate import EvaluationSpec, evaluate, sqnr_db
from tests.quant.helpers import SEED


class Scale(nn.Module):
    """Multiplies the logits column-wise: lets a test choose the argmax it wants."""

    def __init__(self, factors: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("factors", factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factors


@pytest.mark.parametrize(
    ("amplitude", "expected"),
    [(1.0, 0.0), (0.1, 20.0), (0.01, 40.0), (10.0, -20.0)],
    ids=["0dB", "20dB", "40dB", "-20dB"],
)
def test_sqnr_db_known_values(amplitude: float, expected: float) -> None:
    torch.manual_seed(SEED)
    reference = torch.randn(1000)
    noise = torch.randn(1000)
    noise = noise * (reference.norm() / noise.norm()) * amplitude
    assert sqnr_db(reference, reference + noise) == pytest.approx(expected, abs=1e-3)


def test_sqnr_db_edge_cases() -> None:
    x = torch.randn(10)
    assert sqnr_db(x, x.clone()) == math.inf
    assert sqnr_db(torch.zeros(4), torch.zeros(4)) == math.inf
    assert sqnr_db(torch.zeros(4), torch.ones(4)) == -math.inf
    assert sqnr_db(torch.ones(4, dtype=torch.float64), torch.ones(4, dtype=torch.float16) * 1.1) == pytest.approx(
        20.0, abs=0.1
    )


def _logit_batches(rows: list[list[float]], targets: list[int] | None, batch_size: int = 2) -> list:
    x = torch.tensor(rows)
    y = torch.tensor(targets) if targets is not None else None
    return [
        (x[i : i + batch_size], y[i : i + batch_size] if y is not None else None)
        for i in range(0, len(rows), batch_size)
    ]


ROWS = [[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 4.0], [5.0, 4.5, 0.0]]


QUANT_FACTORS = torch.tensor([1.0, 4.0, 2.0])  # argmax rows become 1, 1, 2, 1


def test_evaluate_identity_models() -> None:
    report = evaluate(nn.Identity(), nn.Identity(), _logit_batches(ROWS, [0, 1, 2, 0]))
    assert report.samples == 4
    assert report.agreement == 1.0
    assert report.sqnr_db == math.inf
    assert report.float_accuracy == 1.0 and report.quant_accuracy == 1.0
    assert report.accuracy_drop == 0.0


def test_evaluate_exact_accuracy_and_agreement() -> None:
    # The "quantized" model scales the columns by 1, 4, 2: rows 0 and 3 now predict 1, not 0.
    quant_model = Scale(QUANT_FACTORS)
    batches = _logit_batches(ROWS, [0, 1, 1, 0])
    report = evaluate(nn.Identity(), quant_model, batches)
    assert report.samples == 4
    assert report.float_accuracy == 0.75  # predicts 0, 1, 2, 0 against 0, 1, 1, 0
    assert report.quant_accuracy == 0.25  # predicts 1, 1, 2, 1
    assert report.agreement == 0.5
    assert report.accuracy_drop == 0.5
    x = torch.tensor(ROWS)
    assert report.sqnr_db == pytest.approx(sqnr_db(x, quant_model(x)))
    assert report.as_metrics() == {
        "agreement": 0.5,
        "output_sqnr_db": report.sqnr_db,
        "float_accuracy": 0.75,
        "int8_accuracy": 0.25,
        "accuracy_drop": 0.5,
        # 3 classes: top-5 holds every label
        "float_top5_accuracy": 1.0,
        "int8_top5_accuracy": 1.0,
    }
    top2 = evaluate(nn.Identity(), quant_model, batches, EvaluationSpec(top_k=2)).as_metrics()
    assert top2["float_top2_accuracy"] >= top2["float_accuracy"]


def test_evaluate_regression_and_embedding_metrics() -> None:
    x = torch.randn(32, 8)
    batches = [(x[:16], x[:16]), (x[16:], x[16:])]  # targets = the float outputs
    noisy = Scale(torch.full((8,), 1.01))
    regression = evaluate(nn.Identity(), noisy, batches, EvaluationSpec(task="regression")).as_metrics()
    assert regression["float_mse"] == 0.0
    assert regression["int8_mse"] == pytest.approx(regression["output_mse"])
    assert regression["cosine_similarity"] == pytest.approx(1.0)
    assert "agreement" not in regression and "float_accuracy" not in regression
    embedding = evaluate(nn.Identity(), noisy, [(x, None)], EvaluationSpec(task="embedding")).as_metrics()
    assert set(embedding) == {
        "output_sqnr_db",
        "output_mse",
        "cosine_similarity",
        "embedding_cosine_mean",
        "embedding_cosine_min",
        "embedding_sqnr_db",
    }
    assert embedding["output_sqnr_db"] == pytest.approx(40.0, abs=0.1)  # 1% amplitude error
    assert embedding["embedding_sqnr_db"] == pytest.approx(40.0, abs=0.1)  # (batch, hidden): compared as they are
    assert embedding["embedding_cosine_min"] <= embedding["embedding_cosine_mean"] <= 1.0


def max_abs_error(f: torch.Tensor, q: torch.Tensor, y) -> float:
    return (f - q).abs().max().item()


def test_evaluate_user_metric() -> None:
    x = torch.randn(8, 3)
    spec = EvaluationSpec(task="embedding", metric="tests.quant.measure.test_evaluate:max_abs_error")
    metrics = evaluate(nn.Identity(), Scale(torch.full((3,), 2.0)), [(x, None)], spec).as_metrics()
    assert metrics["metric.max_abs_error"] == pytest.approx(x.abs().max().item())
    with pytest.raises(ValueError, match=r"metric 'nope' must be 'module:function'"):
        EvaluationSpec(metric="nope")


def test_evaluate_without_targets() -> None:
    report = evaluate(nn.Identity(), Scale(QUANT_FACTORS), _logit_batches(ROWS, None))
    assert report.float_accuracy is None
    assert report.quant_accuracy is None
    assert report.accuracy_drop is None
    assert report.agreement == 0.5
    assert set(report.as_metrics()) == {"agreement", "output_sqnr_db"}


def test_evaluate_partly_labelled_counts_as_unlabelled() -> None:
    batches = _logit_batches(ROWS, [0, 1, 2, 0])
    batches[1] = (batches[1][0], None)
    report = evaluate(nn.Identity(), nn.Identity(), batches)
    assert report.float_accuracy is None and report.quant_accuracy is None
