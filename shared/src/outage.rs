//! [`DependencyDown`]: how a job says the world failed rather than the job, and how an
//! error is recognised as an outage of Postgres or S3 whatever handler returned it. The
//! queue's breaker ([`crate::queue::breaker`]) holds the kind instead of counting the attempt.

/// A failure of the world, not of the job: the dependency a handler needs (`"smtp"`, `"s3"`,
/// `"postgres"`) could not be reached. Return it boxed from a handler: the attempt is handed
/// back uncounted and the kind is held until the dependency answers again (SPEC section 9;
/// `tasklane_shared::queue::breaker`).
#[derive(Debug, thiserror::Error)]
#[error("{dependency} is down: {error}")]
pub struct DependencyDown {
    pub dependency: &'static str,
    pub error: String,
}

impl DependencyDown {
    pub fn new(dependency: &'static str, error: impl std::fmt::Display) -> Self {
        Self { dependency, error: error.to_string() }
    }

    /// Postgres is down when it cannot be reached or will not take connections now (the
    /// pool timed out, the socket failed or was closed mid-handshake, as a proxy in front of
    /// a dead server does, the server is shutting down or starting up); a query it answered
    /// with an error is the job's failure.
    pub fn postgres(error: &sqlx::Error) -> Option<Self> {
        let down = match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // 08: connection exception; 57P01-03: shutting down, crashed, starting up;
                // 53300: too many connections.
                code.starts_with("08") || code.starts_with("57P") || code == "53300"
            }),
            _ => false,
        };
        down.then(|| Self::new("postgres", error))
    }

    /// The outage a handler's error reports: a [`DependencyDown`] it returned, or anywhere
    /// in its chain a Postgres error that means Postgres is down or an S3 request that could
    /// not reach the store (so every kind that uses them is held by them, whatever its
    /// handler does with the error).
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(down) = error.downcast_ref::<DependencyDown>() {
                return Some(Self::new(down.dependency, &down.error));
            }
            if let Some(down) = error.downcast_ref::<sqlx::Error>().and_then(Self::postgres) {
                return Some(down);
            }
            // The S3 client could not reach the store (refused, reset, timed out).
            if error.downcast_ref::<aws_sdk_s3::error::ConnectorError>().is_some() {
                return Some(Self::new("s3", error));
            }
            next = error.source();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_told_from_a_failure_of_the_job() {
        let timed_out: apalis_core::error::BoxDynError = Box::new(sqlx::Error::PoolTimedOut);
        let down = DependencyDown::of(timed_out.as_ref()).expect("postgres down");
        assert_eq!(down.dependency, "postgres");
        let missing: apalis_core::error::BoxDynError = Box::new(sqlx::Error::RowNotFound);
        assert!(DependencyDown::of(missing.as_ref()).is_none(), "a query's answer");
        let smtp: apalis_core::error::BoxDynError =
            Box::new(DependencyDown::new("smtp", "refused"));
        assert_eq!(DependencyDown::of(smtp.as_ref()).expect("returned").dependency, "smtp");
        let own: apalis_core::error::BoxDynError =
            Box::new(crate::jobs::PermanentError("bad input".into()));
        assert!(DependencyDown::of(own.as_ref()).is_none());
    }
}
