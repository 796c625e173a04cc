-- Operating the queue (SPEC section 10).
--
-- Pauses and limits are Postgres' to keep: every worker copies them into Redis (the copy
-- fetching reads) and copies them again after Redis lost them, so they hold across restarts
-- of either. `version` orders the copies: a worker never overwrites a newer one with an
-- older read.
create sequence queue_controls_version;

create table queue_controls (
    -- 'queue' (a whole queue), 'kind' (one job kind) or 'schedule' (a cron schedule).
    scope text not null constraint queue_controls_scope_check
        check (scope in ('queue', 'kind', 'schedule')),
    name text not null,
    paused boolean not null default false,
    -- Fleet-wide limits of a kind; null is no limit.
    rate_per_second double precision constraint queue_controls_rate_check
        check (rate_per_second > 0),
    concurrency integer constraint queue_controls_concurrency_check check (concurrency > 0),
    version bigint not null default nextval('queue_controls_version'),
    updated_at timestamptz not null default now(),
    primary key (scope, name)
);

-- Every admin write: who did what to what, and when (GET /admin/audit).
create table admin_audit (
    id bigint generated always as identity primary key,
    actor uuid not null,
    action text not null,
    target text not null,
    -- What the write was given and what it changed (counts, limits), without secrets.
    detail jsonb not null default '{}',
    at timestamptz not null default now()
);

create index admin_audit_at_idx on admin_audit (at, id);

-- A job may be cancelled by an operator (its record's last outcome), and may be delayed:
-- `run_at` is when it is due (the relay pushes it as scheduled until then).
alter table outbox
    drop constraint outbox_outcome_check,
    add constraint outbox_outcome_check
        check (outcome in ('succeeded', 'dead', 'quarantined', 'cancelled')),
    add column run_at timestamptz;
