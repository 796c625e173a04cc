//! Operating the queue (SPEC section 10), admins only: pausing and resuming queues, kinds and
//! schedules, a kind's fleet-wide limits, cancelling a job, retrying or discarding the dead
//! set in bulk, running a schedule now, the live worker fleet and the audit log of every
//! admin write.
//!
//! Pauses and limits are written to Postgres (with their audit entry, in one transaction)
//! and copied to Redis at once; every worker copies them again each second (see
//! `tasklane_shared::controls`), so a copy this instance could not make is made for it.
//!
//! [`types`] has what the routes take and return; `actions` the steps they share.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use serde_json::json;
use tasklane_shared::controls::{self, Limits, Scope};
use tasklane_shared::jobs::{self, Queue};
use tasklane_shared::queue::{BulkAction, Cancelled};
use tasklane_shared::{fleet, outbox, schedules};
use uuid::Uuid;

use crate::problem::{FieldError, Problem};
use crate::routes::admin_jobs::HeldKindView;
use crate::security::BearerAuth;
use crate::services::audit;
use crate::state::AppState;
use crate::tags::ApiTags;

mod actions;
mod types;

pub use types::*;

use actions::{bulk, ended, finish_cancel, not_found, publish, schedule_named, set_paused};

pub struct AdminOpsApi;

#[OpenApi(prefix_path = "/api/v1/admin", tag = "ApiTags::Admin")]
impl AdminOpsApi {
    /// Every job kind: its queue, pause state, fleet-wide limits, whether an outage holds
    /// it, and its jobs pending and running.
    #[oai(path = "/kinds", method = "get")]
    async fn kinds(&self, auth: BearerAuth, state: Data<&AppState>) -> Reply<Vec<KindView>> {
        if let Err(problem) = auth.require_admin() {
            return Ok(Admin::Forbidden(Json(problem)));
        }
        let all = controls::all(&state.db).await?;
        let control = |scope: &str, name: &str| {
            all.iter().find(|control| control.scope == scope && control.name == name)
        };
        let held = state.queue.held_kinds().await?;
        let mut kinds = Vec::new();
        for queue in Queue::ALL {
            let running = state.queue.running_by_kind(queue).await?;
            let pending = state.queue.pending_by_kind(queue).await?;
            for spec in jobs::ALL.iter().filter(|spec| spec.queue == queue) {
                let mine = control("kind", spec.kind);
                kinds.push(KindView {
                    kind: spec.kind.into(),
                    queue: queue.as_str().into(),
                    priority: spec.priority.as_str().into(),
                    paused: mine.is_some_and(|control| control.paused),
                    queue_paused: control("queue", queue.as_str()).is_some_and(|c| c.paused),
                    limits: mine.map(|control| control.limits).unwrap_or_default().into(),
                    held: held.iter().find(|held| held.kind == spec.kind).map(HeldKindView::from),
                    pending: pending.get(spec.kind).copied().unwrap_or(0),
                    running: running.get(spec.kind).copied().unwrap_or(0),
                    cron: schedules::expression(spec, &state.settings),
                });
            }
        }
        Ok(Admin::Ok(Json(kinds)))
    }

    /// Pause a queue: no worker starts its jobs (within a second, fleet-wide) until it is
    /// resumed; jobs keep queueing, and running ones finish. Survives restarts.
    #[oai(path = "/queues/:queue/pause", method = "post")]
    async fn pause_queue(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        queue: Path<String>,
    ) -> Reply<PauseView> {
        self.pause(auth, &state, Scope::Queue, &queue.0, true).await
    }

    /// Resume a paused queue.
    #[oai(path = "/queues/:queue/resume", method = "post")]
    async fn resume_queue(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        queue: Path<String>,
    ) -> Reply<PauseView> {
        self.pause(auth, &state, Scope::Queue, &queue.0, false).await
    }

    /// Pause one job kind (as `/queues/{queue}/pause`, for one kind).
    #[oai(path = "/kinds/:kind/pause", method = "post")]
    async fn pause_kind(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        kind: Path<String>,
    ) -> Reply<PauseView> {
        self.pause(auth, &state, Scope::Kind, &kind.0, true).await
    }

    /// Resume a paused job kind.
    #[oai(path = "/kinds/:kind/resume", method = "post")]
    async fn resume_kind(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        kind: Path<String>,
    ) -> Reply<PauseView> {
        self.pause(auth, &state, Scope::Kind, &kind.0, false).await
    }

    /// Set a kind's fleet-wide limits: jobs started per second and jobs running at once,
    /// across every worker. `null` clears a limit. Survives restarts, and wins over
    /// `TASKLANE_LIMIT_<KIND>`.
    #[oai(path = "/kinds/:kind/limits", method = "put")]
    async fn limits(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        kind: Path<String>,
        body: Json<KindLimits>,
    ) -> Reply<KindLimits> {
        let admin = match auth.require_admin() {
            Ok(admin) => admin.id,
            Err(problem) => return Ok(Admin::Forbidden(Json(problem))),
        };
        if jobs::spec(&kind.0).is_none() {
            return Ok(Admin::NotFound(Json(not_found("job kind", &kind.0))));
        }
        let limits =
            Limits { rate_per_second: body.rate_per_second, concurrency: body.concurrency };
        if let Err(message) = limits.check() {
            let field = if message.starts_with("rate") { "rate_per_second" } else { "concurrency" };
            let error = FieldError::new(field, "out_of_range", message);
            return Ok(Admin::Invalid(Json(Problem::validation(vec![error]))));
        }
        let mut tx = state.db.begin().await?;
        controls::set_limits(&mut tx, &kind.0, limits).await?;
        let detail =
            json!({ "rate_per_second": limits.rate_per_second, "concurrency": limits.concurrency });
        audit::record(&mut tx, admin, "kind.limits", &format!("kind:{}", kind.0), detail).await?;
        tx.commit().await?;
        publish(&state).await;
        Ok(Admin::Ok(Json(limits.into())))
    }

    /// Cancel a job that has not ended: waiting in the outbox, pending, scheduled, or
    /// running (its handler is stopped within seconds and its late outcome refused). 409 when
    /// it already ended.
    #[oai(path = "/jobs/:id/cancel", method = "post")]
    async fn cancel(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> Reply<CancelView> {
        let admin = match auth.require_admin() {
            Ok(admin) => admin.id,
            Err(problem) => return Ok(Admin::Forbidden(Json(problem))),
        };
        let Ok(uuid) = Uuid::parse_str(&id.0) else {
            return Ok(Admin::NotFound(Json(not_found("job", &id.0))));
        };
        let mut tx = state.db.begin().await?;
        let (kind, was) = if let Some(kind) = outbox::cancel_waiting(&mut tx, uuid).await? {
            (kind, "waiting".to_owned())
        } else {
            let Some(job) = state.queue.find_job(&id.0).await? else {
                // Not in Redis: ended and expired, or lost by Redis and not yet put back by
                // the reconciler, which a cancelled record keeps from doing so.
                match outbox::record(&state.db, uuid).await? {
                    Some(record) if record.outcome.is_some() => {
                        return Ok(Admin::Conflict(Json(ended(record.state()))));
                    }
                    Some(record) => {
                        outbox::record_cancelled(&mut tx, uuid).await?;
                        return finish_cancel(tx, admin, id.0, record.kind, "in_flight").await;
                    }
                    None => return Ok(Admin::NotFound(Json(not_found("job", &id.0)))),
                }
            };
            match state.queue.cancel(job.queue, &id.0).await? {
                Cancelled::Now { was } => {
                    outbox::record_cancelled(&mut tx, uuid).await?;
                    (job.kind, was.to_string())
                }
                Cancelled::AlreadyEnded(state) => {
                    return Ok(Admin::Conflict(Json(ended(state.as_str()))));
                }
                Cancelled::Missing => return Ok(Admin::NotFound(Json(not_found("job", &id.0)))),
            }
        };
        finish_cancel(tx, admin, id.0, kind, &was).await
    }

    /// Retry dead jobs in bulk: those matching the filter go back to their queues with fresh
    /// attempts. Idempotent: a second call finds them no longer dead.
    #[oai(path = "/jobs/retry", method = "post")]
    async fn retry_dead(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        body: Json<DeadJobsFilter>,
    ) -> Reply<BulkResult> {
        match auth.require_admin() {
            Ok(admin) => bulk(&state, admin.id, BulkAction::Retry, &body).await,
            Err(problem) => Ok(Admin::Forbidden(Json(problem))),
        }
    }

    /// Discard dead jobs in bulk: those matching the filter are deleted from the queue
    /// (their records keep the outcome `dead`).
    #[oai(path = "/jobs/discard", method = "post")]
    async fn discard_dead(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        body: Json<DeadJobsFilter>,
    ) -> Reply<BulkResult> {
        match auth.require_admin() {
            Ok(admin) => bulk(&state, admin.id, BulkAction::Discard, &body).await,
            Err(problem) => Ok(Admin::Forbidden(Json(problem))),
        }
    }

    /// Run a schedule once now, besides its ticks (even while it is paused).
    #[oai(path = "/schedules/:name/run", method = "post")]
    async fn run_schedule(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        name: Path<String>,
    ) -> Reply<RunView> {
        let admin = match auth.require_admin() {
            Ok(admin) => admin.id,
            Err(problem) => return Ok(Admin::Forbidden(Json(problem))),
        };
        let Some(spec) = schedule_named(&state, &name.0) else {
            return Ok(Admin::NotFound(Json(not_found("schedule", &name.0))));
        };
        // Every scheduled kind's payload is the tick that started it.
        let payload = json!({ "tick": Utc::now() });
        jobs::check_payload(spec.kind, &payload.to_string())
            .map_err(|err| anyhow::anyhow!("a scheduled kind's payload: {err}"))?;
        let mut tx = state.db.begin().await?;
        let id = outbox::enqueue_as(&mut tx, spec, payload, None, None).await?;
        audit::record(
            &mut tx,
            admin,
            "schedule.run",
            &format!("schedule:{}", spec.kind),
            json!({ "job_id": id }),
        )
        .await?;
        tx.commit().await?;
        Ok(Admin::Accepted(Json(RunView { kind: spec.kind.into(), job_id: id.to_string() })))
    }

    /// Pause a schedule: its ticks enqueue nothing until it is resumed.
    #[oai(path = "/schedules/:name/pause", method = "post")]
    async fn pause_schedule(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        name: Path<String>,
    ) -> Reply<PauseView> {
        self.pause(auth, &state, Scope::Schedule, &name.0, true).await
    }

    /// Resume a paused schedule (from its next tick; missed ticks are not run).
    #[oai(path = "/schedules/:name/resume", method = "post")]
    async fn resume_schedule(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        name: Path<String>,
    ) -> Reply<PauseView> {
        self.pause(auth, &state, Scope::Schedule, &name.0, false).await
    }

    /// The live worker processes; one that stops beating leaves the list within a lease.
    #[oai(path = "/workers", method = "get")]
    async fn workers(&self, auth: BearerAuth, state: Data<&AppState>) -> Reply<Vec<WorkerView>> {
        if let Err(problem) = auth.require_admin() {
            return Ok(Admin::Forbidden(Json(problem)));
        }
        let lease = state.queue.settings().lease;
        let live = fleet::live(&mut state.redis.clone(), &state.keys, lease).await?;
        Ok(Admin::Ok(Json(
            live.into_iter()
                .map(|worker| WorkerView {
                    id: worker.id,
                    host: worker.host,
                    pid: worker.pid,
                    version: worker.version,
                    started_at: worker.started_at,
                    last_seen: worker.last_seen,
                    concurrency: worker.concurrency as u64,
                    running: worker.running,
                })
                .collect(),
        )))
    }

    /// The audit log of admin writes, newest first. `action` may be a prefix ending in `.`
    /// (`queue.` for every queue action). `limit` 1-100 (default 50); `next_cursor`
    /// continues.
    #[oai(path = "/audit", method = "get")]
    #[allow(clippy::too_many_arguments)] // one per query parameter
    async fn audit(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        actor: Query<Option<Uuid>>,
        action: Query<Option<String>>,
        target: Query<Option<String>>,
        since: Query<Option<DateTime<Utc>>>,
        until: Query<Option<DateTime<Utc>>>,
        limit: Query<Option<u32>>,
        cursor: Query<Option<String>>,
    ) -> Reply<AuditPage> {
        if let Err(problem) = auth.require_admin() {
            return Ok(Admin::Forbidden(Json(problem)));
        }
        let mut errors = Vec::new();
        let limit = limit.0.unwrap_or(50);
        if !(1..=100).contains(&limit) {
            errors.push(FieldError::new("limit", "out_of_range", "must be between 1 and 100"));
        }
        let before = match cursor.0.as_deref().map(str::parse::<i64>) {
            None => None,
            Some(Ok(id)) if id > 0 => Some(id),
            Some(_) => {
                errors.push(FieldError::new("cursor", "invalid", "is not a cursor from this list"));
                None
            }
        };
        if !errors.is_empty() {
            return Ok(Admin::Invalid(Json(Problem::validation(errors))));
        }
        let filter = audit::Filter {
            actor: actor.0,
            action: action.0,
            target: target.0,
            since: since.0,
            until: until.0,
        };
        let limit = i64::from(limit);
        let mut entries = audit::list(&state.db, &filter, before, limit + 1).await?;
        let next_cursor = (entries.len() as i64 > limit).then(|| {
            entries.truncate(limit as usize);
            entries.last().map(|entry| entry.id.to_string()).unwrap_or_default()
        });
        let data = entries
            .into_iter()
            .map(|entry| AuditEntry {
                id: entry.id,
                actor: entry.actor,
                action: entry.action,
                target: entry.target,
                detail: entry.detail,
                at: entry.at,
            })
            .collect();
        Ok(Admin::Ok(Json(AuditPage { data, next_cursor })))
    }
}

impl AdminOpsApi {
    /// A pause or resume of `scope`/`name`, after checking the caller and the name.
    async fn pause(
        &self,
        auth: BearerAuth,
        state: &AppState,
        scope: Scope,
        name: &str,
        paused: bool,
    ) -> Reply<PauseView> {
        let admin = match auth.require_admin() {
            Ok(admin) => admin.id,
            Err(problem) => return Ok(Admin::Forbidden(Json(problem))),
        };
        let known = match scope {
            Scope::Queue => Queue::named(name).is_some(),
            Scope::Kind => jobs::spec(name).is_some(),
            Scope::Schedule => schedule_named(state, name).is_some(),
        };
        if !known {
            let what = match scope {
                Scope::Queue => "queue",
                Scope::Kind => "job kind",
                Scope::Schedule => "schedule",
            };
            return Ok(Admin::NotFound(Json(not_found(what, name))));
        }
        Ok(Admin::Ok(Json(set_paused(state, admin, scope, name, paused).await?)))
    }
}
