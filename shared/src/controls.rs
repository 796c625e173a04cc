//! The operators' controls of the queues (SPEC section 10): a paused queue, kind or
//! schedule, and a kind's fleet-wide limits (rate and concurrency).
//!
//! Postgres keeps them (`queue_controls`); Redis holds the copy that fetching obeys
//! (`fetch.lua`, each queue's `controls` hash). The API copies an admin's change at once, and
//! every worker copies the whole table at start and every [`SYNC_EVERY`], so the controls
//! hold across a restart of either store and a Redis that lost them (restarted without its
//! data, failed over, flushed) has them back within a second. Each copy carries the highest
//! row version it was read at, and Redis keeps only the newest, so a worker's read that raced
//! an admin's change never undoes it. Nothing here needs a leader: every copy is the same.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use crate::jobs::{self, Queue};
use crate::queue::QueueStore;

/// How often each worker copies the controls to Redis.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// What a control applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Queue,
    Kind,
    Schedule,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Queue => "queue",
            Scope::Kind => "kind",
            Scope::Schedule => "schedule",
        }
    }
}

/// A kind's fleet-wide limits; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Jobs started per second, across every worker.
    pub rate_per_second: Option<f64>,
    /// Jobs running at once, across every worker.
    pub concurrency: Option<u32>,
}

impl Limits {
    /// The most a limit may be set to: beyond it, a limit would not limit anything a fleet
    /// can run, and is more likely a typo.
    pub const MAX_RATE: f64 = 100_000.0;
    pub const MAX_CONCURRENCY: u32 = 100_000;

    /// Parses `TASKLANE_LIMIT_<KIND>`: `rate=<per second>` and/or `concurrency=<n>`, comma
    /// separated (e.g. `rate=20,concurrency=4`).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut limits = Limits::default();
        for part in raw.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            match part.split_once('=').map(|(key, value)| (key.trim(), value.trim())) {
                Some(("rate", value)) => {
                    limits.rate_per_second = Some(value.parse().map_err(|_| {
                        format!("rate {value:?} is not a number of jobs per second")
                    })?)
                }
                Some(("concurrency", value)) => {
                    limits.concurrency = Some(
                        value
                            .parse()
                            .map_err(|_| format!("concurrency {value:?} is not a count"))?,
                    )
                }
                _ => {
                    return Err(format!(
                        "{part:?} is neither rate=<per second> nor concurrency=<n>"
                    ));
                }
            }
        }
        limits.check()?;
        Ok(limits)
    }

    /// Checks the limits are within range.
    pub fn check(&self) -> Result<(), String> {
        if let Some(rate) = self.rate_per_second
            && !(rate > 0.0 && rate <= Self::MAX_RATE)
        {
            return Err(format!("rate must be above 0 and at most {}", Self::MAX_RATE));
        }
        if let Some(concurrency) = self.concurrency
            && !(1..=Self::MAX_CONCURRENCY).contains(&concurrency)
        {
            return Err(format!("concurrency must be between 1 and {}", Self::MAX_CONCURRENCY));
        }
        Ok(())
    }
}

/// One row of `queue_controls`.
#[derive(Debug, Clone)]
pub struct Control {
    pub scope: String,
    pub name: String,
    pub paused: bool,
    pub limits: Limits,
    pub version: i64,
}

/// Every control.
pub async fn all(db: &PgPool) -> sqlx::Result<Vec<Control>> {
    let rows = sqlx::query!(
        "select scope, name, paused, rate_per_second, concurrency, version from queue_controls"
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| Control {
            scope: row.scope,
            name: row.name,
            paused: row.paused,
            limits: Limits {
                rate_per_second: row.rate_per_second,
                concurrency: row.concurrency.and_then(|c| u32::try_from(c).ok()),
            },
            version: row.version,
        })
        .collect())
}

/// Pauses or resumes a queue, kind or schedule; `true` when that changed anything.
pub async fn set_paused(
    tx: &mut PgConnection,
    scope: Scope,
    name: &str,
    paused: bool,
) -> sqlx::Result<bool> {
    let changed = sqlx::query!(
        "insert into queue_controls (scope, name, paused) values ($1, $2, $3)
         on conflict (scope, name) do update
             set paused = excluded.paused, version = nextval('queue_controls_version'),
                 updated_at = now()
             where queue_controls.paused <> excluded.paused",
        scope.as_str(),
        name,
        paused,
    )
    .execute(tx)
    .await?;
    Ok(changed.rows_affected() > 0)
}

/// Sets a kind's limits (`None` clears one).
pub async fn set_limits(tx: &mut PgConnection, kind: &str, limits: Limits) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into queue_controls (scope, name, rate_per_second, concurrency)
         values ('kind', $1, $2, $3)
         on conflict (scope, name) do update
             set rate_per_second = excluded.rate_per_second,
                 concurrency = excluded.concurrency,
                 version = nextval('queue_controls_version'), updated_at = now()",
        kind,
        limits.rate_per_second,
        limits.concurrency.map(|c| i32::try_from(c).unwrap_or(i32::MAX)),
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// Whether a schedule is paused (its ticks enqueue nothing).
pub async fn schedule_paused(db: &PgPool, kind: &str) -> sqlx::Result<bool> {
    let paused = sqlx::query_scalar!(
        "select paused from queue_controls where scope = 'schedule' and name = $1",
        kind
    )
    .fetch_optional(db)
    .await?;
    Ok(paused.unwrap_or(false))
}

/// The limits `TASKLANE_LIMIT_<KIND>` sets, by kind, or what is wrong with them.
pub fn limits_from_env(raw: &HashMap<String, String>) -> Result<Vec<(String, Limits)>, String> {
    raw.iter()
        .map(|(kind, value)| {
            if jobs::spec(kind).is_none() {
                return Err(format!(
                    "TASKLANE_LIMIT_{}: no job kind is called {kind:?}",
                    kind.to_uppercase()
                ));
            }
            Limits::parse(value)
                .map(|limits| (kind.clone(), limits))
                .map_err(|err| format!("TASKLANE_LIMIT_{}: {err}", kind.to_uppercase()))
        })
        .collect()
}

/// Gives the kinds of `TASKLANE_LIMIT_<KIND>` their limits, unless an operator already set
/// limits for that kind (at run time, through the API): those win, and outlive restarts.
pub async fn seed_limits(db: &PgPool, limits: &[(String, Limits)]) -> sqlx::Result<()> {
    for (kind, limits) in limits {
        sqlx::query!(
            "insert into queue_controls (scope, name, rate_per_second, concurrency)
             values ('kind', $1, $2, $3)
             on conflict (scope, name) do update
                 set rate_per_second = excluded.rate_per_second,
                     concurrency = excluded.concurrency,
                     version = nextval('queue_controls_version'), updated_at = now()
                 where queue_controls.rate_per_second is null
                   and queue_controls.concurrency is null",
            kind,
            limits.rate_per_second,
            limits.concurrency.map(|c| i32::try_from(c).unwrap_or(i32::MAX)),
        )
        .execute(db)
        .await?;
    }
    Ok(())
}

/// The queue a control of scope `queue` or `kind` applies to.
fn queue_of(control: &Control) -> Option<Queue> {
    match control.scope.as_str() {
        "queue" => Queue::named(&control.name),
        "kind" => jobs::spec(&control.name).map(|spec| spec.queue),
        _ => None,
    }
}

/// Copies `controls` to each queue's Redis namespace (see the module doc).
pub async fn publish(store: &QueueStore, controls: &[Control]) -> redis::RedisResult<()> {
    for queue in Queue::ALL {
        let mine: Vec<&Control> =
            controls.iter().filter(|control| queue_of(control) == Some(queue)).collect();
        let version = mine.iter().map(|control| control.version).max().unwrap_or(0);
        let mut fields = Vec::new();
        for control in mine {
            let suffix =
                if control.scope == "queue" { String::new() } else { format!(":{}", control.name) };
            if control.paused {
                fields.push((format!("paused{suffix}"), "1".to_owned()));
            }
            if let Some(rate) = control.limits.rate_per_second {
                fields.push((format!("rate{suffix}"), rate.to_string()));
            }
            if let Some(concurrency) = control.limits.concurrency {
                fields.push((format!("concurrency{suffix}"), concurrency.to_string()));
            }
        }
        store.apply_controls(queue, version, &fields).await?;
    }
    Ok(())
}

/// Copies every control to Redis now.
pub async fn sync(db: &PgPool, store: &QueueStore) -> anyhow::Result<()> {
    publish(store, &all(db).await?).await?;
    Ok(())
}

/// A worker's copier: [`sync`] every [`SYNC_EVERY`] until `stop` resolves. A failure (either
/// store away) is logged and retried at the next beat.
pub async fn run(db: PgPool, store: QueueStore, stop: impl Future<Output = ()>) {
    let mut beats = tokio::time::interval(SYNC_EVERY);
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = beats.tick() => {}
        }
        match sync(&db, &store).await {
            Ok(()) => failing = false,
            Err(err) if !failing => {
                failing = true;
                tracing::warn!(error = %err, "cannot copy the queue controls to Redis; retrying");
            }
            Err(_) => {}
        }
    }
}
