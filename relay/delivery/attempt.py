"""Making one attempt of a claimed delivery: the receiver's request, the send, its verdict, the
settle, and the webhook's disabling when its endpoint is gone or keeps failing.

The worker calls `deliver` and nothing below it. The receiver's request is built in one place,
`receiver_request`, for deliveries and test sends alike.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from relay import audit, logs, tracing
from relay.delivery.concurrency import load
from relay.delivery.model import Attempt, Claim, Settled, Settlement, Status
from relay.delivery.outage import REDIS_AWAY, Backoff
from relay.delivery.policy import judge
from relay.metrics import attempt_counters
from relay.resources import USER_AGENT, Resources
from relay.secrets import Keyring, SecretDecryptionError
from relay.sender import SendResult
from relay.signing import signature_headers
from relay.store import codec
from relay.timefmt import from_timestamp
from relay.webhooks import (
    REDACTED,
    Webhook,
    custom_headers,
    disable,
    signing_keys,
)

log = logging.getLogger("relay.delivery")


@dataclass(frozen=True, slots=True)
class ReceiverRequest:
    """Exactly what a receiver gets: where, which bytes, which headers."""

    url: str
    body: bytes
    headers: dict[str, str]
    custom: frozenset[str] = frozenset()  # the webhook's own header names

    @property
    def logged_headers(self) -> dict[str, str]:
        """The headers as the attempt log shows them (the sender adds user-agent): a custom
        header's value is often a credential for the receiver, so only its name is kept."""
        shown = {k: REDACTED if k in self.custom else v for k, v in self.headers.items()}
        return {**shown, "user-agent": USER_AGENT}


def receiver_request(
    webhook: Webhook, keyring: Keyring, event_id: str, body: bytes, now_ms: int, *, test: bool
) -> ReceiverRequest:
    """The signed request for one attempt (or test send) of `body` to `webhook`: every header
    but the sender's own (user-agent, accept-encoding). Custom headers come first and relay's
    own after them: webhook_rules refuses a custom name relay sets, and were one to get through,
    relay's value would still be the one sent."""
    signing = signing_keys(webhook, keyring, now_ms)
    custom = custom_headers(webhook, keyring)
    headers = {
        **custom,
        "content-type": "application/json",
        **signature_headers(event_id, now_ms // 1000, body, signing),
    }
    if test:
        headers["webhook-test"] = "true"
    return ReceiverRequest(webhook.url, body, headers, frozenset(custom))


class _Once:
    """Remembers which problems this process has logged, so each is logged once."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, ...]] = set()

    def first(self, *key: str) -> bool:
        """True the first time `key` is seen."""
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


_logged = _Once()


@lru_cache(maxsize=1024)
def _webhook(record: bytes) -> Webhook:
    # Every attempt at an endpoint claims its record as Redis keeps it: the same bytes are read
    # into a Webhook once, not once an attempt. Nothing on an attempt's path changes a Webhook,
    # and what is kept is what Redis holds, nothing decrypted: secrets and header values are
    # opened for each attempt, as before.
    return Webhook.from_record(codec.loads(record))


def _no_attempt(claim: Claim) -> tuple[Webhook | None, Settlement | None]:
    """The webhook to send to, or the settlement of a delivery that cannot be attempted."""

    def end(status: Status, reason: str) -> Settlement:
        return Settlement(status, None, None, None, reason, counters=(f"deliveries:{status}",))

    if claim.webhook_record is None:
        return None, end(Status.CANCELED, "the webhook was deleted")
    webhook = _webhook(claim.webhook_record)
    if not webhook.enabled:
        reason = f"the webhook is disabled: {webhook.disabled_reason or 'by its owner'}"
        return None, end(Status.FAILED, reason)
    if claim.payload is None:
        return None, end(Status.FAILED, "the event has expired")
    return webhook, None


def _unsent(error: str) -> SendResult:
    return SendResult(
        status_code=None, duration_ms=0, error=error, response_body="", retry_after=None
    )


async def _send(
    svc: Resources, webhook: Webhook, claim: Claim, body: bytes
) -> tuple[SendResult, dict[str, str]]:
    """Prepare and make the attempt; a failure to prepare is the attempt's error, never raised."""
    try:
        request = receiver_request(
            webhook, svc.keyring, claim.event_id, body, claim.now_ms, test=False
        )
    except SecretDecryptionError as exc:
        if _logged.first("secret", webhook.id):
            log.error(
                "cannot send to webhook %s: its secret or a custom header cannot be "
                "decrypted (%s); its deliveries fail until RELAY_SECRET_KEYS holds that key",
                webhook.id,
                exc,
            )
        error = f"the webhook's secret or a custom header cannot be decrypted ({exc})"
        return _unsent(f"could not prepare the request: {error}"), {}
    return await svc.sender.send(request.url, request.body, request.headers), request.logged_headers


async def _attempt(
    svc: Resources, webhook: Webhook, claim: Claim, body: bytes
) -> tuple[Settlement, bool]:
    """Make the attempt and judge it: the settlement, and whether the endpoint is gone (410)."""
    result, headers = await _send(svc, webhook, claim, body)
    finished_ms = claim.now_ms + result.duration_ms
    verdict = judge(
        svc.settings.retry_schedule,
        claim.attempt - claim.cycle_start,
        result.status_code,
        result.error,
        result.retry_after,
        datetime.fromtimestamp(finished_ms / 1000, UTC),
        claim.trigger,
    )
    seconds = result.duration_ms / 1000
    timeout_ms = round(svc.settings.delivery_timeout * 1000)
    # Within a tenth of the timeout: its attempts give their slots back soon enough.
    quick = result.duration_ms * 10 <= timeout_ms
    answer = load(result.status_code, result.duration_ms, timeout_ms, quick, claim.endpoint_full)
    concurrency = svc.settings.endpoint_concurrency_rule.next(
        claim.endpoint_concurrency, answer, random.random()
    )
    settlement = Settlement(
        status=verdict.status,
        attempt=Attempt(
            number=claim.attempt,
            started_at=from_timestamp(claim.now_ms / 1000),
            duration_ms=result.duration_ms,
            status_code=result.status_code,
            error=result.error,
            response_body=result.response_body,
            request_headers=headers,
            url=webhook.url,
            trigger=claim.trigger,
        ),
        delay_ms=int(verdict.delay * 1000) if verdict.delay is not None else None,
        last_status_code=result.status_code,
        last_error=verdict.error,
        counters=tuple(
            attempt_counters(
                result.status_code,
                seconds,
                verdict.status if verdict.status is not Status.PENDING else None,
            )
        ),
        duration_seconds=seconds,
        endpoint_ok=result.ok,
        quick=quick,
        concurrency=concurrency,
    )
    return settlement, verdict.disable_webhook


def _broken(svc: Resources, claim: Claim, exc: Exception) -> Settlement:
    """An attempt that failed inside relay: a failed attempt like any other, retried on schedule."""
    error = f"relay could not make the attempt: {type(exc).__name__}: {exc}"
    verdict = judge(
        svc.settings.retry_schedule,
        claim.attempt - claim.cycle_start,
        None,
        error,
        None,
        datetime.now(UTC),
        claim.trigger,
    )
    final = verdict.status if verdict.status is not Status.PENDING else None
    return Settlement(
        status=verdict.status,
        attempt=Attempt(
            number=claim.attempt,
            started_at=from_timestamp(claim.now_ms / 1000),
            duration_ms=0,
            status_code=None,
            error=error,
            response_body="",
            request_headers={},
            url="",
            trigger=claim.trigger,
        ),
        delay_ms=int(verdict.delay * 1000) if verdict.delay is not None else None,
        last_status_code=None,
        last_error=verdict.error,
        counters=tuple(attempt_counters(None, 0.0, final)),
    )


async def _settle(svc: Resources, claim: Claim, settlement: Settlement, patience: float) -> Settled:
    """Settle, trying again while Redis is away for up to `patience` seconds (the lease).

    After that the lease has run out and another worker repeats the attempt: at least once.
    """
    backoff = Backoff()
    deadline = time.monotonic() + patience
    while True:
        try:
            return await svc.deliveries.settle(claim, settlement)
        except REDIS_AWAY:
            if time.monotonic() > deadline:
                raise
            await backoff.wait()


async def deliver(svc: Resources, claim: Claim, patience: float) -> None:
    """Make one claimed attempt, log it, and schedule what comes next.

    Whatever goes wrong in between ends as a logged, failed attempt with its reason: a claimed
    delivery never stays `delivering` because of an error in relay.
    """
    with logs.scope(**claim.log_ids()), tracing.attempt_span(claim.traceparent, claim.log_ids()):
        await _deliver(svc, claim, patience)


async def _deliver(svc: Resources, claim: Claim, patience: float) -> None:
    gone = False
    try:
        webhook, settlement = _no_attempt(claim)
        logs.annotate(tenant_id=webhook.tenant_id if webhook else None)
        if webhook is not None and claim.payload is not None:
            settlement, gone = await _attempt(svc, webhook, claim, claim.payload)
    except Exception as exc:  # the attempt must end settled, whatever broke
        log.exception(
            "delivery %s attempt %s failed inside relay", claim.delivery_id, claim.attempt
        )
        settlement = _broken(svc, claim, exc)
    assert settlement is not None
    _finished(claim, settlement)
    settled = await _settle(svc, claim, settlement, patience)
    if settled.written:
        # Counted once the attempt is on record, so a result dropped below is not counted.
        svc.counts.add_all(settlement.counters)
        svc.counts.add("attempt_seconds_sum", settlement.duration_seconds)
    else:
        # Only a decision not to attempt (a deleted or disabled webhook, an expired event) is
        # dropped so: an attempt that was made is always logged, however late it comes back.
        log.warning(
            "delivery %s was taken over before its attempt %s; nothing was sent, nothing to log",
            claim.delivery_id,
            claim.attempt,
        )
        return
    why = _disable_reason(
        gone, settled.failing_since_ms, settled.now_ms, svc.settings.disable_after
    )
    if why is not None:
        disabled = await svc.webhooks.change(claim.webhook_id, lambda w: disable(w, why))
        svc.counts.add("webhooks_auto_disabled")
        await svc.audit.add(
            audit.entry("webhook.auto_disable", audit.SYSTEM, disabled.id, disabled.tenant_id, None)
        )


def _finished(claim: Claim, settlement: Settlement) -> None:
    """The attempt's one log line, and its span's outcome (no URL, header or body: ids only)."""
    attempt = settlement.attempt
    code = attempt.status_code if attempt else None
    tracing.record_attempt(code, settlement.last_error)
    log.info(
        "attempt %d: %s; delivery %s",
        claim.attempt,
        code or settlement.last_error,
        settlement.status.value,
        extra={
            "status": settlement.status.value,
            "status_code": code,
            "duration_ms": attempt.duration_ms if attempt else 0,
            "error": settlement.last_error,
        },
    )


def _disable_reason(
    gone: bool, failing_since_ms: int | None, now_ms: int, disable_after: int
) -> str | None:
    """Why the webhook should be disabled now, if it should."""
    if gone:
        return "the endpoint answered 410 Gone"
    if failing_since_ms is not None and now_ms - failing_since_ms >= disable_after * 1000:
        since = from_timestamp(failing_since_ms / 1000)
        return f"every attempt since {since} failed (more than {disable_after} s)"
    return None
