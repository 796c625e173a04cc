//! SPEC section 9 for operations: Redis keeps what it accepted across a restart (production
//! persistence in dev and tests). Real processes throughout; only the fault is injected.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

mod persistence;

use tasklane_shared::jobs::{EmailMessage, SendEmail};
use tasklane_testkit::unique;

fn email(to: &str) -> SendEmail {
    SendEmail {
        idempotency_key: unique("key"),
        to: to.to_owned(),
        message: EmailMessage::PasswordChanged { display_name: None },
    }
}

fn address() -> String {
    format!("{}@example.test", unique("to"))
}

