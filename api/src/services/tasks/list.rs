//! The task list (`GET /tasks`): filters, whitelisted multi-column sorts, keyset cursors
//! and page mode, built with `QueryBuilder` (the one dynamic statement of tasks: its SQL
//! text is only ever made of the fixed fragments below, every value is a bind).
//!
//! A cursor is the last row's sort values plus its id, with the sort it was made for
//! (a cursor from another sort is refused, not misread). The next page is everything
//! strictly after that position in the sort order, tie-broken by id, so rows inserted or
//! updated between pages never make a row appear twice or be skipped because of an offset.
//! `due_at` sorts as `coalesce(due_at, 'infinity')`: no NULL ever reaches a comparison.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Datelike, Utc};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use tasklane_shared::domain::tasks::{TASK_COLUMNS, TaskPriority, TaskRow, TaskStatus};

use crate::problem::FieldError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    CreatedAt,
    UpdatedAt,
    DueAt,
    Priority,
    Title,
}

impl SortField {
    fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "created_at" => Self::CreatedAt,
            "updated_at" => Self::UpdatedAt,
            "due_at" => Self::DueAt,
            "priority" => Self::Priority,
            "title" => Self::Title,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::CreatedAt => "created_at",
            Self::UpdatedAt => "updated_at",
            Self::DueAt => "due_at",
            Self::Priority => "priority",
            Self::Title => "title",
        }
    }

    /// The SQL expression sorted on (matching the indexes of the tasks migration).
    fn expr(self) -> &'static str {
        match self {
            Self::DueAt => "coalesce(due_at, 'infinity'::timestamptz)",
            other => other.name(),
        }
    }

    fn cast(self) -> &'static str {
        match self {
            Self::CreatedAt | Self::UpdatedAt | Self::DueAt => "timestamptz",
            Self::Priority => "smallint",
            Self::Title => "text",
        }
    }

    /// The row's value of this key, as text Postgres casts back exactly.
    fn value(self, row: &TaskRow) -> String {
        let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        match self {
            Self::CreatedAt => time(row.created_at),
            Self::UpdatedAt => time(row.updated_at),
            Self::DueAt => row.due_at.map_or_else(|| "infinity".to_owned(), time),
            Self::Priority => row.priority.rank().to_string(),
            Self::Title => row.title.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    pub field: SortField,
    pub descending: bool,
}

/// `sort=-priority,due_at`: at most 5 keys, each once; default newest first.
pub fn parse_sort(raw: Option<&str>) -> Result<Vec<SortKey>, FieldError> {
    let raw = raw.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("-created_at");
    let mut keys: Vec<SortKey> = Vec::new();
    for part in raw.split(',').map(str::trim) {
        let (descending, name) = match part.strip_prefix('-') {
            Some(name) => (true, name),
            None => (false, part),
        };
        let field = SortField::parse(name).ok_or_else(|| {
            FieldError::new("sort", "unknown_field", format!("{name:?} is not sortable; use created_at, updated_at, due_at, priority or title, optionally with -"))
        })?;
        if keys.iter().any(|k| k.field == field) {
            return Err(FieldError::new("sort", "duplicate", format!("{name} appears twice")));
        }
        keys.push(SortKey { field, descending });
    }
    Ok(keys)
}

/// The canonical text of a sort (what a cursor is bound to).
pub fn sort_signature(keys: &[SortKey]) -> String {
    keys.iter()
        .map(|k| format!("{}{}", if k.descending { "-" } else { "" }, k.field.name()))
        .collect::<Vec<_>>()
        .join(",")
}

/// An opaque position in a sorted list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// The sort it belongs to.
    s: String,
    /// The sort values of the last row seen, then its id.
    v: Vec<String>,
    id: Uuid,
}

impl Cursor {
    pub fn after(row: &TaskRow, keys: &[SortKey]) -> String {
        let cursor = Cursor {
            s: sort_signature(keys),
            v: keys.iter().map(|k| k.field.value(row)).collect(),
            id: row.id,
        };
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&cursor).unwrap_or_default())
    }

    pub fn parse(raw: &str, keys: &[SortKey]) -> Result<Self, FieldError> {
        let invalid = || {
            FieldError::new(
                "cursor",
                "invalid",
                "is not a cursor of this list (cursors are bound to their sort)",
            )
        };
        let cursor: Cursor = URL_SAFE_NO_PAD
            .decode(raw)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(invalid)?;
        if cursor.s != sort_signature(keys) || cursor.v.len() != keys.len() {
            return Err(invalid());
        }
        // Values go to SQL as typed binds: check each parses as its key's type (a crafted
        // cursor is a 422, never a database error).
        for (key, value) in keys.iter().zip(&cursor.v) {
            let ok = match key.field {
                SortField::CreatedAt | SortField::UpdatedAt => {
                    DateTime::parse_from_rfc3339(value).is_ok_and(|t| t.year() < 10_000)
                }
                SortField::DueAt => {
                    value == "infinity"
                        || DateTime::parse_from_rfc3339(value).is_ok_and(|t| t.year() < 10_000)
                }
                SortField::Priority => value.parse::<i16>().is_ok_and(|p| (0..=3).contains(&p)),
                SortField::Title => true,
            };
            if !ok {
                return Err(invalid());
            }
        }
        Ok(cursor)
    }
}

/// What a list request asks for, parsed and validated.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub statuses: Vec<TaskStatus>,
    pub priorities: Vec<TaskPriority>,
    pub tag: Option<String>,
    pub q: Option<String>,
    pub due_before: Option<DateTime<Utc>>,
    pub due_after: Option<DateTime<Utc>>,
    pub overdue: Option<bool>,
    pub deleted: bool,
}

impl Filters {
    fn push(&self, query: &mut QueryBuilder<Postgres>, owner: Uuid) {
        query.push(" where owner_id = ").push_bind(owner);
        query.push(if self.deleted {
            " and deleted_at is not null"
        } else {
            " and deleted_at is null"
        });
        if !self.statuses.is_empty() {
            let statuses: Vec<&str> = self.statuses.iter().map(|s| s.as_str()).collect();
            query.push(" and status = any(").push_bind(statuses).push(")");
        }
        if !self.priorities.is_empty() {
            query.push(" and priority = any(").push_bind(self.priorities.clone()).push(")");
        }
        if let Some(tag) = &self.tag {
            query.push(" and tags @> array[").push_bind(tag.clone()).push("]::text[]");
        }
        if let Some(q) = &self.q {
            query
                .push(" and search @@ websearch_to_tsquery('english', ")
                .push_bind(q.clone())
                .push(")");
        }
        if let Some(before) = self.due_before {
            query.push(" and due_at < ").push_bind(before);
        }
        if let Some(after) = self.due_after {
            query.push(" and due_at > ").push_bind(after);
        }
        if let Some(overdue) = self.overdue {
            query.push(" and overdue = ").push_bind(overdue);
        }
    }
}

/// One page of rows and, when there are more, the cursor of the next.
pub async fn page(
    db: &sqlx::PgPool,
    owner: Uuid,
    filters: &Filters,
    keys: &[SortKey],
    limit: u32,
    cursor: Option<&Cursor>,
    page: Option<u32>,
) -> Result<(Vec<TaskRow>, Option<String>, Option<i64>), sqlx::Error> {
    let mut query = QueryBuilder::new("select ");
    query.push(TASK_COLUMNS).push(" from tasks");
    filters.push(&mut query, owner);
    if let Some(cursor) = cursor {
        push_keyset(&mut query, keys, cursor);
    }
    query.push(" order by ");
    for key in keys {
        query.push(key.field.expr()).push(if key.descending { " desc, " } else { " asc, " });
    }
    let id_desc = keys.last().is_some_and(|k| k.descending);
    query.push(if id_desc { "id desc" } else { "id asc" });
    query.push(" limit ").push_bind(i64::from(limit) + 1);
    if let Some(page) = page {
        query.push(" offset ").push_bind((i64::from(page) - 1) * i64::from(limit));
    }
    let mut rows: Vec<TaskRow> = query.build_query_as().fetch_all(db).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = match (more, page, rows.last()) {
        (true, None, Some(last)) => Some(Cursor::after(last, keys)),
        _ => None,
    };
    let total = match page {
        Some(_) => {
            let mut count = QueryBuilder::new("select count(*) from tasks");
            filters.push(&mut count, owner);
            Some(count.build_query_scalar::<i64>().fetch_one(db).await?)
        }
        None => None,
    };
    Ok((rows, next, total))
}

/// Strictly after the cursor in the list's order. When every key sorts the same way this is
/// the row comparison `(k1, k2, id) > (v1, v2, id0)` (`<` descending), which Postgres turns
/// into an index condition; with mixed directions it is
/// `(k1 > v1) or (k1 = v1 and k2 < v2) or … or (k1 = v1 and … and id > id0)`.
fn push_keyset(query: &mut QueryBuilder<Postgres>, keys: &[SortKey], cursor: &Cursor) {
    let id_desc = keys.last().is_some_and(|k| k.descending);
    if keys.iter().all(|k| k.descending == id_desc) {
        query.push(" and (");
        for key in keys {
            query.push(key.field.expr()).push(", ");
        }
        query.push(if id_desc { "id) < (" } else { "id) > (" });
        for (key, value) in keys.iter().zip(&cursor.v) {
            query.push_bind(value.clone()).push("::").push(key.field.cast()).push(", ");
        }
        query.push_bind(cursor.id).push(")");
        return;
    }
    query.push(" and (");
    for i in 0..=keys.len() {
        if i > 0 {
            query.push(" or ");
        }
        query.push("(");
        for (j, key) in keys.iter().enumerate().take(i) {
            query
                .push(key.field.expr())
                .push(" = ")
                .push_bind(cursor.v[j].clone())
                .push("::")
                .push(key.field.cast());
            query.push(" and ");
        }
        match keys.get(i) {
            Some(key) => {
                let op = if key.descending { " < " } else { " > " };
                query
                    .push(key.field.expr())
                    .push(op)
                    .push_bind(cursor.v[i].clone())
                    .push("::")
                    .push(key.field.cast());
            }
            None => {
                query.push(if id_desc { "id < " } else { "id > " }).push_bind(cursor.id);
            }
        }
        query.push(")");
    }
    query.push(")");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_are_whitelisted_and_unique() {
        assert_eq!(sort_signature(&parse_sort(None).unwrap()), "-created_at");
        assert_eq!(
            sort_signature(&parse_sort(Some("-priority, due_at")).unwrap()),
            "-priority,due_at"
        );
        assert_eq!(parse_sort(Some("owner_id")).unwrap_err().code, "unknown_field");
        assert_eq!(parse_sort(Some("title,-title")).unwrap_err().code, "duplicate");
    }

    #[test]
    fn a_cursor_is_bound_to_its_sort() {
        let keys = parse_sort(Some("title")).unwrap();
        let row = TaskRow {
            id: Uuid::now_v7(),
            owner_id: Uuid::now_v7(),
            title: "a".into(),
            description: None,
            status: TaskStatus::Todo,
            priority: TaskPriority::Normal,
            tags: vec![],
            due_at: None,
            overdue: false,
            remind_at: None,
            completed_at: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            deleted_at: None,
            version: 1,
        };
        let cursor = Cursor::after(&row, &keys);
        assert!(Cursor::parse(&cursor, &keys).is_ok());
        assert!(Cursor::parse(&cursor, &parse_sort(Some("-title")).unwrap()).is_err());
        assert!(Cursor::parse("garbage", &keys).is_err());
        let forged = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(
                &serde_json::json!({ "s": "-created_at", "v": ["x"], "id": row.id }),
            )
            .unwrap(),
        );
        assert!(
            Cursor::parse(&forged, &parse_sort(None).unwrap()).is_err(),
            "values are type-checked"
        );
    }
}
