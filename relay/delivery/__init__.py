"""A delivery's whole life: states, transitions, Redis scripts, store, queue and use cases.

    accept ──► pending ──claim──► delivering ──settle──► delivered
                 ▲  │                 │   │
                 │  │ parked          │   └──settle──► failed (schedule exhausted, 410,
                 │  ▼ (endpoint busy) │                 webhook disabled, event expired)
                 │ waits, free ◄──────┘ settle: retry due later
                 │                    (slot freed → one parked delivery is due again)
                 ├── cancel: pending ──► canceled (webhook deleted: settle ──► canceled)
                 └── restart: delivered | failed | canceled ──► pending (fresh schedule)
                              pending ──► pending, due now

- `model.py`    statuses and transitions, declared once
- `policy.py`   the retry schedule and what an attempt's result means (pure)
- `scripts/`    one Lua script per transition, each taking one JSON argument; `prelude.lua`
                gives every script Redis's clock (`TIME`), so no worker's clock decides anything
- `store.py`    the only delivery code that knows Redis key names
- `queue.py`    the only module that imports arq (background jobs: recoveries)
- `service.py`  the use cases: attempt, retry, cancel, recover, retry an event, test send —
                `receiver_request` builds what a receiver gets, for all of them
- `outage.py`   riding out Redis outages: backoff

The due set is the queue: a sorted set of delivery ids scored by due time (pending) or lease
expiry (delivering). A worker's claim script leases a batch of due deliveries, each with a token
of its own that settle checks, so a worker that stalls past its lease cannot overwrite the
attempt of the worker that took over. A delivery over its endpoint's concurrency or rate limit
is parked in that endpoint's set and costs nothing until a slot frees or a wake marker (at the
earliest lease expiry or the next rate window) comes up in the due set.
"""
