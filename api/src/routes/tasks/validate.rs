//! The checks of what a client sends to `/tasks`, each failure a [`FieldError`] naming the
//! field: a new task, a patch, and the list's parameters. The rules a valid change then
//! follows are the domain's ([`TaskRow::new`], [`TaskRow::settle`]).

use chrono::{DateTime, SubsecRound, Utc};
use poem_openapi::types::MaybeUndefined;
use tasklane_shared::domain::tasks::{
    MAX_DESCRIPTION, MAX_REMINDER_DAYS, MAX_TAG, MAX_TAGS, MAX_TITLE, NewTask, TaskPriority,
    TaskRow, TaskStatus,
};
use uuid::Uuid;

use super::types::{CreateTaskRequest, UpdateTaskRequest};
use crate::problem::FieldError;
use crate::services::tasks::list::{self, Cursor, Filters, SortKey};

/// Validates a creation; `prefix` names the item in a bulk (`tasks[3].`).
pub fn new_row(
    prefix: &str,
    owner: Uuid,
    req: CreateTaskRequest,
    errors: &mut Vec<FieldError>,
) -> TaskRow {
    let task = NewTask {
        owner_id: owner,
        title: title(prefix, &req.title, errors),
        description: description(prefix, req.description, errors),
        status: req.status.unwrap_or(TaskStatus::Todo),
        priority: req.priority.unwrap_or(TaskPriority::Normal),
        tags: tags(prefix, req.tags.unwrap_or_default(), errors),
        due_at: req.due_at,
        remind_at: req.remind_at.and_then(|at| remind_at(prefix, at, errors)),
    };
    // At the database's precision, so the response and the event show what is stored.
    TaskRow::new(task, Utc::now().trunc_subsecs(6))
}

/// Checks a JSON merge patch on its own, before the task is read or its version compared
/// (a bad body is 422 whatever `If-Match` says); the patch comes back normalised (title
/// trimmed, tags deduplicated) for [`patched`].
pub fn patch(patch: UpdateTaskRequest, errors: &mut Vec<FieldError>) -> UpdateTaskRequest {
    let cannot_be_null = |field: &str| FieldError::new(field, "required", "cannot be null");
    let title = match patch.title {
        MaybeUndefined::Value(raw) => MaybeUndefined::Value(title("", &raw, errors)),
        MaybeUndefined::Null => {
            errors.push(cannot_be_null("title"));
            MaybeUndefined::Undefined
        }
        MaybeUndefined::Undefined => MaybeUndefined::Undefined,
    };
    let description = match patch.description {
        MaybeUndefined::Value(d) => {
            MaybeUndefined::from_opt_undefined(description("", Some(d), errors))
        }
        other => other,
    };
    if patch.status.is_null() {
        errors.push(cannot_be_null("status"));
    }
    if patch.priority.is_null() {
        errors.push(cannot_be_null("priority"));
    }
    let tags = match patch.tags {
        MaybeUndefined::Value(raw) => MaybeUndefined::Value(tags("", raw, errors)),
        other => other,
    };
    let remind_at = match patch.remind_at {
        MaybeUndefined::Value(at) => {
            remind_at("", at, errors).map_or(MaybeUndefined::Undefined, MaybeUndefined::Value)
        }
        other => other,
    };
    UpdateTaskRequest { title, description, tags, remind_at, ..patch }
}

/// The task `before` with a patch checked by [`patch`] applied: absent fields stay, `null`
/// clears the nullable ones, and the derived fields follow ([`TaskRow::settle`]).
pub fn patched(before: &TaskRow, patch: UpdateTaskRequest) -> TaskRow {
    let mut after = before.clone();
    if let MaybeUndefined::Value(title) = patch.title {
        after.title = title;
    }
    match patch.description {
        MaybeUndefined::Value(d) => after.description = Some(d),
        MaybeUndefined::Null => after.description = None,
        MaybeUndefined::Undefined => {}
    }
    if let MaybeUndefined::Value(status) = patch.status {
        after.status = status;
    }
    if let MaybeUndefined::Value(priority) = patch.priority {
        after.priority = priority;
    }
    match patch.tags {
        MaybeUndefined::Value(tags) => after.tags = tags,
        MaybeUndefined::Null => after.tags = Vec::new(),
        MaybeUndefined::Undefined => {}
    }
    match patch.due_at {
        MaybeUndefined::Value(due) => after.due_at = Some(due),
        MaybeUndefined::Null => after.due_at = None,
        MaybeUndefined::Undefined => {}
    }
    match patch.remind_at {
        MaybeUndefined::Value(at) => after.remind_at = Some(at),
        MaybeUndefined::Null => after.remind_at = None,
        MaybeUndefined::Undefined => {}
    }
    after.settle(before, Utc::now());
    after
}

/// Validates a reminder's time (in the future, within [`MAX_REMINDER_DAYS`]), at the
/// database's precision so the job that sends it finds it equal to the stored one.
pub fn remind_at(
    prefix: &str,
    at: DateTime<Utc>,
    errors: &mut Vec<FieldError>,
) -> Option<DateTime<Utc>> {
    let now = Utc::now();
    if at <= now || at > now + chrono::Days::new(MAX_REMINDER_DAYS) {
        errors.push(FieldError::new(
            format!("{prefix}remind_at"),
            "out_of_range",
            format!("must be in the future, within {MAX_REMINDER_DAYS} days"),
        ));
        return None;
    }
    Some(at.trunc_subsecs(6))
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

/// The query parameters of `GET /tasks`, as received.
#[derive(Default)]
pub struct ListParams {
    pub status: Option<String>,
    pub priority: Option<String>,
    pub tag: Option<String>,
    pub q: Option<String>,
    pub due_before: Option<DateTime<Utc>>,
    pub due_after: Option<DateTime<Utc>>,
    pub overdue: Option<bool>,
    pub deleted: Option<bool>,
    pub sort: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    pub page: Option<u32>,
}

/// What a list asks for, once every parameter is valid.
pub struct ListRequest {
    pub filters: Filters,
    pub keys: Vec<SortKey>,
    pub limit: u32,
    /// The raw cursor (part of the cache key) and its position.
    pub cursor: Option<String>,
    pub after: Option<Cursor>,
    pub page: Option<u32>,
}

impl ListRequest {
    /// The canonical text of the request, for the cache key.
    pub fn normalized(&self) -> String {
        format!(
            "{:?}|{}|{}|{:?}|{:?}",
            self.filters,
            list::sort_signature(&self.keys),
            self.limit,
            self.cursor,
            self.page
        )
    }
}

/// Every parameter checked; all the errors at once.
pub fn list_request(params: ListParams) -> Result<ListRequest, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut filters = Filters {
        tag: params.tag.filter(|t| !t.is_empty()),
        q: params.q.map(|q| q.trim().to_owned()).filter(|q| !q.is_empty()),
        due_before: params.due_before,
        due_after: params.due_after,
        overdue: params.overdue,
        deleted: params.deleted.unwrap_or(false),
        ..Filters::default()
    };
    for raw in comma_list(params.status.as_deref()) {
        match TaskStatus::parse(raw) {
            Some(s) => filters.statuses.push(s),
            None => errors.push(FieldError::new(
                "status",
                "invalid",
                format!("{raw:?} is not todo, in_progress or done"),
            )),
        }
    }
    for raw in comma_list(params.priority.as_deref()) {
        match TaskPriority::parse(raw) {
            Some(p) => filters.priorities.push(p),
            None => errors.push(FieldError::new(
                "priority",
                "invalid",
                format!("{raw:?} is not low, normal, high or urgent"),
            )),
        }
    }
    let keys = match list::parse_sort(params.sort.as_deref()) {
        Ok(keys) => keys,
        Err(error) => {
            errors.push(error);
            Vec::new()
        }
    };
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        errors.push(FieldError::new("limit", "out_of_range", "must be between 1 and 100"));
    }
    if params.cursor.is_some() && params.page.is_some() {
        errors.push(FieldError::new("page", "conflict", "use either cursor or page, not both"));
    }
    if params.page == Some(0) {
        errors.push(FieldError::new("page", "out_of_range", "pages start at 1"));
    }
    let after = match params.cursor.as_deref() {
        Some(raw) if !keys.is_empty() => match Cursor::parse(raw, &keys) {
            Ok(c) => Some(c),
            Err(error) => {
                errors.push(error);
                None
            }
        },
        _ => None,
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ListRequest { filters, keys, limit, cursor: params.cursor, after, page: params.page })
}

fn comma_list(raw: Option<&str>) -> impl Iterator<Item = &str> {
    raw.into_iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty())
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
