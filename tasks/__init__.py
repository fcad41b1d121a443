"""Prefect tasks, one module per pipeline stage; the only place that talks to MLflow."""

from quantstage.tasks.benchmark import benchmark_model
from quantstage.tasks.calibrate import calibrate
from quantstage.tasks.data_lineage import log_data_lineage
from quantstage.tasks.export import Shipped, export_model, export_reference
from quantstage.tasks.fallback import fallback_search
from quantstage.tasks.load import SourceModel, fetch_file, load_data, load_model, source_identity
from quantstage.tasks.log_model import log_conversion
from quantstage.tasks.lower import lower
from quantstage.tasks.publish import Publication, PublishRequest, publish
from quantstage.tasks.record import ConversionRecord, conversion_record, lineage
from quantstage.tasks.reference_convert import reference_convert
from quantstage.tasks.registry import find_version_by_key, register_model
from quantstage.tasks.report import publish_report
from quantstage.tasks.runs import end_run, start_run
from quantstage.tasks.sensitivity import analyze_sensitivity
from quantstage.tasks.train import train_digits
from quantstage.tasks.validate import validate_accuracy

__all__ = [
    "ConversionRecord",
    "Publication",
    "PublishRequest",
    "Shipped",
    "SourceModel",
    "analyze_sensitivity",
    "benchmark_model",
    "calibrate",
    "conversion_record",
    "end_run",
    "export_model",
    "export_reference",
    "fallback_search",
    "fetch_file",
    "find_version_by_key",
    "lineage",
    "load_data",
    "load_model",
    "log_conversion",
    "log_data_lineage",
    "lower",
    "publish",
    "publish_report",
    "reference_convert",
    "register_model",
    "source_identity",
    "start_run",
    "train_digits",
    "validate_accuracy",
]
