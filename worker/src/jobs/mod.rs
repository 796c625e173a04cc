//! The handlers, and the one explicit list that registers them with the monitor.
//!
//! Each kind is declared (name, queue, attempts, backoff, timeout, schedule) in
//! `tasklane_shared::jobs`; here it gets its handler. Adding a kind means a line in each.

mod daily_digest;
mod delete_objects;
mod expire_uploads;
mod mark_overdue;
mod process_upload;
mod prune_sent_emails;
mod purge_deleted;
mod send_email;

use apalis::layers::WorkerBuilderExt;
use apalis_core::monitor::Monitor;
use apalis_core::worker::builder::WorkerBuilder;
use tasklane_shared::jobs::{
    CronJob, DailyDigest, DeleteObjects, ExpireUploads, Job, MarkOverdue, ProcessUpload,
    PruneSentEmails, PurgeDeleted, SendEmail,
};

use crate::app::WorkerContext;
use crate::cron::{TickSource, on_tick};

pub use daily_digest::daily_digest;
pub use delete_objects::delete_objects;
pub use expire_uploads::expire_uploads;
pub use mark_overdue::mark_overdue;
pub use process_upload::process_upload;
pub use prune_sent_emails::prune_sent_emails;
pub use purge_deleted::purge_deleted;
pub use send_email::send_email;

/// Every registered kind; a test checks it covers `tasklane_shared::jobs::ALL`.
pub const REGISTERED: &[&str] = &[
    SendEmail::SPEC.kind,
    ProcessUpload::SPEC.kind,
    DeleteObjects::SPEC.kind,
    PruneSentEmails::SPEC.kind,
    MarkOverdue::SPEC.kind,
    PurgeDeleted::SPEC.kind,
    DailyDigest::SPEC.kind,
    ExpireUploads::SPEC.kind,
];

/// Registers the apalis worker of one kind: its backend, panics caught as failed attempts,
/// its concurrency, its dependencies as `Data`, its handler.
macro_rules! job_worker {
    ($monitor:expr, $ctx:expr, $job:ty, $handler:expr, $concurrency:expr, [$($data:ident),*]) => {{
        let (c, concurrency): (WorkerContext, usize) = ($ctx.clone(), $concurrency);
        $monitor.register(move |_| {
            WorkerBuilder::new(c.worker_name(<$job>::SPEC.kind))
                .backend(c.backend::<$job>(concurrency))
                .catch_panic()
                .concurrency(concurrency)
                $(.data(c.$data.clone()))*
                .build($handler)
        })
    }};
}

/// Registers one apalis worker per job kind, plus a tick worker per schedule.
pub fn register(monitor: Monitor, ctx: &WorkerContext) -> anyhow::Result<Monitor> {
    // Each upload may hold a decoded image (up to 512 MiB at the decoder's limit) and spends
    // CPU on it: a few at a time per process, whatever the email concurrency.
    let uploads = ctx.concurrency.min(2);
    let monitor =
        job_worker!(monitor, ctx, SendEmail, send_email, ctx.concurrency, [mailer, templates, db]);
    let monitor = job_worker!(
        monitor,
        ctx,
        ProcessUpload,
        process_upload,
        uploads,
        [db, bucket, attachments]
    );
    let monitor =
        job_worker!(monitor, ctx, DeleteObjects, delete_objects, ctx.concurrency, [bucket]);
    let monitor = job_worker!(monitor, ctx, PruneSentEmails, prune_sent_emails, 1, [db]);
    let monitor = job_worker!(monitor, ctx, MarkOverdue, mark_overdue, 1, [db, task_lists]);
    let monitor = job_worker!(monitor, ctx, PurgeDeleted, purge_deleted, 1, [db, task_lists]);
    let monitor = job_worker!(monitor, ctx, DailyDigest, daily_digest, 1, [db, store]);
    let monitor = job_worker!(monitor, ctx, ExpireUploads, expire_uploads, 1, [db, attachments]);
    let monitor = schedule::<PruneSentEmails>(monitor, ctx)?;
    let monitor = schedule::<ExpireUploads>(monitor, ctx)?;
    let monitor = schedule::<MarkOverdue>(monitor, ctx)?;
    let monitor = schedule::<PurgeDeleted>(monitor, ctx)?;
    schedule::<DailyDigest>(monitor, ctx)
}

/// Registers the tick worker of a scheduled kind.
fn schedule<J: CronJob>(monitor: Monitor, ctx: &WorkerContext) -> anyhow::Result<Monitor> {
    let Some((_, schedule)) = crate::cron::schedule_of(&J::SPEC, ctx.settings())? else {
        return Ok(monitor);
    };
    let c = ctx.clone();
    Ok(monitor.register(move |_| {
        WorkerBuilder::new(c.worker_name(&format!("cron/{}", J::SPEC.kind)))
            .backend(TickSource::new(schedule.clone()))
            .data(c.store.clone())
            .build(on_tick::<J>)
    }))
}

/// Enqueues each schedule's latest missed tick, once across the fleet.
pub async fn catch_up(ctx: &WorkerContext) -> anyhow::Result<()> {
    catch_up_one::<PruneSentEmails>(ctx).await?;
    catch_up_one::<MarkOverdue>(ctx).await?;
    catch_up_one::<PurgeDeleted>(ctx).await?;
    catch_up_one::<DailyDigest>(ctx).await?;
    catch_up_one::<ExpireUploads>(ctx).await
}

async fn catch_up_one<J: CronJob>(ctx: &WorkerContext) -> anyhow::Result<()> {
    if let Some((_, schedule)) = crate::cron::schedule_of(&J::SPEC, ctx.settings())? {
        crate::cron::catch_up::<J>(&ctx.store, &schedule).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_declared_kind_has_a_handler() {
        let mut declared: Vec<_> =
            tasklane_shared::jobs::ALL.iter().map(|spec| spec.kind).collect();
        let mut registered = REGISTERED.to_vec();
        declared.sort_unstable();
        registered.sort_unstable();
        assert_eq!(declared, registered);
    }
}
