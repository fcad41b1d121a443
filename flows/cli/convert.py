"""``quantstage convert`` and ``quantstage demo``."""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError

from quantstage.flows.cli.common import (
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

__all__ = ["add_convert_parser", "add_demo_parser"]


def _convert_params(args: argparse.Namespace) -> Any:
    from quantstage.flows.convert import ConvertParams

    raw = load_config(args.config, list(ConvertParams.model_fields)) if args.config else {}
    if args.spec:
        from quantstage.quant.engines import load_spec
        from quantstage.quant.errors import SpecError

        try:
            raw["spec"] = load_spec(args.spec).model_dump(mode="json", exclude_defaults=True)  # flags may change engine
        except SpecError as exc:
            raise BadInput(str(exc)) from exc
    overrides = {
        "model_uri": args.model_uri,
        "spec.engine": args.engine,
        "spec.backend": args.backend,
        "spec.mode": args.mode,
        "spec.calibration_batches": args.calibration_batches,
        "spec.skip_modules": args.skip_module or None,
        "spec.skip_object_types": args.skip_object_type or None,
        "data.batch_size": args.batch_size,
        "registered_name": args.registered_name,
        "alias": args.alias,
        "experiment": args.experiment,
        "qat_checkpoint": args.qat_checkpoint,
        "promote_if": args.promote_if,
        "force": True if args.force else None,
        "spec.tracing": args.tracing,
    }
    apply_overrides(raw, overrides | source_overrides(args) | gate_overrides(args))
    try:
        return ConvertParams.model_validate(raw)
    except ValidationError as exc:
        raise BadInput(one_line(exc, "convert parameters")) from exc


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


def _cmd_convert(args: argparse.Namespace) -> int:
    params = _convert_params(args)
    from quantstage.flows.convert import convert_flow
    from quantstage.tasks.preflight import check_store

    check_store()  # an unreachable store: one line in seconds, before Prefect starts
    result = convert_flow(params)
    _print_summary(result)
    where_to_look()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from quantstage.flows.convert import ConvertParams, convert_flow
    from quantstage.flows.train_demo import train_demo

    source = train_demo(epochs=args.epochs)
    print(f"trained and registered {source} (alias @champion)")
    result = convert_flow(ConvertParams(model_uri="models:/digits-cnn@champion"))
    _print_summary(result)
    print("\nLoad it anywhere:  mlflow.pytorch.load_model('models:/digits-cnn-int8@champion')")
    where_to_look()
    return 0


def add_convert_parser(sub: Any) -> None:
    """The ``convert`` subcommand and its flags."""
    conv = sub.add_parser(
        "convert",
        help="convert a float model (MLflow URI, factory + weights, or trusted pickle) to int8 (Prefect flow, MLflow logging)",
    )
    conv.add_argument(
        "model_uri", nargs="?", help="models:/<name>/<version>, models:/<name>@<alias> or runs:/<run_id>/<path>"
    )
    conv.add_argument("--config", help="YAML/JSON file of convert parameters (flags override it)")
    conv.add_argument("--spec", help="YAML/JSON QuantSpec file (replaces the config's spec; flags override it)")
    conv.add_argument(
        "--engine",
        help="fx (torch.ao FX, ships TorchScript) | pt2e (torch.export + torchao, ships AOTInductor) | auto (race "
        "the candidate engines, ship the fastest that passes the accuracy gates)",
    )
    conv.add_argument("--backend", help="x86 | fbgemm | qnnpack | onednn")
    conv.add_argument("--mode", help="static | dynamic | float16 | qat")
    conv.add_argument(
        "--qat-checkpoint", help="QAT checkpoint (path or MLflow artifact URI) to convert without calibration"
    )
    conv.add_argument("--calibration-batches", type=int)
    conv.add_argument("--skip-module", action="append", help="module path kept float (repeatable)")
    conv.add_argument("--skip-object-type", action="append", help="dotted type/function kept float (repeatable)")
    conv.add_argument("--batch-size", type=int)
    conv.add_argument("--registered-name", help="registry name of the int8 model (default <source>-int8)")
    conv.add_argument("--alias", help="alias moved when the gates pass (default champion)")
    conv.add_argument("--experiment", help="MLflow experiment (default quantstage)")
    conv.add_argument("--promote-if", help="gates | better (default better: also no worse than the alias holder)")
    conv.add_argument(
        "--force", action="store_true", help="convert even if this exact conversion is already registered"
    )
    add_source_arguments(conv)
    conv.add_argument("--tracing", help="auto | whole | submodules (default auto)")
    add_gate_arguments(conv)
    conv.set_defaults(run=_cmd_convert)


def add_demo_parser(sub: Any) -> None:
    """The ``demo`` subcommand."""
    demo = sub.add_parser("demo", help="train the digits CNN, register it, convert it")
    demo.add_argument("--epochs", type=int, default=4)
    demo.set_defaults(run=_cmd_demo)
