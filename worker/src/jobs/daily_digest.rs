//! `daily_digest` (hourly): every opted-in, verified, enabled user whose local hour at the
//! tick equals their `digest_hour` gets a digest of open, due-soon and overdue tasks.
//!
//! One `send_email` job per user (retried on its own), with the idempotency key
//! `digest:<user>:<local date>` and a job id derived from it: however often a tick repeats
//! within that local hour, a user gets at most one digest per local day.

use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sqlx::PgPool;
use tasklane_shared::jobs::{DailyDigest, DigestItem, EmailMessage, Job, SendEmail};
use tasklane_shared::queue::{NewJob, QueueStore};
use uuid::Uuid;

const NAMESPACE: Uuid = Uuid::from_u128(0x3f6a_1c0e_77d2_4e58_b1a9_0c4d_2e8f_6b13);
/// Tasks listed per section.
const SECTION: i64 = 20;

/// A task as a digest section lists it.
struct Listed {
    title: String,
    due_at: Option<DateTime<Utc>>,
}

pub async fn daily_digest(
    job: DailyDigest,
    db: Data<PgPool>,
    store: Data<QueueStore>,
) -> Result<(), BoxDynError> {
    let users = sqlx::query!(
        "select id, email, display_name, timezone from users
         where digest_enabled and email_verified_at is not null and not disabled
           and extract(hour from ($1::timestamptz at time zone timezone)) = digest_hour",
        job.tick,
    )
    .fetch_all(&*db)
    .await?;
    let mut sent = 0;
    for row in users {
        let (user, email, display_name) = (row.id, row.email, row.display_name);
        let zone: Tz = row.timezone.parse().unwrap_or(chrono_tz::UTC);
        let date = job.tick.with_timezone(&zone).date_naive().to_string();
        let items = |rows: Vec<Listed>| {
            rows.into_iter()
                .map(|row| DigestItem {
                    title: row.title,
                    due: row
                        .due_at
                        .map(|d| d.with_timezone(&zone).format("%Y-%m-%d %H:%M").to_string()),
                })
                .collect::<Vec<_>>()
        };
        let overdue = sqlx::query_as!(
            Listed,
            "select title, due_at from tasks
             where owner_id = $1 and deleted_at is null and status <> 'done'
               and due_at < $2
             order by due_at, id limit $3",
            user,
            job.tick,
            SECTION,
        )
        .fetch_all(&*db)
        .await?;
        let due_soon = sqlx::query_as!(
            Listed,
            "select title, due_at from tasks
             where owner_id = $1 and deleted_at is null and status <> 'done'
               and due_at >= $2 and due_at < $2 + interval '24 hours'
             order by due_at, id limit $3",
            user,
            job.tick,
            SECTION,
        )
        .fetch_all(&*db)
        .await?;
        let open = sqlx::query_as!(
            Listed,
            "select title, due_at from tasks
             where owner_id = $1 and deleted_at is null and status <> 'done'
               and (due_at is null or due_at >= $2::timestamptz + interval '24 hours')
             order by coalesce(due_at, 'infinity'::timestamptz), id limit $3",
            user,
            job.tick,
            SECTION,
        )
        .fetch_all(&*db)
        .await?;
        let (overdue, due_soon, open) = (items(overdue), items(due_soon), items(open));
        let key = format!("digest:{user}:{date}");
        let email_job = SendEmail {
            idempotency_key: key.clone(),
            to: email,
            message: EmailMessage::DailyDigest { display_name, date, open, due_soon, overdue },
        };
        let new = NewJob {
            id: Uuid::new_v5(&NAMESPACE, key.as_bytes()),
            kind: SendEmail::SPEC.kind.into(),
            payload: serde_json::to_string(&email_job)?,
            max_attempts: SendEmail::SPEC.max_attempts,
            request_id: None,
            unique: None,
        };
        sent += store.push(SendEmail::SPEC.queue, &[new]).await?;
    }
    tracing::info!(sent, tick = %job.tick, "digests enqueued");
    Ok(())
}
