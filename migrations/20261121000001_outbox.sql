-- The transactional outbox (SPEC section 7): a job is a row written in the same transaction
-- as the change that causes it, so a rolled-back change never produces a job and a committed
-- one always does. The relay moves rows to Redis and deletes them in one transaction.
create table outbox (
    -- UUIDv7, reused as the job id in Redis so a row relayed twice is one job.
    id uuid primary key,
    queue text not null,
    kind text not null,
    payload jsonb not null,
    -- From the kind's JobSpec at enqueue time, so the relay needs no registry.
    max_attempts integer not null,
    -- The API request that caused the job, carried into the job's logs.
    request_id text,
    created_at timestamptz not null default now(),
    -- Relay attempts that failed (e.g. Redis down) and why; for operators.
    relay_attempts integer not null default 0,
    last_error text
);

-- The relay reads the oldest rows first.
create index outbox_created_at_idx on outbox (created_at, id);

-- One notification per inserting statement, delivered at commit (NOTIFY is transactional):
-- the relay wakes immediately instead of waiting for its poll.
create function outbox_notify() returns trigger
language plpgsql as $$
begin
    perform pg_notify('tasklane_outbox', '');
    return null;
end
$$;

create trigger outbox_notify
after insert on outbox
for each statement execute function outbox_notify();

-- Emails that were sent, by idempotency key: a retried or duplicated send_email job finds
-- its key here and sends nothing (side effects at most once, SPEC section 7).
create table sent_emails (
    idempotency_key text primary key,
    recipient text not null,
    sent_at timestamptz not null default now()
);
