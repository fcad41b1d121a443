"""Prefect tasks, one module per pipeline stage; the only place that talks to MLflow.

Every task is named ``verb_noun`` and means one thing: the library functions of ``quant/`` keep their
own names (``quant.calibrate`` vs the task ``calibrate_model``)."""

from quantstage.tasks.benchmark import benchmark_model
from quantstage.tasks.calibrate import calibrate_model
from quantstage.tasks.data_lineage import log_data_lineage
from quantstage.tasks.export import Shipped, export_model, export_reference
from quantstage.tasks.fallback import search_float_layers
from quantstage.tasks.load import SourceModel, fetch_file, identify_source, load_dataset, load_model
from quantstage.tasks.log_model import log_conversion
from quantstage.tasks.lower import lower_model
from quantstage.tasks.publish import Publication, PublishRequest, publish_model
from quantstage.tasks.record import ConversionRecord, conversion_record, lineage
from quantstage.tasks.reference_convert import convert_reference
from quantstage.tasks.registry import find_version_by_key, register_model
from quantstage.tasks.report import publish_report
from quantstage.tasks.run import ConversionRun, Settled, Winner
from quantstage.tasks.runs import end_run, recover_orphaned_runs, start_run
from quantstage.tasks.sensitivity import analyze_sensitivity
from quantstage.tasks.train import train_digits
from quantstage.tasks.validate import validate_accuracy

__all__ = [
    "ConversionRecord",
    "ConversionRun",
    "Publication",
    "PublishRequest",
    "Settled",
    "Shipped",
    "SourceModel",
    "Winner",
    "analyze_sensitivity",
    "benchmark_model",
    "calibrate_model",
    "conversion_record",
    "convert_reference",
    "end_run",
    "export_model",
    "export_reference",
    "fetch_file",
    "find_version_by_key",
    "identify_source",
    "lineage",
    "load_dataset",
    "load_model",
    "log_conversion",
    "log_data_lineage",
    "lower_model",
    "publish_model",
    "publish_report",
    "recover_orphaned_runs",
    "register_model",
    "search_float_layers",
    "start_run",
    "train_digits",
    "validate_accuracy",
]
