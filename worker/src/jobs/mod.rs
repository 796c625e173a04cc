//! The handlers, and the one explicit list that registers them with the monitor.
//!
//! Each kind is declared (name, queue, attempts, backoff, timeout) in
//! `tasklane_shared::jobs`; here it gets its handler. Adding a kind means a line in each.

mod send_email;

use apalis::layers::WorkerBuilderExt;
use apalis_core::monitor::Monitor;
use apalis_core::worker::builder::WorkerBuilder;
use tasklane_shared::jobs::{self, Job, SendEmail};

use crate::app::WorkerContext;

pub use send_email::send_email;

/// Every registered kind; a test checks it covers [`jobs::ALL`].
pub const REGISTERED: &[&str] = &[SendEmail::SPEC.kind];

/// Registers one apalis worker per job kind.
pub fn register(monitor: Monitor, ctx: &WorkerContext) -> Monitor {
    debug_assert_eq!(REGISTERED.len(), jobs::ALL.len());
    let c = ctx.clone();
    monitor.register(move |_| {
        WorkerBuilder::new(c.worker_name(SendEmail::SPEC.kind))
            .backend(c.backend::<SendEmail>())
            .concurrency(c.concurrency)
            .data(c.mailer.clone())
            .data(c.db.clone())
            .build(send_email)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_declared_kind_has_a_handler() {
        let mut declared: Vec<_> = jobs::ALL.iter().map(|spec| spec.kind).collect();
        let mut registered = REGISTERED.to_vec();
        declared.sort_unstable();
        registered.sort_unstable();
        assert_eq!(declared, registered);
    }
}
