"""The FX engine on the architecture matrix: every family of ``tests.zoo`` (transformers' own classes from
small configs, random weights, plus torchvision-style CNNs) through quantstage's library path as the flow
runs it: quantize with defaults (``tracing: auto``), evaluate against the float model, ship (saved, loaded
back, verified). Each family converts, or is refused in one line naming the fix; nothing escapes as an
error quantstage did not classify (what the CLI prints as ``unexpected``). The PT2E engine's matrix is
``tests/quant/engines/pt2e/test_zoo.py``.

``make test`` runs ``zoo.FAST``; ``make test-zoo`` (``-m zoo``) the whole matrix of both engines.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from tests import zoo

# Families an engine truly cannot take: (family, engine) -> what its one-line refusal must say.
REFUSED: dict[tuple[str, str], str] = {}

# A floor that separates a working int8 model from a broken one on these random-weight models
# (measured: bench/ZOO.md); the task gates decide promotion on real data.
MIN_SQNR_DB = {"dynamic": 15.0, "static": 8.0}


def _cases() -> list[object]:
    return [pytest.param(f, marks=() if f in zoo.FAST else (pytest.mark.zoo,)) for f in zoo.FAMILIES]


@pytest.mark.parametrize("family", _cases())
def test_family_converts_or_is_refused_in_one_line(family: str) -> None:
    engine = "fx"
    out = zoo.convert(family, engine)
    assert not out.unexpected, f"{family} on {engine}: unclassified error in stage {out.stage}: {out.error}"
    if (family, engine) in REFUSED:
        assert not out.converted, f"{family} on {engine} was expected to be refused but converted"
        assert REFUSED[family, engine] in out.error
        assert "fix" in out.error, out.error
        return
    assert out.converted, f"{family} on {engine} failed in stage {out.stage}: {out.error}"
    assert out.quantized_fraction > 0.5, f"{family}: only {out.quantized_fraction:.0%} quantized: {out.float_layers}"
    sqnr = out.metrics["output_sqnr_db"]
    assert sqnr >= MIN_SQNR_DB[out.mode], f"{family} on {engine}: output SQNR {sqnr:.1f} dB is too low"
