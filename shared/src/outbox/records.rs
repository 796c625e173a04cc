//! [`OutcomeRecorder`]: writes jobs' outcomes to their Postgres records in batches (SPEC
//! section 9), so finishing a job never costs a Postgres round trip of its own.
//!
//! Workers report each job's end here once Redis has accepted it. One task per process
//! gathers what arrives while it waits (up to [`LINGER`] after the first report, or
//! [`MAX_BATCH`] reports) and writes the lot with one statement. While Postgres is away the
//! reports wait and are written when it returns; a report lost with a crashed worker is
//! recovered by the [`super::Reconciler`], which copies outcomes it finds in Redis.
//! Attempts of jobs a user's request caused are kept for its receipt, and their failed
//! attempts and ends announced on that user's event stream (`request.progress`, best
//! effort).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::queue::{AttemptEnd, Finished, OutcomeSink};

/// How long the recorder waits for more reports after the first one of a batch.
const LINGER: Duration = Duration::from_millis(20);
/// Most outcomes written by one statement.
const MAX_BATCH: usize = 2000;
/// Reports kept while Postgres is away; beyond it the reconciler recovers them from Redis.
const MAX_WAITING: usize = 100_000;

/// What a worker reports of a job.
enum Report {
    End(Finished),
    Attempt(u32, AttemptEnd),
}

/// The sending half, given to the queue store; cheap to clone.
#[derive(Clone)]
pub struct OutcomeRecorder {
    reports: mpsc::UnboundedSender<(Uuid, Report)>,
}

/// Where the recorder tells callers how their requests' jobs ended (`request.progress`,
/// [`super::receipts`]): the Redis connection and keys of the event streams.
pub type Progress = Option<(crate::redis::Conn, crate::redis::Keys)>;

impl OutcomeRecorder {
    /// Starts the recorder's task; it ends when every clone of the recorder is dropped.
    pub fn spawn(db: PgPool) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        Self::spawn_with_progress(db, None)
    }

    /// Like [`OutcomeRecorder::spawn`], also announcing each recorded end of a job that a
    /// user's request caused on that user's event stream.
    pub fn spawn_with_progress(
        db: PgPool,
        progress: Progress,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (reports, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(db, receiver, progress));
        (Arc::new(Self { reports }), task)
    }
}

impl OutcomeSink for OutcomeRecorder {
    fn finished(&self, id: &str, how: Finished) {
        // Jobs pushed straight to Redis (never through the outbox) have no record.
        if let Ok(id) = Uuid::parse_str(id) {
            let _ = self.reports.send((id, Report::End(how)));
        }
    }

    fn attempted(&self, id: &str, attempt: u32, how: AttemptEnd) {
        if let Ok(id) = Uuid::parse_str(id) {
            let _ = self.reports.send((id, Report::Attempt(attempt, how)));
        }
    }
}

async fn run(
    db: PgPool,
    mut receiver: mpsc::UnboundedReceiver<(Uuid, Report)>,
    mut progress: Progress,
) {
    let mut batch: Vec<(Uuid, Report)> = Vec::new();
    let mut failures = 0u32;
    loop {
        if batch.is_empty() {
            match receiver.recv().await {
                Some(report) => batch.push(report),
                None => return,
            }
        }
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(report)) => batch.push(report),
                Ok(None) | Err(_) => break,
            }
        }
        let written = batch.len().min(MAX_BATCH);
        match write(&db, &batch[..written]).await {
            Ok((retrying, ended)) => {
                failures = 0;
                let ends = batch.drain(..written).filter(|(_, r)| matches!(r, Report::End(_)));
                metrics::counter!("job_outcomes_recorded_total").increment(ends.count() as u64);
                if let Some((conn, keys)) = progress.as_mut() {
                    super::receipts::announce_retries(conn, keys, retrying).await;
                    super::receipts::announce_ends(conn, keys, ended).await;
                }
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                let delay = Duration::from_millis(100 * 2u64.pow(failures.min(6)))
                    .min(Duration::from_secs(5));
                tracing::warn!(error = %err, waiting = batch.len(), "cannot record job outcomes in Postgres yet");
                if batch.len() > MAX_WAITING {
                    let excess = batch.len() - MAX_WAITING;
                    batch.drain(..excess);
                }
                tokio::time::sleep(delay).await;
                while let Ok(report) = receiver.try_recv() {
                    batch.push(report);
                }
            }
        }
    }
}

/// Writes the attempts and the outcomes in one transaction (a failed batch is written whole
/// again); returns the failed attempts and the ends of jobs that a user's request caused.
async fn write(
    db: &PgPool,
    batch: &[(Uuid, Report)],
) -> sqlx::Result<(Vec<super::receipts::Retrying>, Vec<super::receipts::Ended>)> {
    let mut attempts = Vec::new();
    let mut ends = Vec::with_capacity(batch.len());
    for (id, report) in batch {
        match report {
            Report::Attempt(attempt, how) => attempts.push((*id, *attempt, how.clone())),
            Report::End(how) => ends.push((*id, how)),
        }
    }
    let mut tx = db.begin().await?;
    let retrying = super::receipts::keep_attempts(&mut tx, &attempts).await?;
    let ended = write_ends(&mut tx, &ends).await?;
    tx.commit().await?;
    Ok((retrying, ended))
}

/// Writes the jobs' outcomes; returns the ends of jobs that a user's request caused.
async fn write_ends(
    tx: &mut sqlx::PgConnection,
    batch: &[(Uuid, &Finished)],
) -> sqlx::Result<Vec<super::receipts::Ended>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids = Vec::with_capacity(batch.len());
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut errors: Vec<Option<String>> = Vec::with_capacity(batch.len());
    for (id, how) in batch {
        ids.push(*id);
        outcomes.push(how.as_str().to_owned());
        errors.push(how.error().map(str::to_owned));
    }
    let rows = sqlx::query!(
        r#"update outbox set finished_at = now(), outcome = x.outcome,
                last_error = coalesce(x.error, outbox.last_error)
         from unnest($1::uuid[], $2::text[], $3::text[]) as x(id, outcome, error)
         where outbox.id = x.id
         returning outbox.id, outbox.kind, outbox.request_id, outbox.user_id, x.outcome as "outcome!""#,
        &ids,
        &outcomes,
        &errors as &[Option<String>],
    )
    .fetch_all(tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            Some(super::receipts::Ended {
                id: row.id,
                kind: row.kind,
                request_id: row.request_id?,
                user: row.user_id?,
                outcome: row.outcome,
            })
        })
        .collect())
}
