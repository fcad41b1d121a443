"""The ``quantstage`` command line: ``quantstage convert …``, ``quantstage sweep …`` and ``quantstage demo``.

The source model is an MLflow model URI (``models:/``, ``runs:/``), a factory (+ weights) or a
trusted pickle; data a named set, a function or a file. Bad input exits 2 with one line naming
the problem and the fix (``--debug`` shows the traceback too); a failed gate exits 3.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from quantstage.flows.cli.common import EXIT_BAD_INPUT, EXIT_GATE_FAILED, BadInput, quiet_prefect_tracebacks
from quantstage.flows.cli.convert import add_convert_parser, add_demo_parser
from quantstage.flows.cli.sweep import add_sweep_parser

__all__ = ["EXIT_BAD_INPUT", "EXIT_GATE_FAILED", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantstage", description="Turn a trained PyTorch model into a fast int8 model."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    add_convert_parser(sub)
    add_demo_parser(sub)
    add_sweep_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's ephemeral API gets 20 s to start by default, which a loaded 2-core machine overruns
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    args = _parser().parse_args(argv)
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
        print(f"quantstage: gate failed: {exc}", file=sys.stderr)
        return EXIT_GATE_FAILED
    except (QuantStageError, BadInput) as exc:
        if args.debug:
            raise
        print(f"quantstage: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
