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
use uuid::Uuid;

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

    pub fn as_str(self) -> &'static str {
        match self {
            Queue::Emails => "emails",
            Queue::Uploads => "uploads",
            Queue::Maintenance => "maintenance",
        }
    }
}

/// Exponential backoff with equal jitter: attempt `n` waits a random time in
/// `[ceiling(n) / 2, ceiling(n)]`, where `ceiling(n) = min(cap, base * 2^(n-1))`. The jitter
/// spreads out retries of many jobs that failed together; the floor keeps a schedule's
/// length predictable, so a kind's promise ("retries span at least 24 h") holds for every
/// draw ([`Backoff::min_span`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The longest wait after `attempt` (1-based) failed attempts.
    pub fn ceiling(self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A random wait in `[ceiling(attempt) / 2, ceiling(attempt)]`.
    pub fn delay(self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rand::random_range(ceiling / 2..=ceiling))
    }

    /// The shortest time from the first failure to the last attempt of a job with
    /// `max_attempts` attempts that fails every time: the sum of the shortest waits.
    pub fn min_span(self, max_attempts: u32) -> Duration {
        (1..max_attempts).map(|attempt| self.ceiling(attempt) / 2).sum()
    }
}

/// How a job kind is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSpec {
    /// The kind's name, stored with each job.
    pub kind: &'static str,
    pub queue: Queue,
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
}

/// A job payload with its spec.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    const SPEC: JobSpec;
}

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

/// Every email Tasklane sends, with the data its templates need.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "template", rename_all = "snake_case")]
pub enum EmailMessage {
    /// Confirms the address after registration. `token_id` is the `email_tokens` row whose
    /// token the worker mints as it sends (SPEC section 14: no raw token in a job).
    VerifyEmail { display_name: Option<String>, token_id: Uuid },
    /// Carries a password reset link (30 minutes, single use), minted like the verification
    /// link.
    ResetPassword { display_name: Option<String>, token_id: Uuid },
    /// Tells the owner the password changed, so an unexpected change is noticed.
    PasswordChanged { display_name: Option<String> },
    /// The daily digest: open, due-soon and overdue tasks, times in the user's zone.
    DailyDigest {
        display_name: Option<String>,
        /// The user's local date, e.g. `2026-11-21`.
        date: String,
        open: Vec<DigestItem>,
        due_soon: Vec<DigestItem>,
        overdue: Vec<DigestItem>,
    },
}

/// One task in a digest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DigestItem {
    pub title: String,
    /// Local time, e.g. `2026-11-21 17:00`.
    pub due: Option<String>,
}

impl EmailMessage {
    /// The template folder of this email.
    pub fn template(&self) -> &'static str {
        match self {
            Self::VerifyEmail { .. } => "verify_email",
            Self::ResetPassword { .. } => "reset_password",
            Self::PasswordChanged { .. } => "password_changed",
            Self::DailyDigest { .. } => "daily_digest",
        }
    }

    /// The `email_tokens` row whose link this email carries, if it carries one
    /// ([`crate::domain::email_tokens::mint`]).
    pub fn link_token(&self) -> Option<Uuid> {
        match self {
            Self::VerifyEmail { token_id, .. } | Self::ResetPassword { token_id, .. } => {
                Some(*token_id)
            }
            Self::PasswordChanged { .. } | Self::DailyDigest { .. } => None,
        }
    }
}

impl Job for SendEmail {
    const SPEC: JobSpec = JobSpec {
        kind: "send_email",
        queue: Queue::Emails,
        // Failures of the email itself (a mailbox busy, a greylisting server) are retried
        // for more than a day (SPEC section 9): 30 s doubling to a 6 h cap, 17 retries, at
        // least 25 h in all. An SMTP outage costs no attempt at all (the breaker holds it).
        max_attempts: 18,
        backoff: Backoff { base: Duration::from_secs(30), cap: Duration::from_secs(6 * 3600) },
        timeout: Duration::from_secs(30),
        unique: false,
        schedule: None,
    };
}

/// Verifies an uploaded attachment (size, magic bytes, SHA-256), thumbnails images, and ends
/// it `ready` or `rejected`. After its last failed attempt the attachment is
/// `rejected: processing_failed`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessUpload {
    pub attachment_id: uuid::Uuid,
}

impl Job for ProcessUpload {
    const SPEC: JobSpec = JobSpec {
        kind: "process_upload",
        queue: Queue::Uploads,
        max_attempts: 5,
        backoff: Backoff { base: Duration::from_secs(1), cap: Duration::from_secs(60) },
        timeout: Duration::from_secs(300),
        unique: false,
        schedule: None,
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
        max_attempts: 10,
        backoff: Backoff { base: Duration::from_secs(2), cap: Duration::from_secs(600) },
        timeout: Duration::from_secs(120),
        unique: false,
        schedule: None,
    };
}

/// A job started by a schedule rather than by a request: built from its tick.
pub trait CronJob: Job {
    fn for_tick(tick: DateTime<Utc>) -> Self;
}

/// Declares a maintenance job run by a schedule: its payload is the tick that started it;
/// it runs once per tick and is not retried, since the next tick catches up (SPEC section 7).
macro_rules! scheduled_job {
    ($(#[$doc:meta])* $name:ident, kind: $kind:literal, cron: $cron:literal, timeout_secs: $timeout:literal) => {
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
                max_attempts: 1,
                backoff: Backoff { base: Duration::from_secs(10), cap: Duration::from_secs(60) },
                timeout: Duration::from_secs($timeout),
                unique: true,
                schedule: Some($cron),
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
    /// digest email per local day (a `send_email` job each, keyed by user and local date).
    DailyDigest, kind: "daily_digest", cron: "0 0 * * * *", timeout_secs: 600
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
    ProcessUpload::SPEC,
    DeleteObjects::SPEC,
    PruneSentEmails::SPEC,
    MarkOverdue::SPEC,
    PurgeDeleted::SPEC,
    DailyDigest::SPEC,
    ExpireUploads::SPEC,
];

/// The spec of a kind by name.
pub fn spec(kind: &str) -> Option<&'static JobSpec> {
    ALL.iter().find(|spec| spec.kind == kind)
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
    fn an_outage_is_told_from_a_failure_of_the_job() {
        let timed_out: apalis_core::error::BoxDynError = Box::new(sqlx::Error::PoolTimedOut);
        let down = DependencyDown::of(timed_out.as_ref()).expect("postgres down");
        assert_eq!(down.dependency, "postgres");
        let missing: apalis_core::error::BoxDynError = Box::new(sqlx::Error::RowNotFound);
        assert!(DependencyDown::of(missing.as_ref()).is_none(), "a query's answer");
        let smtp: apalis_core::error::BoxDynError =
            Box::new(DependencyDown::new("smtp", "refused"));
        assert_eq!(DependencyDown::of(smtp.as_ref()).expect("returned").dependency, "smtp");
        let own: apalis_core::error::BoxDynError = Box::new(PermanentError("bad input".into()));
        assert!(DependencyDown::of(own.as_ref()).is_none());
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

/// A failure of the world, not of the job: the dependency a handler needs (`"smtp"`, `"s3"`,
/// `"postgres"`) could not be reached. Return it boxed from a handler: the attempt is handed
/// back uncounted and the kind is held until the dependency answers again (SPEC section 9;
/// `tasklane_shared::queue::breaker`).
#[derive(Debug, thiserror::Error)]
#[error("{dependency} is down: {error}")]
pub struct DependencyDown {
    pub dependency: &'static str,
    pub error: String,
}

impl DependencyDown {
    pub fn new(dependency: &'static str, error: impl std::fmt::Display) -> Self {
        Self { dependency, error: error.to_string() }
    }

    /// Postgres is down when it cannot be reached or will not take connections now (the
    /// pool timed out, the socket failed or was closed mid-handshake, as a proxy in front of
    /// a dead server does, the server is shutting down or starting up); a query it answered
    /// with an error is the job's failure.
    pub fn postgres(error: &sqlx::Error) -> Option<Self> {
        let down = match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // 08: connection exception; 57P01-03: shutting down, crashed, starting up;
                // 53300: too many connections.
                code.starts_with("08") || code.starts_with("57P") || code == "53300"
            }),
            _ => false,
        };
        down.then(|| Self::new("postgres", error))
    }

    /// The outage a handler's error reports: a [`DependencyDown`] it returned, or anywhere
    /// in its chain a Postgres error that means Postgres is down or an S3 request that could
    /// not reach the store (so every kind that uses them is held by them, whatever its
    /// handler does with the error).
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(down) = error.downcast_ref::<DependencyDown>() {
                return Some(Self::new(down.dependency, &down.error));
            }
            if let Some(down) = error.downcast_ref::<sqlx::Error>().and_then(Self::postgres) {
                return Some(down);
            }
            // The S3 client could not reach the store (refused, reset, timed out).
            if error.downcast_ref::<aws_sdk_s3::error::ConnectorError>().is_some() {
                return Some(Self::new("s3", error));
            }
            next = error.source();
        }
        None
    }
}
