"""``AutoSpec``: ``engine: auto`` — let the pipeline pick the engine by racing the candidates.

An auto spec holds the shared fields, the FX-only fields (so a spec written for FX parses with
``engine: auto``), the candidate engines in order (``engines``) and a time budget for trying them
(``auto_budget_s``). ``candidates`` turns it into one concrete spec per engine, or the one-line
reason that engine refuses it (PT2E refuses an FX-only field set to a value other than FX's
default): a refused engine is a row of the race, not a failure. The race itself is
``quant.search.engines.race_engines``. ``AUTO_ENGINE``, the registry's engine object for ``auto``,
only checks that some candidate accepts the spec: it quantizes nothing itself. This module imports
no quantization framework (``candidates(check=True)`` loads each engine's, as ``parse_spec`` does).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, NoReturn

from pydantic import Field, ValidationError, field_validator, model_validator

from quantstage.quant.config.qconfig import QConfigMappingSpec
from quantstage.quant.config.spec import SpecBase, first_error
from quantstage.quant.engines.fx.spec import ConvertCustomSpec, FxSpec, PrepareCustomSpec
from quantstage.quant.errors import SpecError

__all__ = ["AUTO_ENGINE", "AutoSpec", "EngineCandidate", "auto_spec"]

_AUTO_ONLY = ("engine", "engines", "auto_budget_s")


def _fx(field: str) -> str:
    """An FX-only field's description, as FxSpec gives it, and what it means for the race."""
    return f"{FxSpec.model_fields[field].description} (FX only: another candidate engine refuses a non-default value.)"


@dataclasses.dataclass(frozen=True)
class EngineCandidate:
    """One candidate engine of an auto spec: its concrete spec, or why it refuses the spec (one line)."""

    engine: str
    spec: SpecBase | None
    refused: str = ""


class AutoSpec(SpecBase):
    """How to quantize one model with whichever candidate engine converts it best (the pipeline races them)."""

    engine: Literal["auto"] = Field(
        default="auto",
        description="Quantization engine: auto races the candidate engines (engines) on the model and ships the "
        "fastest that passes the accuracy and coverage gates (a tie within the measured noise: the more accurate).",
    )
    engines: tuple[str, ...] = Field(
        default=("fx", "pt2e"),
        description="The candidate engines, in the order they are tried (the first is always tried).",
    )
    auto_budget_s: float = Field(
        default=600.0,
        ge=0.0,
        description="Seconds for trying engines: once spent, the engines not tried yet are skipped (0: only the "
        "first engine that accepts the spec is tried).",
    )
    float_global_pool: bool = Field(default=True, description=_fx("float_global_pool"))
    convert_qconfig_mapping: QConfigMappingSpec | None = Field(default=None, description=_fx("convert_qconfig_mapping"))
    prepare_custom: PrepareCustomSpec = Field(default_factory=PrepareCustomSpec, description=_fx("prepare_custom"))
    convert_custom: ConvertCustomSpec = Field(default_factory=ConvertCustomSpec, description=_fx("convert_custom"))
    backend_config: str = Field(default="native", description=_fx("backend_config"))
    keep_original_weights: bool = Field(default=False, description=_fx("keep_original_weights"))
    remove_qconfig: bool = Field(default=True, description=_fx("remove_qconfig"))

    @field_validator("engines")
    @classmethod
    def _known_engines(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from quantstage.quant.engines.registry import AUTO, REGISTRY

        allowed = [name for name in REGISTRY if name != AUTO]
        unknown = [name for name in value if name not in allowed]
        if not value or unknown or len(set(value)) != len(value):
            raise ValueError(
                f"engines {list(value)!r} must list candidate engines once each; allowed: {', '.join(allowed)}; "
                f"fix: e.g. engines: [fx, pt2e]"
            )
        return value

    @model_validator(mode="after")
    def _some_engine_accepts(self) -> AutoSpec:
        """Refused before any work when no candidate's spec class takes the fields (engine checks aside)."""
        candidates = self.candidates(check=False)
        if all(c.spec is None for c in candidates):
            raise ValueError(_none_accept(candidates))
        return self

    def fields(self) -> dict[str, Any]:
        """The fields this spec sets (defaults left out), without the auto-only ones: what each candidate gets."""
        data = self.model_dump(mode="json", exclude_defaults=True)
        return {key: value for key, value in data.items() if key not in _AUTO_ONLY}

    def candidates(self, *, check: bool = True) -> list[EngineCandidate]:
        """Per candidate engine, in order, its concrete spec (``parse_spec(fields | {"engine": name})``, checked
        by the engine too when ``check``: that loads its framework) or the one-line error refusing it."""
        from quantstage.quant.engines.registry import parse_spec

        found = []
        for name in self.engines:
            try:
                found.append(EngineCandidate(name, parse_spec(self.fields() | {"engine": name}, check=check)))
            except ValidationError as exc:
                found.append(EngineCandidate(name, None, first_error(exc)))
        return found


def _none_accept(candidates: list[EngineCandidate]) -> str:
    reasons = "; ".join(f"{c.engine}: {c.refused}" for c in candidates)
    return f"engine 'auto': every candidate engine refuses the spec ({reasons}); fix: change the field named"


def auto_spec(spec: SpecBase) -> AutoSpec:
    """``spec`` as the ``AutoSpec`` the race works from; SpecError for a pinned engine's spec."""
    if not isinstance(spec, AutoSpec):
        raise SpecError(
            f"the engine race takes an AutoSpec (engine 'auto'), got a {type(spec).__name__} (engine "
            f"{spec.engine!r}); fix: set engine: auto, or quantize with the engine the spec names"
        )
    return spec


class _AutoEngine:
    """The registry's engine for ``auto``: it checks that a candidate engine accepts the spec; every other
    step belongs to the engine the race picks (``quant.search.engines.race_engines``)."""

    name = "auto"
    supports_submodules = False

    def check(self, spec: SpecBase) -> None:
        candidates = auto_spec(spec).candidates(check=True)
        if all(c.spec is None for c in candidates):
            raise SpecError(_none_accept(candidates))

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith("__"):
            raise AttributeError(name)
        raise SpecError(
            f"engine 'auto' has no {name!r}: it picks a candidate engine by racing them; allowed: a pinned engine's "
            f"spec; fix: race them (quant.search.engines.race_engines), or quantize with AutoSpec.candidates()'s spec"
        )


AUTO_ENGINE = _AutoEngine()
