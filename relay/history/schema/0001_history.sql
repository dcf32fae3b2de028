-- History: what relay has done, kept for RELAY_RETENTION_DAYS.
--
-- Every table is partitioned by day on `created_at` (the time in the row's id, so a lookup by
-- id alone reaches one partition), and retention drops whole partitions: no DELETE scans.
-- Partitions are created ahead by the worker's maintenance, and on demand by the history writer.
-- `tenant_id` leads every primary key, so the tables can be distributed by tenant (Citus)
-- without a rewrite; the one index that does not lead with it serves lookups by id alone.

CREATE TABLE events (
    tenant_id    text        NOT NULL,
    id           text        NOT NULL,
    created_at   timestamptz NOT NULL,
    type         text        NOT NULL,
    upstream_id  text,
    -- The exact bytes receivers get (the envelope), so a replay sends what was sent.
    payload      bytea       NOT NULL,
    delivery_ids text[]      NOT NULL,
    PRIMARY KEY (tenant_id, id, created_at)
) PARTITION BY RANGE (created_at);

CREATE INDEX events_by_id ON events (id);
CREATE INDEX events_by_type ON events (tenant_id, type, id);
CREATE INDEX events_by_upstream_id ON events (tenant_id, upstream_id) WHERE upstream_id IS NOT NULL;

-- A delivery reaches history when it finishes (delivered, failed, canceled); while it is in
-- flight it lives in Redis. A retried delivery finishes again and its row is updated.
CREATE TABLE deliveries (
    tenant_id        text        NOT NULL,
    id               text        NOT NULL,
    created_at       timestamptz NOT NULL,
    event_id         text        NOT NULL,
    webhook_id       text        NOT NULL,
    event_type       text        NOT NULL,
    status           text        NOT NULL,
    attempt_count    integer     NOT NULL,
    cycle_start      integer     NOT NULL,
    last_status_code integer,
    last_error       text,
    updated_at       timestamptz NOT NULL,
    delivered_at     timestamptz,
    PRIMARY KEY (tenant_id, id, created_at)
) PARTITION BY RANGE (created_at);

CREATE INDEX deliveries_by_id ON deliveries (id);
CREATE INDEX deliveries_by_webhook ON deliveries (tenant_id, webhook_id, id);
CREATE INDEX deliveries_by_webhook_status ON deliveries (tenant_id, webhook_id, status, id);
CREATE INDEX deliveries_by_status ON deliveries (tenant_id, status, id);
CREATE INDEX deliveries_by_event_type ON deliveries (tenant_id, event_type, id);

-- Attempts live in their delivery's partition (`created_at` is the delivery's), so both leave
-- together.
CREATE TABLE attempts (
    tenant_id       text        NOT NULL,
    delivery_id     text        NOT NULL,
    number          integer     NOT NULL,
    created_at      timestamptz NOT NULL,
    webhook_id      text        NOT NULL,
    started_at      timestamptz NOT NULL,
    duration_ms     integer     NOT NULL,
    status_code     integer,
    error           text,
    response_body   text        NOT NULL,
    request_headers jsonb       NOT NULL,
    url             text        NOT NULL,
    PRIMARY KEY (tenant_id, delivery_id, number, created_at)
) PARTITION BY RANGE (created_at);

-- Per-minute figures behind /v1/stats, by tenant, webhook, kind and outcome. The history writer
-- adds to them in the transaction that writes what they count, from the rows that transaction
-- newly wrote: a record written twice is counted once.
CREATE TABLE stats (
    tenant_id   text        NOT NULL,
    minute      timestamptz NOT NULL,
    webhook_id  text        NOT NULL,  -- '' for events
    kind        text        NOT NULL,  -- attempt | delivery | event
    label       text        NOT NULL,  -- status class (2xx… or error) | final status | event type
    bucket      smallint    NOT NULL,  -- attempts: latency bucket (width_bucket); else 0
    n           bigint      NOT NULL,
    duration_ms bigint      NOT NULL,
    PRIMARY KEY (tenant_id, minute, webhook_id, kind, label, bucket)
) PARTITION BY RANGE (minute);

-- The audit trail: every change made through the API, and every automatic disable.
CREATE TABLE audit (
    tenant_id  text        NOT NULL,  -- '' for a change that belongs to no tenant (a token…)
    id         text        NOT NULL,
    created_at timestamptz NOT NULL,
    at         timestamptz NOT NULL,
    action     text        NOT NULL,
    token_id   text        NOT NULL,
    role       text        NOT NULL,
    object_id  text,
    request_id text,
    PRIMARY KEY (tenant_id, id, created_at)
) PARTITION BY RANGE (created_at);

CREATE INDEX audit_by_id ON audit (id);
CREATE INDEX audit_by_action ON audit (tenant_id, action, id);
