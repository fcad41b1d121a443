"""Configuration as data: what every spec shares (``SpecBase``) and its qconfig mappings (frozen pydantic,
YAML/JSON). Each engine's spec and the ``QuantSpec`` union live with the engines (``quant.engines``);
this package imports none of them."""

from quantstage.quant.config.dotted import resolve_dotted
from quantstage.quant.config.qconfig import ObserverSpec, QConfigMappingSpec, QConfigOverride
from quantstage.quant.config.spec import BACKENDS, SpecBase, SpecModel, first_error, read_spec_file

__all__ = [
    "BACKENDS",
    "ObserverSpec",
    "QConfigMappingSpec",
    "QConfigOverride",
    "SpecBase",
    "SpecModel",
    "first_error",
    "read_spec_file",
    "resolve_dotted",
]
