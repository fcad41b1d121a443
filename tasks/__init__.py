"""Prefect tasks, one module per pipeline stage; the only place that talks to MLflow."""

from tasks.benchmark import benchmark_model
from tasks.calibrate import calibrate
from tasks.export import export_model
from tasks.load import load_data, load_model
from tasks.lower import lower
from tasks.reference_convert import reference_convert
from tasks.report import publish_report
from tasks.track import end_run, log_conversion, promote, register_model, start_run
from tasks.train import train_digits
from tasks.validate import validate_accuracy

__all__ = [
    "benchmark_model",
    "calibrate",
    "end_run",
    "export_model",
    "load_data",
    "load_model",
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
