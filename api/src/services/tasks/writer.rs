//! Task creation with group commit.
//!
//! A creation is three rows: the task, its audit entry and its `task.created` event (an
//! outbox row), and a fourth when the task has a reminder: its delayed `send_reminder` job. Each request's rows are written by one statement, so they commit together
//! or not at all. Requests that arrive while a statement is running wait in a queue, and the
//! next statement writes all of them at once: under load one round trip and one commit serve
//! many requests, and an idle server still writes a request the moment it arrives (nothing
//! waits for a batch to fill).
//!
//! - Should a shared statement fail, each of its requests is written again on its own, so
//!   one request's failure is never another's.
//! - The writer owns each request's quota reservation: it is kept once the rows have
//!   committed and given back otherwise, also when the client has gone away meanwhile.
//! - After the commit it bumps the generations of the owners' caches (lists and tasks),
//!   then answers: a read after the response sees the new tasks.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tasklane_shared::domain::tasks::{self, TaskRow};
use tasklane_shared::jobs::{Job, SendReminder};
use tasklane_shared::redis::Conn;
use tasklane_shared::redis::Keys;
use tasklane_shared::{events, outbox};
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::quota::Reservation;

/// Requests waiting for a statement, at most; more wait to be queued.
const QUEUE: usize = 1_024;
/// Tasks written by one statement, at most (a bulk request is never split).
const MAX_TASKS: usize = 500;
/// Statements running at once: while one commits, the next batch is being built.
const WRITERS: usize = 2;

struct Request {
    rows: Vec<TaskRow>,
    /// The API request and the owner of its receipt, which shows the `task.created` events
    /// (the writers run outside the request's task, so they cannot ask for them).
    receipt: Option<(String, Uuid)>,
    reservation: Reservation,
    reply: oneshot::Sender<Result<Vec<TaskRow>, sqlx::Error>>,
}

/// The handle handlers create tasks through; cheap to clone.
#[derive(Clone)]
pub struct TaskWriter {
    sender: mpsc::Sender<Request>,
}

impl TaskWriter {
    /// Starts the writers. They stop once every handle is dropped and the queue is empty.
    pub fn spawn(db: PgPool, redis: Conn, keys: Keys) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..WRITERS {
            let (receiver, db, redis, keys) =
                (receiver.clone(), db.clone(), redis.clone(), keys.clone());
            tokio::spawn(async move {
                while let Some(batch) = next_batch(&receiver).await {
                    write(&db, &redis, &keys, batch).await;
                }
            });
        }
        Self { sender }
    }

    /// Writes `rows` (all or none), with their audit entries and events, keeping the
    /// reservation when they commit; hands the rows back once committed.
    pub async fn create(
        &self,
        rows: Vec<TaskRow>,
        reservation: Reservation,
    ) -> Result<Vec<TaskRow>, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        let receipt = tasklane_shared::trace::current_request_id()
            .zip(tasklane_shared::trace::current_caller());
        self.sender
            .send(Request { rows, receipt, reservation, reply })
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answer.await.unwrap_or(Err(sqlx::Error::PoolClosed))
    }
}

/// Waits for one request, then takes whatever else is already queued, up to [`MAX_TASKS`].
async fn next_batch(receiver: &Mutex<mpsc::Receiver<Request>>) -> Option<Vec<Request>> {
    let mut receiver = receiver.lock().await;
    let first = receiver.recv().await?;
    let mut tasks = first.rows.len();
    let mut batch = vec![first];
    while tasks < MAX_TASKS {
        let Ok(next) = receiver.try_recv() else { break };
        tasks += next.rows.len();
        batch.push(next);
    }
    Some(batch)
}

async fn write(db: &PgPool, redis: &Conn, keys: &Keys, batch: Vec<Request>) {
    let rows: Vec<Row<'_>> = batch.iter().flat_map(Request::rows).collect();
    metrics::histogram!("task_create_batch_size").record(rows.len() as f64);
    match insert(db, &rows).await {
        Ok(()) => settle(redis, keys, batch).await,
        Err(err) if batch.len() == 1 => {
            let failed = batch.into_iter().next().map(|request| request.reply.send(Err(err)));
            drop(failed);
        }
        Err(err) => {
            tracing::warn!(error = %err, requests = batch.len(), "a shared task insert failed; writing each request on its own");
            for request in batch {
                let rows: Vec<Row<'_>> = request.rows().collect();
                match insert(db, &rows).await {
                    Ok(()) => settle(redis, keys, vec![request]).await,
                    Err(err) => drop(request.reply.send(Err(err))),
                }
            }
        }
    }
}

/// After a commit: the quota stays used, the caches move on, and the handlers answer.
async fn settle(redis: &Conn, keys: &Keys, committed: Vec<Request>) {
    let mut owners: Vec<Uuid> =
        committed.iter().flat_map(|request| request.rows.iter().map(|row| row.owner_id)).collect();
    owners.sort_unstable();
    owners.dedup();
    if let Err(err) =
        tasklane_shared::redis::invalidate_task_lists(&mut redis.clone(), keys, &owners).await
    {
        // Cached entries live 30 s at most: the damage is bounded.
        tracing::warn!(error = %err, "cannot invalidate cached tasks after a creation");
    }
    for Request { rows, reservation, reply, .. } in committed {
        reservation.keep();
        // A client that went away has nobody waiting: its tasks are created all the same.
        let _ = reply.send(Ok(rows));
    }
}

/// A task to insert, with the request whose receipt shows its event (only its owner's).
type Row<'a> = (&'a TaskRow, Option<&'a str>);

impl Request {
    fn rows(&self) -> impl Iterator<Item = Row<'_>> {
        self.rows.iter().map(|task| {
            let receipt = self.receipt.as_ref().filter(|(_, caller)| *caller == task.owner_id);
            (task, receipt.map(|(request_id, _)| request_id.as_str()))
        })
    }
}

/// One row of the statement's input: a task with its audit entry and its event.
#[derive(Serialize)]
struct Input<'a> {
    id: Uuid,
    owner_id: Uuid,
    title: &'a str,
    description: Option<&'a str>,
    status: &'static str,
    priority: i16,
    tags: &'a [String],
    due_at: Option<DateTime<Utc>>,
    remind_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    /// The task's reminder job (a delayed `send_reminder`), when `remind_at` is set.
    reminder_id: Uuid,
    reminder: Option<serde_json::Value>,
    audit_id: Uuid,
    audit_changes: serde_json::Map<String, serde_json::Value>,
    event_id: Uuid,
    event: serde_json::Value,
    request_id: Option<&'a str>,
}

/// Inserts the tasks, their audit entries and their events in one statement (so in one
/// transaction), from one JSON parameter.
async fn insert(db: &PgPool, rows: &[Row<'_>]) -> Result<(), sqlx::Error> {
    let mut input = Vec::with_capacity(rows.len());
    for &(task, request_id) in rows {
        input.push(Input {
            id: task.id,
            owner_id: task.owner_id,
            title: &task.title,
            description: task.description.as_deref(),
            status: task.status.as_str(),
            priority: task.priority.rank(),
            tags: &task.tags,
            due_at: task.due_at,
            remind_at: task.remind_at,
            completed_at: task.completed_at,
            created_at: task.created_at,
            reminder_id: Uuid::now_v7(),
            reminder: task
                .remind_at
                .map(|remind_at| {
                    let job = SendReminder { task_id: task.id, owner_id: task.owner_id, remind_at };
                    serde_json::to_value(job)
                })
                .transpose()
                .map_err(|err| sqlx::Error::Encode(Box::new(err)))?,
            audit_id: Uuid::now_v7(),
            audit_changes: task.created_changes(),
            event_id: Uuid::now_v7(),
            event: outbox::event_payload(task.owner_id, tasks::event_data(task, None))?,
            request_id,
        });
    }
    let input = serde_json::to_value(&input).map_err(|err| sqlx::Error::Encode(Box::new(err)))?;
    sqlx::query!(
        "with input as (
             select * from jsonb_to_recordset($1) as x(
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
             select reminder_id, $4, $5, reminder, $6, request_id, owner_id, remind_at
             from input where reminder is not null
         ),
         audited as (
             insert into task_events (id, task_id, action, changes, actor_id, at)
             select audit_id, id, 'create', audit_changes, owner_id, created_at from input
         )
         insert into outbox (id, queue, kind, payload, max_attempts, request_id)
         select event_id, $2, $3, event, 1, request_id from input",
        input,
        outbox::EVENTS,
        events::TASK_CREATED,
        SendReminder::SPEC.queue.as_str(),
        SendReminder::SPEC.kind,
        i32::try_from(SendReminder::SPEC.max_attempts).unwrap_or(i32::MAX),
    )
    .execute(db)
    .await?;
    Ok(())
}
