"""Configuration as data: ``QuantSpec`` and its qconfig mappings (frozen pydantic, YAML/JSON)."""

from quantstage.quant.config.dotted import resolve_dotted
from quantstage.quant.config.qconfig import ObserverSpec, QConfigMappingSpec, QConfigOverride
from quantstage.quant.config.spec import ConvertCustomSpec, PrepareCustomSpec, QuantSpec, first_error, load_spec

__all__ = [
    "ConvertCustomSpec",
    "ObserverSpec",
    "PrepareCustomSpec",
    "QConfigMappingSpec",
    "QConfigOverride",
    "QuantSpec",
    "first_error",
    "load_spec",
    "resolve_dotted",
]
