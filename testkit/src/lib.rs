//! The integration-test harness.
//!
//! Every test gets its own world on the shared servers `scripts/test` starts: a database
//! cloned from a migrated template, a Redis key prefix, unique mail addresses and object
//! keys. Nothing is flushed or shared, so tests run in parallel (nextest runs each in its
//! own process). Fault tests that stop Redis start a private `redis-server` ([`TestRedis`])
//! instead of touching the shared one.
//!
//! # Layout
//! - [`TestApp`]: the API on port 0 plus helpers (HTTP client, database, mail, S3, workers).
//! - [`TestWorker`]: a worker in this process; [`TestApp::worker_process`] runs the real
//!   binary for tests that kill it.
//! - [`TestRedis`]: a private Redis that a test may stop and start again (with the
//!   production persistence settings, so a restart keeps its data).
//! - [`TestPostgres`]: a private PostgreSQL server for database-outage tests (`postgres`).
//! - [`TcpGate`]: a TCP gate in front of a real server, to refuse or hold its connections;
//!   [`signal`]: SIGTERM or SIGKILL for a child process; [`skew_clock`]: a worker process
//!   whose wall clock is off (all in `faults`).
//! - `database`: each test's database, cloned from a migrated template.
//! - [`OtlpReceiver`]: an OTLP/HTTP trace collector, to assert on exported spans.
//! - [`prometheus::TestPrometheus`]: a real Prometheus scraping what a test configures.
//! - [`wait_until`]: waiting on a condition with a deadline (never a bare sleep).

use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use tasklane_shared::config::Settings;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod admin;
mod database;
mod faults;
pub mod jobs;
mod mailbox;
mod otlp;
mod postgres;
pub mod prometheus;

use database::create_database;
pub use faults::{GateMode, REDIS_PERSISTENCE, TcpGate, TestRedis, signal, skew_clock};
pub use mailbox::BusyMailbox;
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use postgres::TestPostgres;

/// Polls `check` every 25 ms until it yields a value or `deadline` passes.
pub async fn wait_until<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < until, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A unique, readable suffix for names (databases, prefixes, addresses, keys).
pub fn unique(label: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{label}_{}", &id[id.len() - 12..])
}

/// A free TCP port on 127.0.0.1 (for processes that need a port before they start).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// The settings `scripts/test` exported, with test-friendly overrides.
pub fn base_settings() -> Settings {
    let mut vars: HashMap<String, String> = std::env::vars().collect();
    vars.entry("TASKLANE_ENV".into()).or_insert_with(|| "test".into());
    let mut settings = Settings::from_vars(vars).expect("scripts/test exports valid settings");
    settings.api_addr = "127.0.0.1:0".parse().expect("literal address");
    settings.worker_addr = "127.0.0.1:0".parse().expect("literal address");
    settings.shutdown_grace = Duration::from_secs(5);
    settings.relay_poll_interval = Duration::from_millis(200);
    settings
}

/// The running API of one test, with its own database and Redis prefix.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`
    pub address: String,
    pub client: reqwest::Client,
    /// A pool on this test's database.
    pub db: PgPool,
    /// The settings the API runs with; start workers with [`TestApp::worker_settings`].
    pub settings: Settings,
    db_name: String,
    admin_options: PgConnectOptions,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Starts the API against a fresh database and Redis prefix.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Like [`TestApp::spawn`], letting the test adjust the settings first (e.g. a private
    /// Redis, a smaller body limit).
    pub async fn spawn_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        Self::spawn_from(base_settings(), adjust).await
    }

    /// Like [`TestApp::spawn_with`] on a server of the test's own ([`TestPostgres`]): its
    /// database is created there, from a template migrated there.
    pub async fn spawn_on_postgres(server_url: &str, adjust: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = base_settings();
        settings.database_url = SecretString::from(server_url.to_owned());
        Self::spawn_from(settings, adjust).await
    }

    async fn spawn_from(mut settings: Settings, adjust: impl FnOnce(&mut Settings)) -> Self {
        // Logs only when asked for (`TASKLANE_LOG=debug scripts/test ...`): quiet by default.
        if std::env::var_os("TASKLANE_LOG").is_some() {
            let _ = tasklane_shared::telemetry::init_tracing(
                &settings,
                tasklane_shared::telemetry::API_SERVICE,
            );
        }
        let (db_name, admin_options, database_url) =
            create_database(&settings).await.expect("test database");
        settings.database_url = SecretString::from(database_url);
        settings.redis_prefix = unique("t");
        let shared_redis = settings.redis_url.expose_secret().to_owned();
        adjust(&mut settings);
        // The suite's cluster pass (TASKLANE_REDIS_CLUSTER_NODES) runs every app on the
        // cluster, except one a test points at a Redis of its own (to stop or fill it).
        if settings.redis_url.expose_secret() != shared_redis {
            settings.redis_cluster_nodes = None;
        }

        let app =
            tasklane_api::app::Application::build(settings.clone()).await.expect("API builds");
        let address = format!("http://{}", app.local_addr());
        let (shutdown, stopped) = oneshot::channel();
        let server = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        let db = PgPoolOptions::new()
            .max_connections(5)
            .connect(settings.database_url.expose_secret())
            .await
            .expect("connect to the test database");
        Self {
            address,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            db,
            settings,
            db_name,
            admin_options,
            shutdown: Some(shutdown),
            server: Some(server),
        }
    }

    /// Another API instance on this test's database and Redis prefix (as behind a load
    /// balancer); returns its base URL. It runs until the test ends.
    pub async fn spawn_instance(&self) -> String {
        let instance =
            tasklane_api::app::Application::build(self.settings.clone()).await.expect("API builds");
        let url = format!("http://{}", instance.local_addr());
        tokio::spawn(instance.run_until_stopped(std::future::pending()));
        url
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Settings for a worker on this test's database and queues.
    pub fn worker_settings(&self) -> Settings {
        self.settings.clone()
    }

    /// Starts a worker inside this test process.
    pub async fn spawn_worker(&self) -> TestWorker {
        TestWorker::spawn(self.worker_settings()).await
    }

    /// A command that runs the real `tasklane-worker` binary against this test's world, for
    /// tests that must kill or signal a worker process.
    pub fn worker_process(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(binary("tasklane-worker"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TASKLANE_ENV", "test")
            .env("TASKLANE_LOG", std::env::var("TASKLANE_LOG").unwrap_or_else(|_| "info".into()))
            .env("DATABASE_URL", self.settings.database_url.expose_secret())
            .env("REDIS_URL", self.settings.redis_url.expose_secret())
            .envs(
                self.settings.redis_cluster_nodes.iter().map(|nodes| {
                    ("TASKLANE_REDIS_CLUSTER_NODES", nodes.expose_secret().to_owned())
                }),
            )
            .env("TASKLANE_REDIS_PREFIX", &self.settings.redis_prefix)
            .env("TASKLANE_QUEUE_SHARDS", self.settings.queue_shards.to_string())
            .env("SMTP_URL", self.settings.smtp_url.expose_secret())
            .env("TASKLANE_WORKER_ADDR", "127.0.0.1:0")
            .env("TASKLANE_JOB_LEASE_SECS", self.settings.job_lease.as_secs().to_string())
            .env("TASKLANE_SHUTDOWN_GRACE_SECS", self.settings.shutdown_grace.as_secs().to_string())
            .env(
                "TASKLANE_RELAY_POLL_MS",
                self.settings.relay_poll_interval.as_millis().to_string(),
            )
            .env("TASKLANE_RECONCILE_MS", self.settings.reconcile_interval.as_millis().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        command
    }

    /// The emails captured for `to`, newest last.
    pub async fn emails_to(&self, to: &str) -> Vec<serde_json::Value> {
        emails_to(&self.client, to).await
    }

    /// Waits until `count` emails to `to` were captured, and returns them.
    pub async fn wait_for_emails(
        &self,
        to: &str,
        count: usize,
        deadline: Duration,
    ) -> Vec<serde_json::Value> {
        wait_until(deadline, &format!("{count} email(s) to {to}"), || async {
            let emails = self.emails_to(to).await;
            (emails.len() >= count).then_some(emails)
        })
        .await
    }

    /// A client of the test S3 server (`S3_ENDPOINT`), path-style, signed with the
    /// configured credentials: the worker's own client.
    pub fn s3(&self) -> aws_sdk_s3::Client {
        tasklane_shared::storage::internal_client(&self.settings.s3)
    }

    /// Rows still waiting in the outbox.
    pub async fn outbox_len(&self) -> i64 {
        tasklane_shared::outbox::backlog(&self.db).await.expect("count outbox")
    }
}

impl Drop for TestApp {
    /// Stops the server and drops the test's database (best effort, on a thread of its own
    /// because `Drop` cannot await). `with (force)` ends the test's own connections: closing
    /// the pool here would wait on I/O owned by the test's runtime, which this blocks.
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
        let admin = self.admin_options.clone();
        let name = self.db_name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async move {
                    if let Ok(mut conn) = PgConnection::connect_with(&admin).await {
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            r#"drop database if exists "{name}" with (force)"#
                        )))
                        .execute(&mut conn)
                        .await;
                    }
                });
            }
        })
        .join();
    }
}

/// A worker running inside the test process.
pub struct TestWorker {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestWorker {
    pub async fn spawn(settings: Settings) -> Self {
        let app = tasklane_worker::app::WorkerApp::build(settings).await.expect("worker builds");
        let addr = app.local_addr();
        let (shutdown, stopped) = oneshot::channel();
        let handle = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self { addr, shutdown: Some(shutdown), handle: Some(handle) }
    }

    /// Stops the worker gracefully and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.handle.take() {
            Some(handle) => handle.await?,
            None => Ok(()),
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// The path of a workspace binary, beside the test executable's `deps/` folder.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target profile dir");
    let path = dir.join(name);
    assert!(path.exists(), "{} not built; scripts/test builds every binary first", path.display());
    path
}

/// The mail capture's messages to `to`, oldest first.
pub async fn emails_to(client: &reqwest::Client, to: &str) -> Vec<serde_json::Value> {
    let base = std::env::var("MAIL_API_URL").expect("MAIL_API_URL (scripts/test sets it)");
    let all: Vec<serde_json::Value> = client
        .get(format!("{base}/email"))
        .send()
        .await
        .expect("mail capture answers")
        .json()
        .await
        .expect("mail capture returns JSON");
    all.into_iter()
        .filter(|mail| {
            mail["to"].as_array().is_some_and(|list| {
                list.iter().any(|addr| {
                    addr["address"].as_str().is_some_and(|a| a.eq_ignore_ascii_case(to))
                })
            })
        })
        .collect()
}

/// A password the policy accepts.
pub const PASSWORD: &str = "correct horse battery staple";

impl TestApp {
    /// `POST` a JSON body, optionally with a bearer token.
    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
        bearer: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request sent")
    }

    /// `GET` with a bearer token.
    pub async fn get_as(&self, path: &str, bearer: &str) -> reqwest::Response {
        self.client.get(self.url(path)).bearer_auth(bearer).send().await.expect("request sent")
    }

    /// Registers an account and returns its session (`user`, `access_token`, ...).
    pub async fn register(&self, email: &str) -> serde_json::Value {
        let resp = self
            .post(
                "/api/v1/auth/register",
                &serde_json::json!({ "email": email, "password": PASSWORD }),
                None,
            )
            .await;
        assert_eq!(resp.status(), 201, "register {email}");
        resp.json().await.expect("session JSON")
    }

    /// Registers, verifies the address through the emailed link and logs in again, so the
    /// session reflects the verified account (and a configured admin role).
    pub async fn register_verified(&self, email: &str) -> serde_json::Value {
        self.register(email).await;
        self.register_verified_existing(email).await
    }

    /// Verifies an account registered earlier through its emailed link, then logs in.
    pub async fn register_verified_existing(&self, email: &str) -> serde_json::Value {
        let mail = self.wait_for_emails(email, 1, Duration::from_secs(20)).await;
        let token = token_in(&mail[0]);
        let resp = self
            .post("/api/v1/auth/verify-email", &serde_json::json!({ "token": token }), None)
            .await;
        assert_eq!(resp.status(), 204, "verify {email}");
        let resp = self
            .post(
                "/api/v1/auth/login",
                &serde_json::json!({ "email": email, "password": PASSWORD }),
                None,
            )
            .await;
        assert_eq!(resp.status(), 200, "login {email}");
        resp.json().await.expect("session JSON")
    }
}

/// The `token=` value of the link in a captured email.
pub fn token_in(mail: &serde_json::Value) -> String {
    let text = mail["text"].as_str().expect("text part");
    let start = text.find("token=").expect("a link with a token") + "token=".len();
    text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

/// A unique address for a test.
pub fn email_address() -> String {
    format!("{}@example.test", unique("user"))
}
