//! Cron ticks timed by Redis' clock, not this machine's (SPEC section 9, "Clocks").
//!
//! apalis-cron compares the schedule with the local clock, so a worker ten minutes fast
//! fires every tick ten minutes early, and one ten minutes slow fires them late. Leases and
//! retries already use Redis `TIME`; [`TickSource`] makes ticks follow it too: it reads
//! Redis' time, computes the schedule's next tick after it, sleeps on the monotonic clock
//! (which no wall-clock skew or jump moves) for the difference, and reads Redis' time again
//! before yielding, so a tick is never yielded before Redis says it is due. Long waits are
//! cut into slices of at most [`RESYNC`], each ending with a fresh read, so a wait of hours
//! follows Redis' clock too.
//!
//! A tick that is already past when the source looks (the worker was busy, or Redis was
//! unreachable for a while) is yielded late rather than failed, and only the latest missed
//! one: no backlog storm. While Redis is unreachable the source waits and retries; it never
//! returns an error, which would stop the tick worker.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::layers::Identity;
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::worker::context::WorkerContext;
use apalis_cron::Tick;
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt};
use tasklane_shared::redis::Conn;

/// The longest sleep between two reads of Redis' clock while waiting for a tick.
const RESYNC: Duration = Duration::from_secs(30);
/// How long to wait before asking an unreachable Redis for the time again.
const RETRY: Duration = Duration::from_secs(1);
/// How long one `TIME` may take before Redis counts as unreachable.
const TIME_TIMEOUT: Duration = Duration::from_secs(2);
/// How many missed ticks to step over when looking for the latest one (an every-second
/// schedule after a day away would otherwise iterate 86,400 times).
const MAX_SKIPPED: usize = 10_000;

/// Redis' clock (`TIME`): the one clock every worker of the fleet shares.
pub async fn redis_now(conn: &mut Conn) -> anyhow::Result<DateTime<Utc>> {
    let command = redis::cmd("TIME");
    let time = command.query_async::<(i64, u32)>(conn);
    let (seconds, micros) = tokio::time::timeout(TIME_TIMEOUT, time)
        .await
        .map_err(|_| anyhow::anyhow!("redis TIME timed out after {TIME_TIMEOUT:?}"))??;
    DateTime::from_timestamp(seconds, micros.saturating_mul(1000))
        .ok_or_else(|| anyhow::anyhow!("redis TIME out of range: {seconds}"))
}

/// The tick source of one schedule: a stream of ticks, each yielded once Redis' clock has
/// reached it (see the module doc).
pub struct TickSource {
    ticks: BoxStream<'static, Task<Tick>>,
}

impl TickSource {
    pub fn new(schedule: cron::Schedule, conn: Conn) -> Self {
        let clock = Clock { schedule, conn, last: None };
        let ticks = futures::stream::unfold(clock, |mut clock| async move {
            let tick = clock.next_tick().await;
            let seconds = u64::try_from(tick.timestamp()).unwrap_or_default();
            Some((TaskBuilder::new(Tick::new(seconds)).build(), clock))
        });
        Self { ticks: ticks.boxed() }
    }
}

/// The state between two ticks.
struct Clock {
    schedule: cron::Schedule,
    conn: Conn,
    /// The last tick yielded; the next one comes after it.
    last: Option<DateTime<Utc>>,
}

impl Clock {
    /// Redis' time, waiting out an outage.
    async fn now(&mut self) -> DateTime<Utc> {
        loop {
            match redis_now(&mut self.conn).await {
                Ok(now) => return now,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read Redis' clock for cron ticks; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// Waits until the next tick is due by Redis' clock and returns it.
    async fn next_tick(&mut self) -> DateTime<Utc> {
        let now = self.now().await;
        let due = match plan(&self.schedule, self.last, now) {
            Plan::Late(due) => {
                let late_ms = (now - due).num_milliseconds();
                tracing::warn!(tick = %due, late_ms, "tick fired late; enqueuing it now");
                due
            }
            Plan::At(due) => {
                let mut now = now;
                while now < due {
                    let wait = (due - now).to_std().unwrap_or_default().min(RESYNC);
                    tokio::time::sleep(wait).await;
                    now = self.now().await;
                }
                due
            }
            // An exhausted schedule (a fixed year in the past) never ticks again.
            Plan::Never => std::future::pending().await,
        };
        self.last = Some(due);
        due
    }
}

/// What to do next, by Redis' clock.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Wait for this tick.
    At(DateTime<Utc>),
    /// This tick was missed (the latest of those missed since the last one): yield it now.
    Late(DateTime<Utc>),
    Never,
}

/// The next tick after `last` (or after `now` at the start), given Redis' time `now`.
fn plan(schedule: &cron::Schedule, last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Plan {
    let Some(next) = schedule.after(&last.unwrap_or(now)).next() else {
        return Plan::Never;
    };
    if next > now {
        return Plan::At(next);
    }
    let latest = schedule.after(&next).take(MAX_SKIPPED).take_while(|tick| *tick <= now).last();
    Plan::Late(latest.unwrap_or(next))
}

impl Backend for TickSource {
    type Task = Task<Tick>;
    type Error = Infallible;

    fn poll_ready(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Option<Result<Task<Tick>, Self::Error>>> {
        self.ticks.poll_next_unpin(cx).map(|tick| tick.map(Ok))
    }

    fn poll_close(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for TickSource {
    type Args = Tick;
    type Id = String;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        Identity::new()
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn at(seconds: i64, millis: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, millis * 1_000_000).unwrap_or_default()
    }

    fn every_two_seconds() -> cron::Schedule {
        cron::Schedule::from_str("*/2 * * * * *").unwrap_or_else(|err| panic!("{err}"))
    }

    #[test]
    fn the_first_tick_is_the_next_one_after_redis_time() {
        assert_eq!(plan(&every_two_seconds(), None, at(1_001, 500)), Plan::At(at(1_002, 0)));
        // Exactly on a tick: that tick is now, the next one is due.
        assert_eq!(plan(&every_two_seconds(), None, at(1_002, 0)), Plan::At(at(1_004, 0)));
    }

    #[test]
    fn the_tick_after_the_last_one_waits_until_it_is_due() {
        let plan = plan(&every_two_seconds(), Some(at(1_002, 0)), at(1_003, 900));
        assert_eq!(plan, Plan::At(at(1_004, 0)));
    }

    #[test]
    fn after_missed_ticks_only_the_latest_is_yielded_late() {
        let plan = plan(&every_two_seconds(), Some(at(1_000, 0)), at(1_009, 500));
        assert_eq!(plan, Plan::Late(at(1_008, 0)));
    }
}
