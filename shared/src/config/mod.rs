//! Settings for both binaries, read once from the environment.
//!
//! Variable names follow the ecosystem where one exists (`DATABASE_URL`, `REDIS_URL`,
//! `AWS_*`, ...) and are `TASKLANE_*` otherwise; the README lists every one. Defaults exist
//! only so that a developer can start the stack with no configuration: in `prod` every
//! connection setting must be given and weak secrets stop start-up, with every problem
//! reported at once rather than one per restart.
//!
//! [`reader`] reads one variable at a time and collects the problems; `tests.rs` holds the
//! unit tests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use reader::Reader;
pub use trace::TraceSettings;

mod reader;
mod trace;

/// Which profile the process runs under; decides defaults, validation and log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Dev,
    Test,
    Prod,
}

impl Environment {
    fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "dev" | "development" => Some(Self::Dev),
            "test" => Some(Self::Test),
            "prod" | "production" => Some(Self::Prod),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dev => "dev",
            Self::Test => "test",
            Self::Prod => "prod",
        }
    }
}

/// Every setting of the API and the worker. Secrets are [`SecretString`] so that a
/// `{:?}` of the settings (we log it at start-up) never prints them.
#[derive(Debug, Clone)]
pub struct Settings {
    pub env: Environment,
    /// Where the API listens (`TASKLANE_API_ADDR`).
    pub api_addr: SocketAddr,
    /// Where a worker serves `/health/*` and `/metrics` (`TASKLANE_WORKER_ADDR`); port 0
    /// picks a free one so several workers can run on one host.
    pub worker_addr: SocketAddr,
    pub database_url: SecretString,
    /// Connections per process; the API and each worker hold their own pool.
    pub database_max_connections: u32,
    pub redis_url: SecretString,
    /// Redis Cluster seed nodes (`TASKLANE_REDIS_CLUSTER_NODES`, comma-separated URLs): when
    /// set, every component uses a cluster client and `REDIS_URL` is ignored (SPEC section 12).
    pub redis_cluster_nodes: Option<SecretString>,
    /// Prefix of every Redis key, so several deployments (or tests) can share one Redis.
    pub redis_prefix: String,
    pub smtp_url: SecretString,
    /// Sender of every email.
    pub mail_from: String,
    pub s3: S3Settings,
    pub jwt_secret: SecretString,
    /// Origin used to build links in emails; never taken from a request's `Host`.
    pub public_url: url::Url,
    /// Origin at which clients reach this API (`TASKLANE_API_PUBLIC_URL`), used for the
    /// links the API hands out that lead back to itself (attachment downloads). Unset, the
    /// API uses the address it listens on; prod requires it (behind a proxy the listening
    /// address is not what clients reach), and it must be https there.
    pub api_public_url: Option<url::Url>,
    /// Origins allowed to call the API from a browser; empty means no cross-origin access.
    pub cors_origins: Vec<String>,
    /// Largest request body accepted, in bytes; larger ones get a 413.
    pub max_body_bytes: usize,
    /// A `tracing_subscriber::EnvFilter` directive (`TASKLANE_LOG`).
    pub log_filter: String,
    /// How long the API waits for in-flight requests, and a worker for running jobs, on
    /// SIGTERM before giving up (`TASKLANE_SHUTDOWN_GRACE_SECS`).
    pub shutdown_grace: Duration,
    /// How often the outbox relay polls when no notification arrives
    /// (`TASKLANE_RELAY_POLL_MS`); LISTEN/NOTIFY makes the common case immediate.
    pub relay_poll_interval: Duration,
    /// How often a worker compares Postgres' job records with Redis and puts back jobs Redis
    /// lost (`TASKLANE_RECONCILE_MS`); one worker of the fleet does each pass.
    pub reconcile_interval: Duration,
    /// How long a job claim lasts without a heartbeat (`TASKLANE_JOB_LEASE_SECS`): a job held
    /// by a worker that died is handed to another worker within about this long.
    pub job_lease: Duration,
    /// A factor on every retry delay and breaker cool-down (`TASKLANE_RETRY_SCALE`, default
    /// 1): tests and dev compress `send_email`'s day of retries into seconds with it.
    pub retry_scale: f64,
    /// Hash tags each queue is spread over (`TASKLANE_QUEUE_SHARDS`, 1 to 64), so that on a
    /// Redis Cluster one queue spans several masters (SPEC section 12; see `queue::shards`).
    pub queue_shards: u16,
    /// How long finished jobs stay in Redis for inspection (`TASKLANE_JOB_RETENTION_SECS`).
    pub job_retention: Duration,
    /// How long dead jobs stay in Redis for inspection and retry
    /// (`TASKLANE_DEAD_JOB_RETENTION_SECS`).
    pub dead_job_retention: Duration,
    /// Jobs one worker process runs at once per job kind (`TASKLANE_WORKER_CONCURRENCY`).
    pub worker_concurrency: usize,
    /// Schedule overrides by job kind, from `TASKLANE_CRON_<KIND>` (e.g.
    /// `TASKLANE_CRON_MARK_OVERDUE="*/2 * * * * *"` for `mark_overdue`). The worker parses
    /// and validates them at start-up.
    pub cron: HashMap<String, String>,
    /// Fleet-wide limits by job kind, from `TASKLANE_LIMIT_<KIND>` (e.g.
    /// `TASKLANE_LIMIT_SEND_EMAIL="rate=20,concurrency=4"`). The worker parses them at
    /// start-up and sets those of kinds that have none yet (see `crate::controls`).
    pub limits: HashMap<String, String>,
    pub auth: AuthSettings,
    /// Task creations per user per UTC day (`TASKLANE_TASKS_DAILY_QUOTA`).
    pub tasks_daily_quota: u32,
    pub attachments: AttachmentSettings,
    /// How often an idle event stream gets a heartbeat (`TASKLANE_EVENTS_HEARTBEAT_SECS`).
    pub events_heartbeat: Duration,
    /// Trace export (`OTEL_*`).
    pub trace: TraceSettings,
}

/// Uploads (SPEC section 6).
#[derive(Debug, Clone)]
pub struct AttachmentSettings {
    /// The largest file accepted, in bytes (`TASKLANE_ATTACHMENT_MAX_BYTES`, default 25 MiB).
    pub max_bytes: u64,
    /// Media types a client may declare (`TASKLANE_ATTACHMENT_TYPES`, comma list). The default
    /// has no HTML, SVG or executables: a browser could run those from a download link.
    pub allowed_types: Vec<String>,
    /// How long a presigned upload URL works (`TASKLANE_UPLOAD_URL_TTL_SECS`, at most 900).
    pub upload_url_ttl: Duration,
    /// How long a download link works (`TASKLANE_DOWNLOAD_URL_TTL_SECS`): a link the API
    /// signs and serves itself, so every download carries its security headers.
    pub download_url_ttl: Duration,
}

pub const DEFAULT_ATTACHMENT_TYPES: &str =
    "image/png,image/jpeg,image/gif,image/webp,application/pdf,application/zip,text/plain,text/csv";

/// Accounts and tokens (SPEC section 4).
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `iss` of access tokens (`TASKLANE_JWT_ISSUER`).
    pub jwt_issuer: String,
    /// `aud` of access tokens (`TASKLANE_JWT_AUDIENCE`).
    pub jwt_audience: String,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// argon2id cost: memory in KiB, iterations, lanes (OWASP: 19456, 2, 1).
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// Addresses that become admins once verified (`TASKLANE_ADMIN_EMAILS`, normalised).
    pub admin_emails: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed (`TASKLANE_TRUSTED_PROXIES`: IPs or
    /// CIDRs). From anyone else the header is ignored, so it cannot dodge the login limit.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// Object storage settings. `public_endpoint` is the host clients use, which is what
/// presigned URLs must be signed for; it differs from `endpoint` behind a proxy or in compose.
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub endpoint: String,
    pub public_endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: SecretString,
}

const DEV_JWT_SECRET: &str = "tasklane-dev-only-jwt-secret-change-me-in-prod";
const DEV_AWS_ACCESS_KEY_ID: &str = "tasklane-dev";
const DEV_AWS_SECRET_ACCESS_KEY: &str = "tasklane-dev-secret";
/// The smallest JWT secret accepted in prod: HS256 wants at least its output size.
const MIN_JWT_SECRET_BYTES: usize = 32;

/// Every problem found while reading the settings, so one start-up reports them all.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars().collect())
    }

    /// Reads settings from a map of variables; the seam tests use instead of the process
    /// environment, which is shared by every test in the binary.
    pub fn from_vars(vars: HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut reader = Reader { vars, problems: Vec::new(), env: Environment::Dev };
        let env = match reader.raw("TASKLANE_ENV") {
            None => Environment::Dev,
            Some(raw) => Environment::parse(&raw).unwrap_or_else(|| {
                reader
                    .problems
                    .push(format!("TASKLANE_ENV must be dev, test or prod (got {raw:?})"));
                Environment::Dev
            }),
        };
        reader.env = env;
        let r = &mut reader;

        let api_addr = r.parsed("TASKLANE_API_ADDR", "127.0.0.1:8080");
        let worker_addr = r.parsed("TASKLANE_WORKER_ADDR", "127.0.0.1:8081");
        let database_url = r.secret("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tasklane");
        let database_max_connections = r.parsed_any("TASKLANE_DATABASE_MAX_CONNECTIONS", "10");
        let redis_url = r.secret("REDIS_URL", "redis://127.0.0.1:6379");
        let redis_prefix = r.string_any("TASKLANE_REDIS_PREFIX", "tasklane");
        let redis_cluster_nodes = r.raw("TASKLANE_REDIS_CLUSTER_NODES").map(SecretString::from);
        let smtp_url = r.secret("SMTP_URL", "smtp://127.0.0.1:1025");
        let mail_from = r.string_any("TASKLANE_MAIL_FROM", "Tasklane <no-reply@tasklane.local>");
        let endpoint = r.string("S3_ENDPOINT", "http://127.0.0.1:9000");
        let public_endpoint = r.raw("S3_PUBLIC_ENDPOINT").unwrap_or_else(|| endpoint.clone());
        let s3 = S3Settings {
            public_endpoint,
            bucket: r.string("S3_BUCKET", "tasklane"),
            region: r.string_any("AWS_REGION", "us-east-1"),
            access_key_id: r.string("AWS_ACCESS_KEY_ID", DEV_AWS_ACCESS_KEY_ID),
            secret_access_key: r.secret("AWS_SECRET_ACCESS_KEY", DEV_AWS_SECRET_ACCESS_KEY),
            endpoint,
        };
        let jwt_secret = r.secret("JWT_SECRET", DEV_JWT_SECRET);
        let public_url = r.parsed("PUBLIC_URL", "http://127.0.0.1:8080");
        let api_public_url = r.raw("TASKLANE_API_PUBLIC_URL").and_then(|raw| {
            let parsed = url::Url::parse(raw.trim()).ok().filter(|url| url.has_host());
            if parsed.is_none() {
                r.problems.push(format!("TASKLANE_API_PUBLIC_URL: {raw:?} is not an absolute URL"));
            }
            parsed
        });
        let cors_origins = r
            .string_any("TASKLANE_CORS_ORIGINS", "")
            .split(',')
            .map(|origin| origin.trim().trim_end_matches('/').to_owned())
            .filter(|origin| !origin.is_empty())
            .collect();
        let max_body_bytes = r.parsed_any("TASKLANE_MAX_BODY_BYTES", "1048576");
        let log_filter = r.string_any("TASKLANE_LOG", "info");
        let shutdown_grace =
            Duration::from_secs(r.parsed_any("TASKLANE_SHUTDOWN_GRACE_SECS", "25"));
        let relay_poll_interval =
            Duration::from_millis(r.parsed_any("TASKLANE_RELAY_POLL_MS", "1000"));
        let reconcile_interval =
            Duration::from_millis(r.parsed_any("TASKLANE_RECONCILE_MS", "5000"));

        let job_lease = Duration::from_secs(r.parsed_any("TASKLANE_JOB_LEASE_SECS", "15"));
        let retry_scale: f64 = r.parsed_any("TASKLANE_RETRY_SCALE", "1");
        let queue_shards: u16 = r.parsed_any("TASKLANE_QUEUE_SHARDS", "1");
        let job_retention =
            Duration::from_secs(r.parsed_any("TASKLANE_JOB_RETENTION_SECS", "86400"));
        let dead_job_retention =
            Duration::from_secs(r.parsed_any("TASKLANE_DEAD_JOB_RETENTION_SECS", "604800"));
        let worker_concurrency = r.parsed_any("TASKLANE_WORKER_CONCURRENCY", "8");
        let cron = by_kind(&r.vars, "TASKLANE_CRON_");
        let limits = by_kind(&r.vars, "TASKLANE_LIMIT_");

        let trusted_proxies = r
            .string_any("TASKLANE_TRUSTED_PROXIES", "")
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .filter_map(|entry| {
                let parsed = entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
                if parsed.is_err() {
                    r.problems.push(format!(
                        "TASKLANE_TRUSTED_PROXIES: {entry:?} is not an IP address or CIDR"
                    ));
                }
                parsed.ok()
            })
            .collect::<Vec<_>>();
        let auth = AuthSettings {
            jwt_issuer: r.string_any("TASKLANE_JWT_ISSUER", "tasklane"),
            jwt_audience: r.string_any("TASKLANE_JWT_AUDIENCE", "tasklane-api"),
            access_token_ttl: Duration::from_secs(
                r.parsed_any("TASKLANE_ACCESS_TOKEN_TTL_SECS", "900"),
            ),
            refresh_token_ttl: Duration::from_secs(
                r.parsed_any("TASKLANE_REFRESH_TOKEN_TTL_SECS", "2592000"),
            ),
            argon2_memory_kib: r.parsed_any("TASKLANE_ARGON2_MEMORY_KIB", "19456"),
            argon2_iterations: r.parsed_any("TASKLANE_ARGON2_ITERATIONS", "2"),
            argon2_parallelism: r.parsed_any("TASKLANE_ARGON2_PARALLELISM", "1"),
            admin_emails: r
                .string_any("TASKLANE_ADMIN_EMAILS", "")
                .split(',')
                .map(|email| email.trim().to_lowercase())
                .filter(|email| !email.is_empty())
                .collect(),
            trusted_proxies,
        };

        let settings = Settings {
            env,
            api_addr,
            worker_addr,
            database_url,
            database_max_connections,
            redis_url,
            redis_cluster_nodes,
            redis_prefix,
            smtp_url,
            mail_from,
            s3,
            jwt_secret,
            public_url,
            api_public_url,
            cors_origins,
            max_body_bytes,
            log_filter,
            shutdown_grace,
            relay_poll_interval,
            reconcile_interval,
            job_lease,
            retry_scale,
            queue_shards,
            job_retention,
            dead_job_retention,
            worker_concurrency,
            cron,
            limits,
            auth,
            tasks_daily_quota: r.parsed_any("TASKLANE_TASKS_DAILY_QUOTA", "50"),
            events_heartbeat: Duration::from_secs(
                r.parsed_any("TASKLANE_EVENTS_HEARTBEAT_SECS", "15"),
            ),
            trace: TraceSettings::read(r),
            attachments: AttachmentSettings {
                max_bytes: r.parsed_any("TASKLANE_ATTACHMENT_MAX_BYTES", "26214400"),
                allowed_types: r
                    .string_any("TASKLANE_ATTACHMENT_TYPES", DEFAULT_ATTACHMENT_TYPES)
                    .split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .filter(|t| !t.is_empty())
                    .collect(),
                upload_url_ttl: Duration::from_secs(
                    r.parsed_any("TASKLANE_UPLOAD_URL_TTL_SECS", "600"),
                ),
                download_url_ttl: Duration::from_secs(
                    r.parsed_any("TASKLANE_DOWNLOAD_URL_TTL_SECS", "300"),
                ),
            },
        };
        if env == Environment::Prod {
            settings.check_prod_secrets(&mut reader.problems);
        }
        if settings.job_lease < Duration::from_secs(3) {
            reader.problems.push(
                "TASKLANE_JOB_LEASE_SECS must be at least 3 (heartbeats renew it every third)"
                    .into(),
            );
        }
        if !(settings.retry_scale.is_finite() && settings.retry_scale > 0.0) {
            reader.problems.push("TASKLANE_RETRY_SCALE must be a number above 0".into());
        }
        let ttl = settings.attachments.upload_url_ttl;
        if ttl < Duration::from_secs(60) || ttl > Duration::from_secs(900) {
            reader.problems.push(
                "TASKLANE_UPLOAD_URL_TTL_SECS must be between 60 and 900 (15 minutes)".into(),
            );
        }
        let ttl = settings.attachments.download_url_ttl;
        if ttl < Duration::from_secs(10) || ttl > Duration::from_secs(3600) {
            reader
                .problems
                .push("TASKLANE_DOWNLOAD_URL_TTL_SECS must be between 10 and 3600".into());
        }
        // A brace would start a hash tag of its own and pull every key into one cluster slot.
        if settings.redis_prefix.contains(['{', '}']) {
            reader.problems.push("TASKLANE_REDIS_PREFIX must not contain '{' or '}'".into());
        }
        if !(1..=64).contains(&settings.queue_shards) {
            reader.problems.push("TASKLANE_QUEUE_SHARDS must be between 1 and 64".into());
        }
        if settings.worker_concurrency == 0 {
            reader.problems.push("TASKLANE_WORKER_CONCURRENCY must be at least 1".into());
        }
        if reader.problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError { problems: reader.problems })
        }
    }

    fn check_prod_secrets(&self, problems: &mut Vec<String>) {
        let jwt = self.jwt_secret.expose_secret();
        if jwt.len() < MIN_JWT_SECRET_BYTES || jwt == DEV_JWT_SECRET {
            problems.push(format!(
                "JWT_SECRET must be a random secret of at least {MIN_JWT_SECRET_BYTES} bytes in prod \
                 (e.g. `openssl rand -base64 48`)"
            ));
        }
        if self.s3.access_key_id == DEV_AWS_ACCESS_KEY_ID
            || self.s3.secret_access_key.expose_secret() == DEV_AWS_SECRET_ACCESS_KEY
        {
            problems.push("AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are the dev defaults; set real credentials in prod".into());
        }
        match &self.api_public_url {
            None => problems.push(
                "TASKLANE_API_PUBLIC_URL must be set in prod (the https origin clients reach the API at)"
                    .into(),
            ),
            Some(url) if url.scheme() != "https" => {
                problems.push(format!("TASKLANE_API_PUBLIC_URL must be https in prod (got {url})"));
            }
            Some(_) => {}
        }
        if self.public_url.scheme() != "https" {
            problems.push(format!("PUBLIC_URL must be https in prod (got {})", self.public_url));
        }
    }
}

#[cfg(test)]
mod tests;

/// The variables `<prefix><KIND>`, by kind (lowercase), values trimmed.
fn by_kind<'a>(
    vars: impl IntoIterator<Item = (&'a String, &'a String)>,
    prefix: &str,
) -> HashMap<String, String> {
    vars.into_iter()
        .filter_map(|(key, value)| {
            let kind = key.strip_prefix(prefix)?.to_ascii_lowercase();
            Some((kind, value.trim().to_owned()))
        })
        .collect()
}
