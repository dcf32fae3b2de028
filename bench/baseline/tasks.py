"""The baseline's Celery app and its one task: sign a webhook and POST it with httpx.

    python -m celery -A bench.baseline.tasks worker -P prefork|threads -c N --prefetch-multiplier F

What a team would write: `acks_late`, so a worker that dies mid-send leaves the task to another;
autoretry with exponential backoff and jitter on a transport error or a non-2xx answer, about
relay's schedule (5 s, then up to 10 h, 7 retries); no result backend, nothing reads results.
Runs in the baseline's virtualenv only (see requirements.txt).
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import httpx
from celery import Celery

from bench.baseline import BROKER_URL_ENV, SECRET_ENV
from bench.baseline.signing import secret_key, webhook_headers

TIMEOUT_SECONDS = 15.0  # relay's RELAY_DELIVERY_TIMEOUT default

app = Celery("webhooks", broker=os.environ[BROKER_URL_ENV])
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)
KEY = secret_key(os.environ[SECRET_ENV])

_clients: dict[int, httpx.Client] = {}
_clients_lock = threading.Lock()


class EndpointRefused(Exception):
    """The endpoint answered something other than a 2xx: the delivery is retried."""


def client() -> httpx.Client:
    """This process's pooled client: prefork children each make their own after the fork (a
    pool must not be shared across one), threads share theirs (httpx.Client is thread-safe)."""
    pid = os.getpid()
    with _clients_lock:
        if pid not in _clients:
            _clients[pid] = httpx.Client(timeout=TIMEOUT_SECONDS)
        return _clients[pid]


@app.task(
    acks_late=True,
    autoretry_for=(httpx.TransportError, EndpointRefused),
    retry_backoff=5,
    retry_backoff_max=36_000,
    retry_jitter=True,
    max_retries=7,
)
def deliver(url: str, event: dict[str, Any]) -> None:
    """POST `event` to `url`, signed; raise (and so retry) unless the answer is a 2xx."""
    body = json.dumps(event, separators=(",", ":")).encode()
    headers = {
        "content-type": "application/json",
        **webhook_headers(KEY, event["id"], int(time.time()), body),
    }
    response = client().post(url, content=body, headers=headers)
    if not response.is_success:
        raise EndpointRefused(f"{url} answered {response.status_code}")
