//! [`BusyMailbox`]: a mail server in front of the SMTP capture that can answer
//! `450 mailbox busy` to every recipient, a transient failure of the email itself (it costs
//! an attempt and is retried; an unreachable server would hold the kind instead).

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// While busy, every new connection gets `450` for each recipient; otherwise connections
/// reach the capture. A switch closes the connections of the other mode (the worker's
/// pooled connection reconnects, and so meets the new mode).
pub struct BusyMailbox {
    port: u16,
    busy: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl BusyMailbox {
    pub async fn start(busy: bool) -> Self {
        let smtp = url::Url::parse(&std::env::var("SMTP_URL").expect("SMTP_URL"))
            .expect("SMTP_URL is a URL");
        let upstream =
            format!("{}:{}", smtp.host_str().unwrap_or("127.0.0.1"), smtp.port().unwrap_or(25));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the mailbox");
        let port = listener.local_addr().expect("mailbox address").port();
        let (sender, _) = watch::channel(busy);
        let sender = Arc::new(sender);
        let modes = sender.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (mode, upstream) = (modes.subscribe(), upstream.clone());
                tokio::spawn(async move {
                    if *mode.borrow() {
                        refuse_recipients(inbound, mode).await;
                    } else {
                        forward(inbound, &upstream, mode).await;
                    }
                });
            }
        });
        Self { port, busy: sender, task }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// From now on, new connections get `busy` answers (or reach the capture).
    pub fn set_busy(&self, busy: bool) {
        self.busy.send_replace(busy);
    }
}

impl Drop for BusyMailbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards to the capture until the mailbox turns busy.
async fn forward(mut inbound: TcpStream, upstream: &str, mut mode: watch::Receiver<bool>) {
    let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = mode.wait_for(|busy| *busy) => {}
    }
}

/// Speaks SMTP, answering `450` to every recipient, until the mailbox stops being busy.
async fn refuse_recipients(inbound: TcpStream, mode: watch::Receiver<bool>) {
    let (read, mut write) = inbound.into_split();
    let mut lines = BufReader::new(read).lines();
    let _ = write.write_all(b"220 busy.test ESMTP\r\n").await;
    while let Ok(Some(line)) = lines.next_line().await {
        if !*mode.borrow() {
            break;
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => b"250 busy.test\r\n",
            "RCPT" => b"450 4.2.1 mailbox busy, try again later\r\n",
            "QUIT" => b"221 bye\r\n",
            _ => b"250 ok\r\n",
        };
        if write.write_all(reply).await.is_err() || verb == "QUIT" {
            break;
        }
    }
}
