//! The daily digest (SPEC sections 7 and 9), in two steps so one user's failure, or a crash
//! mid-run, costs no other user's digest:
//! - `daily_digest` (hourly tick): every opted-in, verified, enabled user whose local hour at
//!   the tick equals their `digest_hour` gets one `send_digest` job, all written by one
//!   outbox statement under ids derived from `digest:<user>:<local date>` (a repeated or
//!   retried tick adds nothing);
//! - `send_digest` (one per user, retried on its own): builds that user's digest of open,
//!   due-soon and overdue tasks and sends it as the email `digest:<user>:<local date>`, at most
//!   once per local day.

use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sqlx::PgPool;
use tasklane_shared::jobs::{DailyDigest, DigestItem, EmailMessage, SendDigest, SendEmail};
use tasklane_shared::outbox;
use uuid::Uuid;

use crate::mailer::Mailer;
use crate::templates::Templates;

const NAMESPACE: Uuid = Uuid::from_u128(0x3f6a_1c0e_77d2_4e58_b1a9_0c4d_2e8f_6b13);
/// Tasks listed per section.
const SECTION: i64 = 20;

/// A task as a digest section lists it.
struct Listed {
    title: String,
    due_at: Option<DateTime<Utc>>,
}

pub async fn daily_digest(job: DailyDigest, db: Data<PgPool>) -> Result<(), BoxDynError> {
    let users = sqlx::query!(
        "select id, timezone from users
         where digest_enabled and email_verified_at is not null and not disabled
           and extract(hour from ($1::timestamptz at time zone timezone)) = digest_hour",
        job.tick,
    )
    .fetch_all(&*db)
    .await?;
    let digests: Vec<(Uuid, SendDigest)> = users
        .into_iter()
        .map(|row| {
            let zone: Tz = row.timezone.parse().unwrap_or(chrono_tz::UTC);
            let date = job.tick.with_timezone(&zone).date_naive().to_string();
            let id = Uuid::new_v5(&NAMESPACE, key(row.id, &date).as_bytes());
            (id, SendDigest { user_id: row.id, date, tick: job.tick })
        })
        .collect();
    let added = outbox::fan_out(&mut *db.acquire().await?, &digests).await?;
    tracing::info!(users = digests.len(), added, tick = %job.tick, "digests enqueued");
    Ok(())
}

/// The idempotency key of a user's digest of a local day.
fn key(user: Uuid, date: &str) -> String {
    format!("digest:{user}:{date}")
}

pub async fn send_digest(
    job: SendDigest,
    db: Data<PgPool>,
    mailer: Data<Mailer>,
    templates: Data<Templates>,
) -> Result<(), BoxDynError> {
    // Still opted in, verified and enabled now that the digest runs.
    let Some(user) = sqlx::query!(
        "select email, display_name, timezone from users
         where id = $1 and digest_enabled and email_verified_at is not null and not disabled",
        job.user_id,
    )
    .fetch_optional(&*db)
    .await?
    else {
        tracing::info!(user = %job.user_id, "digest skipped: the user opted out or is gone");
        return Ok(());
    };
    let zone: Tz = user.timezone.parse().unwrap_or(chrono_tz::UTC);
    let (user_id, tick) = (job.user_id, job.tick);
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
        user_id,
        tick,
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
        user_id,
        tick,
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
        user_id,
        tick,
        SECTION,
    )
    .fetch_all(&*db)
    .await?;
    let (overdue, due_soon, open) = (items(overdue), items(due_soon), items(open));
    let email = SendEmail {
        idempotency_key: key(user_id, &job.date),
        to: user.email,
        message: EmailMessage::DailyDigest {
            display_name: user.display_name,
            date: job.date,
            open,
            due_soon,
            overdue,
        },
    };
    super::send_email(email, mailer, templates, db).await
}
