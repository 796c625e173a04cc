//! `send_email`: one email, at most once per idempotency key.
//!
//! The key is inserted in a transaction held open across the SMTP send and committed after
//! it: a failed send rolls the key back (so the retry sends), a duplicate job running at the
//! same time waits on the key's row and then finds it taken, and a later duplicate finds it
//! committed. A commit that fails after the server accepted the mail (Postgres went away
//! meanwhile) does not fail the job: the email is out, and the key is written again in the
//! background. The one window left is a crash between the server accepting the mail and the
//! commit, which SMTP offers no way to close (the resend carries the same Message-ID).
//!
//! A verification or reset email carries only its token's row id (SPEC section 14). Once
//! the key is claimed, and so by one job only, the token is minted
//! ([`email_tokens::mint`]): its hash committed on a connection of its own, so the link
//! works the moment the email arrives, the token itself only rendered into the email. A
//! retry mints again, so the link of an email that did not go out never works. A row used,
//! voided by a newer link or expired meanwhile keeps no hash: its email still goes, with a
//! dead link, as it did when the API minted tokens (each accepted request gets its email;
//! the newest link is the one that works).
//!
//! An SMTP server that cannot be reached, times out or answers 421 is an outage, not a
//! failure of the email: the handler returns [`DependencyDown`], the attempt is handed back
//! uncounted and the kind held until a probe gets through (a Postgres outage is recognised
//! the same way, from the `sqlx` error). A 5xx or another 4xx fails the email itself.

use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use sqlx::PgPool;
use tasklane_shared::domain::email_tokens;
use tasklane_shared::jobs::{DependencyDown, Failure, PermanentError, SendEmail};

use crate::mailer::{Email, MailError, Mailer};
use crate::templates::Templates;

pub async fn send_email(
    job: SendEmail,
    mailer: Data<Mailer>,
    templates: Data<Templates>,
    db: Data<PgPool>,
) -> Result<(), BoxDynError> {
    let template = job.message.template();
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
        tracing::info!(key = %job.idempotency_key, template, "email already sent; skipping");
        return Ok(());
    }
    let token = match job.message.link_token() {
        None => None,
        Some(id) => {
            let minted = email_tokens::mint(&*db, id).await?;
            if !minted.live {
                tracing::info!(key = %job.idempotency_key, template, "the link was used, replaced or expired before it was sent; it will not work");
            }
            Some(minted.token)
        }
    };
    // A template that does not render never will: no retry.
    let rendered = templates
        .render(&job.message, token.as_deref())
        .map_err(|err| PermanentError(format!("{err:#}")))?;
    let email = Email {
        idempotency_key: &job.idempotency_key,
        to: &job.to,
        subject: &rendered.subject,
        text: &rendered.text,
        html: Some(&rendered.html),
    };
    match mailer.send(&email).await {
        Ok(()) => {}
        Err(MailError::Invalid(why)) => return Err(Box::new(PermanentError(why))),
        // The kind is held until SMTP answers again; this attempt does not count.
        Err(err) if err.is_outage() => return Err(Box::new(DependencyDown::new("smtp", err))),
        Err(err) => return Err(Box::new(Failure::new(err.reason(), err))),
    }
    // The email is out. A commit that fails now (Postgres went away during the send) must not
    // fail the job, or its retry would send the email again: the idempotency record is
    // written again in the background until Postgres takes it.
    if let Err(err) = tx.commit().await {
        tracing::warn!(key = %job.idempotency_key, template, error = %err, "email sent, but its idempotency record did not commit; writing it again");
        tokio::spawn(record_sent((*db).clone(), job.idempotency_key, job.to));
        return Ok(());
    }
    tracing::info!(key = %job.idempotency_key, template, "email sent");
    Ok(())
}

/// Writes the idempotency record of an email already sent, retrying (up to a day) while
/// Postgres is away.
async fn record_sent(db: PgPool, key: String, to: String) {
    let mut delay = std::time::Duration::from_millis(500);
    let give_up = tokio::time::Instant::now() + std::time::Duration::from_secs(24 * 3600);
    loop {
        let written = sqlx::query!(
            "insert into sent_emails (idempotency_key, recipient) values ($1, $2)
             on conflict (idempotency_key) do nothing",
            key,
            to,
        )
        .execute(&db)
        .await;
        match written {
            Ok(_) => {
                tracing::info!(%key, "idempotency record of a sent email written");
                return;
            }
            Err(err) if tokio::time::Instant::now() < give_up => {
                tracing::debug!(%key, error = %err, "idempotency record still waiting for Postgres");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(30));
            }
            Err(err) => {
                tracing::error!(%key, error = %err, "gave up writing the idempotency record of a sent email");
                return;
            }
        }
    }
}
