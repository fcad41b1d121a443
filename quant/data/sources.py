"""Data sources: where calibration and evaluation batches come from.

``DataSpec.source`` is one of

- ``digits``: scikit-learn's bundled 8x8 digits (no download), the demo's data;
- ``package.module:function``: called with ``kwargs``; returns an iterable of batches, or a dict
  ``{"calibration": batches, "evaluation": batches}`` with its own split;
- a ``.pt``/``.pth`` file (``torch.load(weights_only=True)``: no code runs), an ``.npz`` or an
  ``.npy`` file: one collection of samples, shuffled with ``seed``, split and batched here.

A batch is a tensor (inputs only), a tuple ``(inputs,)`` or ``(inputs, targets)`` whose inputs
may themselves be a tuple of positional tensors or a dict, or a dict of tensors passed to
``forward`` as keyword arguments (its ``target_key`` entry, when present, is the targets).
Internally each batch becomes ``(inputs, targets)`` with inputs a tensor or a tuple of positional
arguments in ``forward``'s order (``quant.data.inputs``); ``Dataset.input_names`` keeps the names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Mapping
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from quantstage.quant.data.inputs import args_of, batch_len, bind_to_forward, describe, forward_parameters, head
from quantstage.quant.data.readers import FILE_SUFFIXES, Batch, Samples, as_tensor, digits_split, normalize, read
from quantstage.quant.errors import DataError

__all__ = ["Batch", "DataSpec", "Dataset", "batches_digest", "digits_split", "load_data"]

logger = logging.getLogger(__name__)


_FORMS = "'digits', 'package.module:function', or a .pt/.pth/.npz/.npy file"


def _check_source(value: str, field: str) -> str:
    if value == "digits" or ":" in value.split("/")[-1] and not value.endswith(FILE_SUFFIXES):
        return value
    if value.endswith(FILE_SUFFIXES):
        return value
    raise ValueError(f"{field} {value!r} is not a data source; use {_FORMS}")


class DataSpec(BaseModel):
    """Where calibration and evaluation data come from, and how they are split and batched."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(
        default="digits", description=f"Calibration (and, without evaluation_source, evaluation) data: {_FORMS}."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of a module:function source.")
    evaluation_source: str | None = Field(
        default=None, description="Separate evaluation data (same forms); default: a test_fraction split of source."
    )
    evaluation_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of evaluation_source."
    )
    batch_size: int = Field(
        default=32, ge=1, description="Samples per batch (file sources and digits; function batches are kept)."
    )
    test_fraction: float = Field(
        default=0.25, gt=0.0, lt=1.0, description="Share held out for evaluation when one source gives both splits."
    )
    seed: int = Field(default=0, description="Seed of the split, the sub-sampling and the calibration order.")
    calibration_samples: int | None = Field(
        default=None, ge=1, description="Use at most this many calibration samples (seeded)."
    )
    evaluation_samples: int | None = Field(
        default=None, ge=1, description="Use at most this many evaluation samples (seeded)."
    )
    target_key: str = Field(
        default="labels", description="In dict batches and .npz files: the entry holding the targets."
    )

    @field_validator("source")
    @classmethod
    def _source_form(cls, value: str) -> str:
        return _check_source(value, "data source")

    @field_validator("evaluation_source")
    @classmethod
    def _evaluation_form(cls, value: str | None) -> str | None:
        return None if value is None else _check_source(value, "evaluation_source")


@dataclasses.dataclass
class Dataset:
    """Calibration batches and held-out evaluation batches, with what they are and where from."""

    calibration: list[Batch]
    evaluation: list[Batch]
    input_names: tuple[str, ...] | None = None  # forward's argument names, in the batches' positional order
    source: str = "digits"
    overlap: int = 0  # evaluation samples that also occur in the calibration data
    output_key: str | None = None  # the part of forward's output every stage compares (quant.data.outputs)

    @property
    def example_inputs(self) -> tuple[Any, ...]:
        """Inputs of one evaluation batch, as the positional args of ``forward``."""
        return args_of(self.evaluation[0][0])

    @property
    def num_eval_samples(self) -> int:
        return sum(batch_len(x) for x, _ in self.evaluation)

    @property
    def num_calibration_samples(self) -> int:
        return sum(batch_len(x) for x, _ in self.calibration)

    @property
    def has_targets(self) -> bool:
        return all(y is not None for _, y in self.evaluation)

    def digest(self) -> str:
        """sha256 of every tensor of both splits, in order: equal digests, equal data."""
        return batches_digest(self.calibration, self.evaluation)

    def describe(self) -> str:
        return describe(self.example_inputs, self.input_names)


def batches_digest(*splits: list[Batch]) -> str:
    """sha256 of every input and target tensor (dtype, shape, bytes) of ``splits``, in order."""
    h = hashlib.sha256()
    for split in splits:
        for inputs, targets in split:
            for x in (*args_of(inputs), targets):
                if isinstance(x, torch.Tensor):
                    h.update(str((x.dtype, tuple(x.shape))).encode())
                    h.update(x.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- split, batch
def _limit(batches: list[Batch], samples: int | None) -> list[Batch]:
    if samples is None:
        return batches
    out, seen = [], 0
    for inputs, targets in batches:
        if seen >= samples:
            break
        n = min(batch_len(inputs), samples - seen)
        if n < batch_len(inputs):
            inputs = head(inputs, n)
            targets = None if targets is None else targets[:n]
        out.append((inputs, targets))
        seen += n
    return out


def _split(spec: DataSpec, data: Samples | list[Any], where: str) -> tuple[list[Batch], list[Batch]]:
    g = torch.Generator().manual_seed(spec.seed)
    if isinstance(data, Samples):
        if len(data) < 2:
            raise DataError(f"{where} has {len(data)} sample(s); calibration and evaluation need at least 2")
        order = torch.randperm(len(data), generator=g)
        n_eval = max(1, round(len(data) * spec.test_fraction))
        return data.take(order[n_eval:]).batches(spec.batch_size), data.take(order[:n_eval]).batches(spec.batch_size)
    batches = [normalize(b, spec.target_key, f"{where} batch {i}") for i, b in enumerate(data)]
    if len(batches) < 2:
        raise DataError(
            f"{where} gave {len(batches)} batch(es); one source needs at least 2 to split into calibration and "
            f"evaluation (or set evaluation_source)"
        )
    positions: list[int] = torch.randperm(len(batches), generator=g).tolist()
    n_eval = max(1, round(len(batches) * spec.test_fraction))
    return [batches[i] for i in positions[n_eval:]], [batches[i] for i in positions[:n_eval]]


def _all_batches(spec: DataSpec, data: Samples | list[Any], where: str, shuffle: bool) -> list[Batch]:
    if isinstance(data, Samples):
        if shuffle:
            data = data.take(torch.randperm(len(data), generator=torch.Generator().manual_seed(spec.seed)))
        return data.batches(spec.batch_size)
    return [normalize(b, spec.target_key, f"{where} batch {i}") for i, b in enumerate(data)]


def _bind(
    batches: list[Batch], model: torch.nn.Module | None, where: str
) -> tuple[list[Batch], tuple[str, ...] | None]:
    """Dict inputs → positional tuples in ``forward``'s order (one set of names for all batches)."""
    out, names = [], None
    for i, (inputs, targets) in enumerate(batches):
        if isinstance(inputs, Mapping):
            if model is None:
                raise DataError(f"{where} has dict batches; binding them to forward's arguments needs the model")
            inputs, batch_names = bind_to_forward(model, inputs)
            if names is not None and batch_names != names:
                raise DataError(
                    f"{where} batch {i} has arguments {list(batch_names)}, batch 0 has {list(names)}; fix: same keys in every batch"
                )
            names = batch_names
        elif isinstance(inputs, list):
            inputs = tuple(inputs)
        if targets is not None and not isinstance(targets, torch.Tensor):
            targets = as_tensor(targets, f"{where} batch {i} targets")
        out.append((inputs, targets))
    return out, names


def _sample_hashes(batches: list[Batch]) -> set[bytes]:
    hashes = set()
    for inputs, _ in batches:
        args = [x for x in args_of(inputs) if isinstance(x, torch.Tensor) and x.dim() > 0]
        for i in range(batch_len(inputs)):
            h = hashlib.blake2b(digest_size=16)
            for x in args:
                h.update(x[i].detach().contiguous().cpu().numpy().tobytes())
            hashes.add(h.digest())
    return hashes


def _digits(spec: DataSpec) -> tuple[list[Batch], list[Batch]]:
    x_train, y_train, x_test, y_test = digits_split(spec.test_fraction, spec.seed)
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(spec.seed))
    train = Samples(x_train[order], y_train[order])
    return train.batches(spec.batch_size), Samples(x_test, y_test).batches(spec.batch_size)


def _check_finite(batches: list[Batch], names: tuple[str, ...] | None, split: str) -> None:
    """DataError naming the first batch and input that holds NaN or Inf, with the count."""
    for i, (inputs, _) in enumerate(batches):
        for j, x in enumerate(args_of(inputs)):
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                bad = int((~torch.isfinite(x)).sum())
                if bad:
                    name = names[j] if names and j < len(names) else f"#{j}"
                    raise DataError(
                        f"{split} batch {i}, input {name!r}: {bad} of {x.numel()} values are NaN or Inf; "
                        f"quantization ranges would be meaningless; fix: clean the data or drop those samples"
                    )


def load_data(spec: DataSpec, model: torch.nn.Module | None = None) -> Dataset:
    """Build calibration and evaluation batches for ``spec``; dict batches are bound to ``model.forward``."""
    if spec.source == "digits" and spec.evaluation_source is None:
        calibration, evaluation = _digits(spec)
    else:
        data = _digits(spec)[0] if spec.source == "digits" else read(spec.source, spec.kwargs, spec.target_key)
        if spec.evaluation_source is not None:
            held = (
                _digits(spec)[1]
                if spec.evaluation_source == "digits"
                else read(spec.evaluation_source, spec.evaluation_kwargs, spec.target_key)
            )
            if isinstance(data, dict) or isinstance(held, dict):
                raise DataError(
                    "a source with its own {'calibration', 'evaluation'} split cannot be combined with evaluation_source"
                )
            calibration = _all_batches(spec, data, spec.source, shuffle=True)
            evaluation = _all_batches(spec, held, spec.evaluation_source, shuffle=False)
        elif isinstance(data, dict):
            calibration = _all_batches(spec, data["calibration"], f"{spec.source} calibration", shuffle=False)
            evaluation = _all_batches(spec, data["evaluation"], f"{spec.source} evaluation", shuffle=False)
        else:
            calibration, evaluation = _split(spec, data, spec.source)
    calibration = _limit(calibration, spec.calibration_samples)
    evaluation = _limit(evaluation, spec.evaluation_samples)
    if not calibration or not evaluation:
        raise DataError(
            f"data source {spec.source!r} gave {len(calibration)} calibration and {len(evaluation)} evaluation batches; both need at least one"
        )
    calibration, names = _bind(calibration, model, f"data source {spec.source!r}")
    evaluation, eval_names = _bind(evaluation, model, f"data source {spec.evaluation_source or spec.source!r}")
    shown = names or (tuple(p.name for p in forward_parameters(model)) if model is not None else None)
    _check_finite(calibration, shown, f"{spec.source!r} calibration")
    _check_finite(evaluation, eval_names or shown, f"{spec.evaluation_source or spec.source!r} evaluation")
    if names != eval_names and names is not None and eval_names is not None:
        raise DataError(
            f"calibration batches have arguments {list(names)}, evaluation batches {list(eval_names)}; fix: same keys in both"
        )
    overlap = len(_sample_hashes(calibration) & _sample_hashes(evaluation)) if spec.source != "digits" else 0
    if overlap:
        logger.warning(
            "%d evaluation sample(s) also occur in the calibration data of %r: accuracy measured on them is optimistic; "
            "fix: separate splits (evaluation_source, or a function returning {'calibration', 'evaluation'})",
            overlap,
            spec.source,
        )
    dataset = Dataset(calibration, evaluation, input_names=names or eval_names, source=spec.source, overlap=overlap)
    logger.info(
        "%s: %d calibration batches (%d samples), %d evaluation samples, inputs %s",
        spec.source,
        len(calibration),
        dataset.num_calibration_samples,
        dataset.num_eval_samples,
        dataset.describe(),
    )
    return dataset
