//! The states of a job in the Redis queue, named once for the store, the worker's gauges and
//! the admin API (which documents them when the `openapi` feature is on).
//!
//! A job is `pending` (waiting in its kind's list), `running` (claimed, under a lease),
//! `scheduled` (waiting out a retry backoff, or a delayed job not yet due), `done` (finished,
//! kept for inspection), `dead` (out of attempts, kept for inspection and a manual retry) or
//! `cancelled` (stopped by an operator). Each state but `pending` is also the name of the
//! queue's sorted set that indexes it.

use std::fmt;
use std::str::FromStr;

// No doc comment on the type or its variants: poem-openapi would copy it into the schema,
// and the API's document predates this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Enum))]
#[cfg_attr(feature = "openapi", oai(rename_all = "lowercase"))]
pub enum JobState {
    Pending,
    Running,
    Scheduled,
    Done,
    Dead,
    Cancelled,
}

impl JobState {
    /// Every state, in the order a job moves through them.
    pub const ALL: [JobState; 6] = [
        JobState::Pending,
        JobState::Running,
        JobState::Scheduled,
        JobState::Done,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// The name the store writes in a job's `state` field (and of the state's index).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Scheduled => "scheduled",
            JobState::Done => "done",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `state` field the store did not write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a job state: {0:?}")]
pub struct UnknownJobState(pub String);

impl FromStr for JobState {
    type Err = UnknownJobState;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == raw)
            .ok_or_else(|| UnknownJobState(raw.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_from_its_name() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        }
        assert!("finished".parse::<JobState>().is_err());
    }
}
