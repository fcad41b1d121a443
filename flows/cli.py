"""The ``quantstage`` command line: ``quantstage convert …`` and ``quantstage demo``.

Bad input exits non-zero with one line naming the problem and the fix; ``--debug``
shows the traceback too.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

__all__ = ["main"]

EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3


class _DropTracebacks(logging.Filter):
    """Keep Prefect's failure lines but not their tracebacks (unless --debug)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


def _quiet_prefect_tracebacks() -> None:
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_DropTracebacks())


def _one_line(exc: ValidationError, source: str) -> str:
    from quant.spec import first_error

    extra = f" ({len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"invalid {source}: {first_error(exc)}{extra}"


def _load_config(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise _BadInput(f"config file {path!r} does not exist; pass the path of a YAML/JSON file of convert parameters")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise _BadInput(f"config file {path!r} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise _BadInput(f"config file {path!r} must hold a mapping of convert parameters, got {type(data).__name__}")
    return data


class _BadInput(Exception):
    pass


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def _kwargs(pairs: Sequence[str] | None, flag: str) -> dict[str, Any] | None:
    """``KEY=VALUE`` pairs (values parsed as YAML: numbers, booleans, lists) as a dict."""
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise _BadInput(f"{flag} {pair!r} is not KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def _source_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Model and data source flags (both subcommands) as dotted parameter keys."""
    return {
        "model.factory": args.model_factory,
        "model.weights": args.weights,
        "model.folder": args.model_folder,
        "model.kwargs": _kwargs(args.model_kwarg, "--model-kwarg"),
        "data.source": args.data,
        "data.kwargs": _kwargs(args.data_kwarg, "--data-kwarg"),
        "data.evaluation_source": args.eval_data,
        "evaluation.task": args.task,
    }


def _apply(raw: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Set the given flags over the config file's values; a model must come from one of them."""
    for key, value in overrides.items():
        if value is not None:
            _set(raw, key, value)
    if "model_uri" not in raw and "model" not in raw:
        raise _BadInput(
            "no model given; pass MODEL_URI (e.g. models:/digits-cnn@champion), --model-factory package.module:callable "
            "[--weights file], or model_uri/model in --config"
        )


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-factory", help="package.module:callable building the float model (instead of MODEL_URI)")
    parser.add_argument("--model-kwarg", action="append", metavar="KEY=VALUE", help="factory keyword argument (YAML value; repeatable)")
    parser.add_argument("--weights", help="state_dict for the factory's model: .pt/.pth (weights_only) or .safetensors")
    parser.add_argument("--model-folder", help="checkpoint folder passed to the factory as its first argument")
    parser.add_argument("--data", help="data source: digits | package.module:function | .pt/.npz/.npy file")
    parser.add_argument("--data-kwarg", action="append", metavar="KEY=VALUE", help="data function keyword argument (repeatable)")
    parser.add_argument("--eval-data", help="separate evaluation data source (same forms as --data)")
    parser.add_argument("--task", help="evaluation task: classification | regression | embedding")


def _convert_params(args: argparse.Namespace) -> Any:
    from flows.convert import ConvertParams

    raw = _load_config(args.config) if args.config else {}
    if args.spec:
        from quant.errors import SpecError
        from quant.spec import load_spec

        try:
            raw["spec"] = load_spec(args.spec).model_dump(mode="json")
        except SpecError as exc:
            raise _BadInput(str(exc)) from exc
    overrides = {
        "model_uri": args.model_uri,
        "spec.backend": args.backend,
        "spec.mode": args.mode,
        "spec.calibration_batches": args.calibration_batches,
        "spec.skip_modules": args.skip_module or None,
        "spec.skip_object_types": args.skip_object_type or None,
        "data.batch_size": args.batch_size,
        "gates.max_accuracy_drop": args.max_accuracy_drop,
        "registered_name": args.registered_name,
        "alias": args.alias,
        "experiment": args.experiment,
        "qat_checkpoint": args.qat_checkpoint,
        "promote_if": args.promote_if,
        "force": True if args.force else None,
        "spec.tracing": args.tracing,
        "gates.min_quantized_fraction": args.min_quantized_fraction,
    }
    _apply(raw, overrides | _source_overrides(args))
    try:
        return ConvertParams.model_validate(raw)
    except ValidationError as exc:
        raise _BadInput(_one_line(exc, "convert parameters")) from exc


def _print_summary(result: Any) -> None:
    if result.skipped:
        print(f"\nskipped: {result.reason}")
        return
    m = result.metrics
    rows = [
        ("p50 latency", f"{m['float_latency_p50_ms']:.3f} ms", f"{m['int8_latency_p50_ms']:.3f} ms"),
        ("speedup", "1.00x", f"{m['speedup']:.2f}x"),
        ("size", f"{m['float_size_bytes'] / 1024:.1f} KiB", f"{m['int8_size_bytes'] / 1024:.1f} KiB"),
    ]
    if "float_accuracy" in m:
        rows.insert(0, ("top-1 accuracy", f"{100 * m['float_accuracy']:.2f}%", f"{100 * m['int8_accuracy']:.2f}%"))
    print(f"\n{'':<16}{'float':>14}{'int8':>14}")
    for name, f, q in rows:
        print(f"{name:<16}{f:>14}{q:>14}")
    print(f"\nmodels:/{result.registered_name}/{result.version} (promoted: {result.promoted})")
    if result.reason:
        print(f"  {result.reason}")


def _where_to_look() -> None:
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


def _cmd_convert(args: argparse.Namespace) -> int:
    params = _convert_params(args)
    from flows.convert import convert_flow

    result = convert_flow(params)
    _print_summary(result)
    _where_to_look()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from flows.convert import ConvertParams, convert_flow
    from flows.train_demo import train_demo

    source = train_demo(epochs=args.epochs)
    print(f"trained and registered {source} (alias @champion)")
    result = convert_flow(ConvertParams(model_uri="models:/digits-cnn@champion"))
    _print_summary(result)
    print("\nLoad it anywhere:  mlflow.pytorch.load_model('models:/digits-cnn-int8@champion')")
    _where_to_look()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantstage", description="Turn a trained PyTorch model into a fast int8 model.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="convert a registered float model to int8 (Prefect flow, MLflow logging)")
    conv.add_argument("model_uri", nargs="?", help="models:/<name>/<version>, models:/<name>@<alias> or runs:/<run_id>/<path>")
    conv.add_argument("--config", help="YAML/JSON file of convert parameters (flags override it)")
    conv.add_argument("--spec", help="YAML/JSON QuantSpec file (replaces the config's spec; flags override it)")
    conv.add_argument("--backend", help="x86 | fbgemm | qnnpack | onednn")
    conv.add_argument("--mode", help="static | dynamic | float16 | qat")
    conv.add_argument("--qat-checkpoint", help="QAT checkpoint (path or MLflow artifact URI) to convert without calibration")
    conv.add_argument("--calibration-batches", type=int)
    conv.add_argument("--skip-module", action="append", help="module path kept float (repeatable)")
    conv.add_argument("--skip-object-type", action="append", help="dotted type/function kept float (repeatable)")
    conv.add_argument("--batch-size", type=int)
    conv.add_argument("--max-accuracy-drop", type=float, help="gate: largest allowed absolute top-1 drop")
    conv.add_argument("--registered-name", help="registry name of the int8 model (default <source>-int8)")
    conv.add_argument("--alias", help="alias moved when the gates pass (default champion)")
    conv.add_argument("--experiment", help="MLflow experiment (default quantstage)")
    conv.add_argument("--promote-if", help="gates | better (default better: also no worse than the alias holder)")
    conv.add_argument("--force", action="store_true", help="convert even if this exact conversion is already registered")
    _add_source_arguments(conv)
    conv.add_argument("--tracing", help="auto | whole | submodules (default auto)")
    conv.add_argument("--min-quantized-fraction", type=float, help="gate: least share of weighted parameters quantized")
    conv.set_defaults(run=_cmd_convert)
    demo = sub.add_parser("demo", help="train the digits CNN, register it, convert it")
    demo.add_argument("--epochs", type=int, default=4)
    demo.set_defaults(run=_cmd_demo)
    _add_sweep_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = _parser().parse_args(argv)
    if not args.debug:
        _quiet_prefect_tracebacks()
    from flows.convert import GateFailure
    from quant.errors import QuantStageError

    try:
        return args.run(args)
    except GateFailure as exc:
        if args.debug:
            raise
        print(f"quantstage: gate failed: {exc}", file=sys.stderr)
        return EXIT_GATE_FAILED
    except (QuantStageError, _BadInput) as exc:
        if args.debug:
            raise
        print(f"quantstage: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


# -- quantstage sweep --------------------------------------------------------------------------


def _sweep_params(args: argparse.Namespace) -> Any:
    from flows.sweep import SweepParams

    raw = _load_config(args.config) if args.config else {}
    if args.candidate:
        from quant.errors import SpecError
        from quant.spec import load_spec

        try:
            raw["candidates"] = [*raw.get("candidates", []), *(load_spec(p).model_dump(mode="json") for p in args.candidate)]
        except SpecError as exc:
            raise _BadInput(str(exc)) from exc
    for item in args.grid or ():
        field, sep, values = item.partition("=")
        parsed = yaml.safe_load(values) if sep else None
        if not sep or not field or not isinstance(parsed, list):
            raise _BadInput(f"--grid {item!r} is not FIELD=[v1, v2, ...]; e.g. --grid 'backend=[x86, qnnpack]'")
        raw.setdefault("grid", {})[field] = parsed
    overrides = {
        "model_uri": args.model_uri,
        "task_runner": args.task_runner,
        "address": args.address,
        "workers": args.workers,
        "policy": args.policy,
        "finalists": args.finalists,
        "gates.max_accuracy_drop": args.max_accuracy_drop,
        "registered_name": args.registered_name,
        "alias": args.alias,
        "experiment": args.experiment,
        "force": True if args.force else None,
    }
    _apply(raw, overrides | _source_overrides(args))
    try:
        return SweepParams.model_validate(raw)
    except ValidationError as exc:
        raise _BadInput(_one_line(exc, "sweep parameters")) from exc


def _print_sweep(table: dict[str, list]) -> None:
    def ms(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    print(f"\n{'#':>3}  {'status':<13}{'acc drop':>9}{'p50 par.':>10}{'p50 alone':>10}  candidate")
    for i, name, status, drop, par, seq in zip(
        table["index"], table["candidate"], table["status"], table["accuracy_drop"],
        table["parallel_p50_ms"], table["sequential_p50_ms"],
    ):
        print(f"{i:>3}  {status:<13}{'-' if drop is None else f'{drop:.4f}':>9}{ms(par):>10}{ms(seq):>10}  {name}")


def _cmd_sweep(args: argparse.Namespace) -> int:
    params = _sweep_params(args)
    from flows.sweep import SweepFailure, sweep_flow

    state = sweep_flow(params, return_state=True)
    try:
        result = state.result()
    except SweepFailure as exc:
        if args.debug:
            raise
        print(f"quantstage: no candidate passed: {exc}", file=sys.stderr)
        _where_to_look()
        return EXIT_GATE_FAILED
    if result.skipped and not result.table:
        print(f"\nskipped: {result.reason}")
        return 0
    _print_sweep(result.table)
    print(f"\nwinner #{result.winner}: {result.reason}")
    print(f"models:/{result.registered_name}/{result.version} (promoted: {result.promoted})")
    _where_to_look()
    return 0


def _add_sweep_parser(sub: Any) -> None:
    sweep = sub.add_parser("sweep", help="convert one model with many candidate specs in parallel; register the best")
    sweep.add_argument("model_uri", nargs="?", help="models:/<name>/<version>, models:/<name>@<alias> or runs:/<run_id>/<path>")
    sweep.add_argument("--config", help="YAML/JSON file of sweep parameters (flags override it)")
    _add_source_arguments(sweep)
    sweep.add_argument("--candidate", action="append", help="YAML/JSON QuantSpec file: one candidate (repeatable)")
    sweep.add_argument("--grid", action="append", metavar="FIELD=[V1, V2]",
                       help="spec field and its values, e.g. 'backend=[x86, qnnpack]' (repeatable: every combination)")
    sweep.add_argument("--task-runner", help="threads | dask | ray (default threads)")
    sweep.add_argument("--address", help="dask/ray scheduler to attach to (default: a local cluster)")
    sweep.add_argument("--workers", type=int, help="threads, or local Dask worker processes (default 2)")
    sweep.add_argument("--policy", help="fastest_passing | pareto (default fastest_passing)")
    sweep.add_argument("--finalists", type=int, help="passing candidates re-benchmarked alone (default 3)")
    sweep.add_argument("--max-accuracy-drop", type=float, help="gate: largest allowed absolute top-1 drop")
    sweep.add_argument("--registered-name", help="registry name of the winner (default <source>-int8)")
    sweep.add_argument("--alias", help="alias moved to the winner (default champion)")
    sweep.add_argument("--experiment", help="MLflow experiment (default quantstage)")
    sweep.add_argument("--force", action="store_true", help="sweep even if this exact sweep's winner is already registered")
    sweep.set_defaults(run=_cmd_sweep)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
