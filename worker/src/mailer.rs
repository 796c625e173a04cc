//! Sends email over SMTP with lettre, to `SMTP_URL`.
//!
//! Every message carries a `Message-ID` derived from the email's idempotency key
//! ([`message_id`]), never a random one: when a send fails ambiguously (the connection cut
//! after `DATA`, so the server may have taken the message) and the job sends again, the
//! resend is recognisably the same message, and receiving systems that deduplicate by
//! `Message-ID` show it once.

use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;
use tasklane_shared::config::Settings;
use tracing::Instrument;

/// One SMTP transport per worker process (it pools connections).
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

/// An email ready to send.
pub struct Email<'a> {
    /// The idempotency key of the email (SPEC section 7); its `Message-ID` comes from it.
    pub idempotency_key: &'a str,
    pub to: &'a str,
    pub subject: &'a str,
    pub text: &'a str,
    pub html: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The message itself is wrong (bad address): retrying cannot help.
    #[error("invalid email: {0}")]
    Invalid(String),
    /// The server could not be reached or refused for now.
    #[error("smtp: {0}")]
    Transport(#[from] lettre::transport::smtp::Error),
}

impl MailError {
    /// What the user the email is for may be told of this failure (request receipts): the
    /// server's reply code, never its text, which may quote the address.
    pub fn reason(&self) -> String {
        match self {
            MailError::Invalid(_) => "the address is not valid".to_owned(),
            MailError::Transport(err) => match err.status() {
                Some(code) => format!("the mail server answered {code}"),
                None => "the mail server could not be reached".to_owned(),
            },
        }
    }

    /// Whether the SMTP server is down rather than the email failing: it could not be
    /// reached, timed out, dropped the connection, or said it is not available (421). A 5xx
    /// rejection, another 4xx (a mailbox busy) or a bad message fails the email itself.
    pub fn is_outage(&self) -> bool {
        use lettre::transport::smtp::response::Category;
        match self {
            MailError::Invalid(_) => false,
            MailError::Transport(err) if err.is_permanent() || err.is_client() => false,
            MailError::Transport(err) if err.is_transient() => {
                err.status().is_some_and(|code| code.category == Category::Connections)
            }
            MailError::Transport(_) => true,
        }
    }
}

impl Mailer {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let transport =
            AsyncSmtpTransport::<Tokio1Executor>::from_url(settings.smtp_url.expose_secret())?
                .timeout(Some(std::time::Duration::from_secs(10)))
                .build();
        Ok(Self { transport, from: settings.mail_from.parse()? })
    }

    pub async fn send(&self, email: &Email<'_>) -> Result<(), MailError> {
        let to: Mailbox = email
            .to
            .parse()
            .map_err(|err| MailError::Invalid(format!("recipient {:?}: {err}", email.to)))?;
        let builder = Message::builder()
            .message_id(Some(message_id(email.idempotency_key, &self.from)))
            .from(self.from.clone())
            .to(to)
            .subject(email.subject);
        let message = match email.html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                email.text.to_owned(),
                html.to_owned(),
            )),
            None => builder.body(email.text.to_owned()),
        }
        .map_err(|err| MailError::Invalid(err.to_string()))?;
        // The SMTP exchange is a client span of the job's trace: what the server said, and
        // how long it took, next to the request that caused the email.
        let span = tracing::info_span!(
            "smtp.send",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            smtp.code = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let sent = self.transport.send(message).instrument(span.clone()).await;
        match &sent {
            Ok(response) => {
                span.record("smtp.code", response.code().to_string().as_str());
            }
            Err(err) => {
                span.record("otel.status_code", "error");
                span.record("error", err.to_string().as_str());
            }
        }
        sent?;
        Ok(())
    }
}

/// The `Message-ID` of the email with idempotency key `key` sent from `from`:
/// `<UUIDv5(key)@domain of from>`, the same for every attempt of the same email and
/// different for every other email.
pub fn message_id(key: &str, from: &Mailbox) -> String {
    /// UUIDv5 namespace of Tasklane's Message-IDs (a fixed random UUID).
    const NAMESPACE: uuid::Uuid = uuid::uuid!("4f0c2a7e-9b1d-4c55-8e3a-6d2f1b7a9c40");
    let id = uuid::Uuid::new_v5(&NAMESPACE, key.as_bytes());
    format!("<{id}@{}>", from.email.domain())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_id_is_the_same_for_a_key_and_differs_between_keys() {
        let from: Mailbox = "Tasklane <no-reply@tasklane.test>".parse().unwrap();
        let once = message_id("reset_password:1", &from);
        assert_eq!(once, message_id("reset_password:1", &from));
        assert_ne!(once, message_id("reset_password:2", &from));
        assert!(once.starts_with('<') && once.ends_with("@tasklane.test>"), "{once}");
    }
}
