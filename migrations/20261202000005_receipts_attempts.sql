-- Request receipts show each attempt of a job (SPEC section 13): "queued, attempt 2 failed,
-- sent". Written by the worker's outcome recorder, only for jobs that have a receipt (a
-- user's request caused them). `reason` is short and safe to show the user by construction
-- (a status code, "timed out"), never the error itself, which may quote payloads or
-- addresses and stays with the operators (`outbox.last_error`, the job's history in Redis).
-- No foreign key: the relay deletes event rows from the outbox on its hot path, and a
-- key check per deleted row would cost every event. Pruned with the receipts' events.
create table job_attempts (
    id bigint generated always as identity primary key,
    job_id uuid not null,
    -- The attempt's number, from 1 (an operator's retry of a dead job counts from 1 again).
    attempt int not null,
    outcome text not null check (outcome in ('succeeded', 'failed', 'dead')),
    reason text,
    -- For a failed attempt, when the next one is due.
    retry_at timestamptz,
    ended_at timestamptz not null default now()
);

create index job_attempts_job_idx on job_attempts (job_id);
create index job_attempts_ended_idx on job_attempts (ended_at);
