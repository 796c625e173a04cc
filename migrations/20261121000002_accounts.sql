-- Accounts and auth (SPEC section 4).

create table users (
    id uuid primary key,
    -- Normalised (trimmed, lowercased) before it is stored; unique as stored.
    email text not null unique,
    password_hash text not null,
    display_name text,
    role text not null default 'user' check (role in ('user', 'admin')),
    disabled boolean not null default false,
    email_verified_at timestamptz,
    -- IANA zone, used by the daily digest.
    timezone text not null default 'UTC',
    digest_enabled boolean not null default false,
    digest_hour smallint not null default 8 check (digest_hour between 0 and 23),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- Opaque refresh tokens, stored as SHA-256 of the token (the token itself is 256 random
-- bits, so a fast hash is enough). A family is one login's chain of rotations: presenting a
-- token that was already rotated revokes the whole family.
create table refresh_tokens (
    id uuid primary key,
    user_id uuid not null references users (id) on delete cascade,
    family_id uuid not null,
    token_hash bytea not null unique,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    -- Set when this token was exchanged for its successor.
    rotated_at timestamptz,
    revoked_at timestamptz
);

create index refresh_tokens_family_idx on refresh_tokens (family_id);
create index refresh_tokens_user_idx on refresh_tokens (user_id) where revoked_at is null;

-- Single-use tokens sent by email: address verification and password reset. Stored hashed.
create table email_tokens (
    id uuid primary key,
    user_id uuid not null references users (id) on delete cascade,
    purpose text not null check (purpose in ('verify_email', 'reset_password')),
    token_hash bytea not null unique,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    used_at timestamptz
);

-- The reset limit (3 per account per hour) counts recent tokens per user and purpose.
create index email_tokens_user_purpose_idx on email_tokens (user_id, purpose, created_at);
