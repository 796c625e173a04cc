//! Fairness by owner on the uploads queue (SPEC section 10): one user's backlog of uploads
//! delays another user's single upload by at most one turn of the workers' concurrency,
//! while each owner's own uploads keep their order and nothing waiting is lost to the
//! turns (cancelled, counted, listed). The store on the real Redis, then the API and two
//! workers on the real stack.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tasklane_shared::domain::jobs::JobState;
use tasklane_shared::jobs::{Job, ProcessUpload, Queue};
use tasklane_shared::queue::{NewJob, QueueStore};
use tasklane_testkit::{TestApp, email_address, wait_until};
use uuid::Uuid;

const KIND: &str = ProcessUpload::SPEC.kind;

fn upload_of(owner: Uuid) -> NewJob {
    let job = ProcessUpload { attachment_id: Uuid::now_v7(), owner_id: Some(owner) };
    NewJob::plain(KIND, serde_json::to_string(&job).unwrap(), ProcessUpload::SPEC.max_attempts)
}

async fn claim(store: &QueueStore, n: usize) -> Vec<String> {
    let claims = store.claim(Queue::Uploads, KIND, "fair-worker", n).await.unwrap();
    claims.into_iter().map(|claim| claim.id).collect()
}

#[tokio::test]
async fn an_owner_with_200_uploads_waiting_delays_another_owners_upload_by_one_turn() {
    let app = TestApp::spawn().await;
    let store = app.spawn_store();
    let (busy, other) = (Uuid::now_v7(), Uuid::now_v7());
    let backlog: Vec<NewJob> = (0..200).map(|_| upload_of(busy)).collect();
    store.push(Queue::Uploads, &backlog).await.unwrap();
    let single = upload_of(other);
    store.push(Queue::Uploads, std::slice::from_ref(&single)).await.unwrap();
    let backlog: Vec<String> = backlog.iter().map(|job| job.id.to_string()).collect();
    let single = single.id.to_string();

    // Everything waiting is counted and listed, whichever owner's turn it waits for.
    assert_eq!(store.depth(Queue::Uploads).await.unwrap().pending, 201);
    assert_eq!(store.pending_by_kind(Queue::Uploads).await.unwrap()[KIND], 201);
    let listed = store.ids(Queue::Uploads, JobState::Pending, 500).await.unwrap();
    assert_eq!(listed.len(), 201);
    assert!(listed.contains(&single));

    // One worker's round of 4: the busy owner's first upload, then the other owner's turn.
    let first_round = claim(&store, 4).await;
    assert_eq!(
        first_round,
        vec![backlog[0].clone(), single.clone(), backlog[1].clone(), backlog[2].clone()]
    );

    // A cancelled upload leaves its owner's turn; the rest keep their order, each once.
    let cancelled = &backlog[10];
    store.cancel(Queue::Uploads, cancelled).await.unwrap();
    assert_eq!(store.depth(Queue::Uploads).await.unwrap().pending, 196);
    let mut rest = Vec::new();
    loop {
        let round = claim(&store, 50).await;
        if round.is_empty() {
            break;
        }
        rest.extend(round);
    }
    let expected: Vec<String> =
        backlog[3..].iter().filter(|id| *id != cancelled).cloned().collect();
    assert_eq!(rest, expected);
    assert_eq!(store.depth(Queue::Uploads).await.unwrap().pending, 0);
    let job = store.job(Queue::Uploads, cancelled).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Cancelled);
}

struct Uploader {
    token: String,
    task: String,
}

impl Uploader {
    /// Signs a user up (a worker sends the verification email) with a task to attach to.
    async fn new(app: &TestApp) -> Self {
        let session = app.register_verified(&email_address()).await;
        let token = session["access_token"].as_str().unwrap().to_owned();
        let resp = app.post("/api/v1/tasks", &json!({ "title": "files" }), Some(&token)).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        let task = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
        Self { token, task }
    }

    /// Declares an upload and says it is complete (without sending the file: its processing
    /// rejects it as never uploaded, which takes the same turn as any other upload).
    async fn completes_one(&self, app: &TestApp) -> String {
        let declared =
            json!({ "filename": "a.txt", "content_type": "text/plain", "size_bytes": 3 });
        let path = format!("/api/v1/tasks/{}/attachments", self.task);
        let resp = app.post(&path, &declared, Some(&self.token)).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "{}", resp.text().await.unwrap());
        let id =
            resp.json::<Value>().await.unwrap()["attachment"]["id"].as_str().unwrap().to_owned();
        let resp = app.post(&format!("{path}/{id}/complete"), &json!({}), Some(&self.token)).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "{}", resp.text().await.unwrap());
        id
    }
}

/// When the upload job for `attachment` first started.
fn started_ms(jobs: &[tasklane_shared::queue::JobRecord], attachment: &str) -> i64 {
    let job = jobs
        .iter()
        .find(|job| {
            serde_json::from_str::<Value>(&job.payload).unwrap()["attachment_id"] == attachment
        })
        .unwrap();
    job.history[0].started_ms.unwrap()
}

#[tokio::test]
async fn through_the_api_a_single_upload_waits_for_one_round_of_the_fleet_not_the_backlog() {
    const CONCURRENCY: usize = 2;
    let (app, admin) = TestApp::spawn_admin(|s| s.worker_concurrency = CONCURRENCY).await;
    let store = app.spawn_store();
    // Paused, so the whole backlog is waiting when the workers start on it.
    let resp = app.post("/api/v1/admin/queues/uploads/pause", &json!({}), Some(&admin)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let workers = [app.spawn_worker().await, app.spawn_worker().await];

    let (busy, other) = (Uploader::new(&app).await, Uploader::new(&app).await);
    let mut backlog = Vec::new();
    for _ in 0..24 {
        backlog.push(busy.completes_one(&app).await);
    }
    let single = other.completes_one(&app).await;
    wait_until(Duration::from_secs(30), "every upload job to be queued", || async {
        let pending = store.pending_by_kind(Queue::Uploads).await.unwrap()[KIND];
        (pending == 25).then_some(())
    })
    .await;

    let resp = app.post("/api/v1/admin/queues/uploads/resume", &json!({}), Some(&admin)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let jobs = wait_until(Duration::from_secs(60), "every upload job to end", || async {
        let ids = store.ids(Queue::Uploads, JobState::Done, 100).await.unwrap();
        if ids.len() < 25 {
            return None;
        }
        let mut jobs = Vec::new();
        for id in ids {
            jobs.push(store.job(Queue::Uploads, &id).await.unwrap().unwrap());
        }
        Some(jobs)
    })
    .await;
    let fleet = CONCURRENCY * workers.len();
    drop(workers);

    let ids: HashSet<&str> = jobs.iter().map(|job| job.id.as_str()).collect();
    assert_eq!(ids.len(), 25, "each upload ran once");
    let single_started = started_ms(&jobs, &single);
    let ahead = backlog.iter().filter(|id| started_ms(&jobs, id) < single_started).count();
    // First come, first served would put 24 of the busy owner's uploads ahead of it.
    assert!(
        ahead <= fleet,
        "{ahead} of the busy owner's uploads started before the other owner's single one"
    );
}
