"""The engines quantstage knows, one line each: the spec class it reads and the engine that runs it.

``QuantSpec`` — what a spec is, parsed — is the union of the registered spec classes, chosen by
the ``engine`` field (a spec without one is ``DEFAULT_ENGINE``'s). Adding an engine is its folder
under ``quant/engines/`` (a ``spec.py`` importable without its framework, an ``engine.py``) and one
line in ``REGISTRY``; the union, the JSON schema flows publish, ``get_engine`` and ``engine_for``
follow from it. Parsing a spec imports no engine: the engine object, and with it its framework
(torch.ao, torchao), loads when ``get_engine`` first asks for it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Union, get_args

from pydantic import (
    Discriminator,
    GetJsonSchemaHandler,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError
from pydantic_core.core_schema import ErrorType

from quantstage.quant.config.spec import SpecBase, first_error, read_spec_file
from quantstage.quant.errors import SpecError

if TYPE_CHECKING:
    from typing import TypeAlias

    from quantstage.quant.engines.base import Engine

__all__ = [
    "AUTO",
    "DEFAULT_ENGINE",
    "REGISTRY",
    "CheckedSpec",
    "EngineEntry",
    "QuantSpec",
    "check_spec",
    "default_spec",
    "engine_for",
    "get_engine",
    "load_spec",
    "parse_spec",
    "parse_spec_json",
    "spec_class",
]


def _attribute(path: str) -> Any:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclasses.dataclass(frozen=True)
class EngineEntry:
    """One engine, by ``module:attribute`` paths: the spec class it reads (imported with the registry: an
    engine's ``spec.py`` imports no framework) and its engine object (imported on first use, so that parsing
    a spec never loads the engine's framework)."""

    spec_path: str
    engine: str

    @functools.cached_property
    def spec(self) -> type[SpecBase]:
        spec: type[SpecBase] = _attribute(self.spec_path)
        return spec

    def load(self) -> Engine:
        engine: Engine = _attribute(self.engine)
        return engine


AUTO = "auto"  # the engine that races the others (quant.engines.auto; the pipeline runs the race)
DEFAULT_ENGINE = "fx"  # what a spec without an ``engine`` field means (AUTO: race the engines)

REGISTRY: dict[str, EngineEntry] = {
    "fx": EngineEntry("quantstage.quant.engines.fx.spec:FxSpec", "quantstage.quant.engines.fx:FX_ENGINE"),
    "pt2e": EngineEntry("quantstage.quant.engines.pt2e.spec:Pt2eSpec", "quantstage.quant.engines.pt2e:PT2E_ENGINE"),
    "auto": EngineEntry("quantstage.quant.engines.auto:AutoSpec", "quantstage.quant.engines.auto:AUTO_ENGINE"),
}

_ERROR_TYPES = frozenset(get_args(ErrorType))


def _engine_of(value: Any) -> str:
    """The registry name a spec (or its raw fields) is parsed with."""
    if isinstance(value, SpecBase):
        return value.engine
    if isinstance(value, dict):
        engine = value.get("engine", DEFAULT_ENGINE)
        return engine if isinstance(engine, str) else repr(engine)
    return DEFAULT_ENGINE  # not a mapping: the default engine's spec says what it expected


def _allowed() -> str:
    names = [repr(name) for name in REGISTRY]
    return " or ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} or {names[-1]}"


def _untagged(error: Any, value: Any) -> InitErrorDetails:
    """A union member's error as if the spec were one model: no engine tag in its location; an unknown
    engine as an error of the ``engine`` field."""
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        engine = value.get("engine") if isinstance(value, dict) else None
        return InitErrorDetails(type="literal_error", loc=("engine",), input=engine, ctx={"expected": _allowed()})
    loc = error["loc"][1:] if error["loc"] and error["loc"][0] in REGISTRY else error["loc"]
    kind = error["type"] if error["type"] in _ERROR_TYPES else PydanticCustomError(error["type"], error["msg"])
    return InitErrorDetails(type=kind, loc=loc, input=error["input"], ctx=error.get("ctx", {}))


def _one_model(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError as exc:
        raise ValidationError.from_exception_data(exc.title, [_untagged(e, value) for e in exc.errors()]) from None


class _AnyOf:
    """The union's JSON schema as ``anyOf``: a spec without ``engine`` fits several members (the default
    engine's is the one parsed), which ``oneOf`` — what pydantic writes — would refuse."""

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        if "oneOf" in json_schema:
            json_schema["anyOf"] = json_schema.pop("oneOf")
        return json_schema


def _union() -> Any:
    for name, entry in REGISTRY.items():
        if entry.spec.model_fields["engine"].default != name:
            raise TypeError(f"{entry.spec.__name__}.engine must default to its registry name {name!r}")
    members = tuple(Annotated[entry.spec, Tag(name)] for name, entry in REGISTRY.items())
    return Annotated[Union[members], Discriminator(_engine_of), WrapValidator(_one_model), _AnyOf()]  # noqa: UP007


def _checked(value: Any, handler: ValidatorFunctionWrapHandler) -> SpecBase:
    spec: SpecBase = handler(value)
    try:
        check_spec(spec)
    except SpecError as exc:
        raise ValueError(str(exc)) from None
    return spec


if TYPE_CHECKING:
    QuantSpec: TypeAlias = SpecBase
    CheckedSpec: TypeAlias = SpecBase
else:
    QuantSpec = _union()
    """A spec of any registered engine (annotation and pydantic field type; ``SpecBase`` for isinstance)."""
    CheckedSpec = Annotated[QuantSpec, WrapValidator(_checked)]
    """``QuantSpec`` whose engine has checked it too (flow parameters: refused before any work)."""

_SPEC: TypeAdapter[QuantSpec] = TypeAdapter(QuantSpec)
_CHECKED: TypeAdapter[QuantSpec] = TypeAdapter(CheckedSpec)


def parse_spec(data: Any, *, check: bool = False) -> QuantSpec:
    """The spec of the engine ``data["engine"]`` names (default ``DEFAULT_ENGINE``), validated by its class;
    ``check``: by the engine too (``check_spec``, which loads its framework). Raises ValidationError."""
    return (_CHECKED if check else _SPEC).validate_python(data)


def parse_spec_json(text: str | bytes, *, check: bool = False) -> QuantSpec:
    """``parse_spec`` of a spec's JSON text."""
    return (_CHECKED if check else _SPEC).validate_json(text)


def default_spec() -> QuantSpec:
    """The spec of an empty mapping: the default engine's defaults."""
    return parse_spec({})


def load_spec(path: str | Path) -> QuantSpec:
    """Load a spec from a ``.yaml``/``.yml``/``.json`` file, validated and checked by its engine."""
    data = read_spec_file(path)
    try:
        return parse_spec(data, check=True)
    except ValidationError as exc:
        raise SpecError(f"spec file {str(path)!r} is invalid: {first_error(exc)}") from exc


def spec_class(name: str) -> type[SpecBase]:
    """The spec class of the engine called ``name``."""
    return _entry(name).spec


def _entry(name: str) -> EngineEntry:
    if name not in REGISTRY:
        raise SpecError(f"engine {name!r} is unknown; allowed: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def get_engine(name: str) -> Engine:
    """The engine called ``name`` (``REGISTRY``), its framework imported on first use."""
    return _entry(name).load()


def engine_for(spec: SpecBase) -> Engine:
    """The engine ``spec.engine`` names."""
    return get_engine(spec.engine)


def check_spec(spec: QuantSpec) -> QuantSpec:
    """``spec`` once its engine has checked what only it can (SpecError otherwise), before any work."""
    engine_for(spec).check(spec)
    return spec
