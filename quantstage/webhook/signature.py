"""MLflow's webhook signature, exactly as ``mlflow.webhooks.delivery`` (MLflow 3.3+) computes it.

Every delivery carries three headers: ``X-MLflow-Delivery-Id`` (a UUID), ``X-MLflow-Timestamp``
(Unix seconds) and, when the webhook has a secret, ``X-MLflow-Signature: v1,<base64>`` where
``<base64>`` is HMAC-SHA256(secret, ``"<delivery id>.<timestamp>.<body>"``) over the request body
exactly as sent (the Standard Webhooks scheme). ``verify`` checks all three and the age of the
timestamp; a failure is a ``Refused`` with the HTTP status and one line that says what was
received, what is allowed and the fix.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

__all__ = [
    "DELIVERY_ID_HEADER",
    "SIGNATURE_HEADER",
    "SIGNATURE_VERSION",
    "TIMESTAMP_HEADER",
    "Refused",
    "sign",
    "verify",
]

# mlflow/webhooks/constants.py
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"


class Refused(Exception):
    """A delivery the receiver will not act on: ``status`` is the HTTP answer, the message one line."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The ``X-MLflow-Signature`` value MLflow sends for ``body`` (``v1,<base64 HMAC-SHA256>``)."""
    content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode("utf-8"), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float, max_age_s: float) -> tuple[str, int]:
    """The delivery id and timestamp of a delivery whose signature matches and whose timestamp is
    within ``max_age_s`` of ``now`` (either way: a clock ahead is as suspect as a replay); else ``Refused``."""
    delivery_id = headers.get(DELIVERY_ID_HEADER, "").strip()
    raw_timestamp = headers.get(TIMESTAMP_HEADER, "").strip()
    signature = headers.get(SIGNATURE_HEADER, "").strip()
    given = {DELIVERY_ID_HEADER: delivery_id, TIMESTAMP_HEADER: raw_timestamp, SIGNATURE_HEADER: signature}
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise Refused(
            401,
            f"missing header(s) {', '.join(missing)}; MLflow sends all three when its webhook has a secret; "
            f"fix: create the webhook with the receiver's secret (quantstage webhook register)",
        )
    if len(delivery_id) > 128:
        raise Refused(
            400,
            f"{DELIVERY_ID_HEADER} is {len(delivery_id)} characters long; allowed: at most 128 (MLflow sends a UUID)",
        )
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise Refused(
            401, f"{TIMESTAMP_HEADER} {raw_timestamp[:40]!r} is not Unix seconds; MLflow sends e.g. '1735689600'"
        ) from None
    expected = sign(secret, delivery_id, raw_timestamp, body)
    offered = [s for s in signature.split() if s.startswith(f"{SIGNATURE_VERSION},")]
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered):
        raise Refused(
            401,
            f"signature does not match the body (delivery {delivery_id[:64]!r}); allowed: {SIGNATURE_VERSION},"
            f"base64(HMAC-SHA256(secret, '<id>.<timestamp>.<body>')); fix: give MLflow's webhook the receiver's secret",
        )
    age = now - timestamp
    if abs(age) > max_age_s:
        when = f"{age:.0f} s old" if age > 0 else f"dated {-age:.0f} s ahead"
        raise Refused(
            401,
            f"delivery {delivery_id[:64]!r} is {when}; allowed: within {max_age_s:.0f} s of the receiver's clock; "
            f"fix: none for a stale or replayed delivery (refused by design); if MLflow's clock is off, sync both (NTP)",
        )
    return delivery_id, timestamp
