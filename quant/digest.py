"""Content digests: idempotency keys and evaluation digests are sha256 of canonical JSON (pure)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["digest"]


def digest(parts: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``parts`` (idempotency keys, evaluation digests)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
