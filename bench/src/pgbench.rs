//! The floor of `POST /tasks`: the statement the task writer runs
//! (`api/src/services/tasks/writer.rs`: tasks, their audit entries and their events from
//! one JSON parameter), driven by pgbench with no API in between, `:batch` tasks per
//! statement. Each row is a copy of what the API itself wrote for a task created in the
//! benchmark, with fresh ids.
//!
//! The statement is written out again here (it lives in a `query!` macro); it must follow
//! the writer's when that changes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::PgPool;

/// The writer's statement, with `$1` as `:batch` rows built per statement from `template`.
const STATEMENT: &str = "with input as (
    select * from jsonb_to_recordset((select jsonb_agg(
        '{template}'::jsonb || jsonb_build_object(
            'id', uuid_generate_v7(), 'audit_id', uuid_generate_v7(),
            'event_id', uuid_generate_v7(), 'reminder_id', uuid_generate_v7(), 'created_at', now()))
        from generate_series(1, :batch))) as x(
        id uuid, owner_id uuid, title text, description text, status text, priority smallint,
        tags text[], due_at timestamptz, remind_at timestamptz, completed_at timestamptz,
        created_at timestamptz, reminder_id uuid, reminder jsonb,
        audit_id uuid, audit_changes jsonb, event_id uuid, event jsonb, request_id text)
),
created as (
    insert into tasks (id, owner_id, title, description, status, priority, tags, due_at, remind_at,
                       completed_at, created_at, updated_at)
    select id, owner_id, title, description, status, priority, tags, due_at, remind_at,
           completed_at, created_at, created_at
    from input
),
reminded as (
    insert into outbox (id, queue, kind, payload, max_attempts, request_id, user_id, run_at)
    select reminder_id, 'emails', 'send_reminder', reminder, 18, request_id, owner_id, remind_at
    from input where reminder is not null
),
audited as (
    insert into task_events (id, task_id, action, changes, actor_id, at)
    select audit_id, id, 'create', audit_changes, owner_id, created_at from input
)
insert into outbox (id, queue, kind, payload, max_attempts, request_id)
select event_id, 'events', 'task.created', event, 1, request_id from input;";

/// Writes the pgbench script of the writer's statement, its row copied from the newest
/// task the API created.
pub async fn task_insert_script(db: &PgPool, dir: &Path) -> anyhow::Result<PathBuf> {
    let template: String = sqlx::query_scalar(
        "select jsonb_build_object(
                    'owner_id', t.owner_id, 'title', t.title, 'description', t.description,
                    'status', t.status, 'priority', t.priority, 'tags', t.tags,
                    'due_at', t.due_at, 'completed_at', t.completed_at,
                    'audit_changes', e.changes, 'event', o.payload)::text
         from tasks t
         join task_events e on e.task_id = t.id and e.action = 'create'
         cross join lateral (select payload from outbox where kind = 'task.created'
                             order by id desc limit 1) o
         order by t.id desc limit 1",
    )
    .fetch_one(db)
    .await?;
    let script = STATEMENT.replace("{template}", &no_variables(&template).replace('\'', "''"));
    let path = dir.join("task_insert.sql");
    std::fs::write(&path, script)?;
    Ok(path)
}

/// pgbench reads `:` followed by a letter, digit or `_` as a variable, as in a
/// timestamp's `12:30`. In Postgres' text of a `jsonb` a structural `:` is followed by a
/// space, so every such `:` is inside a JSON string, where `\u003a` means the same.
fn no_variables(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut chars = json.chars().peekable();
    while let Some(c) = chars.next() {
        let name_follows = chars.peek().is_some_and(|n| n.is_ascii_alphanumeric() || *n == '_');
        if c == ':' && name_follows {
            out.push_str("\\u003a");
        } else {
            out.push(c);
        }
    }
    out
}

/// Tasks/s written by `script` from `clients` pgbench clients (prepared statements, as
/// sqlx uses) over `duration`, `batch` tasks per statement.
pub async fn run(
    database_url: &str,
    script: &Path,
    clients: usize,
    batch: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let pgbench = std::env::var("PGBENCH").unwrap_or_else(|_| "pgbench".into());
    let output = tokio::process::Command::new(&pgbench)
        .args(["-n", "-M", "prepared"])
        .arg(format!("-j{}", clients.min(2)))
        .arg(format!("-c{clients}"))
        .arg(format!("-Dbatch={batch}"))
        .arg(format!("-T{}", duration.as_secs()))
        .arg("-f")
        .arg(script)
        .arg(database_url)
        .output()
        .await?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success() && text.contains("number of failed transactions: 0"),
        "pgbench failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text.lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse::<f64>().ok())
        .map(|tps| tps * batch as f64)
        .ok_or_else(|| anyhow::anyhow!("cannot read pgbench's output:\n{text}"))
}
