"""What every quantstage subcommand shares: exit codes, one-line errors, config files and flags over them,
the model/data source flags, and where to look afterwards."""

from __future__ import annotations

import argparse
import difflib
import io
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO, cast

import yaml
from pydantic import ValidationError

from quantstage.flows.cli.codes import EXIT_BAD_INPUT, EXIT_GATE_FAILED

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


class _CurrentStderr(io.TextIOBase):
    """``sys.stderr`` as it is at each write (not as it was when a handler was made)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]  # TextIOBase declares it read-only
        return getattr(sys.stderr, "encoding", None) or "utf-8"


_CURRENT_STDERR = cast(TextIO, _CurrentStderr())  # a text stream in all that logging and rich use


class _DropTracebacks(logging.Filter):
    """On the console: no tracebacks (unless --debug), and no lines at all about a quantstage error,
    which the CLI prints itself as its one line. Prefect's API log handler sits before the console
    handler (on the ``prefect.*`` loggers, not the root), so the UI keeps the full traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from quantstage.quant.errors import QuantStageError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, QuantStageError) or type(exc).__name__ == "GateFailure":
            return False
        if record.levelno >= logging.ERROR and "Finished in state Failed" in str(record.msg):
            ours = {c.__name__ for c in _subclasses(QuantStageError)} | {"GateFailure"}
            if any(f"exception {name}:" in record.getMessage() for name in ours):
                return False  # the task's failure line about an error the CLI prints itself
        record.exc_info = None
        record.exc_text = None
        return True


def _subclasses(cls: type[Exception]) -> list[type[Exception]]:
    found = [cls]
    for direct in cls.__subclasses__():
        found += _subclasses(direct)
    return found


def quiet_prefect_tracebacks() -> None:
    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    if not logging.getLogger().handlers:
        setup_logging()
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler):
                # whatever sys.stderr is when a line is written: the stream bound when logging was set up
                # may be closed by then (in-process calls under a captured stderr), and a logging error
                # there recurses through Prefect's print_as_log until RecursionError
                if not isinstance(handler.stream, _CurrentStderr):  # not setStream: it flushes the old one
                    handler.stream = _CURRENT_STDERR
                    handler.console.file = _CURRENT_STDERR  # what it prints through (rich)
                if not any(isinstance(f, _DropTracebacks) for f in handler.filters):
                    handler.addFilter(_DropTracebacks())


def one_line(exc: ValidationError, source: str) -> str:
    from quantstage.quant.config.spec import first_error

    extra = f" ({len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"invalid {source}: {first_error(exc)}{extra}"


def load_config(path: str, fields: Sequence[str]) -> dict[str, Any]:
    """The parameters a ``--config`` file holds; an unknown top-level key is named with the nearest field."""
    from quantstage.quant.config.files import read_mapping
    from quantstage.quant.errors import SpecError

    try:
        data = read_mapping(path, "config file")
    except SpecError as exc:
        raise BadInput(str(exc)) from None
    for key in data:
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise BadInput(
                f"config file {path!r} has the unknown key {key!r}; {hint}allowed: {', '.join(sorted(fields))}"
            )
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
    "min_speedup": "smallest float/int8 latency ratio at the headline batch, beyond the measured noise (default 1.0)",
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
