"""What every quantstage subcommand shares: exit codes, one-line errors, config files and flags over them,
the model/data source flags, and where to look afterwards."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_GATE_FAILED",
    "BadInput",
    "OFF",
    "add_gate_arguments",
    "add_source_arguments",
    "apply_overrides",
    "kwargs_of",
    "load_config",
    "one_line",
    "quiet_prefect_tracebacks",
    "gate_overrides",
    "set_path",
    "source_overrides",
    "threshold",
    "where_to_look",
]

EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3


class _DropTracebacks(logging.Filter):
    """Keep Prefect's failure lines but not their tracebacks (unless --debug)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


def quiet_prefect_tracebacks() -> None:
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_DropTracebacks())


def one_line(exc: ValidationError, source: str) -> str:
    from quantstage.quant.config.spec import first_error

    extra = f" ({len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"invalid {source}: {first_error(exc)}{extra}"


def load_config(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise BadInput(f"config file {path!r} does not exist; pass the path of a YAML/JSON file of convert parameters")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BadInput(f"config file {path!r} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise BadInput(f"config file {path!r} must hold a mapping of convert parameters, got {type(data).__name__}")
    return data


class BadInput(Exception):
    pass


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def kwargs_of(pairs: Sequence[str] | None, flag: str) -> dict[str, Any] | None:
    """``KEY=VALUE`` pairs (values parsed as YAML: numbers, booleans, lists) as a dict."""
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadInput(f"{flag} {pair!r} is not KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def source_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Model and data source flags (both subcommands) as dotted parameter keys."""
    return {
        "model.factory": args.model_factory,
        "model.weights": args.weights,
        "model.folder": args.model_folder,
        "model.kwargs": kwargs_of(args.model_kwarg, "--model-kwarg"),
        "data.source": args.data,
        "data.kwargs": kwargs_of(args.data_kwarg, "--data-kwarg"),
        "data.evaluation_source": args.eval_data,
        "evaluation.task": args.task,
        "evaluation.pooling": args.pooling,
        "output": args.output,
    }


class _Off:
    """A threshold flag given as ``none``: the gate is switched off explicitly (not the task default)."""

    def __repr__(self) -> str:
        return "none"


OFF = _Off()


def threshold(text: str) -> float | _Off:
    """A gate flag's value: a number, or ``none`` to switch the gate off."""
    if text.strip().lower() in ("none", "null", "off"):
        return OFF
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number; give one, or none to switch the gate off"
        ) from None


_GATES = {
    "max_accuracy_drop": "largest allowed top-1 accuracy drop (classification default 0.01)",
    "min_agreement": "smallest top-1 agreement with float (classification default 0.90)",
    "min_cosine": "smallest cosine of the worst sample's embedding (embedding default 0.93)",
    "min_mean_cosine": "smallest mean embedding cosine (embedding default 0.98)",
    "min_sqnr_db": "smallest output SQNR in dB (regression default 20)",
    "min_speedup": "smallest float/int8 p50 latency ratio (no default)",
    "min_quantized_fraction": "smallest share of weighted parameters quantized (no default)",
}


def add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per gate: a threshold, or ``none`` to switch it off; unset gates take the task's defaults."""
    for name, what in _GATES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=threshold, metavar="X|none", help=f"gate: {what}")


def gate_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The gate flags as dotted parameter keys (``min_sqnr_db`` is ``gates.min_output_sqnr_db``)."""
    fields = {name: "min_output_sqnr_db" if name == "min_sqnr_db" else name for name in _GATES}
    return {f"gates.{field}": getattr(args, name) for name, field in fields.items()}


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Set the given flags over the config file's values; a model must come from one of them."""
    for key, value in overrides.items():
        if value is not None:
            set_path(raw, key, None if value is OFF else value)
    if "model_uri" not in raw and "model" not in raw:
        raise BadInput(
            "no model given; pass MODEL_URI (e.g. models:/digits-cnn@champion), --model-factory package.module:callable "
            "[--weights file], or model_uri/model in --config"
        )


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-factory", help="package.module:callable building the float model (instead of MODEL_URI)"
    )
    parser.add_argument(
        "--model-kwarg", action="append", metavar="KEY=VALUE", help="factory keyword argument (YAML value; repeatable)"
    )
    parser.add_argument("--weights", help="state_dict for the factory's model: .pt/.pth (weights_only) or .safetensors")
    parser.add_argument("--model-folder", help="checkpoint folder passed to the factory as its first argument")
    parser.add_argument("--data", help="data source: digits | package.module:function | .pt/.npz/.npy file")
    parser.add_argument(
        "--data-kwarg", action="append", metavar="KEY=VALUE", help="data function keyword argument (repeatable)"
    )
    parser.add_argument("--eval-data", help="separate evaluation data source (same forms as --data)")
    parser.add_argument("--task", help="evaluation task: classification | regression | embedding")
    parser.add_argument("--pooling", help="embedding: mean (over the attention mask, default) | cls | none")
    parser.add_argument(
        "--output", metavar="NAME", help="when forward returns a ModelOutput/dict/tuple: the field to compare and serve"
    )


def where_to_look() -> None:
    import mlflow

    print("\nWhere to look:")
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        print(f"  MLflow UI:   mlflow ui --backend-store-uri {uri}")
    else:
        print(f"  MLflow UI:   {uri}")
    api = os.environ.get("PREFECT_API_URL")
    if api:
        print(f"  Prefect UI:  {api.removesuffix('/api')}")
    else:
        print("  Prefect UI:  prefect server start   (then http://127.0.0.1:4200; ephemeral runs are kept there)")
