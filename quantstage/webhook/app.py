"""The receiver: an ASGI app (Starlette) that MLflow's registry webhook posts to.

``POST <path>`` (``/webhooks/mlflow``), in this order: a body over ``max_body_bytes`` → 413; a
missing or wrong signature, a timestamp outside ``max_age_s`` → 401; a delivery id seen before →
409; not JSON → 400; not a registry event quantstage knows → 422; filtered out → 200 ``ignored``;
else the ``quantstage.model.registered`` event goes to Prefect → 202 ``emitted`` (503 when Prefect
does not take it: MLflow retries, and the delivery id is forgotten so the retry gets through).
Every answer is one line of JSON, every delivery one log line. ``GET /health``: counters.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from quantstage.quant.errors import one_line
from quantstage.webhook.config import WebhookConfig
from quantstage.webhook.emit import PrefectEvents, registered_event
from quantstage.webhook.filters import decide, occurred, parse
from quantstage.webhook.replay import SeenDeliveries
from quantstage.webhook.signature import Refused, verify

__all__ = ["create_app"]

log = logging.getLogger("quantstage.webhook")
Send = Callable[[Mapping[str, Any]], Awaitable[UUID]]


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"body of {declared} bytes; allowed: at most {limit} (an MLflow delivery is ~1 KB)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"body over {limit} bytes; allowed: at most {limit} (an MLflow delivery is ~1 KB)")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(config: WebhookConfig, send: Send | None = None) -> Starlette:
    """The receiver for ``config``; events go to ``send`` (default: the Prefect API of the environment)."""
    secret = config.secret.get_secret_value()
    seen = SeenDeliveries(config.max_age_s, path=config.seen_file, now=time.time())
    counts: Counter[str] = Counter()

    def answer(status: int, outcome: str, reason: str, delivery_id: str = "", **extra: Any) -> JSONResponse:
        counts[outcome] += 1
        reason = one_line(reason, limit=500)
        log.log(
            logging.INFO if status < 400 else logging.WARNING,
            "%s %d %s%s",
            outcome,
            status,
            f"delivery {delivery_id[:64]}: " if delivery_id else "",
            reason,
        )
        return JSONResponse({"status": outcome, "reason": reason, **extra}, status_code=status)

    async def receive(request: Request) -> JSONResponse:
        delivery_id = ""
        try:
            body = await _body(request, config.max_body_bytes)
            delivery_id, _ = verify(secret, request.headers, body, time.time(), config.max_age_s)
            if (first := seen.claim(delivery_id, time.time())) is not None:
                raise Refused(
                    409,
                    f"delivery {delivery_id[:64]!r} was already received {time.time() - first:.0f} s ago; "
                    "a delivery id is accepted once: nothing emitted",
                )
            delivery, version = parse(body)
        except Refused as refused:
            return answer(refused.status, "refused", refused.reason, delivery_id)
        decision = decide(config, delivery, version)
        if not decision.emit:
            return answer(200, "ignored", decision.reason, delivery_id)
        event = registered_event(delivery, version, delivery_id, occurred(delivery, time.time(), config.max_age_s))
        try:
            await (send or request.app.state.events.send)(event)
        except Exception as exc:  # Prefect down or refusing: MLflow retries a 503
            seen.release(delivery_id)
            return answer(
                503, "failed", f"the Prefect API did not take the event: {type(exc).__name__}: {exc}", delivery_id
            )
        return answer(
            202,
            "emitted",
            f"{event['event']} for {event['payload']['model_uri']} ({decision.reason})",
            delivery_id,
            event_id=event["id"],
            model_uri=event["payload"]["model_uri"],
        )

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(
            {"status": "ok", "events": list(config.events), "path": config.path, "counts": dict(counts)}
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if send is not None:
            yield
            return
        async with PrefectEvents(config.emit_timeout_s) as events:
            app.state.events = events
            yield

    return Starlette(
        routes=[Route(config.path, receive, methods=["POST"]), Route("/health", health, methods=["GET"])],
        lifespan=lifespan,
    )
