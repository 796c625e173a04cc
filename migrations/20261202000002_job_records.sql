-- Job records (SPEC section 9): Redis is the fast path, not the only copy. The outbox row of
-- a job is no longer deleted once the relay has pushed it: it stays as Postgres' record of
-- the accepted job until its outcome is recorded, so a reconciler can put back any job Redis
-- lost (a restart without data, a failover that missed writes, FLUSHALL). A row is
--   waiting:     relayed_at is null, finished_at is null (the relay's backlog);
--   in flight:   relayed_at set, finished_at null (in Redis: pending, scheduled or running);
--   finished:    finished_at set, with its outcome; pruned after the job retention.
-- Event rows (queue 'events') are still deleted when published: they are not jobs.
alter table outbox
    add column relayed_at timestamptz,
    add column finished_at timestamptz,
    add column outcome text
        constraint outbox_outcome_check check (outcome in ('succeeded', 'dead', 'quarantined')),
    add constraint outbox_finished_has_outcome check ((finished_at is null) = (outcome is null));

drop index outbox_created_at_idx;

-- The relay reads the oldest waiting rows first.
create index outbox_waiting_idx on outbox (created_at, id)
    where relayed_at is null and finished_at is null;

-- The reconciler walks the jobs in flight.
create index outbox_in_flight_idx on outbox (relayed_at, id)
    where relayed_at is not null and finished_at is null;

-- Pruning finished records, and the admin list of quarantined rows.
create index outbox_finished_idx on outbox (finished_at) where finished_at is not null;
