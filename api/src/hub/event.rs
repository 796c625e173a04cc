//! What an event stream carries: the event types clients see and one event's shape, read
//! from the per-user Redis stream or made up by the hub itself (`resync`, `closing`).

use chrono::{DateTime, Utc};
use poem_openapi::{Enum, Object};
use tasklane_shared::events;
use tasklane_shared::outbox::receipts::REQUEST_PROGRESS;

/// Every type an event stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum EventType {
    #[oai(rename = "task.created")]
    TaskCreated,
    #[oai(rename = "task.updated")]
    TaskUpdated,
    #[oai(rename = "task.deleted")]
    TaskDeleted,
    #[oai(rename = "task.restored")]
    TaskRestored,
    #[oai(rename = "task.overdue")]
    TaskOverdue,
    #[oai(rename = "attachment.ready")]
    AttachmentReady,
    #[oai(rename = "attachment.rejected")]
    AttachmentRejected,
    /// A job one of your requests caused moved on (`GET /requests/{request_id}` has the
    /// receipt): `data` is `{request_id, job_id, kind, state}`, and for `retrying` (an
    /// attempt failed) also `{attempt, reason, retry_at}`.
    #[oai(rename = "request.progress")]
    RequestProgress,
    /// Events were missed beyond what is kept (or while the server could not tell): reload
    /// what you show, then carry on from this event's id.
    #[oai(rename = "resync")]
    Resync,
    /// The server ends the stream; `data.reason` says why (`slow_consumer`, `closing`).
    #[oai(rename = "closing")]
    Closing,
}

impl EventType {
    pub(super) fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            events::TASK_CREATED => Self::TaskCreated,
            events::TASK_UPDATED => Self::TaskUpdated,
            events::TASK_DELETED => Self::TaskDeleted,
            events::TASK_RESTORED => Self::TaskRestored,
            events::TASK_OVERDUE => Self::TaskOverdue,
            events::ATTACHMENT_READY => Self::AttachmentReady,
            events::ATTACHMENT_REJECTED => Self::AttachmentRejected,
            REQUEST_PROGRESS => Self::RequestProgress,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TaskCreated => events::TASK_CREATED,
            Self::TaskUpdated => events::TASK_UPDATED,
            Self::TaskDeleted => events::TASK_DELETED,
            Self::TaskRestored => events::TASK_RESTORED,
            Self::TaskOverdue => events::TASK_OVERDUE,
            Self::AttachmentReady => events::ATTACHMENT_READY,
            Self::AttachmentRejected => events::ATTACHMENT_REJECTED,
            Self::RequestProgress => REQUEST_PROGRESS,
            Self::Resync => "resync",
            Self::Closing => "closing",
        }
    }
}

/// One event. `id` is also the SSE `id:`; send it back as `Last-Event-ID` to resume.
///
/// `data` by type:
/// - `task.created`, `task.updated`, `task.restored`, `task.overdue`: `{task}` (the task as
///   `GET /tasks/{id}` returns it); `task.updated` adds `changes` (`{field: {from, to}}`).
/// - `task.deleted`: `{task_id}`.
/// - `attachment.ready`, `attachment.rejected`: `{task_id, attachment_id, status,
///   reject_reason}`.
/// - `resync`: `{}`. `closing`: `{reason}`.
#[derive(Debug, Clone, Object)]
#[oai(rename = "StreamEvent")]
pub struct StreamEvent {
    pub id: String,
    #[oai(rename = "type")]
    pub event_type: EventType,
    pub at: DateTime<Utc>,
    pub data: serde_json::Value,
}

/// An entry of a per-user Redis stream as `XRANGE` returns it: its id and its field/value
/// pairs (`type`, `at`, `data`).
pub(super) type StreamEntry = (String, Vec<(String, String)>);

/// A stream entry as an event.
pub(super) fn entry((id, fields): StreamEntry) -> Option<StreamEvent> {
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    Some(StreamEvent {
        id,
        event_type: EventType::parse(field("type")?)?,
        at: DateTime::parse_from_rfc3339(field("at")?).ok()?.with_timezone(&Utc),
        data: serde_json::from_str(field("data")?).ok()?,
    })
}

/// An event the hub makes up itself.
pub(super) fn notice(event_type: EventType, id: String, data: serde_json::Value) -> StreamEvent {
    StreamEvent { id, event_type, at: Utc::now(), data }
}
