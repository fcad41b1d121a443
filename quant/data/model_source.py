"""Where the float model comes from, and loading it safely.

``ModelSource`` is exactly one of

- ``uri``: an MLflow model URI (``models:/<name>/<version>``, ``models:/<name>@<alias>``,
  ``runs:/<run_id>/<path>``), loaded by the load task (tasks/ owns MLflow I/O);
- ``factory``: ``package.module:callable`` building the model, called with ``folder`` (when
  given, as the first argument: e.g. a Hugging Face-style checkpoint folder the factory reads)
  and ``kwargs``; then ``weights``, when given, is loaded as a state_dict with
  ``torch.load(weights_only=True)`` (no code runs) or from a ``.safetensors`` file;
- ``path``: a whole pickled module (``torch.save(model)``): unpickling runs arbitrary code, so it
  is refused unless ``trust_pickle: true``.

A TorchScript archive is refused everywhere: FX cannot prepare a ScriptModule; give the eager model.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from quantstage.quant.errors import SourceError

__all__ = ["ModelSource", "build_from_factory", "load_pickled_module", "load_state_dict_file", "load_weights"]

_URI = re.compile(r"^(models:/[^/@]+(/\d+|@[^/]+)|runs:/[^/]+/.+)$")
_URI_FORMS = "models:/<name>/<version>, models:/<name>@<alias> or runs:/<run_id>/<path>"
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


class ModelSource(BaseModel):
    """The float source model: an MLflow URI, a factory (+ weights), or a trusted pickled module."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str | None = Field(default=None, description=f"MLflow model URI: {_URI_FORMS}.")
    factory: str | None = Field(default=None, description="'package.module:callable' that builds the eager model.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the factory.")
    folder: str | None = Field(
        default=None, description="A checkpoint folder passed to the factory as its first argument."
    )
    weights: str | None = Field(
        default=None,
        description="A state_dict for the factory's model: .pt/.pth/.bin (torch.load weights_only) or .safetensors; "
        "a local path or an MLflow artifact URI.",
    )
    strict: bool = Field(default=True, description="Every weight must match the model (load_state_dict strict).")
    path: str | None = Field(
        default=None, description="A whole pickled module (torch.save(model)); needs trust_pickle."
    )
    trust_pickle: bool = Field(
        default=False,
        description="Allow unpickling `path`: it runs arbitrary code from the file. Only for files you made.",
    )
    name: str | None = Field(
        default=None, description="A name for the model (registry name stem); default from the source."
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        given = [k for k in ("uri", "factory", "path") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                f"a model source needs exactly one of uri, factory or path (got {given or 'none'}); e.g. "
                f"{{uri: 'models:/my-model@champion'}} or {{factory: 'my_pkg.models:build', weights: 'model.pt'}}"
            )
        if self.uri is not None and not _URI.match(self.uri):
            raise ValueError(f"model uri {self.uri!r} is not of a supported form; use {_URI_FORMS}")
        if self.factory is not None and ":" not in self.factory:
            raise ValueError(f"factory {self.factory!r} must be 'package.module:callable'")
        if self.factory is None and (self.weights or self.folder or self.kwargs):
            raise ValueError(
                "weights, folder and kwargs belong to a factory source; add factory: 'package.module:callable'"
            )
        if self.path is not None and not self.trust_pickle:
            raise ValueError(
                f"refusing to unpickle {self.path!r}: loading a pickled module runs arbitrary code from the file. "
                f"Instead give factory: 'package.module:callable' plus weights: a state_dict file "
                f"(torch.save(model.state_dict(), ...)), or log the model to MLflow and give its uri; set "
                f"trust_pickle: true only for a file you made yourself"
            )
        return self

    @property
    def label(self) -> str:
        """A short human name of the source (for logs, run names, the registry name)."""
        if self.name:
            return self.name
        if self.uri:
            return self.uri
        if self.factory:  # module and function: 'my_pkg.models:build' -> 'models.build'
            module, _, function = self.factory.rpartition(":") if ":" in self.factory else self.factory.rpartition(".")
            return f"{module.rsplit('.', 1)[-1]}.{function}" if module else function
        return Path(self.path or "model").stem

    def describe(self) -> dict[str, Any]:
        """What identifies the source (for digests and lineage tags)."""
        return self.model_dump(mode="json", exclude_defaults=True)


def is_torchscript_archive(path: str | Path) -> bool:
    """A ``torch.jit.save`` zip (it holds ``constants.pkl`` and ``code/``), not a pickled eager module."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) or any("/code/" in n for n in names)


def _refuse_torchscript(path: str | Path, what: str) -> None:
    if is_torchscript_archive(path):
        raise SourceError(
            f"{what} {str(path)!r} is a TorchScript archive: FX quantization prepares the eager Python model and "
            f"cannot prepare a ScriptModule; fix: give the eager model (factory + weights, or an MLflow model "
            f"logged from the nn.Module)"
        )


def build_from_factory(factory: str, kwargs: Mapping[str, Any], folder: str | None = None) -> torch.nn.Module:
    """Import ``package.module:callable`` and build the model; errors name the factory and the fix."""
    from quantstage.quant.config.dotted import resolve_dotted

    try:
        fn = resolve_dotted(factory)
    except Exception as exc:
        raise SourceError(
            f"model factory {factory!r} is not importable ({str(exc).splitlines()[0]}); fix: give "
            f"'package.module:callable' importable on this Python path (installed, or on PYTHONPATH)"
        ) from exc
    if not callable(fn):
        raise SourceError(f"model factory {factory!r} is a {type(fn).__name__}, not callable")
    if folder is not None and not Path(folder).is_dir():
        raise SourceError(
            f"model folder {folder!r} does not exist or is not a folder; fix: give the checkpoint folder the factory reads"
        )
    try:
        model = fn(folder, **kwargs) if folder is not None else fn(**kwargs)
    except TypeError as exc:
        raise SourceError(f"model factory {factory!r} rejected its arguments (kwargs {sorted(kwargs)}): {exc}") from exc
    except Exception as exc:  # the factory's own failure: a user error, not ours (and never retried)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SourceError(
            f"model factory {factory!r} raised {type(exc).__name__}: {first[:300]}; fix: call "
            f"{factory.replace(':', '.')}(...) yourself with kwargs {sorted(kwargs)} and fix what it reports"
        ) from exc
    if isinstance(model, torch.jit.ScriptModule):
        raise SourceError(
            f"model factory {factory!r} returned a ScriptModule; FX quantization needs the eager nn.Module"
        )
    if not isinstance(model, torch.nn.Module):
        raise SourceError(f"model factory {factory!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from ``.safetensors`` or a torch file loaded with ``weights_only=True``.

    A checkpoint dict that nests the weights under ``state_dict``/``model_state_dict``/``model``
    is unwrapped. Pickled objects and TorchScript archives are refused with the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"weights file {str(path)!r} does not exist; fix: give the path of a saved state_dict")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - safetensors is a dependency
            raise SourceError("reading .safetensors needs the safetensors package: pip install safetensors") from exc
        try:
            return dict(load_file(str(path)))
        except Exception as exc:  # truncated or not safetensors at all
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise SourceError(
                f"weights file {str(path)!r} is not a readable .safetensors file ({first}); fix: save it again "
                f"(safetensors.torch.save_file(model.state_dict(), path)) — it may be truncated"
            ) from exc
    _refuse_torchscript(path, "weights file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SourceError(
            f"weights file {str(path)!r} is not a plain state_dict: torch.load(weights_only=True) refused it "
            f"({str(exc).strip().splitlines()[0][:160]}); fix: save torch.save(model.state_dict(), path) — a pickled "
            f"module would run arbitrary code on load"
        ) from exc
    for key in _STATE_DICT_KEYS:
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
            break
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise SourceError(
            f"weights file {str(path)!r} holds a {type(data).__name__} that is not a state_dict (name -> tensor); "
            f"fix: save torch.save(model.state_dict(), path)"
        )
    return dict(data)


def load_weights(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], where: str, strict: bool = True
) -> None:
    """Load ``state_dict`` into ``model``; a mismatch names the first missing/unexpected keys and shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if shapes or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) (first: {'; '.join(shapes[:3])})")
        raise SourceError(
            f"weights {where!r} do not match {type(model).__name__}: {'; '.join(parts)}; fix: build the model with the "
            f"factory kwargs it was trained with, or set strict: false to allow missing/unexpected keys"
        )
    model.load_state_dict(state_dict, strict=strict)


def load_pickled_module(path: str | Path, trust_pickle: bool) -> torch.nn.Module:
    """A whole pickled module (``torch.save(model)``), only when the caller trusts the file."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"model file {str(path)!r} does not exist")
    _refuse_torchscript(path, "model file")
    if not trust_pickle:
        raise SourceError(
            f"refusing to unpickle {str(path)!r}: it runs arbitrary code from the file; give factory + weights "
            f"instead, or trust_pickle: true for a file you made"
        )
    model = torch.load(path, map_location="cpu", weights_only=False)  # trusted by the caller, explicitly
    if not isinstance(model, torch.nn.Module):
        raise SourceError(f"model file {str(path)!r} holds a {type(model).__name__}, not a torch.nn.Module")
    return model
