//! `/api/v1/admin/live`: the queues, the worker fleet and the outbox backlog as Server-Sent
//! Events, for the operator console (SPEC section 11). Every open stream of an instance
//! shares one sampler ([`crate::services::live`]); this route only renders its samples.

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use poem::web::Data;
use poem::web::sse::Event;
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::types::ToJSON;
use poem_openapi::{ApiResponse, Object, OpenApi};

use crate::auth::Role;
use crate::problem::{AuthedError, Problem};
use crate::routes::admin_jobs::HeldKindView;
use crate::routes::admin_ops::WorkerView;
use crate::routes::events::StreamAuth;
use crate::services::live::{QueueSample, Sample};
use crate::state::AppState;
use crate::tags::ApiTags;

pub struct AdminLiveApi;

/// A queue right now, as the console shows it.
#[derive(Debug, Object)]
pub struct LiveQueue {
    pub queue: String,
    /// Waiting to run.
    pub pending: u64,
    /// Claimed by a worker.
    pub running: u64,
    /// Waiting out a retry backoff (or a delay, e.g. a reminder).
    pub scheduled: u64,
    /// Out of attempts; retryable.
    pub dead: u64,
    /// Jobs that succeeded in the last 60 seconds.
    pub done_last_minute: u64,
    /// Seconds the oldest pending job has waited.
    pub oldest_pending_age_seconds: f64,
    /// Paused by an operator, as the fleet obeys it now (Redis' copy of the controls).
    pub paused: bool,
    /// Kinds of the queue paused on their own.
    pub paused_kinds: Vec<String>,
    /// Kinds held because a dependency is down.
    pub held: Vec<HeldKindView>,
}

impl From<&QueueSample> for LiveQueue {
    fn from(sample: &QueueSample) -> Self {
        Self {
            queue: sample.queue.as_str().into(),
            pending: sample.depth.pending,
            running: sample.depth.running,
            scheduled: sample.depth.scheduled,
            dead: sample.depth.dead,
            done_last_minute: sample.done_last_minute,
            oldest_pending_age_seconds: sample.depth.oldest_pending_age.as_secs_f64(),
            paused: sample.pauses.queue,
            paused_kinds: sample.pauses.kinds.clone(),
            held: sample.held.iter().map(HeldKindView::from).collect(),
        }
    }
}

/// One sample of the queues, the fleet and the outbox, sent about once a second.
#[derive(Debug, Object)]
pub struct LiveSnapshot {
    /// The sampler of the API instance serving the stream: every stream of one instance
    /// shows the same samples.
    pub sampler: String,
    /// The sample's number, counted by that sampler from 1.
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub queues: Vec<LiveQueue>,
    /// The live worker processes.
    pub workers: Vec<WorkerView>,
    /// Outbox rows not yet moved to Redis.
    pub outbox_backlog: i64,
    /// Set when this sample could not be read (Redis or PostgreSQL down): the figures are
    /// then the last ones read.
    pub error: Option<String>,
}

impl From<&Sample> for LiveSnapshot {
    fn from(sample: &Sample) -> Self {
        Self {
            sampler: sample.sampler.to_string(),
            seq: sample.seq,
            at: sample.at,
            queues: sample.queues.iter().map(LiveQueue::from).collect(),
            workers: sample
                .workers
                .iter()
                .map(|worker| WorkerView {
                    id: worker.id.clone(),
                    host: worker.host.clone(),
                    pid: worker.pid,
                    version: worker.version.clone(),
                    started_at: worker.started_at,
                    last_seen: worker.last_seen,
                    concurrency: worker.concurrency as u64,
                    running: worker.running.clone(),
                })
                .collect(),
            outbox_backlog: sample.outbox_backlog,
            error: sample.error.clone(),
        }
    }
}

#[derive(ApiResponse)]
pub enum LiveResponse {
    /// The stream: one `snapshot` event per sample, its JSON (`LiveSnapshot`) in `data:`;
    /// heartbeat comments when idle.
    #[oai(status = 200)]
    Stream(EventStream<BoxStream<'static, LiveSnapshot>>),
    /// The caller is not an admin.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
}

#[OpenApi(prefix_path = "/api/v1/admin", tag = "ApiTags::Admin")]
impl AdminLiveApi {
    /// The queues, the worker fleet and the outbox backlog, live (Server-Sent Events).
    ///
    /// About once a second: per queue pending, running, scheduled, dead, jobs done in the
    /// last minute, paused and held kinds; the live workers; the outbox backlog. The
    /// operator console at `/console` reads it. Browsers' `EventSource` cannot send a
    /// header: take a ticket from `POST /api/v1/events/ticket` and pass it as `?ticket=`.
    /// Each API instance samples once for all its streams. The stream ends when the
    /// server shuts down; reconnect with a new ticket.
    #[oai(path = "/live", method = "get")]
    async fn live(
        &self,
        auth: StreamAuth,
        state: Data<&AppState>,
    ) -> Result<LiveResponse, AuthedError> {
        if auth.user().role != Role::Admin {
            let problem = Problem::new(
                poem::http::StatusCode::FORBIDDEN,
                "forbidden",
                "this operation is for admins",
            );
            return Ok(LiveResponse::Forbidden(Json(problem)));
        }
        let samples = state.live.subscribe().map(|sample| LiveSnapshot::from(&*sample));
        Ok(LiveResponse::Stream(
            EventStream::new(samples.boxed()).keep_alive(state.hub.heartbeat()).to_event(
                |snapshot| Event::message(snapshot.to_json_string()).event_type("snapshot"),
            ),
        ))
    }
}
