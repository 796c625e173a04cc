//! Builds and runs a worker process: the outbox relay, one apalis worker per job kind under a
//! monitor, and the health/metrics server. The seam between `main` and the test harness.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use apalis_core::monitor::Monitor;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{EndpointExt, Server};
use tasklane_shared::config::Settings;
use tasklane_shared::controls;
use tasklane_shared::outbox::{OutcomeRecorder, Reconciler, Relay};
use tasklane_shared::queue::{HeldClaims, QueueSettings, QueueStore};
use tasklane_shared::redis::Keys;
use tasklane_shared::storage::Bucket;
use tokio::sync::watch;

use crate::context::{TaskLists, WorkerContext};
use crate::health;
use crate::jobs;
use crate::mailer::Mailer;
use crate::templates::Templates;

/// A bound, not yet running worker process.
pub struct WorkerApp {
    ctx: WorkerContext,
    acceptor: poem::listener::TcpAcceptor,
    local_addr: SocketAddr,
    settings: Arc<Settings>,
    /// Writes jobs' outcomes to Postgres; ends once every store clone is gone.
    recorder: tokio::task::JoinHandle<()>,
    /// The kinds' limits from `TASKLANE_LIMIT_<KIND>`.
    limits: Vec<(String, controls::Limits)>,
}

impl WorkerApp {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        tasklane_shared::schedules::validate(&settings)?;
        let limits = controls::limits_from_env(&settings.limits).map_err(anyhow::Error::msg)?;
        let settings = Arc::new(settings);
        // Every send_email attempt holds a connection across its SMTP send, and one with a
        // link takes a second for a moment to mint its token; the relay's listener holds one
        // for good; the relay, each maintenance kind and readiness need theirs. A pool smaller
        // than that would stall or fail jobs whenever SMTP is slow.
        let needed = u32::try_from(settings.worker_concurrency)
            .unwrap_or(u32::MAX)
            .saturating_mul(2)
            .saturating_add(8);
        let db = tasklane_shared::db::connect_sized(
            &settings,
            settings.database_max_connections.max(needed),
        )?;
        let redis = tasklane_shared::redis::connect(&settings)?;
        let _ = tasklane_shared::redis::check_eviction_policy(&mut redis.clone()).await;
        let keys = Keys::new(settings.redis_prefix.clone());
        // Jobs' ends go to their Postgres records in batches (SPEC section 9).
        let progress = Some((redis.clone(), keys.clone()));
        let (outcomes, recorder) = OutcomeRecorder::spawn_with_progress(db.clone(), progress);
        let store = QueueStore::new(redis, keys.clone(), QueueSettings::from(&*settings))
            .with_outcomes(outcomes);
        // Before any claim, so that no job of an earlier release is popped without its record.
        if let Err(err) = store.migrate().await {
            tracing::error!(error = %err, "cannot move the queues to this release's layout; their earlier jobs wait for the next start");
        }
        let task_lists = TaskLists::new(store.connection(), keys);
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        let ctx = WorkerContext {
            db,
            store,
            mailer: Mailer::new(&settings)?,
            templates: Templates::new(settings.public_url.clone())?,
            task_lists,
            bucket: Bucket {
                client: tasklane_shared::storage::internal_client(&settings.s3),
                name: settings.s3.bucket.clone(),
            },
            attachments: settings.attachments.clone(),
            held: HeldClaims::default(),
            name: format!("{host}-{}-{}", std::process::id(), &suffix[suffix.len() - 8..]),
            concurrency: settings.worker_concurrency,
            settings: settings.clone(),
        };
        let acceptor = TcpListener::bind(settings.worker_addr).into_acceptor().await?;
        let local_addr = acceptor
            .local_addr()
            .first()
            .and_then(|addr| addr.as_socket_addr().copied())
            .ok_or_else(|| anyhow::anyhow!("listener has no socket address"))?;
        Ok(Self { ctx, acceptor, local_addr, settings, recorder, limits })
    }

    /// Where `/health/*` and `/metrics` are served.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn context(&self) -> &WorkerContext {
        &self.ctx
    }

    /// Runs until `shutdown` resolves. Then the relay and fetching stop, running jobs get
    /// the grace period to finish, and whatever is still held is handed back to its queue.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, stopped) = watch::channel(false);
        let until_stopped = move || {
            let mut stopped = stopped.clone();
            async move {
                // An error means the sender is gone, which also means stop.
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });

        let ctx = self.ctx;
        tracing::info!(worker = %ctx.name, addr = %self.local_addr, "worker starting");
        let relay =
            Relay::new(ctx.db.clone(), ctx.store.clone(), self.settings.relay_poll_interval);
        let relay = tokio::spawn(relay.run(until_stopped()));
        let reconciler = Reconciler::new(
            ctx.db.clone(),
            ctx.store.clone(),
            self.settings.reconcile_interval,
            ctx.name.clone(),
        );
        let reconciler = tokio::spawn(reconciler.run(until_stopped()));
        // The operators' pauses and limits: seeded from the environment, then kept copied
        // from Postgres to Redis (SPEC section 10).
        if let Err(err) = controls::seed_limits(&ctx.db, &self.limits).await {
            tracing::warn!(error = %err, "cannot record the limits of TASKLANE_LIMIT_*; using those already set");
        }
        tokio::spawn(controls::run(ctx.db.clone(), ctx.store.clone(), until_stopped()));
        tokio::spawn(health::heartbeat(until_stopped()));
        let announcing = tokio::spawn(health::announce(ctx.clone(), until_stopped()));
        let routes = health::routes().data(ctx.clone());
        let http =
            tokio::spawn(Server::new_with_acceptor(self.acceptor).run_with_graceful_shutdown(
                routes,
                until_stopped(),
                Some(std::time::Duration::from_secs(1)),
            ));

        if let Err(err) = jobs::catch_up(&ctx).await {
            tracing::warn!(error = %err, "could not catch up missed schedule ticks");
        }
        // Backends absorb Redis outages and handlers' panics become failed attempts, so a
        // worker should never die; if one does, it is restarted rather than silently lost.
        let monitor = Monitor::new().should_restart(|worker, error| {
            tracing::error!(worker = %worker.name(), %error, restarts = worker.restarts(), "worker died; restarting it");
            true
        });
        let monitor = jobs::register(monitor, &ctx)?.shutdown_timeout(self.settings.shutdown_grace);
        let signal = until_stopped();
        let result = monitor
            .run_with_signal(async move {
                signal.await;
                Ok(())
            })
            .await;
        if !ctx.held.is_empty() {
            ctx.held.release_all(&ctx.store).await;
        }
        let _ = relay.await;
        let _ = reconciler.await;
        let _ = announcing.await;
        let _ = http.await;
        // The outcomes reported last are written before the process ends (the reconciler
        // would copy them from Redis otherwise).
        let name = ctx.name.clone();
        drop(ctx);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.recorder).await;
        tracing::info!(worker = %name, "worker stopped");
        result.map_err(|err| anyhow::anyhow!("worker monitor failed: {err}"))
    }
}
