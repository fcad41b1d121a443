"""The ``quantstage`` command line: ``quantstage convert …``, ``quantstage sweep …``, ``quantstage demo``
and ``quantstage webhook serve|register`` (quantstage/webhook/cli.py).

The source model is an MLflow model URI (``models:/``, ``runs:/``), a factory (+ weights) or a
trusted pickle; data a named set, a function or a file. Bad input exits 2 with one line naming
the problem and the fix (``--debug`` shows the traceback too); a failed gate exits 3.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

# Ctrl-C at any moment: the handler goes in as this module loads (the console script imports it
# first; it and quantstage/__init__ import only the standard library), and everything heavy (torch,
# Prefect, MLflow) loads after it, inside main(). One that lands inside a lazy import leaves a
# half-initialised module behind, whose next use raises anything (AttributeError...): remembering the
# interrupt lets main() report it as what it was: "interrupted", exit 130. The handler raises
# KeyboardInterrupt as Python's own does.
_INTERRUPTED = threading.Event()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _INTERRUPTED.set()
    raise KeyboardInterrupt


if (
    threading.current_thread() is threading.main_thread()
    and signal.getsignal(signal.SIGINT) is signal.default_int_handler
):
    signal.signal(signal.SIGINT, _on_sigint)

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import NoReturn  # noqa: E402

from quantstage.flows.cli.codes import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_GATE_FAILED, EXIT_INTERRUPTED  # noqa: E402

__all__ = ["EXIT_BAD_INPUT", "EXIT_ERROR", "EXIT_GATE_FAILED", "EXIT_INTERRUPTED", "main", "run"]


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (its default prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"quantstage: error: {message}; see {self.prog} --help\n")


def _parser() -> argparse.ArgumentParser:
    from quantstage.flows.cli.convert import add_convert_parser, add_demo_parser
    from quantstage.flows.cli.sweep import add_sweep_parser
    from quantstage.webhook.cli import add_webhook_parser

    parser = _Parser(prog="quantstage", description="Turn a trained PyTorch model into a fast int8 model.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    add_convert_parser(sub)
    add_demo_parser(sub)
    add_sweep_parser(sub)
    add_webhook_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _on_sigint) if main_thread else None
    _INTERRUPTED.clear()
    try:
        return _main(argv)
    except KeyboardInterrupt:  # while parsing or importing, before _main's own handlers
        return _interrupted()
    except Exception:
        if _INTERRUPTED.is_set():  # what a Ctrl-C inside an import left half-initialised raised
            return _interrupted()
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)


def run() -> NoReturn:
    """The ``quantstage`` command (console script, ``python -m quantstage.flows.cli``): ``main``, then exit.

    After a Ctrl-C the process leaves without the interpreter's teardown (exit handlers still run):
    a Ctrl-C inside ``import torch`` leaves extension modules half-initialised, and tearing those down
    can crash (SIGSEGV) or re-raise the interrupt, turning exit 130 into 139 or -2."""
    code = main()
    if code == EXIT_INTERRUPTED:
        import atexit

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while the exit handlers run
        atexit._run_exitfuncs()  # Prefect's temporary server is stopped, logs are flushed
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _interrupted() -> int:
    return _fail(EXIT_INTERRUPTED, "interrupted: the conversion stopped; its MLflow run is marked FAILED")


def _main(argv: Sequence[str] | None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's ephemeral API gets 20 s to start by default, which a loaded 2-core machine overruns
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed on one line: the exit code
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    from quantstage.flows.cli.common import BadInput, quiet_prefect_tracebacks
    from quantstage.flows.convert import GateFailure
    from quantstage.quant.errors import QuantStageError

    if not args.debug:
        quiet_prefect_tracebacks()
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
        return _interrupted()
    except Exception as exc:
        if args.debug:
            raise
        if _INTERRUPTED.is_set():  # whatever a Ctrl-C left behind (a half-imported module...) raised
            return _interrupted()
        return _fail(EXIT_ERROR, _unexpected(exc))


def _fail(code: int, message: str) -> int:
    try:
        from quantstage.quant.errors import one_line  # loads torch: after an interrupt it may not import

        line = one_line(message)
    except BaseException:
        line = " ".join(message.split())
    print(f"quantstage: {line}", file=sys.stderr)
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
