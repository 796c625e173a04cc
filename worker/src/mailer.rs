//! Sends email over SMTP with lettre, to `SMTP_URL`.

use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;
use tasklane_shared::config::Settings;

/// One SMTP transport per worker process (it pools connections).
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

/// An email ready to send.
pub struct Email<'a> {
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
        let builder = Message::builder().from(self.from.clone()).to(to).subject(email.subject);
        let message = match email.html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                email.text.to_owned(),
                html.to_owned(),
            )),
            None => builder.body(email.text.to_owned()),
        }
        .map_err(|err| MailError::Invalid(err.to_string()))?;
        self.transport.send(message).await?;
        Ok(())
    }
}
