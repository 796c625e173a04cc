-- Feature flags (SPEC section 5): a master switch, a stable percentage rollout and an allow
-- list. A flag without a row has the built-in default the API declares for it.
create table feature_flags (
    key text primary key check (key ~ '^[a-z0-9_]{1,64}$'),
    enabled boolean not null,
    rollout_percent smallint not null check (rollout_percent between 0 and 100),
    allow_users uuid[] not null default '{}',
    updated_at timestamptz not null default now()
);
