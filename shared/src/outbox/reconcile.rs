//! [`Reconciler`]: puts back jobs Redis lost (SPEC section 9, "Nothing lost while Postgres
//! holds").
//!
//! Every worker runs one; a pass takes a short Redis lock, so one worker of the fleet does
//! each pass and there is no leader to lose. A pass walks the jobs in flight (relayed, no
//! outcome recorded) in pages and asks Redis for each one's state:
//! - done or dead in Redis: the outcome is copied to the record (a worker that died before
//!   its recorder wrote it);
//! - missing: Redis lost it (a restart without its data, a failover to a replica that missed
//!   writes, `FLUSHALL`). After [`CONFIRM`] (longer than a recorder's batching, so an outcome
//!   on its way to Postgres lands first) the jobs still missing and still unfinished are
//!   pushed again, with their original id, kind, payload and attempts budget. Pushes skip ids
//!   Redis holds, so a pass racing another, or the relay, adds nothing.
//!
//! It also prunes finished records past the job retention. The one thing it cannot tell
//! apart is a job that finished in Redis a moment before Redis lost it *and* whose worker
//! died before reporting it: that job runs again (delivery stays at least once; emails are
//! still sent once by their idempotency key).

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::jobs::Queue;
use crate::queue::{NewJob, QueueStore};

/// Jobs looked up per round trip.
const PAGE: i64 = 2000;
/// How long a job must stay missing, and unfinished, before it is pushed again.
const CONFIRM: Duration = Duration::from_secs(1);
/// Finished records deleted per pass at most.
const PRUNE_LIMIT: i64 = 10_000;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Jobs in flight looked at.
    pub checked: usize,
    /// Outcomes copied from Redis.
    pub backfilled: usize,
    /// Jobs pushed again.
    pub restored: usize,
}

/// A job in flight, as its record holds it.
struct InFlight {
    id: Uuid,
    queue: String,
    kind: String,
    payload: String,
    max_attempts: i32,
    request_id: Option<String>,
    traceparent: Option<String>,
    /// When a delayed job is due (milliseconds since the epoch).
    run_at_ms: Option<i64>,
    relayed_at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct Reconciler {
    db: PgPool,
    store: QueueStore,
    interval: Duration,
    /// Names this process in the pass lock.
    worker: String,
}

impl Reconciler {
    pub fn new(db: PgPool, store: QueueStore, interval: Duration, worker: String) -> Self {
        Self { db, store, interval, worker }
    }

    /// Runs a pass every interval (when no other worker holds the pass) until `shutdown`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = ticks.tick() => {}
            }
            match self.try_pass().await {
                Ok(Some(pass)) if pass.restored > 0 || pass.backfilled > 0 => {
                    tracing::warn!(?pass, "reconciled Postgres' job records with Redis")
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "reconciler pass failed"),
            }
        }
    }

    /// One pass, unless another worker holds the pass lock.
    pub async fn try_pass(&self) -> anyhow::Result<Option<Pass>> {
        let lock = self.store.keys().global("reconciler");
        let took: Option<String> = redis::cmd("SET")
            .arg(&lock)
            .arg(&self.worker)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX).max(1000))
            .query_async(&mut self.store.connection())
            .await?;
        if took.is_none() {
            return Ok(None);
        }
        let pass = self.pass().await?;
        self.prune().await?;
        Ok(Some(pass))
    }

    /// Walks every job in flight; see the module doc.
    pub async fn pass(&self) -> anyhow::Result<Pass> {
        let mut pass = Pass::default();
        let mut after: (DateTime<Utc>, Uuid) = (DateTime::UNIX_EPOCH, Uuid::nil());
        let mut missing: Vec<InFlight> = Vec::new();
        // Records of queues this release does not know are left to the release that does.
        let known: Vec<String> = Queue::ALL.map(|queue| queue.as_str().to_owned()).to_vec();
        loop {
            let page = sqlx::query_as!(
                InFlight,
                r#"select id, queue, kind, payload::text as "payload!", max_attempts, request_id,
                          traceparent, (extract(epoch from run_at) * 1000)::bigint as run_at_ms,
                          relayed_at as "relayed_at!"
                   from outbox
                   where relayed_at is not null and finished_at is null and (relayed_at, id) > ($1, $2)
                     and queue = any($4)
                   order by relayed_at, id
                   limit $3"#,
                after.0,
                after.1,
                PAGE,
                &known,
            )
            .fetch_all(&self.db)
            .await?;
            let Some(last) = page.last() else { break };
            after = (last.relayed_at, last.id);
            let full = page.len() as i64 == PAGE;
            pass.checked += page.len();
            let states = self.states(&page).await?;
            let mut ended: Vec<(Uuid, &'static str, Option<String>)> = Vec::new();
            for (job, (state, error)) in page.into_iter().zip(states) {
                match state.as_deref() {
                    None => missing.push(job),
                    Some("done") => ended.push((job.id, "succeeded", None)),
                    Some("dead") => ended.push((job.id, "dead", error)),
                    Some("cancelled") => ended.push((job.id, "cancelled", error)),
                    Some(_) => {}
                }
            }
            pass.backfilled += self.backfill(&ended).await?;
            if !full {
                break;
            }
        }
        if !missing.is_empty() {
            tokio::time::sleep(CONFIRM).await;
            pass.restored = self.restore(missing).await?;
        }
        Ok(pass)
    }

    /// Each job's state and last error in Redis; `None` when Redis does not have it. One
    /// pipeline per queue: a queue's keys share a cluster slot, two queues' may not.
    async fn states(
        &self,
        jobs: &[InFlight],
    ) -> redis::RedisResult<Vec<(Option<String>, Option<String>)>> {
        let mut states = vec![(None, None); jobs.len()];
        for queue in Queue::ALL {
            // Every record here is of a known queue (see `pass`); one of an unknown queue
            // reads as missing and is never pushed.
            let of_queue: Vec<usize> =
                (0..jobs.len()).filter(|&i| Queue::named(&jobs[i].queue) == Some(queue)).collect();
            if of_queue.is_empty() {
                continue;
            }
            // On a sharded queue, in the job's shard, then in the first (a unique job's).
            let shards = self.store.shards();
            for pass in 0..2 {
                let here = |i: &usize| match shards.homes(&jobs[*i].id.to_string()).get(pass) {
                    Some(&shard) => states[*i].0.is_none().then_some((*i, shard)),
                    None => None,
                };
                let todo = of_queue.iter().filter_map(here);
                for (shard, those) in crate::queue::grouped(todo, |(_, shard)| *shard) {
                    let mut pipe = redis::pipe();
                    for &(i, _) in &those {
                        let id = jobs[i].id.to_string();
                        pipe.cmd("HMGET")
                            .arg(self.store.key_in(queue, shard, "jobs"))
                            .arg(crate::queue::job_field(&id, "run"))
                            .arg(crate::queue::job_field(&id, "last_error"));
                    }
                    let found: Vec<(Option<String>, Option<String>)> =
                        pipe.query_async(&mut self.store.connection()).await?;
                    for ((i, _), (run, error)) in those.into_iter().zip(found) {
                        // The state leads the job's run (see `queue::record`).
                        let state = run.and_then(|run| {
                            crate::queue::record::Run::parse(&run).map(|r| r.state.to_owned())
                        });
                        states[i] = (state, error);
                    }
                }
            }
        }
        Ok(states)
    }

    async fn backfill(
        &self,
        ended: &[(Uuid, &'static str, Option<String>)],
    ) -> sqlx::Result<usize> {
        if ended.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = ended.iter().map(|e| e.0).collect();
        let outcomes: Vec<String> = ended.iter().map(|e| e.1.to_owned()).collect();
        let errors: Vec<Option<String>> = ended.iter().map(|e| e.2.clone()).collect();
        let done = sqlx::query!(
            "update outbox set finished_at = now(), outcome = x.outcome,
                    last_error = coalesce(x.error, outbox.last_error)
             from unnest($1::uuid[], $2::text[], $3::text[]) as x(id, outcome, error)
             where outbox.id = x.id and outbox.finished_at is null",
            &ids,
            &outcomes,
            &errors as &[Option<String>],
        )
        .execute(&self.db)
        .await?;
        Ok(done.rows_affected() as usize)
    }

    /// Pushes again the jobs still missing from Redis whose records are still unfinished.
    async fn restore(&self, missing: Vec<InFlight>) -> anyhow::Result<usize> {
        let ids: Vec<Uuid> = missing.iter().map(|job| job.id).collect();
        let unfinished: Vec<Uuid> = sqlx::query_scalar!(
            "select id from outbox where id = any($1) and finished_at is null",
            &ids,
        )
        .fetch_all(&self.db)
        .await?;
        let candidates: Vec<InFlight> =
            missing.into_iter().filter(|job| unfinished.contains(&job.id)).collect();
        let states = self.states(&candidates).await?;
        let mut restored = 0;
        for queue in Queue::ALL {
            let jobs: Vec<NewJob> = candidates
                .iter()
                .zip(&states)
                .filter(|(job, (state, _))| state.is_none() && job.queue == queue.as_str())
                .map(|(job, _)| NewJob {
                    id: job.id,
                    kind: job.kind.clone(),
                    payload: job.payload.clone(),
                    max_attempts: u32::try_from(job.max_attempts).unwrap_or(1),
                    request_id: job.request_id.clone(),
                    traceparent: job.traceparent.clone(),
                    unique: None,
                    due_ms: job.run_at_ms,
                })
                .collect();
            for chunk in jobs.chunks(500) {
                restored += self.store.push(queue, chunk).await?;
            }
        }
        if restored > 0 {
            metrics::counter!("jobs_restored_total").increment(restored as u64);
        }
        Ok(restored)
    }

    /// Deletes finished records past retention: successes after the done retention, dead
    /// and quarantined ones after the dead retention. Each statement is a range scan of the
    /// finished records' index, oldest first.
    async fn prune(&self) -> sqlx::Result<u64> {
        let settings = self.store.settings();
        let ago = |d: Duration| {
            chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| Utc::now().checked_sub_signed(d))
                .unwrap_or(DateTime::UNIX_EPOCH)
        };
        let succeeded = sqlx::query!(
            "delete from outbox where id in (
                 select id from outbox
                 where finished_at < $1 and outcome = 'succeeded'
                 order by finished_at limit $2)",
            ago(settings.done_retention),
            PRUNE_LIMIT,
        )
        .execute(&self.db)
        .await?;
        let ended = sqlx::query!(
            "delete from outbox where id in (
                 select id from outbox where finished_at < $1 order by finished_at limit $2)",
            ago(settings.dead_retention.max(settings.done_retention)),
            PRUNE_LIMIT,
        )
        .execute(&self.db)
        .await?;
        super::receipts::prune(&self.db, settings.dead_retention).await?;
        Ok(succeeded.rows_affected() + ended.rows_affected())
    }
}
