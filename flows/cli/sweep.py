"""``quantstage sweep``: one model, many candidate specs in parallel, the best registered."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml
from pydantic import ValidationError

from quantstage.flows.cli.common import (
    EXIT_GATE_FAILED,
    BadInput,
    add_gate_arguments,
    add_source_arguments,
    apply_overrides,
    gate_overrides,
    load_config,
    one_line,
    source_overrides,
    where_to_look,
)

__all__ = ["add_sweep_parser"]


def _sweep_params(args: argparse.Namespace) -> Any:
    from quantstage.flows.sweep_params import SweepParams

    raw = load_config(args.config, list(SweepParams.model_fields)) if args.config else {}
    if args.candidate:
        from quantstage.quant.engines import load_spec
        from quantstage.quant.errors import SpecError

        try:
            raw["candidates"] = [
                *raw.get("candidates", []),
                *(load_spec(p).model_dump(mode="json") for p in args.candidate),
            ]
        except SpecError as exc:
            raise BadInput(str(exc)) from exc
    for item in args.grid or ():
        field, sep, values = item.partition("=")
        parsed = yaml.safe_load(values) if sep else None
        if not sep or not field or not isinstance(parsed, list):
            raise BadInput(f"--grid {item!r} is not FIELD=[v1, v2, ...]; e.g. --grid 'backend=[x86, qnnpack]'")
        raw.setdefault("grid", {})[field] = parsed
    overrides = {
        "model_uri": args.model_uri,
        "task_runner": args.task_runner,
        "address": args.address,
        "workers": args.workers,
        "policy": args.policy,
        "finalists": args.finalists,
        "registered_name": args.registered_name,
        "alias": args.alias,
        "experiment": args.experiment,
        "force": True if args.force else None,
    }
    apply_overrides(raw, overrides | source_overrides(args) | gate_overrides(args))
    try:
        return SweepParams.model_validate(raw)
    except ValidationError as exc:
        raise BadInput(one_line(exc, "sweep parameters")) from exc


def _print_sweep(table: dict[str, list[Any]]) -> None:
    def ms(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    print(f"\n{'#':>3}  {'status':<13}{'acc drop':>9}{'p50 par.':>10}{'p50 alone':>10}  candidate")
    for i, name, status, drop, par, seq in zip(
        table["index"],
        table["candidate"],
        table["status"],
        table["accuracy_drop"],
        table["parallel_p50_ms"],
        table["sequential_p50_ms"],
    ):
        print(f"{i:>3}  {status:<13}{'-' if drop is None else f'{drop:.4f}':>9}{ms(par):>10}{ms(seq):>10}  {name}")


def _cmd_sweep(args: argparse.Namespace) -> int:
    params = _sweep_params(args)
    from quantstage.flows.sweep import SweepFailure, sweep_flow
    from quantstage.tasks.preflight import check_store

    check_store()  # an unreachable store: one line in seconds, before Prefect starts
    state = sweep_flow(params, return_state=True)
    try:
        result = state.result()
    except SweepFailure as exc:
        if args.debug:
            raise
        print(f"quantstage: no candidate passed: {exc}", file=sys.stderr)
        where_to_look()
        return EXIT_GATE_FAILED
    if result.skipped and not result.table:
        print(f"\nskipped: {result.reason}")
        return 0
    _print_sweep(result.table)
    print(f"\nwinner #{result.winner}: {result.reason}")
    print(f"models:/{result.registered_name}/{result.version} (promoted: {result.promoted})")
    where_to_look()
    return 0


def add_sweep_parser(sub: Any) -> None:
    """The ``sweep`` subcommand and its flags."""
    sweep = sub.add_parser("sweep", help="convert one model with many candidate specs in parallel; register the best")
    sweep.add_argument(
        "model_uri", nargs="?", help="models:/<name>/<version>, models:/<name>@<alias> or runs:/<run_id>/<path>"
    )
    sweep.add_argument("--config", help="YAML/JSON file of sweep parameters (flags override it)")
    add_source_arguments(sweep)
    sweep.add_argument("--candidate", action="append", help="YAML/JSON QuantSpec file: one candidate (repeatable)")
    sweep.add_argument(
        "--grid",
        action="append",
        metavar="FIELD=[V1, V2]",
        help="spec field and its values, e.g. 'backend=[x86, qnnpack]' (repeatable: every combination)",
    )
    sweep.add_argument("--task-runner", help="threads | dask | ray (default threads)")
    sweep.add_argument("--address", help="dask/ray scheduler to attach to (default: a local cluster)")
    sweep.add_argument("--workers", type=int, help="threads, or local Dask worker processes (default 2)")
    sweep.add_argument("--policy", help="fastest_passing | pareto (default fastest_passing)")
    sweep.add_argument("--finalists", type=int, help="passing candidates re-benchmarked alone (default 3)")
    add_gate_arguments(sweep)
    sweep.add_argument("--registered-name", help="registry name of the winner (default <source>-int8)")
    sweep.add_argument("--alias", help="alias moved to the winner (default champion)")
    sweep.add_argument("--experiment", help="MLflow experiment (default quantstage)")
    sweep.add_argument(
        "--force", action="store_true", help="sweep even if this exact sweep's winner is already registered"
    )
    sweep.set_defaults(run=_cmd_sweep)
