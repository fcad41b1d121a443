"""The ``quantstage`` command line: ``quantstage convert …``, ``quantstage sweep …``, ``quantstage demo``
and ``quantstage webhook serve|register`` (quantstage/webhook/cli.py).

The source model is an MLflow model URI (``models:/``, ``runs:/``), a factory (+ weights) or a
trusted pickle; data a named set, a function or a file. Bad input exits 2 with one line naming
the problem and the fix (``--debug`` shows the traceback too); a failed gate exits 3.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from quantstage.flows.cli.common import EXIT_BAD_INPUT, EXIT_GATE_FAILED, BadInput, quiet_prefect_tracebacks
from quantstage.flows.cli.convert import add_convert_parser, add_demo_parser
from quantstage.flows.cli.sweep import add_sweep_parser
from quantstage.quant.errors import one_line
from quantstage.webhook.cli import add_webhook_parser

__all__ = ["EXIT_BAD_INPUT", "EXIT_ERROR", "EXIT_GATE_FAILED", "EXIT_INTERRUPTED", "main"]

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (its default prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"quantstage: error: {message}; see {self.prog} --help\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="quantstage", description="Turn a trained PyTorch model into a fast int8 model.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    add_convert_parser(sub)
    add_demo_parser(sub)
    add_sweep_parser(sub)
    add_webhook_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's ephemeral API gets 20 s to start by default, which a loaded 2-core machine overruns
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed on one line: the exit code
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    if not args.debug:
        quiet_prefect_tracebacks()
    from quantstage.flows.convert import GateFailure
    from quantstage.quant.errors import QuantStageError

    try:
        code: int = args.run(args)
        return code
    except GateFailure as exc:
        if args.debug:
            raise
        return _fail(EXIT_GATE_FAILED, f"gate failed: {exc}")
    except (QuantStageError, BadInput) as exc:
        if args.debug:
            raise
        return _fail(EXIT_BAD_INPUT, f"error: {exc}")
    except KeyboardInterrupt:
        if args.debug:
            raise
        return _fail(EXIT_INTERRUPTED, "interrupted: the conversion stopped; its MLflow run is marked FAILED")
    except Exception as exc:
        if args.debug:
            raise
        return _fail(EXIT_ERROR, _unexpected(exc))


def _fail(code: int, message: str) -> int:
    print(f"quantstage: {one_line(message)}", file=sys.stderr)
    return code


def _unexpected(exc: BaseException) -> str:
    text = str(exc)
    if "ephemeral Prefect API" in text:
        limit = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "20")
        return (
            f"error: Prefect's temporary API did not start within {limit} s (a busy machine?); fix: raise "
            f"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or run a Prefect server and set PREFECT_API_URL"
        )
    from quantstage.tasks._common import is_transient

    if is_transient(exc):
        uri = os.environ.get("MLFLOW_TRACKING_URI", "the local MLflow store")
        return (
            f"error: the MLflow store {uri} stopped answering and did not come back through the retries: "
            f"{type(exc).__name__}: {text}; fix: bring it back and rerun (the rerun marks this run FAILED "
            f"and completes anything half-registered)"
        )
    return f"unexpected {type(exc).__name__}: {text} (run with --debug for the traceback)"
