"""Sensitivity (FX numeric suite) and the accuracy-aware fallback on a model made sensitive on purpose."""

import pytest
import torch
from torch import nn

from quantstage.quant.calibrate import calibrate
from quantstage.quant.data.sources import Dataset
from quantstage.quant.engines import FxSpec
from quantstage.quant.engines.fx.convert import convert
from quantstage.quant.engines.fx.prepare import prepare
from quantstage.quant.engines.fx.sensitivity import layer_sensitivity
from quantstage.quant.measure.gates import GatesConfig
from quantstage.quant.measure.sensitivity import sensitivity_chart, sensitivity_table
from quantstage.quant.search.fallback import (
    FallbackConfig,
    Trial,
    convert_and_check,
    search_fallback,
    spec_with_float_layers,
)

DEPTH = 8
SENSITIVE = "layers.3"


class DeepMLP(nn.Module):
    """Eight Linear+ReLU layers; ``layers.3`` is made sensitive on purpose.

    Its input channel 0 is always 0 (the previous layer's unit 0 is dead), but its weight
    column 0 is huge: per-channel int8 then spends every level on that column and rounds
    the small weights that carry the signal to zero.
    """

    def __init__(self, width: int = 32, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(16, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(DEPTH - 2))
        self.out = nn.Linear(width, classes)
        with torch.no_grad():
            for layer in self.layers:
                layer.weight.mul_(2.0)  # keep activations from vanishing through the depth
            previous = self.layers[2]
            previous.weight[0].zero_()
            previous.bias[0] = -1.0  # unit 0 of layers.2 is always 0 after ReLU
            self.layers[3].weight[:, 0] = 500.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.inp(x))
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.out(x)


def _dataset(model: nn.Module) -> Dataset:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(512, 16, generator=generator)
    with torch.no_grad():
        y = model(x).argmax(-1)  # labels the float model gets right by construction
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 512, 64)]
    return Dataset(calibration=batches[:4], evaluation=batches[4:])


@pytest.fixture(scope="module")
def sensitive() -> tuple[nn.Module, Dataset]:
    model = DeepMLP().eval()
    return model, _dataset(model)


SPEC = FxSpec(backend="x86", calibration_batches=4)
GATES = GatesConfig(max_accuracy_drop=0.05)


def test_full_int8_fails_the_gate(sensitive) -> None:
    model, data = sensitive
    trial, _ = convert_and_check(model, data, SPEC, GATES)
    assert not trial.passed, f"the sensitive model should fail at full int8: {trial.metrics}"
    assert trial.accuracy_drop > 0.1


def test_sensitivity_ranks_the_sensitive_layer_first(sensitive, tmp_path) -> None:
    model, data = sensitive
    prepared = prepare(model, data.example_inputs, SPEC)
    calibrate(prepared, data.calibration, max_batches=4)
    layers = layer_sensitivity(prepared, convert(prepared), data.calibration)
    assert layers[0].name == SENSITIVE, [(layer.name, layer.score) for layer in layers]
    others = [layer.score for layer in layers[1:] if layer.name.startswith(("layers", "inp", "out"))]
    assert layers[0].activation_sqnr_db < min(others) - 10, layers
    table = sensitivity_table(layers)
    assert table["layer"][0] == SENSITIVE and len(table["layer"]) == len(layers)
    chart = sensitivity_chart(layers, tmp_path / "sensitivity.png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fallback_finds_the_layer_with_few_evaluations(sensitive) -> None:
    model, data = sensitive
    prepared = prepare(model, data.example_inputs, SPEC)
    calibrate(prepared, data.calibration, max_batches=4)
    ranking = [layer.name for layer in layer_sensitivity(prepared, convert(prepared), data.calibration)]

    def evaluate(float_layers: tuple[str, ...]) -> Trial:
        return convert_and_check(model, data, SPEC, GATES, float_layers)[0]

    result = search_fallback(ranking, evaluate, FallbackConfig(enabled=True, max_float_layers=4, max_evaluations=8))
    assert result.chosen is not None and result.chosen.passed
    assert result.chosen.float_layers == (SENSITIVE,)
    assert result.evaluations < DEPTH, f"{result.evaluations} evaluations for {DEPTH} layers"
    # the chosen set, written back as a plain spec, reproduces the result without searching
    replay, _ = convert_and_check(model, data, spec_with_float_layers(SPEC, result.chosen.float_layers), GATES)
    assert replay.passed and replay.metrics == result.chosen.metrics


def _scripted(passing: set[frozenset[str]]):
    calls: list[tuple[str, ...]] = []

    def evaluate(layers: tuple[str, ...]) -> Trial:
        calls.append(layers)
        ok = any(p <= set(layers) for p in passing)
        return Trial(layers, ok, {"accuracy_drop": 0.0 if ok else 0.5 - 0.01 * len(layers)})

    return calls, evaluate


@pytest.mark.parametrize(
    ("needed", "expected"),
    [({"a"}, ("a",)), ({"c"}, ("c",)), ({"a", "c"}, ("a", "c")), ({"b", "d"}, ("b", "d"))],
    ids=["first", "third", "first-and-third", "second-and-fourth"],
)
def test_search_bisects_then_prunes(needed: set[str], expected: tuple[str, ...]) -> None:
    calls, evaluate = _scripted({frozenset(needed)})
    result = search_fallback(
        list("abcdefgh"), evaluate, FallbackConfig(enabled=True, max_float_layers=6, max_evaluations=10)
    )
    assert result.chosen is not None and result.chosen.float_layers == expected
    assert len(calls) == len(set(calls)), "no trial is evaluated twice"
    assert result.evaluations < 8


def test_search_gives_up_within_limits_and_reports_best() -> None:
    calls, evaluate = _scripted({frozenset("g")})  # needs a layer beyond max_float_layers
    result = search_fallback(
        list("abcdefgh"), evaluate, FallbackConfig(enabled=True, max_float_layers=3, max_evaluations=5)
    )
    assert result.chosen is None and result.evaluations == 1
    assert result.best is not None and result.best.float_layers == ("a", "b", "c")


def test_search_respects_evaluation_budget() -> None:
    calls, evaluate = _scripted({frozenset("e")})
    result = search_fallback(
        list("abcdefgh"), evaluate, FallbackConfig(enabled=True, max_float_layers=8, max_evaluations=2)
    )
    assert result.evaluations == 2
    assert result.chosen is not None and result.chosen.passed  # the passing prefix found so far
