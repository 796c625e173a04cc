//! A task (SPEC section 5): its states, the row as stored, its JSON as clients see it, and
//! the rules of a change that the API and the worker both apply.
//!
//! The API changes tasks on request; the worker's `mark_overdue` changes them on a schedule.
//! Both render a task's event payload with [`event_data`] and its audit diff with
//! [`TaskRow::diff`], so a client sees one shape of task whoever changed it.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

pub const MAX_TITLE: usize = 200;
/// How far ahead a reminder may be set.
pub const MAX_REMINDER_DAYS: u64 = 5 * 366;
pub const MAX_DESCRIPTION: usize = 10_000;
pub const MAX_TAGS: usize = 10;
pub const MAX_TAG: usize = 32;

// Stored as text (`tasks.status`). No doc comment: it would become the schema's description.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type, serde::Serialize, serde::Deserialize,
)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Enum))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub enum TaskStatus {
    Todo,
    InProgress,
    Done,
}

impl TaskStatus {
    pub const ALL: [Self; 3] = [Self::Todo, Self::InProgress, Self::Done];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Todo => "todo",
            Self::InProgress => "in_progress",
            Self::Done => "done",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// Stored as 0-3 so sorting by priority sorts by urgency.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type, serde::Serialize, serde::Deserialize,
)]
#[repr(i16)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Enum))]
#[cfg_attr(feature = "openapi", oai(rename_all = "lowercase"))]
pub enum TaskPriority {
    Low = 0,
    Normal = 1,
    High = 2,
    Urgent = 3,
}

impl TaskPriority {
    pub const ALL: [Self; 4] = [Self::Low, Self::Normal, Self::High, Self::Urgent];

    /// The stored number (`tasks.priority`).
    pub fn rank(self) -> i16 {
        self as i16
    }

    pub fn from_rank(rank: i16) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.rank() == rank)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
            Self::Urgent => "urgent",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == raw)
    }
}

/// A task.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
pub struct TaskView {
    pub id: Uuid,
    pub title: String,
    pub description: Option<String>,
    pub status: TaskStatus,
    pub priority: TaskPriority,
    pub tags: Vec<String>,
    pub due_at: Option<DateTime<Utc>>,
    /// Set by the `mark_overdue` job once `due_at` has passed on an open task.
    pub overdue: bool,
    /// When to email the owner a reminder of the task (one email, within seconds of it);
    /// none is sent once the task is done or deleted.
    pub remind_at: Option<DateTime<Utc>>,
    /// When the task became `done`.
    pub completed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set while the task is in the trash.
    pub deleted_at: Option<DateTime<Utc>>,
    /// Increments on every change; the `ETag` is `"<version>"`.
    pub version: i32,
}

/// A row of `tasks` (all but the generated `search` column).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TaskRow {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub title: String,
    pub description: Option<String>,
    pub status: TaskStatus,
    pub priority: TaskPriority,
    pub tags: Vec<String>,
    pub due_at: Option<DateTime<Utc>>,
    pub overdue: bool,
    pub remind_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub version: i32,
}

/// The columns of a [`TaskRow`], for statements built at run time (the list's filters).
pub const TASK_COLUMNS: &str = "id, owner_id, title, description, status, priority, tags, due_at, overdue, \
                                remind_at, completed_at, created_at, updated_at, deleted_at, version";

impl From<&TaskRow> for TaskView {
    fn from(row: &TaskRow) -> Self {
        Self {
            id: row.id,
            title: row.title.clone(),
            description: row.description.clone(),
            status: row.status,
            priority: row.priority,
            tags: row.tags.clone(),
            due_at: row.due_at,
            overdue: row.overdue,
            remind_at: row.remind_at,
            completed_at: row.completed_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
            deleted_at: row.deleted_at,
            version: row.version,
        }
    }
}

impl From<TaskRow> for TaskView {
    fn from(row: TaskRow) -> Self {
        Self {
            id: row.id,
            title: row.title,
            description: row.description,
            status: row.status,
            priority: row.priority,
            tags: row.tags,
            due_at: row.due_at,
            overdue: row.overdue,
            remind_at: row.remind_at,
            completed_at: row.completed_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
            deleted_at: row.deleted_at,
            version: row.version,
        }
    }
}

/// What a new task is made of, once its fields are valid.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub owner_id: Uuid,
    pub title: String,
    pub description: Option<String>,
    pub status: TaskStatus,
    pub priority: TaskPriority,
    pub tags: Vec<String>,
    pub due_at: Option<DateTime<Utc>>,
    pub remind_at: Option<DateTime<Utc>>,
}

impl TaskRow {
    /// A new task as it will be stored, created `now` (a `done` task is completed then).
    pub fn new(task: NewTask, now: DateTime<Utc>) -> Self {
        Self {
            id: Uuid::now_v7(),
            owner_id: task.owner_id,
            title: task.title,
            description: task.description,
            status: task.status,
            priority: task.priority,
            tags: task.tags,
            due_at: task.due_at,
            overdue: false,
            remind_at: task.remind_at,
            completed_at: (task.status == TaskStatus::Done).then_some(now),
            created_at: now,
            updated_at: now,
            deleted_at: None,
            version: 1,
        }
    }

    /// The fields a change derives from the ones the user set, against the task `before`:
    /// a change of status stamps `completed_at` (set on `done`, cleared otherwise), and a due
    /// time moved away, into the future or to none, clears `overdue`.
    pub fn settle(&mut self, before: &TaskRow, now: DateTime<Utc>) {
        if self.status != before.status {
            self.completed_at = (self.status == TaskStatus::Done).then_some(now);
        }
        if self.due_at != before.due_at && self.due_at.is_none_or(|due| due > now) {
            self.overdue = false;
        }
    }

    /// The audit diff `{field: {from, to}}` between two versions of a task.
    pub fn diff(&self, after: &TaskRow) -> Map<String, Value> {
        let mut changes = Map::new();
        field(&mut changes, "title", self.title.clone().into(), after.title.clone().into());
        field(
            &mut changes,
            "description",
            self.description.clone().into(),
            after.description.clone().into(),
        );
        field(&mut changes, "status", self.status.as_str().into(), after.status.as_str().into());
        field(
            &mut changes,
            "priority",
            self.priority.as_str().into(),
            after.priority.as_str().into(),
        );
        field(&mut changes, "tags", self.tags.clone().into(), after.tags.clone().into());
        field(&mut changes, "due_at", json_time(self.due_at), json_time(after.due_at));
        field(&mut changes, "overdue", self.overdue.into(), after.overdue.into());
        field(&mut changes, "remind_at", json_time(self.remind_at), json_time(after.remind_at));
        field(
            &mut changes,
            "completed_at",
            json_time(self.completed_at),
            json_time(after.completed_at),
        );
        changes
    }

    /// The audit record of a new task: every set field, from null. As recorded since the
    /// first release, `priority` is left out when it is the default (`normal`).
    pub fn created_changes(&self) -> Map<String, Value> {
        let mut changes = Map::new();
        field(&mut changes, "title", Value::Null, self.title.clone().into());
        if self.description.is_some() {
            field(&mut changes, "description", Value::Null, self.description.clone().into());
        }
        field(&mut changes, "status", Value::Null, self.status.as_str().into());
        if self.priority != TaskPriority::Normal {
            field(&mut changes, "priority", Value::Null, self.priority.as_str().into());
        }
        if !self.tags.is_empty() {
            field(&mut changes, "tags", Value::Null, self.tags.clone().into());
        }
        if self.due_at.is_some() {
            field(&mut changes, "due_at", Value::Null, json_time(self.due_at));
        }
        if self.overdue {
            field(&mut changes, "overdue", Value::Null, true.into());
        }
        if self.remind_at.is_some() {
            field(&mut changes, "remind_at", Value::Null, json_time(self.remind_at));
        }
        if self.completed_at.is_some() {
            field(&mut changes, "completed_at", Value::Null, json_time(self.completed_at));
        }
        changes
    }
}

/// The audit record of `mark_overdue`: the one field it changes.
pub fn overdue_changes() -> Map<String, Value> {
    let mut changes = Map::new();
    field(&mut changes, "overdue", false.into(), true.into());
    changes
}

fn field(changes: &mut Map<String, Value>, name: &str, from: Value, to: Value) {
    if from != to {
        changes.insert(name.to_owned(), serde_json::json!({ "from": from, "to": to }));
    }
}

fn json_time(time: Option<DateTime<Utc>>) -> Value {
    time.map_or(Value::Null, |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true).into())
}

/// The `data` of a task's event (`task.created`, `.updated`, `.restored`, `.overdue`): the
/// task as clients see it, and for an update the audit diff.
pub fn event_data(task: &TaskRow, changes: Option<&Map<String, Value>>) -> Value {
    let mut data = serde_json::json!({ "task": TaskView::from(task) });
    if let Some(changes) = changes {
        data["changes"] = Value::Object(changes.clone());
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> TaskRow {
        TaskRow::new(
            NewTask {
                owner_id: Uuid::now_v7(),
                title: "a".into(),
                description: None,
                status: TaskStatus::Todo,
                priority: TaskPriority::Normal,
                tags: vec![],
                due_at: None,
                remind_at: None,
            },
            Utc::now(),
        )
    }

    #[test]
    fn created_changes_list_every_set_field_from_null() {
        let mut task = row();
        task.tags = vec!["x".into()];
        task.priority = TaskPriority::High;
        let changes = task.created_changes();
        let mut fields: Vec<&str> = changes.keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["priority", "status", "tags", "title"]);
        assert_eq!(changes["priority"], serde_json::json!({ "from": null, "to": "high" }));
    }

    #[test]
    fn done_stamps_completion_and_a_later_due_time_clears_overdue() {
        let before = TaskRow { overdue: true, due_at: Some(Utc::now()), ..row() };
        let now = Utc::now();
        let mut after = TaskRow {
            status: TaskStatus::Done,
            due_at: Some(now + chrono::Days::new(1)),
            ..before.clone()
        };
        after.settle(&before, now);
        assert_eq!(after.completed_at, Some(now));
        assert!(!after.overdue);
        assert_eq!(before.diff(&after)["status"]["to"], "done");
    }

    #[test]
    fn priorities_keep_their_ranks() {
        let ranks: Vec<i16> = TaskPriority::ALL.iter().map(|p| p.rank()).collect();
        assert_eq!(ranks, [0, 1, 2, 3]);
        assert_eq!(TaskPriority::from_rank(3), Some(TaskPriority::Urgent));
    }
}
