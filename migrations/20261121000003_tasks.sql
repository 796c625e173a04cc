-- Tasks (SPEC section 5).

-- UUIDv7 (time-ordered) for rows created by set-based statements, such as the audit rows
-- of mark_overdue: the 48-bit millisecond timestamp over the first six bytes of a random
-- UUID, with the version nibble turned from 4 into 7.
create function uuid_generate_v7() returns uuid
language plpgsql volatile as $$
begin
    return encode(
        set_bit(
            set_bit(
                overlay(uuid_send(gen_random_uuid())
                    placing substring(int8send(floor(extract(epoch from clock_timestamp()) * 1000)::bigint) from 3)
                    from 1 for 6),
                52, 1),
            53, 1),
        'hex')::uuid;
end
$$;

create table tasks (
    id uuid primary key,
    owner_id uuid not null references users (id) on delete cascade,
    title text not null check (char_length(title) between 1 and 200),
    description text check (char_length(description) <= 10000),
    status text not null default 'todo' check (status in ('todo', 'in_progress', 'done')),
    -- 0 low, 1 normal, 2 high, 3 urgent: stored as a number so "sort by priority" means
    -- urgency, not the alphabet.
    priority smallint not null default 1 check (priority between 0 and 3),
    tags text[] not null default '{}',
    due_at timestamptz,
    overdue boolean not null default false,
    completed_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    deleted_at timestamptz,
    -- Optimistic concurrency: every change increments it; it is the ETag.
    version integer not null default 1,
    -- Full-text search over title and description (`q`).
    search tsvector generated always as (
        setweight(to_tsvector('english', title), 'A') ||
        setweight(to_tsvector('english', coalesce(description, '')), 'B')
    ) stored
);

-- Lists are per owner, live or trashed, in one of the sort orders (each tie-broken by id).
-- `due_at` sorts through coalesce so that a keyset cursor never meets a NULL.
create index tasks_owner_created_idx on tasks (owner_id, created_at, id) where deleted_at is null;
create index tasks_owner_updated_idx on tasks (owner_id, updated_at, id) where deleted_at is null;
create index tasks_owner_due_idx on tasks (owner_id, (coalesce(due_at, 'infinity'::timestamptz)), id) where deleted_at is null;
create index tasks_owner_priority_idx on tasks (owner_id, priority, id) where deleted_at is null;
create index tasks_owner_title_idx on tasks (owner_id, title, id) where deleted_at is null;
create index tasks_owner_trash_idx on tasks (owner_id, deleted_at, id) where deleted_at is not null;
create index tasks_search_idx on tasks using gin (search);
create index tasks_tags_idx on tasks using gin (tags);
-- mark_overdue scans only what can become overdue.
create index tasks_overdue_candidates_idx on tasks (due_at)
    where deleted_at is null and status <> 'done' and not overdue;

-- Audit history: one row per change, written in the change's transaction.
create table task_events (
    id uuid primary key,
    task_id uuid not null references tasks (id) on delete cascade,
    -- create, update, delete, restore, overdue
    action text not null,
    -- {field: {from, to}}
    changes jsonb not null default '{}',
    -- The user who acted; null when the system did (a job).
    actor_id uuid references users (id) on delete set null,
    at timestamptz not null default now()
);

create index task_events_task_idx on task_events (task_id, at, id);
