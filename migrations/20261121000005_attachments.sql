-- Attachments (SPEC section 6). The bytes live in the object store under a key the server
-- chose; this row is the attachment's state machine:
--   pending    -> the client has a presigned PUT and uploads the bytes itself
--   processing -> `complete` was called; a process_upload job is verifying the object
--   ready      -> verified: size, sha256 and detected type are set (thumbnail for images)
--   rejected   -> refused with a reason; its object has been deleted
-- The verified object is copied, conditional on the ETag that was checked, from the upload
-- key to the object key, so bytes replaced through a still-valid upload URL are never served.
-- Deleting an attachment deletes the row and enqueues the objects' removal (delete_objects)
-- in the same transaction; purging a task does the same for all of its attachments.
create table attachments (
    id              uuid primary key,
    task_id         uuid not null references tasks (id) on delete cascade,
    owner_id        uuid not null references users (id) on delete cascade,
    filename        text not null,
    content_type    text not null,
    declared_size   bigint not null check (declared_size > 0),
    -- Where the client uploads (a presigned PUT works until it expires, so this object is
    -- never served), and where the worker copies the verified bytes.
    upload_key      text not null unique,
    object_key      text not null unique,
    status          text not null default 'pending'
                    check (status in ('pending', 'processing', 'ready', 'rejected')),
    reject_reason   text,
    size_bytes      bigint,
    sha256          text,
    detected_type   text,
    thumbnail_key   text,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    check ((status = 'ready') = (sha256 is not null and size_bytes is not null)),
    check ((status = 'rejected') = (reject_reason is not null))
);

-- A task's attachments, newest first.
create index attachments_task on attachments (task_id, id desc);
-- The expire_uploads sweep: only unfinished rows.
create index attachments_unfinished on attachments (status, updated_at) where status in ('pending', 'processing');
