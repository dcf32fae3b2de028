"""A delivery's whole life: states, transitions, Redis scripts, store, queue and use cases.

    accept ──► pending ──claim──► delivering ──settle──► delivered
                 ▲  │                 │   │
                 │  │ waits in its    │   └──settle──► failed (schedule exhausted, 410,
                 │  ▼ endpoint queue  │                 webhook disabled, event expired)
                 │ its turn ◄─────────┘ settle: retry due later
                 │                    (slot freed → the endpoint, its tenant may go again)
                 ├── cancel: pending ──► canceled (webhook deleted: settle ──► canceled)
                 └── restart: delivered | failed | canceled ──► pending (fresh schedule)
                              pending ──► pending, a manual attempt now (outside the
                              schedule, which keeps its next attempt) — or, if that one is
                              due already, due now

- `model.py`    statuses, transitions and hash fields, declared once (the scripts get them
                generated)
- `accept.py`   the first transition, new → pending: validate an event, fan it out to the
                tenant's webhooks, store it durably
- `policy.py`   the retry schedule and what an attempt's result means (pure)
- `concurrency.py` how many attempts an endpoint may have in flight, adapted to its answers
                (pure)
- `scripts/`    one Lua script per transition, each taking one JSON argument (`prelude.lua`:
                what they share); they read Redis's clock (`NOW`), so no worker's clock decides
                anything
- `store.py`    the transitions in Redis (each script run with its key names) and the reads of
                deliveries
- `handover.py` the hand-over to history: the stream of ended records, read by the history
                writer, and their release from Redis once PostgreSQL holds them
- `queue.py`    the only module that imports arq (background jobs: recoveries)
- `attempt.py`  making one claimed attempt: send, judge, settle, disable a gone endpoint —
                `receiver_request` builds what a receiver gets, for attempts and test sends
- `actions.py`  what operators do: retry a delivery, cancel one, retry an event's failures
- `recovery.py` sending a window's failed deliveries again, as a resumable background job
- `sample.py`   test sends: a signed sample event sent to a webhook now
- `outage.py`   riding out Redis outages: backoff

Each endpoint's queue is a sorted set of its delivery ids scored by due time (pending) or lease
expiry (delivering). A claim takes due deliveries in turns: tenants, and within a tenant its
endpoints, each scored by when to look at it next (what it waits for: something due, a slot of
its own or of its tenant, a rate window), which a settle that frees a slot brings forward.
Endpoints not known to answer quickly share half of their tenant's slots, so that those that
answer quickly always have the rest. An endpoint's own slots are its concurrency, which the
settle of an attempt adapts to the answer and the claim reads with the rest of the endpoint.
A worker's claim leases a batch, each delivery with a
token of its own that settle checks, so a worker that stalls past its lease cannot overwrite
the attempt of the worker that took over; its own attempt is still logged, and a 2xx wins.
"""
