//! The handlers, and the one table that registers them with the monitor.
//!
//! Each kind is declared (name, queue, attempts, backoff, timeout, schedule) in
//! `tasklane_shared::jobs`; here the [`jobs!`] table gives it its handler, its concurrency
//! and its dependencies, once. Registration, the start-up catch-up of missed ticks and the
//! list of registered kinds all read that table, so adding a kind means a line there and a
//! line here.

mod daily_digest;
mod delete_objects;
mod expire_uploads;
mod mark_overdue;
mod process_upload;
mod prune_sent_emails;
mod purge_deleted;
mod send_email;
mod send_reminder;

use std::future::Future;
use std::pin::Pin;

use apalis::layers::WorkerBuilderExt;
use apalis_core::monitor::Monitor;
use apalis_core::worker::builder::WorkerBuilder;
use tasklane_shared::jobs::{
    CronJob, DailyDigest, DeleteObjects, ExpireUploads, Job, JobSpec, MarkOverdue, ProcessUpload,
    PruneSentEmails, PurgeDeleted, SendDigest, SendEmail, SendReminder,
};

use crate::context::WorkerContext;
use crate::cron::{TickSource, on_tick};

pub use daily_digest::{daily_digest, send_digest};
pub use delete_objects::delete_objects;
pub use expire_uploads::expire_uploads;
pub use mark_overdue::mark_overdue;
pub use process_upload::process_upload;
pub use prune_sent_emails::prune_sent_emails;
pub use purge_deleted::purge_deleted;
pub use send_email::send_email;
pub use send_reminder::send_reminder;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// Registers something with the monitor.
type Registers = fn(Monitor, &WorkerContext) -> Monitor;
/// Registers something with the monitor, or says why it cannot.
type TryRegisters = fn(Monitor, &WorkerContext) -> anyhow::Result<Monitor>;
/// Enqueues a scheduled kind's missed tick.
type CatchUp = for<'a> fn(&'a WorkerContext) -> BoxFuture<'a, anyhow::Result<()>>;

/// One row of the table: a kind, how its worker is registered, and for a scheduled kind its
/// tick worker and its catch-up.
struct Entry {
    spec: &'static JobSpec,
    /// Registers the kind's apalis worker: its backend, panics caught as failed attempts,
    /// its concurrency, its dependencies as `Data`, its handler.
    worker: Registers,
    /// Registers the tick worker of a scheduled kind.
    schedule: Option<TryRegisters>,
    /// Enqueues a scheduled kind's latest missed tick, once across the fleet.
    catch_up: Option<CatchUp>,
}

/// The table of every kind. A row is `job` or `cron` (scheduled: also a tick worker and a
/// catch-up), the payload type, its handler, how many run at once per process, and the
/// [`WorkerContext`] fields the handler takes as `Data`.
macro_rules! jobs {
    ($($mode:ident $job:ident => $handler:ident {
        concurrency: $concurrency:expr,
        data: [$($data:ident),* $(,)?] $(,)?
    })*) => {
        const TABLE: &[Entry] = &[$(Entry {
            spec: &<$job>::SPEC,
            worker: |monitor, ctx| {
                let concurrency: fn(&WorkerContext) -> usize = $concurrency;
                let (c, concurrency) = (ctx.clone(), concurrency(ctx));
                monitor.register(move |_| {
                    WorkerBuilder::new(c.worker_name(<$job>::SPEC.kind))
                        .backend(c.backend::<$job>(concurrency))
                        .catch_panic()
                        .concurrency(concurrency)
                        $(.data(c.$data.clone()))*
                        .build($handler)
                })
            },
            schedule: jobs!(@schedule $mode $job),
            catch_up: jobs!(@catch_up $mode $job),
        }),*];
    };
    (@schedule job $job:ident) => { None };
    (@schedule cron $job:ident) => { Some(schedule::<$job>) };
    (@catch_up job $job:ident) => { None };
    (@catch_up cron $job:ident) => { Some(catch_up_one::<$job>) };
}

jobs! {
    job SendEmail => send_email {
        concurrency: |ctx| ctx.concurrency,
        data: [mailer, templates, db],
    }
    job SendDigest => send_digest {
        concurrency: |ctx| ctx.concurrency,
        data: [db, mailer, templates],
    }
    job SendReminder => send_reminder {
        concurrency: |ctx| ctx.concurrency,
        data: [db, mailer, templates],
    }
    // Each upload may hold a decoded image (up to 512 MiB at the decoder's limit) and spends
    // CPU on it: a few at a time per process, whatever the email concurrency.
    job ProcessUpload => process_upload {
        concurrency: |ctx| ctx.concurrency.min(2),
        data: [db, bucket, attachments],
    }
    job DeleteObjects => delete_objects {
        concurrency: |ctx| ctx.concurrency,
        data: [bucket],
    }
    cron PruneSentEmails => prune_sent_emails {
        concurrency: |_| 1,
        data: [db],
    }
    cron MarkOverdue => mark_overdue {
        concurrency: |_| 1,
        data: [db, task_lists],
    }
    cron PurgeDeleted => purge_deleted {
        concurrency: |_| 1,
        data: [db, task_lists],
    }
    cron DailyDigest => daily_digest {
        concurrency: |_| 1,
        data: [db],
    }
    cron ExpireUploads => expire_uploads {
        concurrency: |_| 1,
        data: [db, attachments],
    }
}

/// The kinds [`register`] registers, in table order.
pub fn registered() -> impl Iterator<Item = &'static str> {
    TABLE.iter().map(|entry| entry.spec.kind)
}

/// Registers one apalis worker per job kind, then a tick worker per schedule.
pub fn register(monitor: Monitor, ctx: &WorkerContext) -> anyhow::Result<Monitor> {
    let monitor = TABLE.iter().fold(monitor, |monitor, entry| (entry.worker)(monitor, ctx));
    TABLE
        .iter()
        .filter_map(|entry| entry.schedule)
        .try_fold(monitor, |monitor, schedule| schedule(monitor, ctx))
}

/// Enqueues each schedule's latest missed tick, once across the fleet.
pub async fn catch_up(ctx: &WorkerContext) -> anyhow::Result<()> {
    for catch_up in TABLE.iter().filter_map(|entry| entry.catch_up) {
        catch_up(ctx).await?;
    }
    Ok(())
}

/// Registers the tick worker of a scheduled kind.
fn schedule<J: CronJob>(monitor: Monitor, ctx: &WorkerContext) -> anyhow::Result<Monitor> {
    let Some(schedule) = tasklane_shared::schedules::schedule_of(&J::SPEC, ctx.settings())? else {
        return Ok(monitor);
    };
    let c = ctx.clone();
    Ok(monitor.register(move |_| {
        WorkerBuilder::new(c.worker_name(&format!("cron/{}", J::SPEC.kind)))
            .backend(TickSource::new(schedule.cron.clone(), c.store.connection()))
            .data(c.db.clone())
            .data(c.store.clone())
            .build(on_tick::<J>)
    }))
}

fn catch_up_one<J: CronJob>(ctx: &WorkerContext) -> BoxFuture<'_, anyhow::Result<()>> {
    Box::pin(async move {
        if let Some(schedule) = tasklane_shared::schedules::schedule_of(&J::SPEC, ctx.settings())? {
            crate::cron::catch_up::<J>(&ctx.db, &ctx.store, &schedule.cron).await?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_declared_kind_is_registered_once() {
        let mut declared: Vec<_> =
            tasklane_shared::jobs::ALL.iter().map(|spec| spec.kind).collect();
        let mut registered: Vec<_> = registered().collect();
        declared.sort_unstable();
        registered.sort_unstable();
        assert_eq!(declared, registered);
    }

    #[test]
    fn exactly_the_scheduled_kinds_tick_and_catch_up() {
        for entry in TABLE {
            let scheduled = entry.spec.schedule.is_some();
            assert_eq!(entry.schedule.is_some(), scheduled, "{}: tick worker", entry.spec.kind);
            assert_eq!(entry.catch_up.is_some(), scheduled, "{}: catch-up", entry.spec.kind);
        }
    }
}
