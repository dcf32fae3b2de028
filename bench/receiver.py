"""The benchmark's receiver: a fast webhook endpoint on loopback, run as its own process.

    python -m bench.receiver --port P      (the `whsec_` secret comes in BENCH_SECRET)

Every POST under /hook/ is answered 200 at once. Endpoints that misbehave, for the chaos run and
the waiting benchmark, live under their own prefixes: /fail/ answers 500, /flap/ 500 half the
time, /hang/
answers (503) only after --hang-seconds, past relay's delivery timeout, and /limit/ takes
--limit-per-second requests a second and answers the rest 429 with `Retry-After: 1`. Two more
stand for endpoints with a capacity of their own, for the adaptive concurrency benchmark:
/paced/ answers 200 after --paced-ms, however many requests it has in flight, and /knee/ slows
down with its requests in flight (--knee-base-ms plus --knee-step-ms per other request in
flight) and answers 503 with `Retry-After: 1` at once to a request beyond --knee in flight.

Every request's signature is verified with an HMAC check written from the Standard Webhooks
spec (a few microseconds, so it does not slow the receiver down); every 100th request is
verified again with the `standardwebhooks` library, as a cross-check that relay and the
off-the-shelf library agree. The harness reads counts from GET /stats, the first arrival time
of each webhook-id from GET /arrivals, the first arrival of each (path, webhook-id) under a path
prefix from GET /deliveries?prefix=, per path the requests and how many 2xx answers each
webhook-id got from GET /paths, and clears all of them with POST /reset. Arrival times are unix
seconds from this machine's clock, read once the body is in.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import standardwebhooks
import uvloop
from aiohttp import web

from bench.procs import SECRET_ENV
from relay.config import MAX_BODY_BYTES_CEILING

# The spec's default tolerance for webhook-timestamp.
TOLERANCE_SECONDS = 300
LIBRARY_EVERY = 100
# The largest event relay accepts, with room for the envelope around it.
MAX_BODY_BYTES = MAX_BODY_BYTES_CEILING + 65_536


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
    hanging: int = 0  # requests to /hang/ begun
    knee_peak: int = 0  # the most requests /knee/ endpoints had in flight at once
    knee_in_flight: int = 0  # the sum, over requests to /knee/, of those in flight on arrival
    arrivals: dict[str, float] = field(default_factory=dict)  # webhook-id -> first arrival
    seen: dict[tuple[str, str], float] = field(default_factory=dict)  # (path, id) -> first
    accepted: Counter[tuple[str, str]] = field(default_factory=Counter)  # 2xx answers given
    by_path: Counter[str] = field(default_factory=Counter)  # requests per path

    def note(self, path: str, msg_id: str, arrived: float, ok: bool) -> None:
        """Count one request."""
        self.requests += 1
        self.by_path[path] += 1
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
            self.seen[key] = arrived

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
            "hanging": self.hanging,
            "knee_peak": self.knee_peak,
            "knee_in_flight": self.knee_in_flight,
        }


@dataclass(frozen=True, slots=True)
class Misbehaviour:
    """How the endpoints that fail on purpose fail."""

    hang_seconds: float = 30.0
    limit_per_second: int = 5
    paced_ms: float = 20.0
    knee: int = 8
    knee_base_ms: float = 20.0
    knee_step_ms: float = 10.0


class Receiver:
    """The aiohttp handlers around one Tally."""

    def __init__(self, verifier: Verifier, misbehaviour: Misbehaviour | None = None) -> None:
        self.verifier = verifier
        self.misbehaviour = misbehaviour or Misbehaviour()
        self.tally = Tally()
        self._window = (0, 0)  # (unix second, requests taken in it) of the /limit/ endpoints
        self._knee_in_flight = 0

    async def hook(self, request: web.Request) -> web.Response:
        """A healthy webhook: answer 200."""
        return await self._take(request, 200)

    async def fail(self, request: web.Request) -> web.Response:
        """A failing webhook: always 500."""
        return await self._take(request, 500)

    async def flap(self, request: web.Request) -> web.Response:
        """A flapping webhook: 500 half the time."""
        return await self._take(request, 500 if random.random() < 0.5 else 200)

    async def hang(self, request: web.Request) -> web.Response:
        """A webhook that answers, 503, only after relay has given up waiting."""
        await request.read()  # kept by aiohttp: relay may have hung up by the time we answer
        self.tally.hanging += 1
        await asyncio.sleep(self.misbehaviour.hang_seconds)
        return await self._take(request, 503)

    async def limit(self, request: web.Request) -> web.Response:
        """A rate-limited webhook: past its requests per second, 429 with Retry-After."""
        second, taken = self._window
        now = int(time.time())
        taken = taken + 1 if now == second else 1
        self._window = (now, taken)
        if taken > self.misbehaviour.limit_per_second:
            return await self._take(request, 429, {"Retry-After": "1"})
        return await self._take(request, 200)

    async def paced(self, request: web.Request) -> web.Response:
        """An endpoint that answers 200 in --paced-ms, whatever its load."""
        await asyncio.sleep(self.misbehaviour.paced_ms / 1000)
        return await self._take(request, 200)

    async def knee(self, request: web.Request) -> web.Response:
        """An endpoint that slows down with its load, and is overloaded past --knee in flight."""
        m = self.misbehaviour
        self._knee_in_flight += 1
        try:
            in_flight = self._knee_in_flight
            self.tally.knee_peak = max(self.tally.knee_peak, in_flight)
            self.tally.knee_in_flight += in_flight
            if in_flight > m.knee:
                return await self._take(request, 503, {"Retry-After": "1"})
            await asyncio.sleep((m.knee_base_ms + m.knee_step_ms * (in_flight - 1)) / 1000)
            return await self._take(request, 200)
        finally:
            self._knee_in_flight -= 1

    async def _take(
        self, request: web.Request, status: int, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        """Verify, note the arrival (and the 2xx answer, if it is one), answer `status`."""
        body = await request.read()
        arrived = time.time()
        ok = self.verifier.check(request.headers, body, arrived)
        tally = self.tally
        if tally.requests % LIBRARY_EVERY == 0:
            tally.library_checked += 1
            if not self.verifier.check_with_library(request.headers, body):
                tally.library_rejected += 1
                ok = False
        msg_id = request.headers.get("webhook-id", "")
        tally.note(request.path, msg_id, arrived, ok)
        if status < 300:
            tally.accepted[(request.path, msg_id)] += 1
        return web.Response(status=status, headers=headers)

    async def stats(self, _: web.Request) -> web.Response:
        """The counts so far."""
        return web.json_response(self.tally.summary())

    async def arrivals(self, _: web.Request) -> web.Response:
        """The first arrival time of every webhook-id."""
        return web.json_response(self.tally.arrivals)

    async def deliveries(self, request: web.Request) -> web.Response:
        """[path, webhook-id, first arrival] of each delivery to a path under ?prefix=."""
        prefix = request.query.get("prefix", "/")
        found = [[p, i, t] for (p, i), t in self.tally.seen.items() if p.startswith(prefix)]
        return web.json_response(found)

    async def paths(self, _: web.Request) -> web.Response:
        """Per path: its requests, and how many 2xx answers each webhook-id got."""
        tally = self.tally
        by_path = {path: {"requests": n, "accepted": {}} for path, n in tally.by_path.items()}
        for (path, msg_id), count in tally.accepted.items():
            by_path[path]["accepted"][msg_id] = count  # type: ignore[index]
        return web.json_response(by_path)

    async def reset(self, _: web.Request) -> web.Response:
        """Forget everything, before a new phase."""
        self.tally = Tally()
        return web.json_response({"reset": True})

    def app(self) -> web.Application:
        """The routes."""
        # As large a body as relay may send (aiohttp refuses more than 1 MiB by default).
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/hook/{name}", self.hook)
        app.router.add_post("/fail/{name}", self.fail)
        app.router.add_post("/flap/{name}", self.flap)
        app.router.add_post("/hang/{name}", self.hang)
        app.router.add_post("/limit/{name}", self.limit)
        app.router.add_post("/paced/{name}", self.paced)
        app.router.add_post("/knee/{name}", self.knee)
        app.router.add_get("/stats", self.stats)
        app.router.add_get("/arrivals", self.arrivals)
        app.router.add_get("/deliveries", self.deliveries)
        app.router.add_get("/paths", self.paths)
        app.router.add_post("/reset", self.reset)
        return app


def main(argv: list[str] | None = None) -> int:
    """Serve on 127.0.0.1 until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench.receiver")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hang-seconds", type=float, default=Misbehaviour().hang_seconds)
    parser.add_argument("--limit-per-second", type=int, default=Misbehaviour().limit_per_second)
    parser.add_argument("--paced-ms", type=float, default=Misbehaviour().paced_ms)
    parser.add_argument("--knee", type=int, default=Misbehaviour().knee)
    parser.add_argument("--knee-base-ms", type=float, default=Misbehaviour().knee_base_ms)
    parser.add_argument("--knee-step-ms", type=float, default=Misbehaviour().knee_step_ms)
    ns = parser.parse_args(argv)
    misbehaviour = Misbehaviour(
        ns.hang_seconds,
        ns.limit_per_second,
        ns.paced_ms,
        ns.knee,
        ns.knee_base_ms,
        ns.knee_step_ms,
    )
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
        Receiver(verifier, misbehaviour).app(),
        host="127.0.0.1",
        port=ns.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
