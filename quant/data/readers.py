"""Reading a data source into samples or batches: scikit-learn's digits, a ``.pt``/``.npz``/``.npy``
file (no pickled code runs), or a ``package.module:function``; each user batch normalised to
``(inputs, targets)``. ``quant.data.sources`` splits, batches and binds what these return."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantstage.quant.errors import DataError

__all__ = ["FILE_SUFFIXES", "Batch", "Samples", "as_tensor", "digits_split", "normalize", "read"]

Batch = tuple[Any, "torch.Tensor | None"]

FILE_SUFFIXES = (".pt", ".pth", ".npz", ".npy")


def digits_split(
    test_fraction: float = 0.25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as ``(x_train, y_train, x_test, y_test)``; x is ``(N, 1, 8, 8)`` in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return x_train, y_train, x_test, y_test


@dataclasses.dataclass
class Samples:
    """One collection of samples: inputs (a tensor, or a dict of tensors) and optional targets."""

    inputs: Any
    targets: torch.Tensor | None

    def __len__(self) -> int:
        first = next(iter(self.inputs.values())) if isinstance(self.inputs, dict) else self.inputs
        return int(first.shape[0])

    def take(self, index: torch.Tensor) -> Samples:
        inputs = {k: v[index] for k, v in self.inputs.items()} if isinstance(self.inputs, dict) else self.inputs[index]
        return Samples(inputs, None if self.targets is None else self.targets[index])

    def batches(self, batch_size: int) -> list[Any]:
        out = []
        for i in range(0, len(self), batch_size):
            part = self.take(torch.arange(i, min(i + batch_size, len(self))))
            out.append((part.inputs, part.targets))
        return out


def as_tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":  # strings, objects, dates: nothing a model computes on
            raise DataError(
                f"{what} holds {value.dtype} values; allowed: numbers (bool, int, float); fix: store the model's "
                f"numeric inputs (token ids, not text)"
            )
        return torch.from_numpy(np.ascontiguousarray(value))
    raise DataError(f"{what} is a {type(value).__name__}, not a tensor or array; fix: store tensors/arrays only")


def _samples_from_mapping(data: Mapping[str, Any], target_key: str, where: str) -> Samples:
    arrays = {k: as_tensor(v, f"{where}[{k!r}]") for k, v in data.items()}
    targets = arrays.pop(target_key, None)
    if not arrays:
        raise DataError(f"{where} holds only {target_key!r}; fix: add the input arrays beside the targets")
    lengths = {k: int(v.shape[0]) for k, v in arrays.items()}
    if targets is not None:
        lengths[target_key] = int(targets.shape[0])
    if len(set(lengths.values())) > 1:
        raise DataError(
            f"{where}: arrays have different sample counts {lengths}; fix: one row per sample in every array"
        )
    if len(arrays) == 1:  # one array: the single positional input, whatever its name
        return Samples(next(iter(arrays.values())), targets)
    return Samples(arrays, targets)


def _read_file(path: str, target_key: str) -> Samples | list[Any]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {path!r} does not exist; fix: give an existing .pt/.pth/.npz/.npy path")
    if p.suffix in (".npy", ".npz"):
        try:
            if p.suffix == ".npy":
                return Samples(as_tensor(np.load(p, allow_pickle=False), path), None)
            with np.load(p, allow_pickle=False) as npz:
                return _samples_from_mapping({k: npz[k] for k in npz.files}, target_key, path)
        except DataError:
            raise
        except Exception as exc:  # object arrays (pickles), truncated or not NumPy at all
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise DataError(
                f"data file {path!r} cannot be read as {p.suffix} without unpickling ({first}); fix: save numeric "
                f"arrays with np.save/np.savez (no Python objects)"
            ) from exc
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses pickled objects: name the file and the fix
        raise DataError(
            f"data file {path!r} could not be loaded with torch.load(weights_only=True) "
            f"({str(exc).strip().splitlines()[0][:200]}); fix: save tensors, tuples or dicts of tensors only "
            f"(torch.save({{'input_ids': ..., 'labels': ...}}, path)), never pickled objects"
        ) from exc
    if isinstance(data, torch.Tensor):
        return Samples(data, None)
    if isinstance(data, dict):
        return _samples_from_mapping(data, target_key, path)
    if isinstance(data, tuple) and len(data) in (1, 2) and all(isinstance(x, torch.Tensor) for x in data):
        return Samples(data[0], data[1] if len(data) == 2 else None)
    if isinstance(data, list):
        return data  # already batched
    raise DataError(
        f"data file {path!r} holds a {type(data).__name__}; allowed: a tensor, a tuple (inputs, targets), "
        f"a dict of tensors, or a list of batches"
    )


def _call_function(source: str, kwargs: Mapping[str, Any]) -> Any:
    from quantstage.quant.config.dotted import resolve_dotted

    try:
        fn = resolve_dotted(source)
    except Exception as exc:
        raise DataError(
            f"data source {source!r} is not importable ({exc}); fix: give 'package.module:function' on the Python path"
        ) from exc
    if not callable(fn):
        raise DataError(f"data source {source!r} is a {type(fn).__name__}, not a function")
    try:
        return fn(**kwargs)
    except TypeError as exc:
        raise DataError(f"data source {source!r} rejected its kwargs {sorted(kwargs)}: {exc}") from exc


def normalize(raw: Any, target_key: str, where: str) -> Batch:
    """One user batch as ``(inputs, targets)``: inputs a tensor, a tuple or a dict."""
    if isinstance(raw, torch.Tensor):
        return raw, None
    if isinstance(raw, Mapping):
        inputs = dict(raw)
        targets = inputs.pop(target_key, None)
        return inputs, targets
    if isinstance(raw, (tuple, list)):
        if len(raw) == 1:
            return raw[0], None
        if len(raw) == 2:
            return raw[0], raw[1]
        raise DataError(
            f"{where} is a {type(raw).__name__} of {len(raw)} elements; allowed: a tensor, (inputs,), "
            f"(inputs, targets) or a dict of tensors"
        )
    raise DataError(
        f"{where} is a {type(raw).__name__}; allowed: a tensor, (inputs,), (inputs, targets) or a dict of tensors"
    )


def read(source: str, kwargs: Mapping[str, Any], target_key: str) -> Samples | list[Any] | dict[str, Any]:
    if source.endswith(FILE_SUFFIXES):
        return _read_file(source, target_key)
    result = _call_function(source, kwargs)
    if isinstance(result, Mapping) and set(result) == {"calibration", "evaluation"}:
        return {k: list(v) for k, v in result.items()}
    if isinstance(result, (torch.Tensor, Mapping)):
        raise DataError(
            f"data source {source!r} returned a {type(result).__name__}; a function returns an iterable of batches "
            f"or {{'calibration': batches, 'evaluation': batches}}"
        )
    if not isinstance(result, Iterable):
        raise DataError(f"data source {source!r} returned a {type(result).__name__}, not an iterable of batches")
    return list(result)
