"""How the operator CLI prints: aligned tables for people, JSON for scripts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as a plain-text table with a header line; `(none)` when empty."""
    if not rows:
        return "(none)"
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [[c.upper() for c in columns], *cells]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def record(obj: dict[str, Any], fields: Sequence[str]) -> str:
    """One object as `field: value` lines."""
    width = max(len(f) for f in fields)
    return "\n".join(f"{f.ljust(width)}  {_cell(obj.get(f))}" for f in fields)


def as_json(value: object) -> str:
    """Indented JSON, as scripts read it."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
