//! The handlers, and the one explicit list that registers them with the monitor.
//!
//! Each kind is declared (name, queue, attempts, backoff, timeout, schedule) in
//! `tasklane_shared::jobs`; here it gets its handler. Adding a kind means a line in each.

mod prune_sent_emails;
mod send_email;

use apalis::layers::WorkerBuilderExt;
use apalis_core::monitor::Monitor;
use apalis_core::worker::builder::WorkerBuilder;
use tasklane_shared::jobs::{CronJob, Job, PruneSentEmails, SendEmail};

use crate::app::WorkerContext;
use crate::cron::{TickSource, on_tick};

pub use prune_sent_emails::prune_sent_emails;
pub use send_email::send_email;

/// Every registered kind; a test checks it covers `tasklane_shared::jobs::ALL`.
pub const REGISTERED: &[&str] = &[SendEmail::SPEC.kind, PruneSentEmails::SPEC.kind];

/// Registers one apalis worker per job kind, plus a tick worker per schedule.
pub fn register(monitor: Monitor, ctx: &WorkerContext) -> anyhow::Result<Monitor> {
    let c = ctx.clone();
    let monitor = monitor.register(move |_| {
        WorkerBuilder::new(c.worker_name(SendEmail::SPEC.kind))
            .backend(c.backend::<SendEmail>(c.concurrency))
            .catch_panic()
            .concurrency(c.concurrency)
            .data(c.mailer.clone())
            .data(c.templates.clone())
            .data(c.db.clone())
            .build(send_email)
    });
    let c = ctx.clone();
    let monitor = monitor.register(move |_| {
        WorkerBuilder::new(c.worker_name(PruneSentEmails::SPEC.kind))
            .backend(c.backend::<PruneSentEmails>(1))
            .catch_panic()
            .concurrency(1)
            .data(c.db.clone())
            .build(prune_sent_emails)
    });
    schedule::<PruneSentEmails>(monitor, ctx)
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
    if let Some((_, schedule)) = crate::cron::schedule_of(&PruneSentEmails::SPEC, ctx.settings())? {
        crate::cron::catch_up::<PruneSentEmails>(&ctx.store, &schedule).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_declared_kind_has_a_handler() {
        let mut declared: Vec<_> = tasklane_shared::jobs::ALL.iter().map(|spec| spec.kind).collect();
        let mut registered = REGISTERED.to_vec();
        declared.sort_unstable();
        registered.sort_unstable();
        assert_eq!(declared, registered);
    }
}
