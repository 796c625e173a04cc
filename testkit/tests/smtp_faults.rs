//! Failures at the moment an email is accepted (SPEC section 9):
//! - F6, the ambiguous one: the connection is cut after the server received the whole
//!   message (`DATA` … `.`) and before its reply reached the worker. The worker cannot know
//!   the mail went out, so it sends again; the resend carries the same Message-ID (derived
//!   from the idempotency key), so it is recognisably the same message.
//! - Postgres lost while the server accepts the message: the email is out, so the job must
//!   not fail (its retry would send it again), and the idempotency record follows later.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use secrecy::ExposeSecret;
use tasklane_shared::jobs::{EmailMessage, SendEmail};
use tasklane_shared::outbox;
use tasklane_testkit::{GateMode, TcpGate, TestApp, TestWorker, email_address, unique, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Hook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What the proxy does once the server has a whole message, before its reply.
#[derive(Clone)]
enum AtEnd {
    /// Cut the connection (the reply never arrives), for the first N messages.
    Cut(usize),
    /// Run the hook (for the first message), then let the reply through.
    Run(Hook),
}

/// A proxy to the SMTP capture acting at the end of a message's `DATA`.
struct CutAfterData {
    port: u16,
    cut: Arc<AtomicUsize>,
}

impl CutAfterData {
    async fn start(cuts: usize) -> Self {
        Self::start_with(AtEnd::Cut(cuts)).await
    }

    async fn start_with(at_end: AtEnd) -> Self {
        let smtp = url::Url::parse(&std::env::var("SMTP_URL").unwrap()).unwrap();
        let upstream: SocketAddr =
            format!("{}:{}", smtp.host_str().unwrap(), smtp.port().unwrap()).parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicUsize::new(0));
        let counter = cut.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (counter, at_end) = (counter.clone(), at_end.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else { return };
                    relay(inbound, outbound, counter, at_end).await;
                });
            }
        });
        Self { port, cut }
    }

    fn cuts(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }
}

/// Forwards both ways; once the client has sent a message's final `.` line, acts on the
/// server's reply as `at_end` says (`done` counts the messages acted on).
async fn relay(inbound: TcpStream, outbound: TcpStream, done: Arc<AtomicUsize>, at_end: AtEnd) {
    let (mut client_read, mut client_write) = inbound.into_split();
    let (mut server_read, mut server_write) = outbound.into_split();
    let (sent_end, mut saw_end) = tokio::sync::watch::channel(false);
    let upstream = tokio::spawn(async move {
        let mut buffer = vec![0u8; 16 * 1024];
        let mut tail: Vec<u8> = Vec::new();
        loop {
            let Ok(n) = client_read.read(&mut buffer).await else { return };
            if n == 0 || server_write.write_all(&buffer[..n]).await.is_err() {
                return;
            }
            tail.extend_from_slice(&buffer[..n]);
            if tail.windows(5).any(|w| w == b"\r\n.\r\n") {
                let _ = sent_end.send(true);
                tail.clear();
            } else if tail.len() > 4 {
                tail.drain(..tail.len() - 4);
            }
        }
    });
    let mut buffer = vec![0u8; 16 * 1024];
    while let Ok(n) = server_read.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        if *saw_end.borrow_and_update() {
            let limit = match &at_end {
                AtEnd::Cut(cuts) => *cuts,
                AtEnd::Run(_) => 1,
            };
            let first = done
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| (c < limit).then_some(c + 1))
                .is_ok();
            match &at_end {
                // The server has the message; its reply never arrives.
                AtEnd::Cut(_) if first => break,
                AtEnd::Run(hook) if first => hook().await,
                _ => {}
            }
        }
        if client_write.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    upstream.abort();
}

#[tokio::test]
async fn a_connection_cut_after_data_resends_the_same_message_id() {
    let app = TestApp::spawn().await;
    let proxy = CutAfterData::start(1).await;
    let mut settings = app.worker_settings();
    settings.smtp_url = format!("smtp://127.0.0.1:{}", proxy.port).into();
    settings.worker_concurrency = 1;
    let _worker = TestWorker::spawn(settings).await;

    let to = email_address();
    let job = SendEmail {
        idempotency_key: unique("cut"),
        to: to.clone(),
        message: EmailMessage::PasswordChanged { display_name: None },
    };
    let mut tx = app.db.begin().await.unwrap();
    let id = outbox::enqueue(&mut tx, &job, None).await.unwrap();
    tx.commit().await.unwrap();

    // The server got the message twice: once before the cut, once on the retry.
    let mail = app.wait_for_emails(&to, 2, Duration::from_secs(60)).await;
    assert_eq!(proxy.cuts(), 1);
    let record = wait_until(Duration::from_secs(20), "the job's outcome", || async {
        let record = outbox::record(&app.db, id).await.unwrap()?;
        record.outcome.is_some().then_some(record)
    })
    .await;
    assert_eq!(record.outcome.as_deref(), Some("succeeded"));
    assert_eq!(app.emails_to(&to).await.len(), 2, "no third send");
    let from: lettre::message::Mailbox = app.settings.mail_from.parse().unwrap();
    let expected = tasklane_worker::mailer::message_id(&job.idempotency_key, &from);
    for copy in &mail {
        assert_eq!(copy["headers"]["message-id"], expected.as_str(), "the same message twice");
    }
}

#[tokio::test]
async fn postgres_lost_while_the_server_accepts_an_email_does_not_send_it_again() {
    let app = TestApp::spawn().await;
    // The worker reaches Postgres through a gate that the SMTP proxy closes (cutting every
    // open connection) after the server has the message and before its reply gets through:
    // the send succeeds, the commit of the idempotency key fails.
    let mut url = url::Url::parse(app.settings.database_url.expose_secret()).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let postgres = Arc::new(TcpGate::start(upstream.parse().unwrap(), GateMode::Forward).await);
    url.set_port(Some(postgres.port)).unwrap();
    let gate = postgres.clone();
    let hook: Hook = Arc::new(move || {
        let gate = gate.clone();
        Box::pin(async move {
            gate.set(GateMode::Refuse);
            wait_until(Duration::from_secs(10), "every Postgres connection cut", || async {
                (gate.open() == 0).then_some(())
            })
            .await;
        })
    });
    let proxy = CutAfterData::start_with(AtEnd::Run(hook)).await;
    let mut settings = app.worker_settings();
    settings.database_url = url.to_string().into();
    settings.smtp_url = format!("smtp://127.0.0.1:{}", proxy.port).into();
    settings.worker_concurrency = 1;
    let _worker = TestWorker::spawn(settings).await;

    let to = email_address();
    let job = SendEmail {
        idempotency_key: unique("pg-lost"),
        to: to.clone(),
        message: EmailMessage::PasswordChanged { display_name: None },
    };
    let mut tx = app.db.begin().await.unwrap();
    let id = outbox::enqueue(&mut tx, &job, None).await.unwrap();
    tx.commit().await.unwrap();

    app.wait_for_emails(&to, 1, Duration::from_secs(30)).await;
    let store = app.spawn_store();
    let done = wait_until(Duration::from_secs(30), "the job done in Redis", || async {
        let job =
            store.job(tasklane_shared::jobs::Queue::Emails, &id.to_string()).await.unwrap()?;
        (job.state == tasklane_shared::domain::jobs::JobState::Done).then_some(job)
    })
    .await;
    assert_eq!(done.attempts, 1, "the sent email's job did not fail: {done:?}");
    assert_eq!(proxy.cuts(), 1, "Postgres was cut during the send");

    // Postgres back: the idempotency record is written, the job's record finished.
    postgres.set(GateMode::Forward);
    wait_until(Duration::from_secs(60), "the idempotency record written", || async {
        let kept: Option<String> =
            sqlx::query_scalar("select recipient from sent_emails where idempotency_key = $1")
                .bind(&job.idempotency_key)
                .fetch_optional(&app.db)
                .await
                .unwrap();
        kept.is_some().then_some(())
    })
    .await;
    wait_until(Duration::from_secs(30), "the job's record finished", || async {
        let record = outbox::record(&app.db, id).await.unwrap()?;
        (record.outcome.as_deref() == Some("succeeded")).then_some(())
    })
    .await;
    assert_eq!(app.emails_to(&to).await.len(), 1, "sent once");
}
