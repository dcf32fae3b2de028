"""The baseline's producer: the app code that queues one task per event and endpoint.

    python -m bench.baseline.enqueue --events N --event JSON --url U [--url U ...] --out F

Each of N events (JSON gives its type, tenant and data) gets an id and a timestamp and is queued
with `deliver.delay` once per endpoint URL, in this process, as a web app would right after its
own write: Celery has no HTTP ingest. The result (JSON) goes to F: the unix time of the first
enqueue, seconds to queue them all, and the CPU seconds that took. Runs in the baseline's
virtualenv only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from bench.baseline.tasks import deliver


def main(argv: list[str] | None = None) -> int:
    """Queue every task; write what it took."""
    parser = argparse.ArgumentParser(prog="python -m bench.baseline.enqueue")
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--event", required=True, help="type, tenant_id and data, as JSON")
    parser.add_argument("--url", action="append", required=True)
    parser.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args(argv)
    template = json.loads(ns.event)
    started = time.time()
    cpu_before = time.process_time()
    for _ in range(ns.events):
        event = {
            "id": f"evt_{uuid.uuid4().hex}",
            "type": template["type"],
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "tenant_id": template["tenant_id"],
            "data": template["data"],
        }
        for url in ns.url:
            deliver.delay(url, event)
    seconds = time.time() - started
    cpu = time.process_time() - cpu_before
    ns.out.write_text(json.dumps({"started": started, "seconds": seconds, "cpu_seconds": cpu}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
