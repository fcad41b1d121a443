"""``quantstage webhook serve`` (the receiver) and ``quantstage webhook register URL`` (MLflow's side).

The secret comes from ``QUANTSTAGE_WEBHOOK_SECRET`` or ``--secret-file``, never from a flag's value
(a command line is visible to every user of the machine).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["add_webhook_parser"]

SECRET_FIX = "set QUANTSTAGE_WEBHOOK_SECRET or pass --secret-file (a file holding it, mode 0600)"


def _secret(args: argparse.Namespace) -> str | None:
    from quantstage.flows.cli.common import BadInput

    if not args.secret_file:
        return None
    try:
        return Path(args.secret_file).read_text().strip()
    except OSError as exc:
        raise BadInput(
            f"--secret-file {args.secret_file!r} cannot be read ({exc.strerror}); fix: {SECRET_FIX}"
        ) from None


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from quantstage.flows.cli.common import BadInput, one_line
    from quantstage.webhook.config import config_from_env

    flags = {
        "secret": _secret(args),
        "host": args.host,
        "port": args.port,
        "events": tuple(args.event) if args.event else None,
        "models": args.models,
        "aliases": tuple(args.alias) if args.alias else None,
        "skip_suffix": args.skip_suffix,
        "max_age_s": args.max_age_s,
        "max_body_bytes": args.max_body_bytes,
        "seen_file": args.seen_file,
    }
    try:
        config = config_from_env(flags)
    except ValidationError as exc:
        secret_errors = [e for e in exc.errors() if e["loc"] == ("secret",)]
        if secret_errors:  # never echo the value
            problem = "is missing" if secret_errors[0]["type"] == "missing" else "is shorter than 16 characters"
            raise BadInput(f"the webhook secret {problem}; fix: {SECRET_FIX}") from None
        raise BadInput(one_line(exc, "webhook settings")) from None
    if not os.environ.get("PREFECT_API_URL"):
        raise BadInput(
            "PREFECT_API_URL is not set; the receiver emits events to a Prefect server's API (a temporary one "
            "would drop them); fix: export PREFECT_API_URL=http://<prefect>:4200/api (and PREFECT_API_AUTH_STRING)"
        )
    import uvicorn

    from quantstage.webhook.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("quantstage.webhook").setLevel(logging.INFO)  # one line per delivery
    logging.getLogger("quantstage.webhook").info(
        "listening on http://%s:%d%s for %s -> %s",
        config.host,
        config.port,
        config.path,
        ", ".join(config.events),
        os.environ["PREFECT_API_URL"],
    )
    # MLflow delivers from at most 10 threads; more at once is not MLflow: answered 503 (and retried)
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="warning", limit_concurrency=32)
    return 0


def _register(args: argparse.Namespace) -> int:
    from quantstage.flows.cli.common import BadInput
    from quantstage.quant.errors import one_line
    from quantstage.tasks.webhooks import ensure_webhook, probe_webhook
    from quantstage.webhook.config import EVENTS

    secret = _secret(args) or os.environ.get("QUANTSTAGE_WEBHOOK_SECRET", "").strip()
    if len(secret) < 16:
        raise BadInput(f"no webhook secret of at least 16 characters; fix: {SECRET_FIX}")
    events = args.event or ["model_version.created"]
    if unknown := [e for e in events if e not in EVENTS]:
        raise BadInput(f"--event {unknown[0]!r} is not one quantstage acts on; allowed: {', '.join(EVENTS)}")
    try:
        hook_id, action = ensure_webhook(args.url, events, secret, args.name)
    except Exception as exc:
        raise BadInput(_mlflow_hint(one_line(str(exc), limit=600))) from None
    print(f"{action} MLflow webhook {args.name!r} ({hook_id}): {', '.join(events)} -> {args.url}")
    if args.no_test:
        return 0
    ok, answer = probe_webhook(hook_id)
    print(f"test delivery: {answer}")
    if not ok:
        raise BadInput(
            f"MLflow's test delivery to {args.url} failed ({answer[:300]}); fix: start the receiver "
            f"(quantstage webhook serve) with the same secret, reachable from the MLflow server"
        )
    return 0


def _mlflow_hint(message: str) -> str:
    if "PERMISSION_DENIED" in message or "403" in message:
        return f"{message}; fix: webhooks need an MLflow admin (MLFLOW_TRACKING_USERNAME/PASSWORD of the admin)"
    if "scheme" in message:
        return f"{message}; fix: put TLS in front (https), or on the MLflow server set MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https"
    if "public" in message or "private" in message.lower():
        return f"{message}; fix: on the MLflow server set MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true for a receiver on a private address"
    if "FileStore" in message or "not supported" in message.lower():
        return f"{message}; fix: webhooks need MLflow on a SQL backend store (sqlite:///..., postgresql+psycopg2://...)"
    return message


def add_webhook_parser(sub: Any) -> None:
    """``quantstage webhook serve|register``."""
    hook = sub.add_parser("webhook", help="MLflow registry webhooks -> Prefect quantstage.model.registered events")
    verbs = hook.add_subparsers(dest="webhook_command", required=True)
    serve = verbs.add_parser("serve", help="run the receiver (flags override QUANTSTAGE_WEBHOOK_* variables)")
    serve.add_argument("--host", help="listen address (default 127.0.0.1; TLS in front beyond loopback)")
    serve.add_argument("--port", type=int, help="listen port (default 5005)")
    serve.add_argument("--event", action="append", help="model_version.created (default) | model_version_alias.created")
    serve.add_argument("--models", help="regular expression a model name must match in full (default .*)")
    serve.add_argument(
        "--alias", action="append", help="with model_version_alias.created: only this alias (repeatable)"
    )
    serve.add_argument("--skip-suffix", help="model names ending with it are ignored (default -int8; '' for none)")
    serve.add_argument("--max-age-s", type=float, help="refuse deliveries timestamped further from now (default 300)")
    serve.add_argument("--max-body-bytes", type=int, help="refuse larger bodies with 413 (default 65536)")
    serve.add_argument("--seen-file", help="remember delivery ids here across restarts (replays refused)")
    serve.add_argument("--secret-file", help="file holding the webhook secret (else QUANTSTAGE_WEBHOOK_SECRET)")
    serve.set_defaults(run=_serve)
    register = verbs.add_parser("register", help="create or update MLflow's webhook (needs an MLflow admin)")
    register.add_argument(
        "url", help="the receiver's URL as MLflow reaches it, e.g. https://hooks.example.com/webhooks/mlflow"
    )
    register.add_argument(
        "--event", action="append", help="model_version.created (default) | model_version_alias.created"
    )
    register.add_argument(
        "--name", default="quantstage-registered", help="the webhook's name (default quantstage-registered)"
    )
    register.add_argument("--secret-file", help="file holding the webhook secret (else QUANTSTAGE_WEBHOOK_SECRET)")
    register.add_argument("--no-test", action="store_true", help="skip MLflow's test delivery")
    register.set_defaults(run=_register)
