-- Observability (SPEC section 13).
--
-- A job's record carries the W3C trace context of the span that caused it, so the relay and
-- the worker continue the request's trace, and the user on whose behalf it runs, so request
-- receipts (GET /api/v1/requests/{request_id}) show a caller the jobs of their own requests
-- and nobody else's.
alter table outbox
    add column traceparent text,
    add column user_id uuid;

-- Receipts read a request's jobs by request id.
create index outbox_request_idx on outbox (request_id) where request_id is not null;

-- Event rows are deleted once published; what a receipt shows of them is kept here, without
-- their data, as long as the job records (pruned with them by the reconciler).
create table request_events (
    request_id text not null,
    user_id uuid not null,
    -- The id the event has in the caller's stream (and SSE `id:`).
    event_id text not null,
    event_type text not null,
    published_at timestamptz not null default now(),
    primary key (request_id, event_id)
);

create index request_events_published_idx on request_events (published_at);
