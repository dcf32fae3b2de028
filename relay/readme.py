"""The README section written from the event-type catalog, so that it cannot drift from it.

`python -m relay.readme` rewrites the section in ./README.md; with `--check` it only says
whether the section is current, exiting 1 when it is not (the test suite checks the same).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relay.event_types import EVENT_TYPES, EventType

BEGIN = (
    "<!-- built-in event types: written by `python -m relay.readme` from relay/event_types.py -->"
)
END = "<!-- end of the built-in event types -->"
# The tenant of the README's examples, the same as its quickstart's.
EXAMPLE_TENANT = "acme"


def _kind(schema: Mapping[str, Any], defs: Mapping[str, Any], sample: object) -> str:
    """What a value of this JSON Schema is, in a few words; `sample` is one such value."""
    if "$ref" in schema:
        return _kind(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, sample)
    if "anyOf" in schema:
        # An optional field's `null` is said once for all of them, under the table.
        kinds = (_kind(s, defs, sample) for s in schema["anyOf"] if s.get("type") != "null")
        return " or ".join(kinds)
    if schema.get("type") == "object":
        return f"object: {_fields(schema, defs, sample)}"
    if schema.get("type") == "integer":
        return "integer ≥ 0" if schema.get("minimum") == 0 else "integer"
    if schema.get("format") == "date-time":
        return "RFC 3339 time"
    if schema.get("pattern"):
        # A pattern reads badly in a table; the sample shows what it takes.
        return f"string like `{sample}`"
    return "non-empty string" if schema.get("minLength") else "string"


def _listed(
    names: list[str], schema: Mapping[str, Any], defs: Mapping[str, Any], sample: object
) -> str:
    properties = schema["properties"]
    values = sample if isinstance(sample, dict) else {}
    kinds = (f"`{n}` ({_kind(properties[n], defs, values.get(n))})" for n in names)
    return ", ".join(kinds) or "—"


def _split(schema: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    required = [n for n in schema["properties"] if n in schema.get("required", ())]
    optional = [n for n in schema["properties"] if n not in required]
    return required, optional


def _fields(schema: Mapping[str, Any], defs: Mapping[str, Any], sample: object) -> str:
    """A nested object's fields on one line: the required ones, then the optional ones."""
    required, optional = _split(schema)
    text = _listed(required, schema, defs, sample)
    return f"{text}; optional {_listed(optional, schema, defs, sample)}" if optional else text


def _row(event_type: EventType) -> str:
    schema, defs = event_type.schema, event_type.schema.get("$defs", {})
    required, optional = _split(schema)
    cells = (
        f"`{event_type.name}`",
        event_type.description,
        _listed(required, schema, defs, event_type.sample),
        _listed(optional, schema, defs, event_type.sample),
    )
    return f"| {' | '.join(cells)} |"


def example(event_type: EventType) -> dict[str, object]:
    """A `POST /v1/events` body of this type, with the sample data test sends carry."""
    return {"type": event_type.name, "tenant_id": EXAMPLE_TENANT, "data": event_type.sample}


def event_types_section() -> str:
    """The built-in event types: what their `data` must and may have, and an example of each."""
    lines = [
        BEGIN,
        "| type | what it means | `data` must have | `data` may have |",
        "|---|---|---|---|",
        *(_row(t) for t in EVENT_TYPES.values()),
        "",
        "An optional field may also be `null`; fields beyond these are allowed and reach receivers",
        "as sent. Anything else is a 422 whose `errors` name each field (`data.error.message`).",
        "A `POST /v1/events` body of each type, with the data a test send of that type carries:",
    ]
    for event_type in EVENT_TYPES.values():
        lines += ["", "```json", json.dumps(example(event_type), indent=2), "```"]
    return "\n".join([*lines, END])


def rewrite(readme: str) -> str:
    """The README with its generated section replaced by the catalog's current one."""
    head, begin, rest = readme.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"the README has no section between {BEGIN!r} and {END!r}")
    return head + event_types_section() + tail


def main(argv: list[str] | None = None) -> int:
    """Rewrite README.md's generated section, or with --check say whether it is current."""
    parser = argparse.ArgumentParser(prog="python -m relay.readme", description=__doc__)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    args = parser.parse_args(argv)
    current = args.readme.read_text()
    wanted = rewrite(current)
    if wanted == current:
        return 0
    if args.check:
        print(f"{args.readme}: the built-in event types are stale; run python -m relay.readme")
        return 1
    args.readme.write_text(wanted)
    print(f"{args.readme}: the built-in event types rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
