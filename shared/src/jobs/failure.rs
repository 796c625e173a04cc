//! Why an attempt failed, in words the user the job runs for may see (request receipts,
//! SPEC section 13). An error's own text may quote a payload, an address or a server reply
//! that names one: it stays with the operators (logs, the job's history in Redis). A handler
//! that knows a safe summary (an SMTP reply code) wraps its error in a [`Failure`];
//! anything else is summarised by its class alone ([`safe_reason`]).

use std::error::Error;

use apalis_core::error::BoxDynError;

use super::PermanentError;

/// An error with a short reason that is safe to show the user: a status code or a class of
/// failure, never data. It displays as the error it wraps, so logs and operators see that.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct Failure {
    reason: String,
    source: BoxDynError,
}

impl Failure {
    pub fn new(reason: impl Into<String>, source: impl Into<BoxDynError>) -> Self {
        Self { reason: reason.into(), source: source.into() }
    }
}

/// The reason of a failed attempt that the user may see: the [`Failure`]'s own, or the
/// error's class.
pub fn safe_reason(error: &(dyn Error + 'static)) -> String {
    if let Some(failure) = error.downcast_ref::<Failure>() {
        return failure.reason.clone();
    }
    if error.downcast_ref::<PermanentError>().is_some() {
        return "rejected: it cannot succeed".to_owned();
    }
    "failed".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_failures_own_reason_is_shown() {
        let failure = Failure::new("the mail server answered 450", "450 <ann@example.com> busy");
        assert_eq!(failure.to_string(), "450 <ann@example.com> busy");
        assert_eq!(safe_reason(&failure), "the mail server answered 450");
        let permanent = PermanentError("recipient \"ann@example.com\" is invalid".into());
        assert_eq!(safe_reason(&permanent), "rejected: it cannot succeed");
        let other: BoxDynError = "token abc123 expired".into();
        assert_eq!(safe_reason(other.as_ref()), "failed");
    }
}
