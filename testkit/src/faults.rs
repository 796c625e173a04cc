//! Faults a test injects: a private Redis it may stop and start ([`TestRedis`]), a TCP gate
//! that refuses or holds connections in front of a real server ([`TcpGate`]), and signals to
//! child processes ([`signal`]).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::{free_port, wait_until};

/// The production persistence settings (README "Redis in production"), the same as
/// `scripts/lib/stack.sh` gives dev and test Redis: a restart keeps every acknowledged write.
pub const REDIS_PERSISTENCE: [&str; 8] = [
    "--appendonly",
    "yes",
    "--appendfsync",
    "everysec",
    "--save",
    "3600 1 300 100 60 10000",
    "--maxmemory-policy",
    "noeviction",
];

/// A private `redis-server` that a test may stop and start again on the same port. It runs
/// with the production persistence settings in a data folder of its own, so a restart keeps
/// its data, as a production restart does; [`TestRedis::forget`] loses it on purpose.
pub struct TestRedis {
    pub port: u16,
    child: Option<tokio::process::Child>,
    dir: tempfile::TempDir,
}

impl TestRedis {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a data folder for the private redis");
        let mut redis = Self { port: free_port(), child: None, dir };
        redis.start_again().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on its port, with the data it had, and waits until it answers
    /// (after loading its append-only file).
    pub async fn start_again(&mut self) {
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(REDIS_PERSISTENCE)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server on PATH (scripts/test installs it)");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("valid url");
        wait_until(Duration::from_secs(10), "the private redis to answer", || {
            let client = client.clone();
            async move {
                let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING").query_async::<String>(&mut conn).await.ok()
            }
        })
        .await;
    }

    /// Kills the server (as a crash would) and waits until it has exited. What it
    /// acknowledged is in its append-only file and comes back with [`TestRedis::start_again`].
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Deletes the stopped server's data files, so the next start is empty: a restart that
    /// lost its data (no persistence, a lost disk, a failover to an empty replica).
    pub fn forget(&mut self) {
        assert!(self.child.is_none(), "stop the private redis before forgetting its data");
        let entries = std::fs::read_dir(self.dir.path()).expect("read the redis data folder");
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

/// What a [`TcpGate`] does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateMode {
    /// Proxy to the real server.
    Forward,
    /// Close at once, as a server that is down would.
    Refuse,
    /// Accept and never answer, as a hung server would (holds a job mid-run).
    Hold,
}

/// A TCP gate in front of a real server (the SMTP capture), for fault tests: it forwards,
/// refuses or holds connections as the test switches it. It injects faults between the
/// worker and a real server; it never answers for the server.
pub struct TcpGate {
    pub port: u16,
    mode: tokio::sync::watch::Sender<GateMode>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    open: std::sync::Arc<OpenConnections>,
    task: JoinHandle<()>,
}

/// Connections a gate has open now, and the most it ever had open at once (a test that
/// one attempt stopped before another started asserts that this stayed 1).
#[derive(Default)]
struct OpenConnections {
    now: std::sync::atomic::AtomicUsize,
    max: std::sync::atomic::AtomicUsize,
}

/// One open connection, counted until dropped.
struct Open(std::sync::Arc<OpenConnections>);

impl Open {
    fn new(counts: &std::sync::Arc<OpenConnections>) -> Self {
        let now = counts.now.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        counts.max.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
        Self(counts.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl TcpGate {
    pub async fn start(upstream: SocketAddr, mode: GateMode) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind gate");
        let port = listener.local_addr().expect("gate address").port();
        let (sender, receiver) = tokio::sync::watch::channel(mode);
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let open = std::sync::Arc::new(OpenConnections::default());
        let counts = open.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mode = *receiver.borrow();
                let mut changes = receiver.clone();
                let counted = (mode != GateMode::Refuse).then(|| Open::new(&counts));
                tokio::spawn(async move {
                    let _counted = counted;
                    match mode {
                        GateMode::Refuse => drop(inbound),
                        GateMode::Hold => {
                            // Held until the gate changes mode or the peer goes away.
                            let mut byte = [0u8; 1024];
                            let peer_gone = async {
                                use tokio::io::AsyncReadExt;
                                while inbound.read(&mut byte).await.is_ok_and(|n| n > 0) {}
                            };
                            tokio::select! {
                                _ = changes.changed() => {}
                                () = peer_gone => {}
                            }
                        }
                        GateMode::Forward => {
                            if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await
                            {
                                // Refusing also cuts open connections, as a server that
                                // stops does: pooled HTTP connections must not outlive it.
                                tokio::select! {
                                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                    _ = changes.wait_for(|mode| *mode == GateMode::Refuse) => {}
                                }
                            }
                        }
                    }
                });
            }
        });
        Self { port, mode: sender, accepted, open, task }
    }

    /// A gate in front of the test SMTP server (`SMTP_URL`).
    pub async fn smtp(mode: GateMode) -> Self {
        let smtp = url::Url::parse(&std::env::var("SMTP_URL").expect("SMTP_URL"))
            .expect("SMTP_URL is a URL");
        let upstream =
            format!("{}:{}", smtp.host_str().unwrap_or("127.0.0.1"), smtp.port().unwrap_or(25));
        Self::start(upstream.parse().expect("SMTP_URL host is an IP"), mode).await
    }

    /// A gate in front of the test S3 server (`S3_ENDPOINT`).
    pub async fn s3(mode: GateMode) -> Self {
        let s3 = url::Url::parse(&std::env::var("S3_ENDPOINT").expect("S3_ENDPOINT"))
            .expect("S3_ENDPOINT is a URL");
        let upstream =
            format!("{}:{}", s3.host_str().unwrap_or("127.0.0.1"), s3.port().unwrap_or(80));
        Self::start(upstream.parse().expect("S3_ENDPOINT host is an IP"), mode).await
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: GateMode) {
        self.mode.send_replace(mode);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Connections forwarded or held right now (until either side closes).
    pub fn open(&self) -> usize {
        self.open.now.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The most connections forwarded or held at once so far.
    pub fn max_open(&self) -> usize {
        self.open.max.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for TcpGate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends a signal to a child process (SIGTERM for graceful stops, SIGKILL for crashes).
pub fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("child still running");
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill(1)");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Runs `command` (a worker process) with its wall clock `offset` off, e.g. `"+10m"` or
/// `"-10m"`, through Debian's libfaketime (package faketime, which `scripts/test` installs).
/// Its monotonic clock stays real, as on a machine whose wall clock is merely set wrong:
/// timers and timeouts keep their length, only the time of day is off.
pub fn skew_clock<'a>(
    command: &'a mut tokio::process::Command,
    offset: &str,
) -> &'a mut tokio::process::Command {
    let lib = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|arch| arch.path().join("faketime/libfaketime.so.1"))
        .find(|lib| lib.exists())
        .expect("libfaketime under /usr/lib/*/faketime (apt package faketime; scripts/test installs it)");
    command.env("LD_PRELOAD", lib).env("FAKETIME", offset).env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
}
