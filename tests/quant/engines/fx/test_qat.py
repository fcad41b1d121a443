"""QAT checkpoints: saved safely, rebuilt exactly, refused clearly."""

import copy

import pytest
import torch

from quantstage.demo import DigitsCNN
from quantstage.quant.engines import FxSpec
from quantstage.quant.engines.fx import _torch as _fx
from quantstage.quant.engines.fx.convert import convert
from quantstage.quant.engines.fx.prepare import prepare
from quantstage.quant.engines.fx.qat import load_qat_checkpoint, save_qat_checkpoint
from quantstage.quant.errors import SpecError

SPEC = FxSpec(mode="qat", backend="fbgemm")


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = DigitsCNN(width=8).eval()
    x = torch.rand(16, 1, 8, 8)
    prepared = prepare(model, (x,), SPEC)
    optimizer = torch.optim.SGD(prepared.parameters(), lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        prepared(x).square().mean().backward()
        optimizer.step()
    return model, x, prepared.eval()


def test_round_trip_converts_like_convert_fx(trained, tmp_path) -> None:
    model, x, prepared = trained
    path = save_qat_checkpoint(prepared, SPEC, tmp_path / "qat.pt")
    rebuilt, spec = load_qat_checkpoint(path, model, (x,))
    assert spec == SPEC
    with _fx.fx_quiet():
        expected = _fx.convert_fx(copy.deepcopy(prepared))
    got = convert(rebuilt)
    assert got.code == expected.code
    assert torch.equal(got(x), expected(x))


def test_only_qat_specs_are_saved(trained, tmp_path) -> None:
    _, _, prepared = trained
    with pytest.raises(SpecError, match="a QAT checkpoint needs a spec with mode 'qat', got mode 'static'"):
        save_qat_checkpoint(prepared, FxSpec(), tmp_path / "x.pt")


def test_missing_and_foreign_files_are_refused(trained, tmp_path) -> None:
    model, x, _ = trained
    with pytest.raises(SpecError, match=r"QAT checkpoint '.*nope\.pt' does not exist"):
        load_qat_checkpoint(tmp_path / "nope.pt", model, (x,))
    foreign = tmp_path / "state.pt"
    torch.save(model.state_dict(), foreign)
    with pytest.raises(SpecError, match=r"is not a quantstage QAT checkpoint .*write it with .*save_qat_checkpoint"):
        load_qat_checkpoint(foreign, model, (x,))


def test_pickled_code_is_not_loaded(trained, tmp_path) -> None:
    model, x, _ = trained
    evil = tmp_path / "evil.pt"
    torch.save({"format": "quantstage.qat/1", "spec": SPEC.to_json(), "state_dict": model}, evil)
    with pytest.raises(SpecError, match="cannot be loaded safely"):
        load_qat_checkpoint(evil, model, (x,))


def test_checkpoint_for_another_model_is_refused(trained, tmp_path) -> None:
    _, x, prepared = trained
    path = save_qat_checkpoint(prepared, SPEC, tmp_path / "qat.pt")
    with pytest.raises(
        SpecError, match=r"does not match DigitsCNN prepared with its spec: size mismatch for features\.0\.weight"
    ):
        load_qat_checkpoint(path, DigitsCNN(width=16).eval(), (x,))
