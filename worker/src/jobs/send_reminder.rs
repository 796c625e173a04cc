//! Task reminders (SPEC section 10, delayed jobs): a `send_reminder` job is enqueued, due at
//! the task's `remind_at`, by the transaction that set it. It checks the task when it runs,
//! so moving the reminder (a new job, due at the new time), clearing it, finishing the task
//! or deleting it needs no bookkeeping of old jobs: they find their reminder no longer
//! current and send nothing. The email's idempotency key is the task and the reminder's time,
//! so a job run twice sends one email.

use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use chrono_tz::Tz;
use sqlx::PgPool;
use tasklane_shared::jobs::{EmailMessage, SendEmail, SendReminder};

use crate::mailer::Mailer;
use crate::templates::Templates;

pub async fn send_reminder(
    job: SendReminder,
    db: Data<PgPool>,
    mailer: Data<Mailer>,
    templates: Data<Templates>,
) -> Result<(), BoxDynError> {
    // The reminder is still the task's (same time, not done, not deleted) and its owner can
    // still receive email.
    let Some(current) = sqlx::query!(
        "select t.title, t.due_at, u.email, u.display_name, u.timezone
         from tasks t join users u on u.id = t.owner_id
         where t.id = $1 and t.owner_id = $2 and t.remind_at = $3 and t.deleted_at is null
           and t.status <> 'done' and not u.disabled",
        job.task_id,
        job.owner_id,
        job.remind_at,
    )
    .fetch_optional(&*db)
    .await?
    else {
        tracing::info!(task = %job.task_id, "reminder skipped: moved, cleared, done or deleted since");
        return Ok(());
    };
    let zone: Tz = current.timezone.parse().unwrap_or(chrono_tz::UTC);
    let email = SendEmail {
        idempotency_key: format!("reminder:{}:{}", job.task_id, job.remind_at.timestamp_millis()),
        to: current.email,
        message: EmailMessage::TaskReminder {
            display_name: current.display_name,
            task_id: job.task_id,
            title: current.title,
            due: current
                .due_at
                .map(|due| due.with_timezone(&zone).format("%Y-%m-%d %H:%M").to_string()),
        },
    };
    super::send_email(email, mailer, templates, db).await
}
