"""The operator commands of `relay`: deliveries, webhooks, recover, events and tokens, over the
HTTP API (never Redis), so they work from anywhere the API is reachable.

Exit status: 0 done, 1 the API said no (its detail is printed), 2 a usage error.

An operator command is one HTTP call, so it imports only what that call needs: no settings, no
Redis client, no web framework (they would triple its start-up time).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from relay.delivery.model import Status
from relay.runtime import StaleRuntime, dev_admin_token, running
from relay.tables import as_json, record, table
from relay.timefmt import now, rfc3339

if TYPE_CHECKING:
    from relay.client import RelayClient

DELIVERY_COLUMNS = (
    "id",
    "webhook_id",
    "event_type",
    "status",
    "attempt_count",
    "last_status_code",
    "created_at",
)
DELIVERY_FIELDS = (
    *DELIVERY_COLUMNS,
    "event_id",
    "tenant_id",
    "next_attempt_at",
    "last_error",
    "updated_at",
    "delivered_at",
)
WEBHOOK_COLUMNS = ("id", "tenant_id", "url", "events", "enabled", "disabled_reason")
TOKEN_COLUMNS = ("id", "role", "tenant_id", "name", "created_at")
EVENT_FIELDS = ("id", "type", "tenant_id", "upstream_id", "created_at")
ATTEMPT_COLUMNS = ("number", "started_at", "status_code", "trigger", "duration_ms", "error")


class UsageError(Exception):
    """Missing settings or arguments: exit status 2."""


# What each variable the operator commands read holds, for the message when one is missing.
_VARIABLES = {
    "RELAY_URL": "the API's base URL, e.g. http://localhost:8000",
    "RELAY_TOKEN": "an API token, e.g. from `relay token create --role admin`",
}
_RELATIVE = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _local_dev() -> tuple[str, str] | None:
    """The URL and admin token of the `relay dev` running on RELAY_DATA_DIR, if one is."""
    data_dir = Path(os.environ.get("RELAY_DATA_DIR") or ".relay")
    try:
        dev = running(data_dir)
    except StaleRuntime:
        return None
    token = os.environ.get("RELAY_ADMIN_TOKEN") or dev_admin_token(data_dir)
    return (dev.api_url, token) if dev is not None and token else None


def client_from_env() -> RelayClient:
    """A client for RELAY_URL with RELAY_TOKEN; with neither set, for the `relay dev` running
    on this data dir."""
    from relay.client import RelayClient

    url, token = os.environ.get("RELAY_URL", ""), os.environ.get("RELAY_TOKEN", "")
    if not url and not token:
        url, token = _local_dev() or ("", "")
    missing = [name for name, value in (("RELAY_URL", url), ("RELAY_TOKEN", token)) if not value]
    if missing:
        wanted = " and ".join(f"{name} ({_VARIABLES[name]})" for name in missing)
        alone = " (no `relay dev` is running on this data dir)" if len(missing) == 2 else ""
        raise UsageError(f"set {wanted}{alone}")
    return RelayClient(url, token)


def moment(text: str) -> str:
    """An option's time: RFC 3339 as given, or `30m`, `1h`, `2d`, `1w` … ago, made RFC 3339.

    Anything else goes to the API as it is, which names the parameter it cannot read.
    """
    relative = _RELATIVE.fullmatch(text.strip())
    if relative is None:
        return text
    amount, unit = relative.groups()
    return rfc3339(now() - timedelta(**{_UNITS[unit]: int(amount)}))


def _seconds(text: str) -> float:
    """An option's number of seconds, 0 or more."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return seconds


Show = Callable[["RelayClient", argparse.Namespace], tuple[object, str]]


def _deliveries_list(api: RelayClient, args: argparse.Namespace) -> tuple[object, str]:
    page = api.call(
        "GET",
        "/v1/deliveries",
        params={
            "status": args.status,
            "webhook_id": args.webhook,
            "since": args.since,
            "until": args.until,
            "limit": str(args.limit),
        },
    )
    text = table(page["data"], DELIVERY_COLUMNS)
    if page["next_cursor"]:
        text += "\n(more: narrow with --since or --status)"
    return page, text


def _delivery_get(api: RelayClient, args: argparse.Namespace) -> tuple[object, str]:
    delivery = api.delivery(args.id)
    attempts = table(delivery["attempts"], ATTEMPT_COLUMNS)
    return delivery, f"{record(delivery, DELIVERY_FIELDS)}\n\nattempts:\n{attempts}"


def _delivery_action(action: str) -> Show:
    def run(api: RelayClient, args: argparse.Namespace) -> tuple[object, str]:
        done = api.delivery_action(args.id, action)
        return done, record(done, DELIVERY_FIELDS)

    return run


def _webhooks_list(api: RelayClient, args: argparse.Namespace) -> tuple[object, str]:
    page = api.call("GET", "/v1/webhooks", params={"tenant_id": args.tenant, "limit": "100"})
    return page, table(page["data"], WEBHOOK_COLUMNS)


def _webhook_enabled(enabled: bool) -> Show:
    def run(api: RelayClient, args: argparse.Namespace) -> tuple[object, str]:
        done = api.data("PATCH", f"/v1/webhooks/{args.id}", body={"enabled": enabled})
        return done, record(done, WEBHOOK_COLUMNS)

    return run


# How often `recover` asks how far a recovery in the background has got.
_FOLLOW_EVERY_SECONDS = 0.25


def _recover(api: RelayClient, args: argparse.Namespace) -> tuple[object, str]:
    body = {"since": args.since, **({"until": args.until} if args.until else {})}
    recovery = api.data("POST", f"/v1/webhooks/{args.webhook}/recover", body=body)
    # A window larger than one batch goes on in the background: the first answer's count is
    # only that batch, so follow the recovery to its end before saying how many went again.
    # Not for ever: with no worker to carry it on, it would wait until interrupted. Once the
    # count has not moved for `--wait` seconds the command says where the recovery stands and
    # how to follow it, and leaves it running.
    moved_at, requeued = time.monotonic(), recovery["requeued"]
    while recovery["status"] == "running":
        if time.monotonic() - moved_at >= args.wait:
            return recovery, (
                f"recovery {recovery['id']} still running: requeued {recovery['requeued']} "
                f"failed deliveries so far, none in the last {args.wait:g} s; "
                f"follow it with GET {recovery['url']}"
            )
        time.sleep(_FOLLOW_EVERY_SECONDS)
        recovery = api.data("GET", recovery["url"])
        if recovery["requeued"] != requeued:
            moved_at, requeued = time.monotonic(), recovery["requeued"]
    return recovery, f"requeued {recovery['requeued']} failed deliveries"


def _event_get(api: RelayClient, args: argparse.Namespace) -> tuple[object, str]:
    event = api.data("GET", f"/v1/events/{args.id}")
    deliveries = table(event["deliveries"], ("id", "webhook_id", "status"))
    return event, f"{record(event, EVENT_FIELDS)}\n\ndeliveries:\n{deliveries}"


# What `events send` sends in one request unless told: the API's own default of
# RELAY_MAX_BATCH_EVENTS, or that variable when it is set here too.
_DEFAULT_BATCH = 100
SEND_COLUMNS = ("line", "status", "id", "detail")


def _event_lines(path: Path) -> list[tuple[int, object]]:
    """(line number, event) of each non-blank line of a JSON Lines file; UsageError naming
    the first line that is not JSON (nothing is sent then)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    events = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                events.append((number, orjson.loads(line)))
            except orjson.JSONDecodeError as exc:
                raise UsageError(f"{path}, line {number}: not JSON ({exc})") from None
    return events


def _sent(number: int, result: dict[str, Any]) -> dict[str, Any]:
    """One row of `events send`: the line, its status, the event or why it was refused."""
    data = result.get("data") or {}
    detail = result.get("detail")
    if result.get("errors"):
        fields = "; ".join(f"{k}: {', '.join(v)}" for k, v in result["errors"].items())
        detail = f"{detail} ({fields})"
    elif result["status"] == 200:
        detail = "a repeat of its upstream id: the first event"
    return {"line": number, "status": result["status"], "id": data.get("id"), "detail": detail}


def send_events(args: argparse.Namespace) -> int:
    """`relay events send`: post a JSON Lines file in batches; exit 1 if any event was refused."""
    from relay.client import ApiRefused, Unreachable

    size = args.batch
    if size is None:
        configured = os.environ.get("RELAY_MAX_BATCH_EVENTS") or str(_DEFAULT_BATCH)
        if not configured.isdigit():
            raise UsageError(
                f"RELAY_MAX_BATCH_EVENTS must be a number of events, not {configured!r}"
            )
        size = int(configured)
    if size < 1:
        raise UsageError("--batch must be at least 1")
    events = _event_lines(Path(args.file))
    api = client_from_env()
    rows: list[dict[str, Any]] = []
    failure = None
    try:
        for start in range(0, len(events), size):
            chunk = events[start : start + size]
            body = {"events": [event for _, event in chunk]}
            results = api.call("POST", "/v1/events/batch", body=body)["data"]
            rows += [_sent(n, r) for (n, _), r in zip(chunk, results, strict=True)]
    except (ApiRefused, Unreachable) as exc:
        failure = f"relay: {exc} (lines from {chunk[0][0]} on were not sent)"
    finally:
        api.close()
    refused = sum(row["status"] >= 300 for row in rows)
    if args.json:
        print(as_json(rows))
    else:
        print(table(rows, SEND_COLUMNS))
        print(f"{len(rows) - refused} of {len(events)} events accepted, {refused} refused")
    if failure:
        print(failure, file=sys.stderr)
    return 1 if failure or refused else 0


def _tokens_list(api: RelayClient, _: argparse.Namespace) -> tuple[object, str]:
    page = api.call("GET", "/v1/tokens", params={"limit": "100"})
    return page, table(page["data"], TOKEN_COLUMNS)


def _token_revoke(api: RelayClient, args: argparse.Namespace) -> tuple[object, str]:
    done = api.data("DELETE", f"/v1/tokens/{args.id}")
    return done, f"revoked {done['id']} ({done['role']}, {done['name'] or 'unnamed'})"


def run(show: Show, args: argparse.Namespace) -> int:
    """Call the API and print what it answered, as a table or (--json) as JSON."""
    from relay.client import ApiRefused, Unreachable

    api = client_from_env()
    try:
        answer, text = show(api, args)
    except (ApiRefused, Unreachable) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    finally:
        api.close()
    print(as_json(answer) if args.json else text)
    return 0


def _command(parser: argparse.ArgumentParser, show: Show) -> None:
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")
    parser.set_defaults(func=lambda args: run(show, args))


_TIMES = "RFC 3339, or ago: 30m, 1h, 2d, 1w"


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the operator commands to the `relay` parser's subcommands."""
    deliveries = sub.add_parser("deliveries", help="list, retry and cancel deliveries")
    actions = deliveries.add_subparsers(dest="action", required=True)
    listed = actions.add_parser("list", help="deliveries, newest first")
    listed.add_argument("--status", choices=[s.value for s in Status], help="only these")
    listed.add_argument("--webhook", help="only this webhook's (wh_...)")
    listed.add_argument("--since", type=moment, help=f"created at or after T ({_TIMES})")
    listed.add_argument("--until", type=moment, help=f"created before T ({_TIMES})")
    listed.add_argument("--limit", type=int, default=50, help="at most this many (1-100)")
    _command(listed, _deliveries_list)
    get = actions.add_parser("get", help="a delivery and its attempts")
    get.add_argument("id", help="the delivery (dlv_...)")
    _command(get, _delivery_get)
    for action, text in (("retry", "send again"), ("cancel", "cancel a pending delivery")):
        p = actions.add_parser(action, help=text)
        p.add_argument("id", help="the delivery (dlv_...)")
        _command(p, _delivery_action(action))

    webhooks = sub.add_parser("webhooks", help="list, enable and disable webhooks")
    actions = webhooks.add_subparsers(dest="action", required=True)
    listed = actions.add_parser("list", help="webhooks, newest first")
    listed.add_argument("--tenant", help="only this tenant's")
    _command(listed, _webhooks_list)
    for action, enabled in (("enable", True), ("disable", False)):
        p = actions.add_parser(action, help=f"{action} a webhook")
        p.add_argument("id", help="the webhook (wh_...)")
        _command(p, _webhook_enabled(enabled))

    recover = sub.add_parser("recover", help="send a webhook's failed deliveries of a window again")
    recover.add_argument("webhook", help="the webhook (wh_...)")
    recover.add_argument("--since", required=True, type=moment, help=f"start ({_TIMES})")
    recover.add_argument("--until", type=moment, help=f"end, default now ({_TIMES})")
    recover.add_argument(
        "--wait",
        type=_seconds,
        default=30.0,
        help="seconds to follow a recovery whose count stops moving (default 30)",
    )
    _command(recover, _recover)

    events = sub.add_parser("events", help="look at and send events")
    actions = events.add_subparsers(dest="action", required=True)
    get = actions.add_parser("get", help="an event and its deliveries")
    get.add_argument("id", help="the event (evt_...)")
    _command(get, _event_get)
    send = actions.add_parser(
        "send", help="post events from a JSON Lines file (one event a line), in batches"
    )
    send.add_argument("--file", required=True, help="the file: one event's JSON per line")
    send.add_argument(
        "--batch",
        type=int,
        help="events per request (default RELAY_MAX_BATCH_EVENTS, else 100)",
    )
    send.add_argument("--json", action="store_true", help="print each event's result as JSON")
    send.set_defaults(func=send_events)

    tokens = sub.add_parser("tokens", help="list and revoke API tokens")
    actions = tokens.add_subparsers(dest="action", required=True)
    _command(actions.add_parser("list", help="API tokens, newest first"), _tokens_list)
    revoke = actions.add_parser("revoke", help="revoke a token")
    revoke.add_argument("id", help="the token (tok_...)")
    _command(revoke, _token_revoke)
