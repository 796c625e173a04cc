//! Builds and runs the API server: the seam between `main` and the test harness.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{EndpointExt, IntoEndpoint, IntoResponse, Route, Server};
use tasklane_shared::config::Settings;
use tasklane_shared::queue::{QueueSettings, QueueStore};
use tasklane_shared::redis::Keys;
use tasklane_shared::storage::Bucket;

use crate::auth::accounts::AccountCache;
use crate::auth::password::PasswordHasher;
use crate::auth::throttle::LoginThrottle;
use crate::auth::tokens::TokenIssuer;
use crate::http::HttpPolicy;
use crate::input_guard::InputGuard;
use crate::openapi;
use crate::services::download_links::DownloadLinks;
use crate::services::tasks::TaskWriter;
use crate::state::{AppState, Services};

/// A bound, not yet running API server.
pub struct Application {
    acceptor: poem::listener::TcpAcceptor,
    local_addr: SocketAddr,
    state: AppState,
}

impl Application {
    /// Connects to the dependencies (lazily: start-up does not wait for them) and binds the
    /// listener, so the port is known before the server runs (tests bind port 0).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let db = tasklane_shared::db::connect(&settings)?;
        let redis = tasklane_shared::redis::connect(&settings)?;
        let keys = Keys::new(settings.redis_prefix.clone());
        let acceptor = TcpListener::bind(settings.api_addr).into_acceptor().await?;
        let local_addr = acceptor
            .local_addr()
            .first()
            .and_then(|addr| addr.as_socket_addr().copied())
            .ok_or_else(|| anyhow::anyhow!("listener has no socket address"))?;
        let downloads = DownloadLinks::new(
            &settings.jwt_secret,
            api_origin(&settings, local_addr)?,
            settings.attachments.download_url_ttl,
        );
        let accounts = Arc::new(AccountCache::new(redis.clone(), keys.clone()));
        let task_writer = TaskWriter::spawn(db.clone(), redis.clone(), keys.clone());
        let state = AppState::new(Services {
            db,
            throttle: LoginThrottle::new(redis.clone(), keys.clone()),
            queue: QueueStore::new(redis.clone(), keys.clone(), QueueSettings::from(&settings)),
            s3: tasklane_shared::storage::public_client(&settings.s3),
            store: Bucket {
                client: tasklane_shared::storage::internal_client(&settings.s3),
                name: settings.s3.bucket.clone(),
            },
            downloads,
            task_writer,
            task_cache: crate::services::tasks::cache::InstanceCache::spawn(
                redis.clone(),
                keys.clone(),
            ),
            hub: crate::hub::Hub::new(
                &settings,
                redis.clone(),
                keys.clone(),
                vec![accounts.clone() as Arc<dyn crate::hub::Listener>],
            ),
            accounts,
            live: crate::services::live::LiveFeed::default(),
            redis,
            keys,
            metrics: tasklane_shared::telemetry::metrics_handle(),
            hasher: PasswordHasher::new(&settings.auth)?,
            tokens: TokenIssuer::new(&settings),
            settings: Arc::new(settings),
        });
        // A first copy of the queue controls before serving (fetching claims nothing until
        // Redis has one); briefly, so a Redis that is down does not hold the start back.
        let first_copy = tasklane_shared::controls::sync(&state.db, &state.queue);
        if tokio::time::timeout(std::time::Duration::from_millis(500), first_copy).await.is_err() {
            tracing::warn!("cannot copy the queue controls to Redis yet; retrying every second");
        }
        Ok(Self { acceptor, local_addr, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests
    /// finish within the configured grace period.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let grace = self.state.settings.shutdown_grace;
        let policy = HttpPolicy {
            cors_origins: self.state.settings.cors_origins.clone(),
            max_body_bytes: self.state.settings.max_body_bytes,
            input: Arc::new(InputGuard::from_document(&openapi::document())),
            logs_requests: tasklane_shared::telemetry::logs_info(&self.state.settings),
            // Not while spans are exported: a hot read may have no span.
            fast: self.state.settings.trace.endpoint.is_none().then(|| {
                Arc::new(crate::hot_reads::HotReads::new(self.state.clone()))
                    as Arc<dyn crate::http::FastPath>
            }),
        };
        tracing::info!(addr = %self.local_addr, "API listening");
        self.state.hub.spawn_listener(&self.state.settings)?;
        // Every instance keeps the queue controls copied to Redis, like every worker: fetching
        // claims nothing while Redis has no copy (SPEC section 10), so the more copiers the
        // shorter that lasts after Redis lost its data.
        let copier = tokio::spawn(tasklane_shared::controls::run(
            self.state.db.clone(),
            self.state.queue.clone(),
            std::future::pending(),
        ));
        // One sampler per instance feeds every open console (it sleeps while none is open).
        let sampler = tokio::spawn(self.state.live.clone().run(crate::services::live::Sources {
            db: self.state.db.clone(),
            queue: self.state.queue.clone(),
            redis: self.state.redis.clone(),
            keys: self.state.keys.clone(),
        }));
        // Event streams never end on their own: they are closed first, so draining waits
        // only for ordinary requests.
        let (hub, live) = (self.state.hub.clone(), self.state.live.clone());
        let shutdown = async move {
            shutdown.await;
            hub.close();
            live.close();
        };
        Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(routes(self.state).with(policy), shutdown, Some(grace))
            .await?;
        copier.abort();
        sampler.abort();
        tracing::info!("API stopped");
        Ok(())
    }
}

/// The origin of the links that lead back to this API: `TASKLANE_API_PUBLIC_URL`, or else
/// the address it listens on (a wildcard address read as loopback), which is right for a
/// local run and for tests on port 0; prod refuses to start without the setting.
fn api_origin(settings: &Settings, local_addr: SocketAddr) -> anyhow::Result<url::Url> {
    if let Some(url) = &settings.api_public_url {
        return Ok(url.clone());
    }
    let mut addr = local_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(url::Url::parse(&format!("http://{addr}"))?)
}

/// Every route of the service.
pub fn routes(state: AppState) -> impl poem::Endpoint {
    let docs_html = openapi::swagger_ui_html();
    let docs = poem::endpoint::make_sync(move |_| poem::web::Html(docs_html.clone()));
    let spec = poem::endpoint::make_sync(|_| {
        poem::Response::builder().content_type("application/json").body(openapi::spec_json())
    });
    let pages = Route::new()
        .nest("/docs", Route::new().at("/", docs))
        .at("/api/openapi.json", spec)
        .nest("/console", crate::console::routes());
    Routes { api: openapi::service().into_endpoint(), pages }.data(state)
}

/// The API's operations and the pages beside them (Swagger UI, the spec, the console).
///
/// The API is reached directly rather than nested under `/` in one `Route`: a nest
/// rebuilds every request's URI and adds a routing step and a boxed future, a cost every
/// API call paid for the few pages beside it. Requests for the pages go through a `Route`
/// as before, so their matching (and the 404 of any other path) is unchanged.
struct Routes<A, P> {
    api: A,
    pages: P,
}

impl<A: poem::Endpoint, P: poem::Endpoint> poem::Endpoint for Routes<A, P> {
    type Output = poem::Response;

    async fn call(&self, req: poem::Request) -> poem::Result<poem::Response> {
        let path = req.uri().path();
        let under = |prefix: &str| {
            path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        if under("/docs") || under("/console") || path == "/api/openapi.json" {
            Ok(self.pages.call(req).await?.into_response())
        } else {
            Ok(self.api.call(req).await?.into_response())
        }
    }
}
