"""Prefect tasks, one module per pipeline stage; the only place that talks to MLflow."""

from tasks.benchmark import benchmark_model
from tasks.calibrate import calibrate, load_qat
from tasks.coverage import measure_coverage
from tasks.export import export_model, export_reference
from tasks.fallback import fallback_search
from tasks.load import fetch_file, load_data, load_model
from tasks.lower import lower
from tasks.reference_convert import reference_convert
from tasks.report import publish_report
from tasks.sensitivity import analyze_sensitivity
from tasks.track import end_run, log_conversion, promote, register_model, start_run
from tasks.train import train_digits
from tasks.validate import validate_accuracy

__all__ = [
    "analyze_sensitivity",
    "benchmark_model",
    "calibrate",
    "end_run",
    "export_model",
    "export_reference",
    "fallback_search",
    "fetch_file",
    "load_data",
    "load_model",
    "load_qat",
    "measure_coverage",
    "log_conversion",
    "lower",
    "promote",
    "publish_report",
    "reference_convert",
    "register_model",
    "start_run",
    "train_digits",
    "validate_accuracy",
]
