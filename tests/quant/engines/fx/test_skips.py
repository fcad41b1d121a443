"""find_unused_skips / check_skips: skips (qconfig null) that match nothing in the traced model."""

from __future__ import annotations

import logging
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantstage.quant.engines import FxSpec, QuantSpec
from quantstage.quant.engines.base import UnusedSkip
from quantstage.quant.engines.fx.prepare import prepare
from quantstage.quant.engines.fx.skips import check_skips, find_unused_skips
from quantstage.quant.errors import SpecError
from tests.models import SmallCNN as BaseCNN


class SmallCNN(BaseCNN):
    """SmallCNN, then F.linear and torch.add, plus a Linear forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Parameter(torch.randn(10, 10))
        self.spare = nn.Linear(4, 4)  # never called by forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.features(x))
        return torch.add(F.linear(y, self.proj), y)


@pytest.fixture(autouse=True)
def _restore_engine():
    engine = torch.backends.quantized.engine
    yield
    torch.backends.quantized.engine = engine


def _unused(*overrides: dict, preset: str = "static", **spec_fields) -> list[UnusedSkip]:
    spec = FxSpec(qconfig_mapping={"preset": preset, "overrides": list(overrides)}, **spec_fields)
    model = SmallCNN().eval()
    return find_unused_skips(model, prepare(model, (torch.randn(2, 1, 8, 8),), spec), spec)


def _skip(kind: str, key: str, **extra) -> dict:
    return {"set": kind, "key": key, "qconfig": None, **extra}


def _prepared(spec: QuantSpec) -> tuple[nn.Module, torch.fx.GraphModule]:
    model = SmallCNN().eval()
    return model, prepare(model, (torch.randn(2, 1, 8, 8),), spec)


# --------------------------------------------------------------------------- used skips


def test_used_skips_are_not_reported() -> None:
    unused = _unused(
        _skip("module_name", "head"),  # a container: matches the nodes under it
        _skip("module_name_regex", r"features\.[03]"),
        _skip("module_name_regex", r".*\.3"),
        _skip("object_type", "torch.nn.Linear"),
        _skip("object_type", "torch.ao.nn.intrinsic.ConvReLU2d"),  # only exists after fusion
        _skip("object_type", "torch.nn.functional.linear"),
        _skip("object_type", "torch.add"),
        _skip("module_name_object_type_order", "head", object_type="torch.nn.Linear", index=1),
        _skip("module_name_object_type_order", "", object_type="torch.add", index=0),
        skip_modules=("features.3",),
        skip_object_types=("torch.nn.Conv2d",),
    )
    assert unused == []


def test_used_skips_in_dynamic_and_qat_modes() -> None:
    for mode in ("dynamic", "qat"):
        assert (
            _unused(
                _skip("module_name_object_type_order", "head", object_type="torch.nn.Linear", index=0),
                preset=mode,
                mode=mode,
                skip_modules=("head.3",),
                skip_object_types=("torch.nn.Linear", "torch.nn.Conv2d"),
            )
            == []
        ), mode


# --------------------------------------------------------------------------- unused skips


def test_unused_module_name_suggests_nearest() -> None:
    (unused,) = _unused(_skip("module_name", "head.fc"))
    assert (unused.kind, unused.key) == ("module_name", "head.fc")
    assert unused.message.startswith("skip module_name 'head.fc' matches no module of SmallCNN; did you mean 'head.")
    assert "(nearest names: " in unused.message


def test_skip_modules_shorthand_is_checked() -> None:
    (unused,) = _unused(skip_modules=("features.O",))  # letter O for zero
    assert unused.message.startswith(
        "skip module_name 'features.O' matches no module of SmallCNN; did you mean 'features.0'?"
    )


def test_module_fused_away_or_never_called_is_reported() -> None:
    fused, spare = _unused(_skip("module_name", "features.1"), _skip("module_name", "spare"))
    assert "fused into 'features.0'" in fused.message and "did you mean 'features.0'?" in fused.message
    assert "forward never calls" in spare.message
    (root,) = _unused(_skip("module_name", ""))
    assert "preset 'none'" in root.message


def test_unused_regex() -> None:
    typo, unanchored = _unused(_skip("module_name_regex", r"heads\..*"), _skip("module_name_regex", "3"))
    assert typo.kind == "module_name_regex" and typo.key == r"heads\..*"
    assert "matches no module name of SmallCNN" in typo.message and "did you mean 'head." in typo.message
    # torch anchors with re.match: '3' matches no path from its start, but is inside 'features.3'
    assert "it matches inside 'features.3'" in unanchored.message and "'.*3'" in unanchored.message


def test_unused_object_type_suggests_present_types() -> None:
    conv, add = _unused(_skip("object_type", "torch.nn.Conv1d"), _skip("object_type", "operator.add"))
    assert conv.message.startswith(
        "skip object_type 'torch.nn.Conv1d' matches no module, function or method call in the traced "
        "graph of SmallCNN; did you mean 'torch.nn.Conv2d'?"
    )
    assert add.key == "operator.add" and "did you mean 'torch.add'?" in add.message


def test_unused_module_name_object_type_order() -> None:
    too_far, wrong_type, not_a_module = _unused(
        _skip("module_name_object_type_order", "head", object_type="torch.nn.Linear", index=2),
        _skip("module_name_object_type_order", "head", object_type="torch.nn.Conv2d", index=0),
        _skip("module_name_object_type_order", "heads", object_type="torch.nn.Linear", index=0),
    )
    assert (too_far.kind, too_far.key, too_far.object_type, too_far.index) == (
        "module_name_object_type_order",
        "head",
        "torch.nn.Linear",
        2,
    )
    assert "module 'head' calls torch.nn.Linear 2 time(s) (index 0..1)" in too_far.message
    assert "never calls torch.nn.Conv2d directly (it calls: torch.nn.Flatten, torch.nn.Linear)" in wrong_type.message
    assert "'heads' is not a module path; did you mean 'head'?" in not_a_module.message


def test_convert_time_skips_are_checked_once() -> None:
    spec = FxSpec(
        skip_modules=("head.9",),
        convert_qconfig_mapping={
            "preset": "static",
            "overrides": [_skip("module_name", "head.9"), _skip("module_name", "features.7")],
        },
    )
    model, prepared = _prepared(spec)
    unused = find_unused_skips(model, prepared, spec)
    assert [(u.key, u.message.split(" module_name")[0]) for u in unused] == [
        ("head.9", "skip"),
        ("features.7", "convert-time skip"),
    ]


# --------------------------------------------------------------------------- check_skips


def test_check_skips_strict_raises_with_every_message() -> None:
    spec = FxSpec(
        strict_skips=True,
        skip_modules=("head.fc",),
        skip_object_types=("torch.nn.Conv1d",),
    )
    model, prepared = _prepared(spec)
    with pytest.raises(SpecError, match=r"2 skip\(s\) match nothing in the traced SmallCNN") as info:
        check_skips(model, prepared, spec)
    message = str(info.value)
    assert "skip module_name 'head.fc' matches no module of SmallCNN; did you mean 'head." in message
    assert "skip object_type 'torch.nn.Conv1d'" in message and "did you mean 'torch.nn.Conv2d'?" in message
    assert "strict_skips: false" in message


def test_check_skips_strict_regex_and_order() -> None:
    spec = FxSpec(
        strict_skips=True,
        qconfig_mapping={
            "preset": "static",
            "overrides": [
                _skip("module_name_regex", r"heads\..*"),
                _skip("module_name_object_type_order", "head", object_type="torch.nn.Linear", index=5),
            ],
        },
    )
    model, prepared = _prepared(spec)
    with pytest.raises(SpecError, match=re.escape(r"skip module_name_regex 'heads\\..*' matches no module name")):
        check_skips(model, prepared, spec)


def test_check_skips_warns_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    spec = FxSpec(skip_modules=("head.fc",))
    model, prepared = _prepared(spec)
    with caplog.at_level(logging.WARNING, logger="quantstage.quant.engines.fx.skips"):
        with pytest.warns(
            UserWarning, match=r"skip module_name 'head\.fc' matches no module of SmallCNN; did you mean"
        ):
            unused = check_skips(model, prepared, spec)
    assert [u.key for u in unused] == ["head.fc"]
    assert [r.getMessage() for r in caplog.records if r.name == "quantstage.quant.engines.fx.skips"] == [
        unused[0].message
    ]


def test_check_skips_silent_when_all_used() -> None:
    spec = FxSpec(strict_skips=True, skip_modules=("head.3",), skip_object_types=("torch.add",))
    model, prepared = _prepared(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_skips(model, prepared, spec) == []
