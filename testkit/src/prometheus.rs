//! [`TestPrometheus`]: a real Prometheus (Debian's package, as `scripts/dev` runs it with
//! `TASKLANE_OBSERVE=1`) on a free port with a scrape configuration the test writes, so a
//! test can ask PromQL questions of what the API and the workers really export.

use std::path::PathBuf;
use std::process::Stdio;

use crate::{free_port, unique};

/// A Prometheus server for one test; stopped and its data removed on drop.
pub struct TestPrometheus {
    /// Its HTTP API, e.g. `http://127.0.0.1:PORT`.
    pub url: String,
    client: reqwest::Client,
    dir: PathBuf,
    process: tokio::process::Child,
}

impl TestPrometheus {
    /// Starts Prometheus with `config` (the YAML of `prometheus.yml`: global settings, rule
    /// files, scrape configurations).
    pub fn start(config: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("prometheus"));
        std::fs::create_dir_all(&dir).expect("a folder for Prometheus");
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus.yml written");
        let port = free_port();
        let process = tokio::process::Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus is installed (scripts/lib/stack.sh installs Debian's package)");
        Self {
            url: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            dir,
            process,
        }
    }

    /// The value of an instant query's first sample, if it has one (and Prometheus answers).
    pub async fn query(&self, promql: &str) -> Option<f64> {
        let resp = self
            .client
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = resp.json().await.ok()?;
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// The JSON of `GET /api/v1/<path>` (e.g. `rules`), if Prometheus answers.
    pub async fn api(&self, path: &str) -> Option<serde_json::Value> {
        let resp = self.client.get(format!("{}/api/v1/{path}", self.url)).send().await.ok()?;
        resp.json().await.ok()
    }
}

impl Drop for TestPrometheus {
    fn drop(&mut self) {
        let _ = self.process.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
