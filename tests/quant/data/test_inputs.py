"""check_inputs_fit: a batch that does not fit the model's forward is named with its shapes."""

import pytest
import torch

from quantstage.quant.data.inputs import check_inputs_fit
from quantstage.quant.data.sources import Dataset
from quantstage.quant.errors import DataError
from tests.quant.helpers import toy_model

pytestmark = [
    pytest.mark.usefixtures("restore_torch_state"),
]


def test_check_inputs_fit_accepts_the_right_shape(data: Dataset) -> None:
    output = check_inputs_fit(toy_model("cnn"), data.example_inputs)  # what forward returned: its output is read next
    assert isinstance(output, torch.Tensor) and output.shape == (data.example_inputs[0].shape[0], 10)


@pytest.mark.parametrize(
    ("kind", "inputs", "shape"),
    [
        ("cnn", (torch.rand(4, 3, 8, 8),), r"\(4, 3, 8, 8\)"),
        ("mlp", (torch.rand(4, 1, 6, 6),), r"\(4, 1, 6, 6\)"),
        ("cnn", (torch.rand(4, 1, 8, 8), "extra"), r"\(4, 1, 8, 8\), str"),
    ],
    ids=["cnn-channels", "mlp-features", "extra-arg"],
)
def test_check_inputs_fit_names_the_shapes(kind: str, inputs: tuple, shape: str) -> None:
    model = toy_model(kind)
    with pytest.raises(
        DataError,
        match=rf"data batch of shape {shape} does not fit {type(model).__name__}\.forward: .*; fix: give data",
    ):
        check_inputs_fit(model, inputs)
