"""QuantSpec: what to quantize and how, as data; the torch configs are built from it here.

A spec is a frozen pydantic model (``extra="forbid"``), loadable from YAML or JSON. The
torch objects ``convert_fx`` takes — ``QConfigMapping``, ``BackendConfig``,
``ConvertCustomConfig`` — are built from it in this one module.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from quant import _fx
from quant.errors import SpecError

__all__ = ["BACKENDS", "QuantSpec", "load_spec", "resolve_dotted"]

BACKENDS = ("x86", "fbgemm", "qnnpack", "onednn")
Backend = Literal["x86", "fbgemm", "qnnpack", "onednn"]
BackendConfigName = Literal["native", "x86", "fbgemm", "qnnpack", "onednn"]

def resolve_dotted(path: str) -> Any:
    """Resolve ``torch.nn.Linear`` / ``operator.add`` / ``pkg.mod:attr`` to the object."""
    if ":" in path:
        module_name, _, attr_path = path.partition(":")
        parts = [module_name, *attr_path.split(".")]
        split = 1
    else:
        parts = path.split(".")
        split = None
    candidates = [split] if split else range(len(parts) - 1, 0, -1)
    last_error: Exception | None = None
    for i in candidates:
        module_name = ".".join(parts[:i])
        try:
            obj: Any = importlib.import_module(module_name)
        except (ImportError, ValueError, TypeError) as exc:  # "" and "." are not module names
            last_error = exc
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError as exc:
            last_error = exc
            continue
        return obj
    raise SpecError(
        f"cannot resolve {path!r} to a Python object ({last_error}); give an importable dotted "
        f"path such as 'torch.nn.Linear', 'torch.nn.functional.linear' or 'operator.add'"
    )


class QuantSpec(BaseModel):
    """How to quantize one model with FX graph mode quantization."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = Field(1, description="Schema version of this spec.")
    backend: Backend = Field(
        "x86",
        description="Quantized engine the model targets; picks the default qconfigs "
        "and torch.backends.quantized.engine.",
    )
    mode: Literal["static", "dynamic"] = Field(
        "static",
        description="static: int8 weights and activations, calibrated on data; "
        "dynamic: int8 weights, activations quantized on the fly (Linear, LSTM, GRU, RNN cells).",
    )
    calibration_batches: int = Field(
        8, ge=1, description="Number of calibration batches run through the observers (static)."
    )
    skip_modules: tuple[str, ...] = Field(
        (),
        description="Module paths kept in float: set_module_name(name, None). They are also "
        "left out of FX tracing, so a submodule torch.fx cannot trace can be skipped.",
    )
    skip_object_types: tuple[str, ...] = Field(
        (),
        description="Module classes, functions or ops kept in float, by dotted path "
        "(e.g. 'torch.nn.Linear', 'torch.nn.functional.linear', 'operator.add'): "
        "set_object_type(obj, None).",
    )
    backend_config: BackendConfigName = Field(
        "native",
        description="Which BackendConfig torch uses to pattern-match at prepare and convert "
        "('native' is torch's default for prepare_fx/convert_fx).",
    )
    keep_original_weights: bool = Field(
        False, description="convert_fx keep_original_weights: keep float weights on lowered modules."
    )
    remove_qconfig: bool = Field(
        True, description="convert_fx _remove_qconfig: drop qconfig attributes after convert."
    )

    @field_validator("skip_object_types")
    @classmethod
    def _object_types_resolve(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            resolve_dotted(path)
        return value

    @field_validator("skip_modules")
    @classmethod
    def _module_names_nonempty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not name or name != name.strip():
                raise ValueError(
                    f"skip_modules entry {name!r} is not a module path; use the dotted name "
                    f"from model.named_modules(), e.g. 'features.0'"
                )
        return value

    # -- torch objects built from the spec -------------------------------------------------
    def qconfig_mapping(self) -> Any:
        """The QConfigMapping for prepare_fx (skips set to ``None``)."""
        if self.mode == "static":
            mapping = _fx.get_default_qconfig_mapping(self.backend)
        else:
            # A global dynamic qconfig, not per-type entries: prepare_fx fuses Linear+ReLU,
            # Linear+BatchNorm1d, Conv+ReLU... and requires every type of a fused pattern to
            # carry the same qconfig. Only what the BackendConfig supports dynamically
            # (Linear, LSTM, GRU, RNN cells) is quantized; everything else stays float.
            mapping = _fx.QConfigMapping().set_global(torch.ao.quantization.default_dynamic_qconfig)
        backend_config = self.backend_config_object()
        for path in self.skip_object_types:
            obj = resolve_dotted(path)
            mapping.set_object_type(obj, None)
            # Fusion turns Linear+ReLU into LinearReLU (etc.), which would otherwise still get
            # the global qconfig: skip the fused modules a skipped type starts.
            for config in backend_config.configs:
                pattern = config.pattern
                if config.fused_module is not None and isinstance(pattern, tuple) and pattern[0] is obj:
                    mapping.set_object_type(config.fused_module, None)
        for name in self.skip_modules:
            mapping.set_module_name(name, None)
        return mapping

    def prepare_custom_config(self) -> Any:
        """The PrepareCustomConfig for prepare_fx: skipped modules are not traced either."""
        return _fx.PrepareCustomConfig().set_non_traceable_module_names(list(self.skip_modules))

    def backend_config_object(self) -> Any:
        """The torch BackendConfig named by ``backend_config``."""
        return _fx.backend_config_for(self.backend_config)

    # -- serialisation ------------------------------------------------------------------------
    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def digest(self) -> str:
        """A short stable hash of the spec (for lineage tags and idempotency keys)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def as_params(self) -> dict[str, str]:
        """Flat ``spec.<field>`` strings for experiment-tracker params."""
        return {
            f"spec.{key}": ",".join(value) if isinstance(value, (list, tuple)) else str(value)
            for key, value in self.model_dump(mode="json").items()
        }


def load_spec(path: str | Path) -> QuantSpec:
    """Load a QuantSpec from a ``.yaml``/``.yml``/``.json`` file, validated."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {str(path)!r} does not exist; pass the path to a YAML or JSON spec")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SpecError(f"spec file {str(path)!r} is not valid {path.suffix[1:] or 'YAML'}: {exc}") from exc
    if isinstance(data, dict) and "spec" in data and len(data) == 1:
        data = data["spec"]
    try:
        return QuantSpec.model_validate(data or {})
    except ValidationError as exc:
        raise SpecError(f"spec file {str(path)!r} is invalid: {_first_error(exc)}") from exc


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "<root>"
    return f"{where}: {err['msg']} (got {err.get('input')!r})"
