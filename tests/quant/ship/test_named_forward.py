"""The shipped transformer is a drop-in for the float model (issue 20, item 3): every shipped form takes the float
model's argument names, keywords in any order, optional arguments left out, and positional tensors.

A random-init 2-layer BertModel and a tokenizer built from a tiny vocab file: no network."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from quantstage.quant.data.inputs import bind_to_forward  # noqa: E402
from quantstage.quant.data.outputs import with_output  # noqa: E402
from quantstage.quant.engines import (  # noqa: E402
    FxSpec,
    Pt2eSpec,
    get_engine,
)
from quantstage.quant.quantize import quantize  # noqa: E402
from quantstage.quant.ship.signature import call_signature, with_signature  # noqa: E402

WORDS = (
    "the cat sat on mat a dog ran in park quick brown fox jumps over lazy hello world where is train station".split()
)
TEXTS = [
    "the cat sat on the mat",
    "hello world",
    "where is the train station",
    "a quick brown fox jumps over a lazy dog",
]


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(WORDS) + 5, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
    )
    return transformers.BertModel(config).eval(), tokenizer


def _batches(model: torch.nn.Module, tokenizer: Any) -> tuple[list[tuple[Any, ...]], tuple[str, ...]]:
    bound = [
        bind_to_forward(model, dict(tokenizer(TEXTS[i:] + TEXTS[:i], return_tensors="pt", padding=True)))
        for i in range(3)
    ]
    return [args for args, _ in bound], bound[0][1]


@pytest.fixture(scope="module")
def shipped_fx(bert: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path, Any]:
    model, tokenizer = bert
    batches, names = _batches(model, tokenizer)
    quantized = quantize(model, FxSpec(mode="dynamic"), batches)
    served = with_output(quantized.model, "last_hidden_state")
    verify = [*batches, tuple(a[:1] for a in batches[0])]
    shipped = get_engine("fx").ship(
        with_signature(served, call_signature(quantized.model, names)), tmp_path_factory.mktemp("ship"), verify
    )
    return served, tokenizer, shipped.path, shipped


CALLS = ["positional_two", "positional_all", "tokenizer_keywords", "keywords_reversed", "without_token_type_ids"]


def _call(model: Any, call: str, encoded: dict[str, torch.Tensor]) -> Any:
    ids, mask, types = encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"]
    if call == "positional_two":
        return model(ids, mask)
    if call == "positional_all":
        return model(ids, mask, types)
    if call == "tokenizer_keywords":
        return model(**encoded)
    if call == "keywords_reversed":
        return model(token_type_ids=types, attention_mask=mask, input_ids=ids)
    return model(attention_mask=mask, input_ids=ids)


def _expected(served: Any, call: str, encoded: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The in-memory quantized model's output; None when it cannot be called that way (then the shipped model
    must refuse the call: the weight-only embedding fails on the expanded token_type_ids buffer until fixed)."""
    try:
        with torch.no_grad():
            return _call(served, call, encoded)  # type: ignore[no-any-return]
    except RuntimeError:
        return None


@pytest.mark.parametrize("call", CALLS)
def test_shipped_torchscript_is_called_like_the_float_model(shipped_fx: tuple, call: str) -> None:
    served, tokenizer, path, _ = shipped_fx
    from quantstage.quant.engines.fx.torchscript import load_torchscript

    loaded = load_torchscript(path)
    assert [a.name for a in loaded.forward.schema.arguments[1:]] == ["input_ids", "attention_mask", "token_type_ids"]
    encoded = dict(tokenizer(["the quick fox", "where is the dog in the park"], return_tensors="pt", padding=True))
    expected = _expected(served, call, encoded)
    if expected is None:
        with pytest.raises(RuntimeError, match="this model takes one of"):
            _call(loaded, call, encoded)
        return
    with torch.no_grad():
        assert torch.equal(_call(loaded, call, encoded), expected)


_FRESH = """
import json, sys, torch
model = torch.jit.load(sys.argv[1])
encoded = torch.load(sys.argv[2])
results = {}
with torch.no_grad():
    results["keywords"] = model(**encoded).tolist()
    results["positional_all"] = model(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"]).tolist()
    try:
        results["positional_two"] = model(encoded["input_ids"], encoded["attention_mask"]).tolist()
    except RuntimeError as exc:
        results["positional_two"] = str(exc)
print(json.dumps(results))
"""


def test_shipped_torchscript_takes_keywords_in_a_fresh_process(shipped_fx: tuple, tmp_path: Path) -> None:
    served, tokenizer, path, _ = shipped_fx
    encoded = dict(tokenizer(["hello world", "the cat sat on the mat"], return_tensors="pt", padding=True))
    torch.save(encoded, tmp_path / "encoded.pt")
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _FRESH, str(path), str(tmp_path / "encoded.pt")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        expected = served(**encoded)
        assert torch.equal(torch.tensor(got["keywords"]), expected)
        assert torch.equal(torch.tensor(got["positional_all"]), expected)
        two = _expected(served, "positional_two", encoded)
    if two is None:
        assert "this model takes one of" in got["positional_two"]
    else:
        assert torch.equal(torch.tensor(got["positional_two"]), two)


def test_mlflow_round_trip_takes_named_tensors_and_a_dict_of_arrays(shipped_fx: tuple, mlflow_store: str) -> None:
    import mlflow

    from quantstage.tasks.log_model import log_pytorch_model

    served, tokenizer, _, shipped = shipped_fx
    encoded = dict(tokenizer(TEXTS, return_tensors="pt", padding=True))
    args, names = bind_to_forward(served.model, encoded)
    run_id = mlflow.MlflowClient().create_run(mlflow.MlflowClient().create_experiment("named-forward")).info.run_id
    uri = log_pytorch_model(shipped.module, args, names, run_id=run_id)
    info = mlflow.models.get_model_info(uri)
    assert [spec.name for spec in info.signature.inputs.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    with torch.no_grad():
        expected = served(**encoded)
    module = mlflow.pytorch.load_model(uri)
    with torch.no_grad():
        assert torch.equal(module(**encoded), expected)
        assert torch.equal(module(*args), expected)
    other = dict(tokenizer(["hello world"], return_tensors="pt", padding=True))  # another sequence length
    pyfunc = mlflow.pyfunc.load_model(uri)
    for batch in (encoded, other):
        predicted = pyfunc.predict({k: v.numpy() for k, v in batch.items()})
        with torch.no_grad():
            assert torch.equal(torch.as_tensor(predicted), served(**batch))


def test_pt2e_package_takes_keywords_and_its_loaders_positional_calls(bert: tuple[Any, Any], tmp_path: Path) -> None:
    from quantstage.quant.engines.pt2e.aoti import LoadedPackage

    model, tokenizer = bert
    batches, names = _batches(model, tokenizer)
    quantized = quantize(model, Pt2eSpec(mode="dynamic"), batches)
    served = with_output(quantized.model, "last_hidden_state")
    shipped = get_engine("pt2e").ship(with_signature(served, call_signature(quantized.model, names)), tmp_path, batches)
    encoded = dict(tokenizer(TEXTS, return_tensors="pt", padding=True))
    raw = torch._inductor.aoti_load_package(str(shipped.path))
    loaded = LoadedPackage(shipped.path)
    with torch.no_grad():
        expected = served(**encoded)
        assert torch.equal(raw(**encoded), expected)  # the raw package: keywords, any order, all of them
        assert torch.equal(loaded(*bind_to_forward(model, encoded)[0]), expected)
        assert torch.equal(loaded(**encoded), expected)
