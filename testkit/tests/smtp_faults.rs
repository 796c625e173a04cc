//! The ambiguous SMTP failure (SPEC section 9, F6): the connection is cut after the server
//! received the whole message (`DATA` … `.`) and before its reply reached the worker. The
//! worker cannot know the mail went out, so it sends again; the resend carries the same
//! Message-ID (derived from the idempotency key), so it is recognisably the same message.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tasklane_shared::jobs::{EmailMessage, SendEmail};
use tasklane_shared::outbox;
use tasklane_testkit::{TestApp, TestWorker, email_address, unique, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A proxy to the SMTP capture that, for its first `cuts` messages, forwards the message
/// and then cuts the connection before the server's reply to it gets through.
struct CutAfterData {
    port: u16,
    cut: Arc<AtomicUsize>,
}

impl CutAfterData {
    async fn start(cuts: usize) -> Self {
        let smtp = url::Url::parse(&std::env::var("SMTP_URL").unwrap()).unwrap();
        let upstream: SocketAddr =
            format!("{}:{}", smtp.host_str().unwrap(), smtp.port().unwrap()).parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicUsize::new(0));
        let counter = cut.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else { return };
                    relay(inbound, outbound, counter, cuts).await;
                });
            }
        });
        Self { port, cut }
    }

    fn cuts(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }
}

/// Forwards both ways; once the client has sent a message's final `.` line (and cuts are
/// left), the next bytes from the server (its reply) are dropped with the connection.
async fn relay(inbound: TcpStream, outbound: TcpStream, cut: Arc<AtomicUsize>, cuts: usize) {
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
        if *saw_end.borrow_and_update()
            && cut
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| (c < cuts).then_some(c + 1))
                .is_ok()
        {
            // The server has the message; its reply never arrives.
            break;
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
