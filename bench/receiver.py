"""The benchmark's receiver: a fast webhook endpoint on loopback, run as its own process.

    python -m bench.receiver --port P      (the `whsec_` secret comes in BENCH_SECRET)

Every POST under /hook/ is answered 200 at once. Every request's signature is verified with an
HMAC check written from the Standard Webhooks spec (a few microseconds, so it does not slow the
receiver down); every 100th request is verified again with the `standardwebhooks` library, as a
cross-check that relay and the off-the-shelf library agree. The harness reads counts from
GET /stats, the first arrival time of each webhook-id from GET /arrivals, and clears both with
POST /reset. Arrival times are unix seconds from this machine's clock, read once the body is in.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import standardwebhooks
import uvloop
from aiohttp import web

SECRET_ENV = "BENCH_SECRET"
# The spec's default tolerance for webhook-timestamp.
TOLERANCE_SECONDS = 300
LIBRARY_EVERY = 100


class Verifier:
    """Checks `webhook-signature` against one `whsec_` secret."""

    def __init__(self, secret: str) -> None:
        self._key = base64.b64decode(secret.removeprefix("whsec_"))
        self._library = standardwebhooks.Webhook(secret)

    def check(self, headers: Mapping[str, str], body: bytes, now: float) -> bool:
        """Whether one `v1` signature matches and the timestamp is within tolerance."""
        msg_id = headers.get("webhook-id", "")
        stamp = headers.get("webhook-timestamp", "")
        try:
            fresh = abs(now - int(stamp)) <= TOLERANCE_SECONDS
        except ValueError:
            return False
        mac = hmac.new(self._key, f"{msg_id}.{stamp}.".encode(), hashlib.sha256)
        mac.update(body)
        expected = "v1," + base64.b64encode(mac.digest()).decode("ascii")
        offered = headers.get("webhook-signature", "").split()
        return fresh and any(hmac.compare_digest(expected, sig) for sig in offered)

    def check_with_library(self, headers: Mapping[str, str], body: bytes) -> bool:
        """The same check done by the `standardwebhooks` library."""
        names = ("webhook-id", "webhook-timestamp", "webhook-signature")
        try:
            self._library.verify(body, {n: headers.get(n, "") for n in names}, json_parse=False)
        except standardwebhooks.webhooks.WebhookVerificationError:
            return False
        return True

    def self_test(self) -> bool:
        """Whether our check accepts what the library signs, and refuses a tampered body."""
        msg_id, body = "msg_selftest", b'{"self":"test"}'
        signed = self._library.sign(msg_id, datetime.now(UTC), body.decode())
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(time.time())),
            "webhook-signature": signed,
        }
        now = time.time()
        return self.check(headers, body, now) and not self.check(headers, body + b" ", now)


@dataclass(slots=True)
class Tally:
    """What has arrived since the last reset."""

    requests: int = 0
    verified: int = 0
    rejected: int = 0
    library_checked: int = 0
    library_rejected: int = 0
    duplicates: int = 0
    first: float | None = None
    last: float | None = None
    arrivals: dict[str, float] = field(default_factory=dict)  # webhook-id -> first arrival
    seen: set[tuple[str, str]] = field(default_factory=set)  # (path, webhook-id)

    def note(self, path: str, msg_id: str, arrived: float, ok: bool) -> None:
        """Count one request."""
        self.requests += 1
        if ok:
            self.verified += 1
        else:
            self.rejected += 1
        if self.first is None:
            self.first = arrived
        self.last = arrived
        self.arrivals.setdefault(msg_id, arrived)
        # The same webhook-id on the same path twice means relay sent a delivery again.
        key = (path, msg_id)
        if key in self.seen:
            self.duplicates += 1
        else:
            self.seen.add(key)

    def summary(self) -> dict[str, object]:
        """The counts, for GET /stats."""
        return {
            "requests": self.requests,
            "verified": self.verified,
            "rejected": self.rejected,
            "library_checked": self.library_checked,
            "library_rejected": self.library_rejected,
            "duplicates": self.duplicates,
            "distinct_ids": len(self.arrivals),
            "first": self.first,
            "last": self.last,
        }


class Receiver:
    """The aiohttp handlers around one Tally."""

    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier
        self.tally = Tally()

    async def hook(self, request: web.Request) -> web.Response:
        """A webhook: verify, note the arrival, answer 200."""
        body = await request.read()
        arrived = time.time()
        ok = self.verifier.check(request.headers, body, arrived)
        tally = self.tally
        if tally.requests % LIBRARY_EVERY == 0:
            tally.library_checked += 1
            if not self.verifier.check_with_library(request.headers, body):
                tally.library_rejected += 1
                ok = False
        tally.note(request.path, request.headers.get("webhook-id", ""), arrived, ok)
        return web.Response()

    async def stats(self, _: web.Request) -> web.Response:
        """The counts so far."""
        return web.json_response(self.tally.summary())

    async def arrivals(self, _: web.Request) -> web.Response:
        """The first arrival time of every webhook-id."""
        return web.json_response(self.tally.arrivals)

    async def reset(self, _: web.Request) -> web.Response:
        """Forget everything, before a new phase."""
        self.tally = Tally()
        return web.json_response({"reset": True})

    def app(self) -> web.Application:
        """The routes."""
        app = web.Application()
        app.router.add_post("/hook/{name}", self.hook)
        app.router.add_get("/stats", self.stats)
        app.router.add_get("/arrivals", self.arrivals)
        app.router.add_post("/reset", self.reset)
        return app


def main(argv: list[str] | None = None) -> int:
    """Serve on 127.0.0.1 until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench.receiver")
    parser.add_argument("--port", type=int, required=True)
    port: int = parser.parse_args(argv).port
    secret = os.environ.get(SECRET_ENV, "")
    if not secret.startswith("whsec_"):
        print(f"receiver: {SECRET_ENV} must hold a whsec_ secret", file=sys.stderr)
        return 2
    verifier = Verifier(secret)
    if not verifier.self_test():
        print("receiver: the HMAC check disagrees with standardwebhooks", file=sys.stderr)
        return 2
    # uvloop: the receiver should be as fast as we can make it, it is the fixed point of the bench.
    web.run_app(
        Receiver(verifier).app(),
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
