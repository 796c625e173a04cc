//! Every job kind, declared in one place (SPEC section 7).
//!
//! A job is a serde payload plus a [`JobSpec`]: its name, queue, attempts, backoff, timeout
//! and whether it runs once per key. The API only ever writes jobs to the outbox
//! ([`crate::outbox::enqueue`]); the worker registers one handler per kind in its explicit
//! list. Renaming a kind or queue orphans queued jobs, so these strings are part of the
//! storage format.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Serialize, de::DeserializeOwned};

pub use self::backoff::Backoff;
pub use self::failure::{Failure, safe_reason};
pub use crate::outage::DependencyDown;
use uuid::Uuid;

mod backoff;
mod failure;

/// The Redis queues. Each is drained by its own apalis worker(s), so a flood of one kind of
/// work (uploads) never starves another (emails).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Queue {
    Emails,
    Uploads,
    Maintenance,
}

impl Queue {
    pub const ALL: [Queue; 3] = [Queue::Emails, Queue::Uploads, Queue::Maintenance];

    /// The queue called `name`, if there is one.
    pub fn named(name: &str) -> Option<Queue> {
        Queue::ALL.into_iter().find(|queue| queue.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Queue::Emails => "emails",
            Queue::Uploads => "uploads",
            Queue::Maintenance => "maintenance",
        }
    }
}

/// How a job kind is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSpec {
    /// The kind's name, stored with each job.
    pub kind: &'static str,
    pub queue: Queue,
    /// Its rank among the kinds of its queue: a kind's workers claim nothing while a kind
    /// of the same queue with a higher priority has jobs waiting (SPEC section 10).
    pub priority: Priority,
    /// Attempts before the job is dead, including the first.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// An attempt running longer than this fails (and is retried).
    pub timeout: Duration,
    /// Whether it runs at most once per key (cron ticks, per-user digests): such jobs are
    /// pushed with a key whose claim is atomic with the push.
    pub unique: bool,
    /// For scheduled kinds, the default cron expression (`sec min hour day month weekday`),
    /// overridable with `TASKLANE_CRON_<KIND>`.
    pub schedule: Option<&'static str>,
    /// For kinds fair by owner (SPEC section 10): the payload's field naming whose job it
    /// is. Such jobs are claimed in turns, one per owner, so one owner's backlog cannot hold
    /// back another's job.
    pub fair_by: Option<&'static str>,
}

/// A kind's rank in its queue (see [`JobSpec::priority`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Low,
    Normal,
    High,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }
}

/// The kinds of `spec`'s queue that come before it: their waiting jobs hold it back.
pub fn ahead_of(spec: &JobSpec) -> impl Iterator<Item = &'static str> + '_ {
    ALL.iter()
        .filter(move |other| other.queue == spec.queue && other.priority > spec.priority)
        .map(|other| other.kind)
}

/// A job payload with its spec.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    const SPEC: JobSpec;
}

mod email;
pub use self::email::{DigestItem, EmailMessage};

/// Sends one email through SMTP. The idempotency key is recorded when the mail is sent, so a
/// retried or duplicated job never sends the same email twice.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SendEmail {
    /// Unique per email (e.g. `verify_email:<token id>`).
    pub idempotency_key: String,
    pub to: String,
    /// What to say; the worker renders it from the email's templates, building links from
    /// `PUBLIC_URL` only.
    pub message: EmailMessage,
}

impl Job for SendEmail {
    const SPEC: JobSpec = JobSpec {
        kind: "send_email",
        queue: Queue::Emails,
        priority: Priority::High,
        // Failures of the email itself (a mailbox busy, a greylisting server) are retried
        // for more than a day (SPEC section 9): 30 s doubling to a 6 h cap, 17 retries, at
        // least 25 h in all. An SMTP outage costs no attempt at all (the breaker holds it).
        max_attempts: 18,
        backoff: Backoff { base: Duration::from_secs(30), cap: Duration::from_secs(6 * 3600) },
        timeout: Duration::from_secs(30),
        unique: false,
        schedule: None,
        fair_by: None,
    };
}

/// A task's reminder, due at its `remind_at` (a delayed job, enqueued by the change that set
/// it). The worker sends it only if the task still has that reminder and is neither done nor
/// deleted, as the email `reminder:<task>:<time>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SendReminder {
    pub task_id: Uuid,
    pub owner_id: Uuid,
    pub remind_at: DateTime<Utc>,
}

impl Job for SendReminder {
    const SPEC: JobSpec = JobSpec {
        kind: "send_reminder",
        queue: Queue::Emails,
        priority: Priority::Normal,
        max_attempts: SendEmail::SPEC.max_attempts,
        backoff: SendEmail::SPEC.backoff,
        timeout: Duration::from_secs(30),
        unique: false,
        schedule: None,
        fair_by: None,
    };
}

/// One user's daily digest of one local day, fanned out by [`DailyDigest`] (one job per user,
/// so one user's failure costs no other user's digest). The worker builds the digest when it
/// runs and sends it as the email `digest:<user>:<date>`, at most once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SendDigest {
    pub user_id: Uuid,
    /// The user's local date, e.g. `2026-11-21`.
    pub date: String,
    /// The tick that fanned it out: "due soon" and "overdue" are relative to it.
    pub tick: DateTime<Utc>,
}

impl Job for SendDigest {
    const SPEC: JobSpec = JobSpec {
        kind: "send_digest",
        queue: Queue::Emails,
        priority: Priority::Low,
        max_attempts: SendEmail::SPEC.max_attempts,
        backoff: SendEmail::SPEC.backoff,
        timeout: Duration::from_secs(60),
        unique: false,
        schedule: None,
        fair_by: None,
    };
}

/// Verifies an uploaded attachment (size, magic bytes, SHA-256), thumbnails images, and ends
/// it `ready` or `rejected`. After its last failed attempt the attachment is
/// `rejected: processing_failed`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessUpload {
    pub attachment_id: uuid::Uuid,
    /// Who uploaded it: the uploads queue takes turns between owners. Absent in jobs queued
    /// before fairness, which then wait in the kind's common list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<uuid::Uuid>,
}

impl Job for ProcessUpload {
    const SPEC: JobSpec = JobSpec {
        kind: "process_upload",
        queue: Queue::Uploads,
        priority: Priority::Normal,
        max_attempts: 5,
        backoff: Backoff { base: Duration::from_secs(1), cap: Duration::from_secs(60) },
        timeout: Duration::from_secs(300),
        unique: false,
        schedule: None,
        fair_by: Some("owner_id"),
    };
}

/// Removes objects from the bucket (a deleted attachment, a purged task's files). Deleting a
/// missing object succeeds, so a rerun is harmless.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeleteObjects {
    pub keys: Vec<String>,
}

impl Job for DeleteObjects {
    const SPEC: JobSpec = JobSpec {
        kind: "delete_objects",
        queue: Queue::Uploads,
        priority: Priority::Normal,
        max_attempts: 10,
        backoff: Backoff { base: Duration::from_secs(2), cap: Duration::from_secs(600) },
        timeout: Duration::from_secs(120),
        unique: false,
        schedule: None,
        fair_by: None,
    };
}

/// A job started by a schedule rather than by a request: built from its tick.
pub trait CronJob: Job {
    fn for_tick(tick: DateTime<Utc>) -> Self;
}

/// Declares a maintenance job run by a schedule: its payload is the tick that started it;
/// it runs once per tick. Most are not retried, since the next tick catches up (SPEC section
/// 7); a fan-out whose next tick covers other users (the digest) is.
macro_rules! scheduled_job {
    ($(#[$doc:meta])* $name:ident, kind: $kind:literal, cron: $cron:literal, timeout_secs: $timeout:literal) => {
        scheduled_job!($(#[$doc])* $name, kind: $kind, cron: $cron, timeout_secs: $timeout, attempts: 1);
    };
    ($(#[$doc:meta])* $name:ident, kind: $kind:literal, cron: $cron:literal, timeout_secs: $timeout:literal, attempts: $attempts:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub struct $name {
            /// The scheduled time of the tick that started this run.
            pub tick: DateTime<Utc>,
        }

        impl Job for $name {
            const SPEC: JobSpec = JobSpec {
                kind: $kind,
                queue: Queue::Maintenance,
                priority: Priority::Normal,
                max_attempts: $attempts,
                backoff: Backoff { base: Duration::from_secs(10), cap: Duration::from_secs(60) },
                timeout: Duration::from_secs($timeout),
                unique: true,
                schedule: Some($cron),
                fair_by: None,
            };
        }

        impl CronJob for $name {
            fn for_tick(tick: DateTime<Utc>) -> Self {
                Self { tick }
            }
        }
    };
}

scheduled_job!(
    /// Deletes the idempotency records of emails sent more than [`SENT_EMAIL_RETENTION_DAYS`]
    /// ago, so the table stays bounded. A duplicate of an email job arrives within minutes (a
    /// retry, a relay redelivery), never weeks later.
    PruneSentEmails, kind: "prune_sent_emails", cron: "0 30 3 * * *", timeout_secs: 300
);

pub const SENT_EMAIL_RETENTION_DAYS: i32 = 30;

scheduled_job!(
    /// Marks open tasks whose due time has passed (every 5 minutes): one set-based update plus
    /// its audit rows; idempotent, and relative to the tick, so a rerun changes nothing.
    MarkOverdue, kind: "mark_overdue", cron: "0 */5 * * * *", timeout_secs: 120
);

scheduled_job!(
    /// Deletes tasks that have been in the trash for more than [`TRASH_RETENTION_DAYS`] (daily).
    PurgeDeleted, kind: "purge_deleted", cron: "0 15 3 * * *", timeout_secs: 600
);

pub const TRASH_RETENTION_DAYS: i32 = 30;

scheduled_job!(
    /// Hourly: every opted-in, verified user whose local hour is their `digest_hour` gets one
    /// digest email per local day: the tick fans out one [`SendDigest`] job per user, keyed by
    /// user and local date, in one statement (retried whole if its worker dies: a rerun adds
    /// nothing).
    DailyDigest, kind: "daily_digest", cron: "0 0 * * * *", timeout_secs: 600, attempts: 3
);

scheduled_job!(
    /// Every 10 minutes: forgets uploads never completed (their URL expired an hour ago) and
    /// their objects, and rejects attachments stuck in `processing` for an hour (their last
    /// attempt died with its worker) as `processing_failed`.
    ExpireUploads, kind: "expire_uploads", cron: "0 */10 * * * *", timeout_secs: 120
);

/// An attachment still `processing` this long after `complete` has run out of attempts.
pub const PROCESSING_DEADLINE_MINUTES: i32 = 60;
/// A `pending` attachment is abandoned this long after its upload URL expired.
pub const ABANDONED_UPLOAD_GRACE_MINUTES: i32 = 60;

/// Every declared kind; the worker's registration list must cover each (a test checks).
pub const ALL: &[JobSpec] = &[
    SendEmail::SPEC,
    SendDigest::SPEC,
    SendReminder::SPEC,
    ProcessUpload::SPEC,
    DeleteObjects::SPEC,
    PruneSentEmails::SPEC,
    MarkOverdue::SPEC,
    PurgeDeleted::SPEC,
    DailyDigest::SPEC,
    ExpireUploads::SPEC,
];

/// Whose job this is, for a kind fair by owner: its payload's [`JobSpec::fair_by`] field.
pub fn owner_of(kind: &str, payload: &str) -> Option<String> {
    let field = spec(kind)?.fair_by?;
    let payload: serde_json::Value = serde_json::from_str(payload).ok()?;
    payload.get(field)?.as_str().map(str::to_owned)
}

/// The spec of a kind by name.
pub fn spec(kind: &str) -> Option<&'static JobSpec> {
    ALL.iter().find(|spec| spec.kind == kind)
}

/// Whether `payload` is a valid job of `kind`: the relay quarantines a row that is not
/// rather than push a job no worker could run (SPEC section 9, "Poison is isolated").
pub fn check_payload(kind: &str, payload: &str) -> Result<(), String> {
    fn decodes<J: Job>(payload: &str) -> Result<(), String> {
        serde_json::from_str::<J>(payload)
            .map(drop)
            .map_err(|err| format!("payload does not decode as {}: {err}", J::SPEC.kind))
    }
    match kind {
        k if k == SendEmail::SPEC.kind => decodes::<SendEmail>(payload),
        k if k == SendDigest::SPEC.kind => decodes::<SendDigest>(payload),
        k if k == SendReminder::SPEC.kind => decodes::<SendReminder>(payload),
        k if k == ProcessUpload::SPEC.kind => decodes::<ProcessUpload>(payload),
        k if k == DeleteObjects::SPEC.kind => decodes::<DeleteObjects>(payload),
        k if k == PruneSentEmails::SPEC.kind => decodes::<PruneSentEmails>(payload),
        k if k == MarkOverdue::SPEC.kind => decodes::<MarkOverdue>(payload),
        k if k == PurgeDeleted::SPEC.kind => decodes::<PurgeDeleted>(payload),
        k if k == DailyDigest::SPEC.kind => decodes::<DailyDigest>(payload),
        k if k == ExpireUploads::SPEC.kind => decodes::<ExpireUploads>(payload),
        other => Err(format!("unknown job kind {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let backoff = Backoff { base: Duration::from_secs(2), cap: Duration::from_secs(60) };
        assert_eq!(backoff.ceiling(1), Duration::from_secs(2));
        assert_eq!(backoff.ceiling(3), Duration::from_secs(8));
        assert_eq!(backoff.ceiling(40), Duration::from_secs(60));
        for attempt in 1..10 {
            let delay = backoff.delay(attempt);
            assert!(delay <= backoff.ceiling(attempt) && delay >= backoff.ceiling(attempt) / 2);
        }
    }

    #[test]
    fn send_email_retries_span_at_least_a_day_whatever_the_jitter() {
        let spec = SendEmail::SPEC;
        let span = spec.backoff.min_span(spec.max_attempts);
        assert!(span >= Duration::from_secs(24 * 3600), "{span:?}");
        // And the drawn delays honour it: each at least half its ceiling.
        let drawn: Duration =
            (1..spec.max_attempts).map(|attempt| spec.backoff.delay(attempt)).sum();
        assert!(drawn >= span, "{drawn:?} < {span:?}");
        let backoff = Backoff { base: Duration::from_secs(2), cap: Duration::from_secs(8) };
        assert_eq!(backoff.min_span(4), Duration::from_secs(1 + 2 + 4));
    }

    #[test]
    fn default_schedules_parse_and_unique_kinds_have_one() {
        for spec in ALL {
            if let Some(expression) = spec.schedule {
                assert!(
                    expression.parse::<cron::Schedule>().is_ok(),
                    "{}: {expression}",
                    spec.kind
                );
                assert!(spec.unique, "{} runs once per tick, so it must be unique", spec.kind);
            }
        }
    }

    #[test]
    fn kinds_are_unique() {
        let mut kinds: Vec<_> = ALL.iter().map(|spec| spec.kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), ALL.len());
    }
}

/// A failure that no retry can fix (bad input, a rejected address): the job goes straight to
/// the dead set. Return it boxed from a handler; anything else is retried.
#[derive(Debug, thiserror::Error)]
#[error("permanent failure: {0}")]
pub struct PermanentError(pub String);
