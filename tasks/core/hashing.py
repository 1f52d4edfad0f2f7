"""Stable digests: trajectory ids, resume keys and seeds are made from them."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(*parts: Any) -> str:
    """A stable hex digest of JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def stable_int(*parts: Any, bits: int = 31) -> int:
    """A stable non-negative integer of `bits` bits from JSON-able parts (for seeds)."""
    return int(digest(*parts)[:16], 16) % (1 << bits)
