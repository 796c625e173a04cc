//! [`TestPostgres`]: a private PostgreSQL server a test may stop and start again, for the
//! tests of a database outage. The shared server `scripts/test` starts serves every other
//! test and must never go down, so an outage test initdbs a server of its own, with the
//! same Debian binaries `scripts/test` uses, into a temporary folder.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::{free_port, wait_until};

/// A private PostgreSQL server on a port of its own, with its data in a temporary folder.
pub struct TestPostgres {
    pub port: u16,
    bin: PathBuf,
    /// Before `dir`: fields drop in order, and the server must die before its data goes.
    child: Option<tokio::process::Child>,
    dir: tempfile::TempDir,
}

impl TestPostgres {
    /// initdb, start, and wait until it accepts connections.
    pub async fn start() -> Self {
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new().prefix("tasklane-pg").tempdir().expect("a data folder");
        if running_as_root() {
            // initdb and postgres refuse to run as root; they run as `postgres`, which must
            // own the folder.
            let status = std::process::Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown(1)");
            assert!(status.success(), "chown the data folder to postgres");
        }
        let status = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.path())
            .args(["-A", "trust", "--no-sync", "-U", "postgres", "-E", "UTF8", "--locale=C"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .current_dir("/")
            .status()
            .await
            .expect("initdb runs");
        assert!(status.success(), "initdb into {}", dir.path().display());
        let mut server = Self { port: free_port(), bin, child: None, dir };
        server.start_again().await;
        server
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Starts the server again on its port, with its data, and waits until it accepts
    /// connections.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "the private postgres is already running");
        let child = as_postgres(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .current_dir("/")
            .kill_on_drop(true)
            .spawn()
            .expect("postgres runs");
        self.child = Some(child);
        let isready = self.bin.join("pg_isready");
        let port = self.port.to_string();
        wait_until(Duration::from_secs(30), "the private postgres to accept connections", || {
            let mut command = tokio::process::Command::new(&isready);
            command.args(["-q", "-h", "127.0.0.1", "-p", &port, "-U", "postgres"]);
            async move { command.status().await.ok().filter(|status| status.success()) }
        })
        .await;
    }

    /// Stops the server as an operator's restart does (fast shutdown: open sessions are
    /// ended, new connections refused) and waits until it has exited.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().expect("postgres still running");
            let status = std::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()
                .expect("kill(1)");
            assert!(status.success(), "kill -INT {pid}");
            let exited = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
            assert!(exited.is_ok(), "postgres did not stop within 30 s");
        }
    }
}

/// The newest PostgreSQL server binaries of Debian's postgresql package (as `scripts/test`).
fn pg_bin_dir() -> PathBuf {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL installed under /usr/lib/postgresql (scripts/test installs it)")
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().expect("an initdb under /usr/lib/postgresql/*/bin").1
}

/// The effective user of this process is the owner of its `/proc/self`.
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|meta| meta.uid() == 0).unwrap_or(false)
}

/// A command for a PostgreSQL binary, run as `postgres` when we are root.
fn as_postgres(program: &Path) -> tokio::process::Command {
    if running_as_root() {
        let mut command = tokio::process::Command::new("setpriv");
        command.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(program);
        command
    } else {
        tokio::process::Command::new(program)
    }
}
