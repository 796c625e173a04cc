//! A job's record as `ready.lua` keeps it in its shard's `jobs` hash, read back in Rust (by
//! operators' reads and the reconciler): `<id>|job` holds what never changes once pushed, one
//! line each with the payload last; `<id>|run` what each step changes, space-separated with
//! the worker last; history, last error and turn in fields of their own.

/// The field of a job's `name` (`job`, `run`, `history`, `last_error`, `turn`) in its
/// shard's `jobs` hash.
pub fn job_field(id: &str, name: &str) -> String {
    format!("{id}|{name}")
}

/// What a job was pushed with (`<id>|job`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pushed<'a> {
    pub kind: &'a str,
    pub max_attempts: u32,
    pub created_ms: i64,
    pub request_id: &'a str,
    pub traceparent: &'a str,
    pub payload: &'a str,
}

impl<'a> Pushed<'a> {
    pub fn parse(text: &'a str) -> Option<Self> {
        let mut lines = text.splitn(7, '\n');
        let kind = lines.next()?;
        let max_attempts = lines.next()?.parse().ok()?;
        let created_ms = lines.next()?.parse().ok()?;
        let request_id = lines.next()?;
        let traceparent = lines.next()?;
        let _owner = lines.next()?;
        Some(Self {
            kind,
            max_attempts,
            created_ms,
            request_id,
            traceparent,
            payload: lines.next()?,
        })
    }
}

/// Where a job is in its life (`<id>|run`); zero for a time not set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Run<'a> {
    pub state: &'a str,
    pub attempts: u32,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub duration_ms: i64,
    pub worker: &'a str,
}

impl<'a> Run<'a> {
    pub fn parse(text: &'a str) -> Option<Self> {
        let mut parts = text.splitn(9, ' ');
        let state = parts.next()?;
        let attempts = parts.next()?.parse().ok()?;
        let _claims = parts.next()?;
        let started_ms = parts.next()?.parse().ok()?;
        let _due_ms = parts.next()?;
        let finished_ms = parts.next()?.parse().ok()?;
        let duration_ms = parts.next()?.parse().ok()?;
        let _kind = parts.next()?;
        Some(Self { state, attempts, started_ms, finished_ms, duration_ms, worker: parts.next()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_with_a_payload_of_several_lines_and_no_worker() {
        let pushed = Pushed::parse("send_email\n8\n1700\n\n00-ab-cd-01\n\n{\"a\":\n1}").unwrap();
        assert_eq!((pushed.kind, pushed.max_attempts, pushed.created_ms), ("send_email", 8, 1700));
        assert_eq!((pushed.request_id, pushed.payload), ("", "{\"a\":\n1}"));
        let run = Run::parse("pending 0 0 0 0 0 0 send_email ").unwrap();
        assert_eq!((run.state, run.attempts, run.worker), ("pending", 0, ""));
        let run = Run::parse("done 2 3 10 0 20 5 send_email host-1-ab").unwrap();
        assert_eq!((run.finished_ms, run.duration_ms, run.worker), (20, 5, "host-1-ab"));
        assert!(Run::parse("done 2").is_none());
    }
}
