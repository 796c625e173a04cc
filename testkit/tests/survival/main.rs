//! SPEC section 9 for operations: Redis keeps what it accepted across a restart (production
//! persistence in dev and tests), a worker whose clock is ten minutes off changes nothing
//! (F8), and Postgres stopped under traffic costs 503s with `Retry-After`, never a 500, and
//! loses nothing (F4). Real processes throughout; only the fault is injected.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

mod clocks;
mod persistence;
mod postgres_down;

use tasklane_testkit::email_address as address;
use tasklane_testkit::jobs::{enqueue_committed as enqueue, notice_email as email, wait_for_state};
