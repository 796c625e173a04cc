//! The real `tasklane-api` release binary in a process of its own, as it is deployed: its
//! own runtime, allocator and tracing subscriber (the in-process API of the other
//! benchmarks has no subscriber, so it skips the work of every span).

use std::time::{Duration, Instant};

/// A running `tasklane-api`; killed when dropped.
pub struct ApiProcess {
    pub base: String,
    pub pid: u32,
    _child: tokio::process::Child,
}

impl ApiProcess {
    /// Starts the binary beside this one with the environment of `scripts/bench` plus
    /// `env`, on a free port, and waits until it answers `/health/live`.
    pub async fn start(env: &[(&str, String)]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?.with_file_name("tasklane-api");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut command = tokio::process::Command::new(&exe);
        command
            .arg("serve")
            .env("TASKLANE_API_ADDR", format!("127.0.0.1:{port}"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .kill_on_drop(true);
        let child = command.spawn().map_err(|err| anyhow::anyhow!("{}: {err}", exe.display()))?;
        let pid = child.id().unwrap_or_default();
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let live = client.get(format!("{base}/health/live")).send().await;
            if live.is_ok_and(|r| r.status() == 200) {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "tasklane-api did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { base, pid, _child: child })
    }

    /// CPU seconds (user + system) the process has used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // Fields after the command name (which may hold spaces) in parentheses.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    }
}
