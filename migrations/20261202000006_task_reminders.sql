-- Task reminders (SPEC section 10, delayed jobs): when set, one reminder email is sent at
-- `remind_at` by a delayed `send_reminder` job, enqueued in the transaction that set it. The
-- job checks the task when it runs, so a reminder moved, cleared, or on a task done or
-- deleted since sends nothing.
alter table tasks add column remind_at timestamptz;
