//! A task as stored and as shown, and the rules a task's fields follow.

use chrono::{DateTime, Utc};
use poem_openapi::{Enum, Object};
use uuid::Uuid;

use crate::problem::FieldError;

pub const MAX_TITLE: usize = 200;
pub const MAX_DESCRIPTION: usize = 10_000;
pub const MAX_TAGS: usize = 10;
pub const MAX_TAG: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, serde::Serialize, serde::Deserialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Todo,
    InProgress,
    Done,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Todo => "todo",
            Self::InProgress => "in_progress",
            Self::Done => "done",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Todo, Self::InProgress, Self::Done].into_iter().find(|s| s.as_str() == raw)
    }
}

/// Stored as 0-3 so sorting by priority sorts by urgency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, serde::Serialize, serde::Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum TaskPriority {
    Low,
    Normal,
    High,
    Urgent,
}

impl TaskPriority {
    pub const ALL: [Self; 4] = [Self::Low, Self::Normal, Self::High, Self::Urgent];

    pub fn rank(self) -> i16 {
        match self {
            Self::Low => 0,
            Self::Normal => 1,
            Self::High => 2,
            Self::Urgent => 3,
        }
    }

    pub fn from_rank(rank: i16) -> Self {
        Self::ALL.into_iter().find(|p| p.rank() == rank).unwrap_or(Self::Normal)
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
#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
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
    /// When the task became `done`.
    pub completed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set while the task is in the trash.
    pub deleted_at: Option<DateTime<Utc>>,
    /// Increments on every change; the `ETag` is `"<version>"`.
    pub version: i32,
}

/// A row of `tasks`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct TaskRow {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub title: String,
    pub description: Option<String>,
    pub status: String,
    pub priority: i16,
    pub tags: Vec<String>,
    pub due_at: Option<DateTime<Utc>>,
    pub overdue: bool,
    pub completed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub version: i32,
}

pub const TASK_COLUMNS: &str = "id, owner_id, title, description, status, priority, tags, due_at, overdue, \
                                completed_at, created_at, updated_at, deleted_at, version";

impl From<TaskRow> for TaskView {
    fn from(row: TaskRow) -> Self {
        Self {
            id: row.id,
            title: row.title,
            description: row.description,
            status: TaskStatus::parse(&row.status).unwrap_or(TaskStatus::Todo),
            priority: TaskPriority::from_rank(row.priority),
            tags: row.tags,
            due_at: row.due_at,
            overdue: row.overdue,
            completed_at: row.completed_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
            deleted_at: row.deleted_at,
            version: row.version,
        }
    }
}

impl TaskRow {
    /// The audit diff `{field: {from, to}}` between two versions of a task.
    pub fn diff(&self, after: &TaskRow) -> serde_json::Map<String, serde_json::Value> {
        let mut changes = serde_json::Map::new();
        let mut field = |name: &str, from: serde_json::Value, to: serde_json::Value| {
            if from != to {
                changes.insert(name.to_owned(), serde_json::json!({ "from": from, "to": to }));
            }
        };
        field("title", self.title.clone().into(), after.title.clone().into());
        field("description", self.description.clone().into(), after.description.clone().into());
        field("status", self.status.clone().into(), after.status.clone().into());
        field(
            "priority",
            TaskPriority::from_rank(self.priority).as_str().into(),
            TaskPriority::from_rank(after.priority).as_str().into(),
        );
        field("tags", self.tags.clone().into(), after.tags.clone().into());
        field("due_at", json_time(self.due_at), json_time(after.due_at));
        field("overdue", self.overdue.into(), after.overdue.into());
        field("completed_at", json_time(self.completed_at), json_time(after.completed_at));
        changes
    }

    /// The audit record of a new task: every set field from null.
    pub fn created_changes(&self) -> serde_json::Map<String, serde_json::Value> {
        let empty = TaskRow {
            title: String::new(),
            description: None,
            status: String::new(),
            priority: -1,
            tags: Vec::new(),
            due_at: None,
            overdue: false,
            completed_at: None,
            ..self.clone()
        };
        let mut changes = empty.diff(self);
        for change in changes.values_mut() {
            change["from"] = serde_json::Value::Null;
        }
        changes
    }
}

fn json_time(time: Option<DateTime<Utc>>) -> serde_json::Value {
    time.map_or(serde_json::Value::Null, |t| {
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true).into()
    })
}

/// Validates and normalises a title (trimmed, 1-200 characters).
pub fn title(prefix: &str, raw: &str, errors: &mut Vec<FieldError>) -> String {
    let title = raw.trim().to_owned();
    let len = title.chars().count();
    if len == 0 || len > MAX_TITLE {
        errors.push(FieldError::new(
            format!("{prefix}title"),
            "invalid_length",
            format!("must be 1 to {MAX_TITLE} characters"),
        ));
    }
    title
}

pub fn description(
    prefix: &str,
    raw: Option<String>,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    if raw.as_ref().is_some_and(|d| d.chars().count() > MAX_DESCRIPTION) {
        errors.push(FieldError::new(
            format!("{prefix}description"),
            "too_long",
            format!("must be at most {MAX_DESCRIPTION} characters"),
        ));
    }
    raw
}

/// Tags: at most 10, each 1-32 of `[a-z0-9_-]`; duplicates dropped, order kept.
pub fn tags(prefix: &str, raw: Vec<String>, errors: &mut Vec<FieldError>) -> Vec<String> {
    if raw.len() > MAX_TAGS {
        errors.push(FieldError::new(
            format!("{prefix}tags"),
            "too_many",
            format!("at most {MAX_TAGS} tags"),
        ));
    }
    let mut tags: Vec<String> = Vec::with_capacity(raw.len());
    for (i, tag) in raw.into_iter().enumerate() {
        let ok = (1..=MAX_TAG).contains(&tag.len())
            && tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            errors.push(FieldError::new(
                format!("{prefix}tags[{i}]"),
                "invalid_tag",
                format!("must be 1 to {MAX_TAG} characters of a-z, 0-9, _ and -"),
            ));
        } else if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_checked_one_by_one() {
        let mut errors = Vec::new();
        let tags =
            tags("", vec!["ok".into(), "Bad Tag".into(), "ok".into(), "x".repeat(33)], &mut errors);
        assert_eq!(tags, ["ok"]);
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["tags[1]", "tags[3]"]);
    }

    #[test]
    fn titles_are_trimmed_and_bounded() {
        let mut errors = Vec::new();
        assert_eq!(title("tasks[2].", "  Buy milk ", &mut errors), "Buy milk");
        title("tasks[2].", "   ", &mut errors);
        assert_eq!(errors[0].field, "tasks[2].title");
    }
}
