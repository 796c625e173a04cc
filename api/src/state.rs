//! The one state every handler reaches through `Data<&AppState>`; cheap to clone.
//!
//! It sits below the routes and the [`crate::security`] scheme that read it, and is made of
//! services that know nothing of it ([`crate::auth`], [`crate::hub`], the shared stores).

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tasklane_shared::config::Settings;
use tasklane_shared::queue::QueueStore;
use tasklane_shared::redis::Conn;
use tasklane_shared::redis::Keys;

use crate::auth::password::PasswordHasher;
use crate::auth::throttle::LoginThrottle;
use crate::auth::tokens::TokenIssuer;

/// poem adds the state to every request (`.data(state)` clones it into the request), so a
/// clone is one reference count: copying the services themselves cost two dozen allocations
/// and frees per request (keys, token settings, names), a tenth of a cached read's time.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// What the state holds.
pub struct Services {
    pub db: PgPool,
    /// Multiplexed and self-reconnecting; clone per use.
    pub redis: Conn,
    pub keys: Keys,
    pub settings: Arc<Settings>,
    pub metrics: PrometheusHandle,
    pub hasher: PasswordHasher,
    pub tokens: TokenIssuer,
    pub throttle: LoginThrottle,
    /// Presigns object-store URLs for `S3_PUBLIC_ENDPOINT` (no network involved).
    pub s3: aws_sdk_s3::Client,
    /// The bucket on `S3_ENDPOINT`, which downloads are streamed from.
    pub store: tasklane_shared::storage::Bucket,
    /// Signs and checks the links ready attachments download by.
    pub downloads: crate::services::download_links::DownloadLinks,
    /// Callers' accounts, cached while account changes are being heard.
    pub accounts: Arc<crate::auth::accounts::AccountCache>,
    /// This instance's part of the task cache.
    pub task_cache: crate::services::tasks::cache::InstanceCache,
    /// Writes new tasks, many requests per statement under load.
    pub task_writer: crate::services::tasks::TaskWriter,
    /// This instance's event fan-out.
    pub hub: crate::hub::Hub,
    /// The job store, for the admin API's queue inspection.
    pub queue: QueueStore,
    /// This instance's live picture of the queues, shared by every open console.
    pub live: crate::services::live::LiveFeed,
}
