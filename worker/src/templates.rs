//! Email templates: one folder per email under `worker/templates/` (`subject.txt`,
//! `text.txt`, `html.html`), embedded in the binary and rendered with minijinja, which
//! escapes the HTML parts. Links are built here from `PUBLIC_URL`, never from anything a
//! request supplied.

use std::sync::Arc;

use anyhow::Context as _;
use minijinja::{Environment, context};
use tasklane_shared::jobs::EmailMessage;

/// A rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The compiled templates; cheap to clone.
#[derive(Clone)]
pub struct Templates {
    env: Arc<Environment<'static>>,
    public_url: url::Url,
}

macro_rules! email_templates {
    ($env:ident, $($name:literal),+) => {
        $(
            $env.add_template(concat!($name, "/subject.txt"), include_str!(concat!("../templates/", $name, "/subject.txt")))?;
            $env.add_template(concat!($name, "/text.txt"), include_str!(concat!("../templates/", $name, "/text.txt")))?;
            $env.add_template(concat!($name, "/html.html"), include_str!(concat!("../templates/", $name, "/html.html")))?;
        )+
    };
}

impl Templates {
    pub fn new(public_url: url::Url) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        env.add_template("base.html", include_str!("../templates/base.html"))?;
        email_templates!(
            env,
            "verify_email",
            "reset_password",
            "password_changed",
            "daily_digest",
            "task_reminder"
        );
        Ok(Self { env: Arc::new(env), public_url })
    }

    /// Renders `message`; `token` is the token just minted for an email that carries a link
    /// ([`EmailMessage::link_token`]), which only ever exists here and in the email.
    pub fn render(&self, message: &EmailMessage, token: Option<&str>) -> anyhow::Result<Rendered> {
        let public_url = self.public_url.as_str().trim_end_matches('/');
        let token = || token.context("this email carries a link but no token was minted");
        let ctx = match message {
            EmailMessage::VerifyEmail { display_name, .. } => {
                context! { display_name, public_url, link => self.link("verify-email", token()?)? }
            }
            EmailMessage::ResetPassword { display_name, .. } => {
                context! { display_name, public_url, link => self.link("reset-password", token()?)? }
            }
            EmailMessage::PasswordChanged { display_name } => context! { display_name, public_url },
            EmailMessage::DailyDigest { display_name, date, open, due_soon, overdue } => {
                context! { display_name, public_url, date, open, due_soon, overdue }
            }
            EmailMessage::TaskReminder { display_name, task_id, title, due } => {
                context! { display_name, public_url, task_id, title, due }
            }
        };
        let name = message.template();
        let render = |part: &str| -> anyhow::Result<String> {
            Ok(self.env.get_template(&format!("{name}/{part}"))?.render(&ctx)?)
        };
        Ok(Rendered {
            subject: render("subject.txt")?.trim().to_owned(),
            text: render("text.txt")?,
            html: render("html.html")?,
        })
    }

    /// `<PUBLIC_URL>/<page>?token=<token>`, the page of the web app that completes the flow.
    fn link(&self, page: &str, token: &str) -> anyhow::Result<String> {
        let mut url = self.public_url.join(page)?;
        url.query_pairs_mut().append_pair("token", token);
        Ok(url.into())
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn templates() -> Templates {
        Templates::new("https://tasklane.example/".parse().expect("url"))
            .expect("templates compile")
    }

    #[test]
    fn every_email_renders_subject_text_and_html() {
        let messages = [
            EmailMessage::VerifyEmail {
                display_name: Some("Ada".into()),
                token_id: Uuid::now_v7(),
            },
            EmailMessage::ResetPassword { display_name: None, token_id: Uuid::now_v7() },
            EmailMessage::PasswordChanged { display_name: None },
            EmailMessage::DailyDigest {
                display_name: Some("Ada".into()),
                date: "2026-11-21".into(),
                open: vec![tasklane_shared::jobs::DigestItem {
                    title: "Write <it>".into(),
                    due: None,
                }],
                due_soon: vec![],
                overdue: vec![tasklane_shared::jobs::DigestItem {
                    title: "Pay rent".into(),
                    due: Some("2026-11-20 09:00".into()),
                }],
            },
        ];
        for message in &messages {
            let token = message.link_token().map(|_| "t1");
            let rendered = templates().render(message, token).expect("renders");
            assert!(!rendered.subject.is_empty() && !rendered.subject.contains('\n'));
            assert!(rendered.text.contains("Hello"));
            assert!(rendered.html.starts_with("<!doctype html>"));
        }
    }

    #[test]
    fn links_come_from_public_url() {
        let rendered = templates()
            .render(
                &EmailMessage::ResetPassword { display_name: None, token_id: Uuid::now_v7() },
                Some("abc_DEF-123"),
            )
            .expect("renders");
        assert!(
            rendered.text.contains("https://tasklane.example/reset-password?token=abc_DEF-123")
        );
    }

    #[test]
    fn a_link_email_without_a_minted_token_does_not_render() {
        let message = EmailMessage::VerifyEmail { display_name: None, token_id: Uuid::now_v7() };
        assert!(templates().render(&message, None).is_err());
    }

    #[test]
    fn html_escapes_what_users_typed() {
        let rendered = templates()
            .render(
                &EmailMessage::PasswordChanged { display_name: Some("<script>x</script>".into()) },
                None,
            )
            .expect("renders");
        assert!(!rendered.html.contains("<script>"));
        assert!(rendered.html.contains("&lt;script&gt;"));
    }
}
