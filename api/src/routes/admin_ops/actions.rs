//! The steps the operating routes share: pausing with its audit entry, copying the controls
//! to Redis, checking a dead-set filter, a bulk action, finishing a cancel.

use poem::http::StatusCode;
use poem_openapi::payload::Json;
use serde_json::json;
use tasklane_shared::controls::{self, Scope};
use tasklane_shared::domain::jobs::JobState;
use tasklane_shared::jobs::{self, JobSpec, Queue};
use tasklane_shared::queue::{BulkAction, DeadFilter};
use tasklane_shared::{outbox, schedules};
use uuid::Uuid;

use super::types::{Admin, BulkResult, CancelView, DeadJobsFilter, PauseView, Reply};
use crate::problem::{AuthedError, FieldError, Problem};
use crate::routes::admin_jobs::queue_filter;
use crate::services::audit;
use crate::state::AppState;

pub(super) fn not_found(what: &str, name: &str) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", format!("no {what} is called {name:?}"))
}

/// A scheduled kind, by name.
pub(super) fn schedule_named(state: &AppState, name: &str) -> Option<&'static JobSpec> {
    jobs::spec(name).filter(|spec| schedules::expression(spec, &state.settings).is_some())
}

/// Pauses or resumes one queue, kind or schedule, audited, and copies the change to Redis.
pub(super) async fn set_paused(
    state: &AppState,
    admin: Uuid,
    scope: Scope,
    name: &str,
    paused: bool,
) -> Result<PauseView, AuthedError> {
    let mut tx = state.db.begin().await?;
    let changed = controls::set_paused(&mut tx, scope, name, paused).await?;
    let action = format!("{}.{}", scope.as_str(), if paused { "pause" } else { "resume" });
    let target = format!("{}:{name}", scope.as_str());
    audit::record(&mut tx, admin, &action, &target, json!({ "changed": changed })).await?;
    tx.commit().await?;
    publish(state).await;
    Ok(PauseView { scope: scope.as_str().into(), name: name.into(), paused, changed })
}

/// Copies the controls to Redis now; the workers' own copies make up for a failure.
pub(super) async fn publish(state: &AppState) {
    if let Err(err) = controls::sync(&state.db, &state.queue).await {
        tracing::warn!(error = %err, "cannot copy the queue controls to Redis; the workers will");
    }
}

/// The dead-set filter of a bulk action, checked.
fn dead_filter(body: &DeadJobsFilter) -> Result<(Vec<Queue>, DeadFilter), Problem> {
    let mut errors = Vec::new();
    if body.state != JobState::Dead {
        errors.push(FieldError::new("state", "unsupported", "only dead jobs are changed in bulk"));
    }
    let queues = queue_filter(body.queue.as_deref(), &mut errors);
    let queues = match body.kind.as_deref().map(|kind| (kind, jobs::spec(kind))) {
        None => queues,
        Some((kind, None)) => {
            errors.push(FieldError::new(
                "kind",
                "unknown",
                format!("no job kind is called {kind:?}"),
            ));
            queues
        }
        Some((kind, Some(spec))) if !queues.contains(&spec.queue) => {
            errors.push(FieldError::new(
                "kind",
                "wrong_queue",
                format!("{kind} belongs to the {} queue", spec.queue.as_str()),
            ));
            queues
        }
        Some((_, Some(spec))) => vec![spec.queue],
    };
    if let (Some(after), Some(before)) = (body.failed_after, body.failed_before)
        && after > before
    {
        errors.push(FieldError::new("failed_after", "out_of_range", "is later than failed_before"));
    }
    if body.error_contains.as_deref().is_some_and(|needle| needle.len() > 500) {
        errors.push(FieldError::new("error_contains", "too_long", "at most 500 bytes"));
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    Ok((
        queues,
        DeadFilter {
            kind: body.kind.clone(),
            error_contains: body.error_contains.clone().filter(|needle| !needle.is_empty()),
            failed_after_ms: body.failed_after.map(|at| at.timestamp_millis()),
            failed_before_ms: body.failed_before.map(|at| at.timestamp_millis()),
        },
    ))
}

/// Retries or discards the dead jobs `body` matches, audited.
pub(super) async fn bulk(
    state: &AppState,
    admin: Uuid,
    action: BulkAction,
    body: &DeadJobsFilter,
) -> Reply<BulkResult> {
    let (queues, filter) = match dead_filter(body) {
        Ok(checked) => checked,
        Err(problem) => return Ok(Admin::Invalid(Json(problem))),
    };
    let mut changed = Vec::new();
    for queue in queues {
        changed.extend(state.queue.bulk_dead(queue, action, &filter).await?);
    }
    let name = match action {
        BulkAction::Retry => "retry",
        BulkAction::Discard => "discard",
    };
    if action == BulkAction::Retry {
        // Their records are in flight again, so the reconciler watches them.
        let ids: Vec<Uuid> = changed.iter().filter_map(|id| Uuid::parse_str(id).ok()).collect();
        outbox::reopen(&state.db, &ids).await?;
    }
    let count = changed.len() as u64;
    let detail = json!({
        "queue": body.queue, "kind": body.kind, "error_contains": body.error_contains,
        "failed_after": body.failed_after, "failed_before": body.failed_before,
        "matched": count, "changed": count,
    });
    audit::record(&mut *state.db.acquire().await?, admin, &format!("jobs.{name}"), "dead", detail)
        .await?;
    tracing::info!(%admin, action = name, count, "dead jobs changed in bulk by an admin");
    Ok(Admin::Ok(Json(BulkResult { matched: count, changed: count })))
}

/// Audits a cancel and commits it with the record's change.
pub(super) async fn finish_cancel(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    admin: Uuid,
    id: String,
    kind: String,
    was: &str,
) -> Reply<CancelView> {
    let detail = json!({ "kind": kind, "was": was });
    audit::record(&mut tx, admin, "job.cancel", &format!("job:{id}"), detail).await?;
    tx.commit().await?;
    tracing::info!(%admin, job = %id, %kind, %was, "job cancelled by an admin");
    Ok(Admin::Ok(Json(CancelView { id, kind, state: JobState::Cancelled, was: was.into() })))
}

/// 409 for a job that already ended.
pub(super) fn ended(state: &str) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "already_ended",
        format!("the job is {state}; only a job that has not ended can be cancelled"),
    )
}
