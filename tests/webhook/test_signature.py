"""The receiver checks deliveries exactly as MLflow signs them (mlflow.webhooks.delivery)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import pytest
from mlflow.webhooks.constants import WEBHOOK_DELIVERY_ID_HEADER, WEBHOOK_SIGNATURE_HEADER, WEBHOOK_TIMESTAMP_HEADER
from mlflow.webhooks.delivery import _generate_hmac_signature

from quantstage.webhook.signature import (
    DELIVERY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Refused,
    sign,
    verify,
)

SECRET = "0123456789abcdef0123456789abcdef"
BODY = json.dumps({"entity": "model_version", "action": "created", "data": {"name": "m", "version": "1", "é": "ü"}})


def _headers(secret: str = SECRET, body: str = BODY, age_s: float = 0) -> dict[str, str]:
    """What MLflow sends: its own signature function over the body it posts."""
    delivery_id, timestamp = str(uuid.uuid4()), str(int(time.time() - age_s))
    return {
        WEBHOOK_DELIVERY_ID_HEADER: delivery_id,
        WEBHOOK_TIMESTAMP_HEADER: timestamp,
        WEBHOOK_SIGNATURE_HEADER: _generate_hmac_signature(secret, delivery_id, timestamp, body),
    }


def test_header_names_and_signature_are_mlflows() -> None:
    assert (DELIVERY_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER) == (
        WEBHOOK_DELIVERY_ID_HEADER,
        WEBHOOK_TIMESTAMP_HEADER,
        WEBHOOK_SIGNATURE_HEADER,
    )
    assert sign(SECRET, "id-1", "1700000000", BODY.encode()) == _generate_hmac_signature(
        SECRET, "id-1", "1700000000", BODY
    )


def test_an_mlflow_delivery_verifies() -> None:
    headers = _headers()
    delivery_id, timestamp = verify(SECRET, headers, BODY.encode(), time.time(), 300)
    assert delivery_id == headers[DELIVERY_ID_HEADER] and timestamp == int(headers[TIMESTAMP_HEADER])


@pytest.mark.parametrize(
    ("headers", "body", "pattern"),
    [
        (lambda: _headers(secret="another-secret-of-enough-length"), BODY, "signature does not match the body"),
        (_headers, BODY.replace('"1"', '"2"'), "signature does not match the body"),
        (lambda: _headers(age_s=301), BODY, r"is 30\d s old; allowed: within 300 s"),
        (lambda: _headers(age_s=-400), BODY, r"dated (399|400) s ahead"),
        (dict, BODY, "missing header.*X-MLflow-Delivery-Id, X-MLflow-Timestamp, X-MLflow-Signature"),
        (lambda: {**_headers(), TIMESTAMP_HEADER: "yesterday"}, BODY, "'yesterday' is not Unix seconds"),
    ],
    ids=["wrong-secret", "tampered-body", "stale", "future", "unsigned", "bad-timestamp"],
)
def test_refused_with_401_and_one_line(headers: Callable[[], dict[str, str]], body: str, pattern: str) -> None:
    with pytest.raises(Refused, match=pattern) as refused:
        verify(SECRET, headers(), body.encode(), time.time(), 300)
    assert refused.value.status == 401 and "\n" not in refused.value.reason
    assert SECRET not in refused.value.reason
