"""JSON encoding for everything relay stores and serves (orjson: fast and strict)."""

from __future__ import annotations

from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    """Encode to compact JSON bytes."""
    return orjson.dumps(value)


def loads(raw: bytes | str) -> Any:
    """Decode JSON bytes or text."""
    return orjson.loads(raw)
