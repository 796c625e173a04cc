//! The admin audit log (SPEC section 10, `GET /admin/audit`): every admin write records who
//! did what to what, and when. A write to Postgres records it in the same transaction; a
//! write to Redis (cancel, bulk retry) records it once Redis has applied it, with what it
//! changed.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// One audited write.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: i64,
    pub actor: Uuid,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
    pub at: DateTime<Utc>,
}

/// Records a write by `actor`: `action` (e.g. `queue.pause`) on `target` (e.g.
/// `queue:emails`), with what it was given and changed in `detail`.
pub async fn record(
    conn: &mut PgConnection,
    actor: Uuid,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into admin_audit (actor, action, target, detail) values ($1, $2, $3, $4)",
        actor,
        action,
        target,
        detail,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Which entries to list; every field narrows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub actor: Option<Uuid>,
    /// An action, or an action's prefix ending in `.` (`queue.` for every queue action).
    pub action: Option<String>,
    pub target: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// Up to `limit` entries, newest first, older than the entry `before` (the cursor).
pub async fn list(
    db: &PgPool,
    filter: &Filter,
    before: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<Entry>> {
    let (action, prefix) = match filter.action.as_deref() {
        Some(action) if action.ends_with('.') => (None, Some(format!("{action}%"))),
        Some(action) => (Some(action.to_owned()), None),
        None => (None, None),
    };
    sqlx::query_as!(
        Entry,
        "select id, actor, action, target, detail, at from admin_audit
         where ($1::bigint is null or id < $1)
           and ($2::uuid is null or actor = $2)
           and ($3::text is null or action = $3)
           and ($4::text is null or action like $4)
           and ($5::text is null or target = $5)
           and ($6::timestamptz is null or at >= $6)
           and ($7::timestamptz is null or at < $7)
         order by id desc
         limit $8",
        before,
        filter.actor,
        action,
        prefix,
        filter.target,
        filter.since,
        filter.until,
        limit,
    )
    .fetch_all(db)
    .await
}
