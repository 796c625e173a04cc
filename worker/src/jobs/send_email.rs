//! `send_email`: one email, at most once per idempotency key.
//!
//! The key is inserted in a transaction held open across the SMTP send and committed after
//! it: a failed send rolls the key back (so the retry sends), a duplicate job running at the
//! same time waits on the key's row and then finds it taken, and a later duplicate finds it
//! committed. The one window left is a crash between the server accepting the mail and the
//! commit, which SMTP offers no way to close.

use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use sqlx::PgPool;
use tasklane_shared::jobs::{PermanentError, SendEmail};

use crate::mailer::{Email, MailError, Mailer};
use crate::templates::Templates;

pub async fn send_email(
    job: SendEmail,
    mailer: Data<Mailer>,
    templates: Data<Templates>,
    db: Data<PgPool>,
) -> Result<(), BoxDynError> {
    // A template that does not render never will: no retry.
    let rendered =
        templates.render(&job.message).map_err(|err| PermanentError(format!("{err:#}")))?;
    let mut tx = db.begin().await?;
    let claimed = sqlx::query!(
        "insert into sent_emails (idempotency_key, recipient) values ($1, $2)
         on conflict (idempotency_key) do nothing",
        job.idempotency_key,
        job.to,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        tracing::info!(key = %job.idempotency_key, template = job.message.template(), "email already sent; skipping");
        return Ok(());
    }
    let email = Email {
        to: &job.to,
        subject: &rendered.subject,
        text: &rendered.text,
        html: Some(&rendered.html),
    };
    match mailer.send(&email).await {
        Ok(()) => {}
        Err(MailError::Invalid(why)) => return Err(Box::new(PermanentError(why))),
        Err(err) => return Err(Box::new(err)),
    }
    tx.commit().await?;
    tracing::info!(key = %job.idempotency_key, template = job.message.template(), "email sent");
    Ok(())
}
