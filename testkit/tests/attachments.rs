//! Attachments (SPEC section 6) against the real API, worker, Postgres, Redis and an S3
//! server that checks SigV4 signatures and presigned-URL constraints (s3s-fs).

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tasklane_api::services::download_links::{DownloadLinks, DownloadTarget, LinkTarget};
use tasklane_shared::domain::jobs::JobState;
use tasklane_shared::jobs::Queue;
use tasklane_testkit::{GateMode, TcpGate, TestApp, TestWorker, email_address, wait_until};

const PNG_NAME: &str = "Plan été \"v2\".png";

struct User<'a> {
    app: &'a TestApp,
    token: String,
    id: String,
}

impl<'a> User<'a> {
    async fn new(app: &'a TestApp) -> Self {
        let session = app.register(&email_address()).await;
        let token = session["access_token"].as_str().unwrap().to_owned();
        let me: Value = app.get_as("/api/v1/me", &token).await.json().await.unwrap();
        Self { app, token, id: me["id"].as_str().unwrap().to_owned() }
    }

    async fn task(&self) -> String {
        let resp = self
            .app
            .post("/api/v1/tasks", &json!({ "title": "with files" }), Some(&self.token))
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED, "{}", resp.text().await.unwrap());
        resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
    }

    async fn declare(&self, task: &str, body: Value) -> reqwest::Response {
        self.app.post(&format!("/api/v1/tasks/{task}/attachments"), &body, Some(&self.token)).await
    }

    async fn declared(&self, task: &str, filename: &str, content_type: &str, size: usize) -> Value {
        let resp = self
            .declare(
                task,
                json!({ "filename": filename, "content_type": content_type, "size_bytes": size }),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED, "{}", resp.text().await.unwrap());
        resp.json().await.unwrap()
    }

    async fn complete(&self, task: &str, attachment: &str) -> reqwest::Response {
        self.app
            .post(
                &format!("/api/v1/tasks/{task}/attachments/{attachment}/complete"),
                &json!({}),
                Some(&self.token),
            )
            .await
    }

    async fn attachment(&self, task: &str, attachment: &str) -> reqwest::Response {
        self.app
            .get_as(&format!("/api/v1/tasks/{task}/attachments/{attachment}"), &self.token)
            .await
    }

    async fn delete(&self, path: &str) -> reqwest::Response {
        self.app.client.delete(self.app.url(path)).bearer_auth(&self.token).send().await.unwrap()
    }

    /// Polls until the attachment leaves `pending`/`processing`.
    async fn settled(&self, task: &str, attachment: &str, deadline: Duration) -> Value {
        wait_until(deadline, "the attachment to be ready or rejected", || async {
            let body: Value = self.attachment(task, attachment).await.json().await.unwrap();
            matches!(body["status"].as_str(), Some("ready" | "rejected")).then_some(body)
        })
        .await
    }
}

/// A real PNG: a gradient, so it compresses like a picture, not like a blank.
fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// The start of a real x86-64 ELF executable, padded.
fn elf() -> Vec<u8> {
    let mut bytes = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0\x01\0\0\0".to_vec();
    bytes.resize(4096, 0x90);
    bytes
}

/// Sends the upload exactly as the API said: method, URL, headers, body.
async fn upload(app: &TestApp, declared: &Value, body: Vec<u8>) -> reqwest::Response {
    upload_with(app, declared, body, |headers| headers).await
}

async fn upload_with(
    app: &TestApp,
    declared: &Value,
    body: Vec<u8>,
    adjust: impl FnOnce(serde_json::Map<String, Value>) -> serde_json::Map<String, Value>,
) -> reqwest::Response {
    let upload = &declared["upload"];
    assert_eq!(upload["method"], "PUT");
    let mut request = app.client.put(upload["url"].as_str().unwrap()).body(body);
    for (name, value) in adjust(upload["headers"].as_object().unwrap().clone()) {
        // reqwest sets Content-Length from the body.
        if name != "content-length" {
            request = request.header(name, value.as_str().unwrap());
        }
    }
    request.send().await.unwrap()
}

/// The object key a presigned URL points at (path-style: `/<bucket>/<key>?...`).
fn key_of(url: &str, bucket: &str) -> String {
    let path = url::Url::parse(url).unwrap().path().to_owned();
    path.strip_prefix(&format!("/{bucket}/")).unwrap().to_owned()
}

/// Every object under `prefix`.
async fn objects(app: &TestApp, prefix: &str) -> Vec<String> {
    let listed = app
        .s3()
        .list_objects_v2()
        .bucket(&app.settings.s3.bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    listed.contents().iter().filter_map(|object| object.key().map(str::to_owned)).collect()
}

async fn exists(app: &TestApp, key: &str) -> bool {
    app.s3().head_object().bucket(&app.settings.s3.bucket).key(key).send().await.is_ok()
}

/// A worker whose S3 traffic goes through `gate`; the API still signs for the real server.
async fn gated_worker(app: &TestApp, gate: &TcpGate) -> TestWorker {
    let mut settings = app.worker_settings();
    settings.s3.endpoint = gate.url("http");
    TestWorker::spawn(settings).await
}

/// The most attempts any process_upload job has had.
async fn upload_attempts(app: &TestApp) -> u32 {
    let store = app.spawn_store();
    let mut most = 0;
    for state in JobState::ALL {
        for id in store.ids(Queue::Uploads, state, 100).await.unwrap() {
            if let Some(job) = store.job(Queue::Uploads, &id).await.unwrap() {
                most = most.max(job.attempts);
            }
        }
    }
    most
}

#[tokio::test]
async fn a_png_goes_from_presigned_upload_to_ready_and_downloads_under_its_name() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let user = User::new(&app).await;
    let task = user.task().await;
    let bytes = png(640, 480);

    let declared = user.declared(&task, PNG_NAME, "image/png", bytes.len()).await;
    let attachment = &declared["attachment"];
    let id = attachment["id"].as_str().unwrap().to_owned();
    assert_eq!(attachment["status"], "pending");
    assert_eq!(attachment["filename"], PNG_NAME);
    assert!(attachment.get("download").is_none_or(Value::is_null));
    // The client is told exactly what to send: the signed type, length and disposition.
    let instructions = &declared["upload"];
    let headers = instructions["headers"].as_object().unwrap();
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["content-length"], bytes.len().to_string());
    assert!(headers["content-disposition"].as_str().unwrap().starts_with("attachment;"));
    let url = url::Url::parse(instructions["url"].as_str().unwrap()).unwrap();
    assert_eq!(url.origin(), url::Url::parse(&app.settings.s3.public_endpoint).unwrap().origin());
    let signed: String =
        url.query_pairs().find(|(k, _)| k == "X-Amz-SignedHeaders").unwrap().1.into_owned();
    for header in ["content-disposition", "content-length", "content-type", "host"] {
        assert!(signed.split(';').any(|h| h == header), "{header} is not signed: {signed}");
    }
    let expires: i64 =
        url.query_pairs().find(|(k, _)| k == "X-Amz-Expires").unwrap().1.parse().unwrap();
    assert!(expires <= 900, "an upload URL lives at most 15 minutes, not {expires} s");
    let upload_key = key_of(instructions["url"].as_str().unwrap(), &app.settings.s3.bucket);
    assert!(upload_key.starts_with(&format!("users/{}/tasks/{task}/", user.id)), "{upload_key}");

    // A plain HTTP client uploads with the presigned URL.
    let put = upload(&app, &declared, bytes.clone()).await;
    assert_eq!(put.status(), StatusCode::OK, "{}", put.text().await.unwrap());

    let resp = user.complete(&task, &id).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(resp.json::<Value>().await.unwrap()["status"], "processing");

    let ready = user.settled(&task, &id, Duration::from_secs(30)).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["size_bytes"], bytes.len());
    assert_eq!(ready["detected_type"], "image/png");
    assert_eq!(ready["sha256"], format!("{:x}", Sha256::digest(&bytes)));
    assert_eq!(ready["has_thumbnail"], true);
    // Completing again changes nothing.
    assert_eq!(user.complete(&task, &id).await.status(), StatusCode::CONFLICT);

    // The download link returns the same bytes, as an attachment named as uploaded.
    let download = app.client.get(ready["download"]["url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(download.status(), StatusCode::OK);
    let disposition = download.headers()["content-disposition"].to_str().unwrap().to_owned();
    assert!(disposition.starts_with("attachment;"), "{disposition}");
    assert!(
        disposition.contains("filename*=UTF-8''Plan%20%C3%A9t%C3%A9%20%22v2%22.png"),
        "{disposition}"
    );
    assert_eq!(download.bytes().await.unwrap().as_ref(), bytes.as_slice());
    let thumbnail =
        app.client.get(ready["thumbnail"]["url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(thumbnail.status(), StatusCode::OK);
    let thumbnail = image::load_from_memory(&thumbnail.bytes().await.unwrap()).unwrap();
    assert_eq!((thumbnail.width(), thumbnail.height()), (256, 192));

    // The upload itself is gone; the verified copy and the thumbnail remain.
    let prefix = format!("users/{}/tasks/{task}/", user.id);
    assert!(!exists(&app, &upload_key).await);
    assert_eq!(objects(&app, &prefix).await.len(), 2);
    let list: Value = app
        .get_as(&format!("/api/v1/tasks/{task}/attachments"), &user.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["id"], id.as_str());

    // Deleting removes the attachment now and its objects shortly after.
    let resp = user.delete(&format!("/api/v1/tasks/{task}/attachments/{id}")).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(user.attachment(&task, &id).await.status(), StatusCode::NOT_FOUND);
    wait_until(Duration::from_secs(15), "the objects to be deleted", || async {
        objects(&app, &prefix).await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_store_refuses_an_upload_of_another_type_length_or_disposition() {
    let app = TestApp::spawn().await;
    let user = User::new(&app).await;
    let task = user.task().await;
    let bytes = png(64, 64);
    let declared = user.declared(&task, "a.png", "image/png", bytes.len()).await;
    let key = key_of(declared["upload"]["url"].as_str().unwrap(), &app.settings.s3.bucket);

    let other_type = upload_with(&app, &declared, bytes.clone(), |mut h| {
        h.insert("content-type".into(), json!("text/html"));
        h
    })
    .await;
    assert_eq!(other_type.status(), StatusCode::FORBIDDEN);
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"more");
    assert_eq!(upload(&app, &declared, longer).await.status(), StatusCode::FORBIDDEN);
    let shorter = bytes[..bytes.len() - 1].to_vec();
    assert_eq!(upload(&app, &declared, shorter).await.status(), StatusCode::FORBIDDEN);
    let no_disposition = upload_with(&app, &declared, bytes.clone(), |mut h| {
        h.remove("content-disposition");
        h
    })
    .await;
    assert_eq!(no_disposition.status(), StatusCode::FORBIDDEN);
    assert!(!exists(&app, &key).await, "a refused upload stored nothing");

    // The same URL with exactly what was declared works.
    assert_eq!(upload(&app, &declared, bytes).await.status(), StatusCode::OK);
    assert!(exists(&app, &key).await);
}

#[tokio::test]
async fn an_elf_renamed_png_is_rejected_and_deleted() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let user = User::new(&app).await;
    let task = user.task().await;
    let bytes = elf();
    let declared = user.declared(&task, "cat.png", "image/png", bytes.len()).await;
    let id = declared["attachment"]["id"].as_str().unwrap().to_owned();
    let key = key_of(declared["upload"]["url"].as_str().unwrap(), &app.settings.s3.bucket);
    assert_eq!(upload(&app, &declared, bytes).await.status(), StatusCode::OK);
    assert_eq!(user.complete(&task, &id).await.status(), StatusCode::ACCEPTED);

    let rejected = user.settled(&task, &id, Duration::from_secs(30)).await;
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(rejected["reject_reason"], "type_mismatch");
    assert!(rejected["download"].is_null());
    assert!(!exists(&app, &key).await, "a rejected object is deleted");
    assert!(objects(&app, &format!("users/{}/tasks/{task}/", user.id)).await.is_empty());
}

#[tokio::test]
async fn an_upload_whose_size_differs_from_the_declaration_is_rejected() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let user = User::new(&app).await;
    let task = user.task().await;
    let declared = user.declared(&task, "notes.txt", "text/plain", 100).await;
    let id = declared["attachment"]["id"].as_str().unwrap().to_owned();
    let key = key_of(declared["upload"]["url"].as_str().unwrap(), &app.settings.s3.bucket);
    // The presigned URL cannot write another length (see above); a store that does not
    // enforce it, or a writer with credentials, can. The worker checks again.
    app.s3()
        .put_object()
        .bucket(&app.settings.s3.bucket)
        .key(&key)
        .content_type("text/plain")
        .body(vec![b'a'; 150].into())
        .send()
        .await
        .unwrap();
    assert_eq!(user.complete(&task, &id).await.status(), StatusCode::ACCEPTED);
    let rejected = user.settled(&task, &id, Duration::from_secs(30)).await;
    assert_eq!(rejected["reject_reason"], "size_mismatch");
    assert!(!exists(&app, &key).await);

    // Completing without uploading anything is rejected too.
    let declared = user.declared(&task, "never.txt", "text/plain", 10).await;
    let id = declared["attachment"]["id"].as_str().unwrap().to_owned();
    assert_eq!(user.complete(&task, &id).await.status(), StatusCode::ACCEPTED);
    let rejected = user.settled(&task, &id, Duration::from_secs(30)).await;
    assert_eq!(rejected["reject_reason"], "not_uploaded");
}

#[tokio::test]
async fn oversized_or_disallowed_declarations_are_refused_before_signing() {
    let app = TestApp::spawn().await;
    let user = User::new(&app).await;
    let task = user.task().await;
    let cases = [
        (
            json!({ "filename": "big.png", "content_type": "image/png", "size_bytes": 25 * 1024 * 1024 + 1 }),
            "size_bytes",
            "too_large",
        ),
        (
            json!({ "filename": "x.png", "content_type": "image/png", "size_bytes": 0 }),
            "size_bytes",
            "out_of_range",
        ),
        (
            json!({ "filename": "page.html", "content_type": "text/html", "size_bytes": 10 }),
            "content_type",
            "type_not_allowed",
        ),
        (
            json!({ "filename": "logo.svg", "content_type": "image/svg+xml", "size_bytes": 10 }),
            "content_type",
            "type_not_allowed",
        ),
        (
            json!({ "filename": "setup.exe", "content_type": "application/x-msdownload", "size_bytes": 10 }),
            "content_type",
            "type_not_allowed",
        ),
        (
            json!({ "filename": " / ", "content_type": "image/png", "size_bytes": 10 }),
            "filename",
            "required",
        ),
        (
            json!({ "filename": "a.png", "content_type": "image/png", "size_bytes": 10, "object_key": "users/x" }),
            "object_key",
            "unknown_field",
        ),
    ];
    for (body, field, code) in cases {
        let resp = user.declare(&task, body.clone()).await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let problem: Value = resp.json().await.unwrap();
        let error = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["field"] == field)
            .unwrap_or_else(|| panic!("{problem}"));
        assert_eq!(error["code"], code, "{problem}");
    }
    let malformed = app
        .client
        .post(app.url(&format!("/api/v1/tasks/{task}/attachments")))
        .bearer_auth(&user.token)
        .header("content-type", "application/json")
        .body("{\"filename\":")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    // Exactly the limit is fine.
    user.declared(&task, "max.png", "image/png", 25 * 1024 * 1024).await;
    let rows: i64 =
        sqlx::query_scalar("select count(*) from attachments").fetch_one(&app.db).await.unwrap();
    assert_eq!(rows, 1, "refused declarations leave nothing behind");
}

#[tokio::test]
async fn another_user_and_a_trashed_task_get_404_everywhere() {
    let app = TestApp::spawn().await;
    let owner = User::new(&app).await;
    let other = User::new(&app).await;
    let task = owner.task().await;
    let declared = owner.declared(&task, "a.txt", "text/plain", 5).await;
    let id = declared["attachment"]["id"].as_str().unwrap().to_owned();
    let base = format!("/api/v1/tasks/{task}/attachments");

    let check = async |token: &str| {
        let body = json!({ "filename": "b.txt", "content_type": "text/plain", "size_bytes": 5 });
        let statuses = [
            app.post(&base, &body, Some(token)).await.status(),
            app.get_as(&base, token).await.status(),
            app.get_as(&format!("{base}/{id}"), token).await.status(),
            app.post(&format!("{base}/{id}/complete"), &json!({}), Some(token)).await.status(),
            app.client
                .delete(app.url(&format!("{base}/{id}")))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status(),
        ];
        assert_eq!(statuses, [StatusCode::NOT_FOUND; 5]);
    };
    check(&other.token).await;
    assert_eq!(owner.attachment(&task, &id).await.status(), StatusCode::OK);

    // In the trash, a task's files are out of reach too (they come back with a restore).
    assert_eq!(
        owner.delete(&format!("/api/v1/tasks/{task}")).await.status(),
        StatusCode::NO_CONTENT
    );
    check(&owner.token).await;
    let restored =
        app.post(&format!("/api/v1/tasks/{task}/restore"), &json!({}), Some(&owner.token)).await;
    assert_eq!(restored.status(), StatusCode::OK);
    assert_eq!(owner.attachment(&task, &id).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn processing_waits_out_a_store_outage_and_is_ready_once_it_is_back() {
    let app = TestApp::spawn().await;
    let gate = TcpGate::s3(GateMode::Refuse).await;
    let _worker = gated_worker(&app, &gate).await;
    let user = User::new(&app).await;
    let task = user.task().await;
    let bytes = png(300, 200);
    let declared = user.declared(&task, "pic.png", "image/png", bytes.len()).await;
    let id = declared["attachment"]["id"].as_str().unwrap().to_owned();
    assert_eq!(upload(&app, &declared, bytes.clone()).await.status(), StatusCode::OK);
    assert_eq!(user.complete(&task, &id).await.status(), StatusCode::ACCEPTED);

    // The store is down for the worker: the kind is held (S3), attempts are not used.
    let store = app.spawn_store();
    wait_until(Duration::from_secs(30), "process_upload held by the S3 outage", || async {
        let held = store.held_kinds().await.unwrap();
        held.iter()
            .any(|held| held.kind == "process_upload" && held.dependency == "s3")
            .then_some(())
    })
    .await;
    let during: Value = user.attachment(&task, &id).await.json().await.unwrap();
    assert_eq!(during["status"], "processing");
    assert!(upload_attempts(&app).await <= 1, "at most a probe in flight");

    gate.set(GateMode::Forward);
    let ready = user.settled(&task, &id, Duration::from_secs(60)).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["sha256"], format!("{:x}", Sha256::digest(&bytes)));
    let download = app.client.get(ready["download"]["url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(download.bytes().await.unwrap().as_ref(), bytes.as_slice());
    assert_eq!(upload_attempts(&app).await, 1, "the outage cost no attempt");
}

#[tokio::test]
async fn a_store_that_keeps_refusing_the_worker_ends_in_processing_failed_after_five_attempts() {
    let app = TestApp::spawn().await;
    // The store answers, and refuses every request (a bad signature): failures of the job,
    // counted, unlike an outage.
    let mut settings = app.worker_settings();
    settings.s3.secret_access_key = "not-the-secret".to_owned().into();
    let _worker = TestWorker::spawn(settings).await;
    let user = User::new(&app).await;
    let task = user.task().await;
    let declared = user.declared(&task, "a.txt", "text/plain", 5).await;
    let id = declared["attachment"]["id"].as_str().unwrap().to_owned();
    assert_eq!(upload(&app, &declared, b"hello".to_vec()).await.status(), StatusCode::OK);
    assert_eq!(user.complete(&task, &id).await.status(), StatusCode::ACCEPTED);

    let rejected = user.settled(&task, &id, Duration::from_secs(90)).await;
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(rejected["reject_reason"], "processing_failed");
    assert_eq!(upload_attempts(&app).await, 5);
}

#[tokio::test]
async fn purging_a_task_removes_its_attachments_objects() {
    let app = TestApp::spawn().await;
    let user = User::new(&app).await;
    let task = user.task().await;
    let declared = user.declared(&task, "a.txt", "text/plain", 5).await;
    assert_eq!(upload(&app, &declared, b"hello".to_vec()).await.status(), StatusCode::OK);
    let prefix = format!("users/{}/tasks/{task}/", user.id);
    assert_eq!(objects(&app, &prefix).await.len(), 1);
    assert_eq!(
        user.delete(&format!("/api/v1/tasks/{task}")).await.status(),
        StatusCode::NO_CONTENT
    );
    sqlx::query("update tasks set deleted_at = now() - interval '31 days'")
        .execute(&app.db)
        .await
        .unwrap();

    let mut settings = app.worker_settings();
    settings.cron.insert("purge_deleted".into(), "* * * * * *".into());
    let _worker = TestWorker::spawn(settings).await;
    wait_until(Duration::from_secs(20), "the purged task's objects to be deleted", || async {
        objects(&app, &prefix).await.is_empty().then_some(())
    })
    .await;
    let rows: i64 =
        sqlx::query_scalar("select count(*) from attachments").fetch_one(&app.db).await.unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn abandoned_uploads_are_forgotten_and_stuck_processing_is_rejected() {
    let app = TestApp::spawn().await;
    let user = User::new(&app).await;
    let task = user.task().await;
    let abandoned = user.declared(&task, "a.txt", "text/plain", 5).await;
    let abandoned_id = abandoned["attachment"]["id"].as_str().unwrap().to_owned();
    let abandoned_key =
        key_of(abandoned["upload"]["url"].as_str().unwrap(), &app.settings.s3.bucket);
    assert_eq!(upload(&app, &abandoned, b"hello".to_vec()).await.status(), StatusCode::OK);
    let fresh = user.declared(&task, "b.txt", "text/plain", 5).await;
    let fresh_id = fresh["attachment"]["id"].as_str().unwrap().to_owned();
    let stuck = user.declared(&task, "c.txt", "text/plain", 5).await;
    let stuck_id = stuck["attachment"]["id"].as_str().unwrap().to_owned();
    sqlx::query(
        "update attachments set created_at = now() - interval '3 hours' where id = $1::uuid",
    )
    .bind(&abandoned_id)
    .execute(&app.db)
    .await
    .unwrap();
    // As if its last attempt died with its worker an hour and more ago.
    sqlx::query("update attachments set status = 'processing', updated_at = now() - interval '2 hours' where id = $1::uuid")
        .bind(&stuck_id)
        .execute(&app.db)
        .await
        .unwrap();

    let mut settings = app.worker_settings();
    settings.cron.insert("expire_uploads".into(), "* * * * * *".into());
    let _worker = TestWorker::spawn(settings).await;
    let rejected = user.settled(&task, &stuck_id, Duration::from_secs(20)).await;
    assert_eq!(rejected["reject_reason"], "processing_failed");
    wait_until(Duration::from_secs(20), "the abandoned upload to be forgotten", || async {
        let gone = user.attachment(&task, &abandoned_id).await.status() == StatusCode::NOT_FOUND;
        (gone && !exists(&app, &abandoned_key).await).then_some(())
    })
    .await;
    assert_eq!(
        user.attachment(&task, &fresh_id).await.json::<Value>().await.unwrap()["status"],
        "pending"
    );
}

#[tokio::test]
async fn the_list_pages_newest_first_with_an_opaque_cursor() {
    let app = TestApp::spawn().await;
    let user = User::new(&app).await;
    let task = user.task().await;
    let mut declared = Vec::new();
    for i in 0..3 {
        declared.push(user.declared(&task, &format!("note {i}.txt"), "text/plain", 10).await["attachment"]["id"].as_str().unwrap().to_owned());
    }
    let base = format!("/api/v1/tasks/{task}/attachments");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("{base}?limit=2&cursor={c}"),
            None => format!("{base}?limit=2"),
        };
        let page: Value = app.get_as(&path, &user.token).await.json().await.unwrap();
        seen.extend(
            page["data"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => {
                assert!(
                    next.parse::<uuid::Uuid>().is_err(),
                    "the cursor is opaque, not a raw id: {next}"
                );
                cursor = Some(next.to_owned());
            }
            None => break,
        }
    }
    declared.reverse();
    assert_eq!(seen, declared, "every attachment once, newest first");
    for bad in [declared[0].as_str(), "not-a-cursor"] {
        let resp = app.get_as(&format!("{base}?cursor={bad}"), &user.token).await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "cursor {bad}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
}

// --- Downloads through the API --------------------------------------------------------------

/// Declares, uploads and completes a file, and waits until it is ready.
async fn ready_attachment(
    user: &User<'_>,
    task: &str,
    filename: &str,
    content_type: &str,
    bytes: Vec<u8>,
) -> Value {
    let declared = user.declared(task, filename, content_type, bytes.len()).await;
    let id = declared["attachment"]["id"].as_str().unwrap().to_owned();
    let put = upload(user.app, &declared, bytes).await;
    assert_eq!(put.status(), StatusCode::OK, "{}", put.text().await.unwrap());
    assert_eq!(user.complete(task, &id).await.status(), StatusCode::ACCEPTED);
    let ready = user.settled(task, &id, Duration::from_secs(60)).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    ready
}

/// The problem a refused link gets: its status and the code of its `type`.
async fn refusal(app: &TestApp, url: &str) -> (StatusCode, String) {
    let resp = app.client.get(url).send().await.unwrap();
    let status = resp.status();
    assert_eq!(resp.headers()["content-type"], "application/problem+json", "{url}");
    let problem: Value = resp.json().await.unwrap();
    let code = problem["type"].as_str().unwrap().strip_prefix("urn:tasklane:problem:").unwrap();
    (status, code.to_owned())
}

/// `url` with query parameter `name` set to `value`.
fn with_query(url: &str, name: &str, value: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name { value.to_owned() } else { v.into_owned() };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url.to_string()
}

fn query_of(url: &str, name: &str) -> String {
    let url = url::Url::parse(url).unwrap();
    url.query_pairs().find(|(k, _)| k == name).unwrap().1.into_owned()
}

#[tokio::test]
async fn downloads_come_from_the_api_with_nosniff_a_sandbox_and_a_disposition() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let user = User::new(&app).await;
    let task = user.task().await;
    let bytes = png(640, 480);
    let ready = ready_attachment(&user, &task, PNG_NAME, "image/png", bytes.clone()).await;
    let id = ready["id"].as_str().unwrap();

    for (link, segment) in [("download", "content"), ("thumbnail", "thumbnail")] {
        let url = url::Url::parse(ready[link]["url"].as_str().unwrap()).unwrap();
        // The link leads to the API, not to the store, and names the attachment.
        assert_eq!(url.origin(), url::Url::parse(&app.address).unwrap().origin(), "{link}");
        assert_eq!(url.path(), format!("/api/v1/tasks/{task}/attachments/{id}/{segment}"));
        let expires_at: chrono::DateTime<chrono::Utc> =
            ready[link]["expires_at"].as_str().unwrap().parse().unwrap();
        let ttl = expires_at - chrono::Utc::now();
        assert!(ttl <= chrono::Duration::seconds(300) && ttl > chrono::Duration::zero(), "{ttl}");
        assert_eq!(query_of(url.as_str(), "expires"), expires_at.timestamp().to_string());

        // Followed like a browser would: no bearer token.
        let resp = app.client.get(url.as_str()).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{link}");
        let headers = resp.headers().clone();
        let header = |name: &str| headers[name].to_str().unwrap().to_owned();
        assert_eq!(header("x-content-type-options"), "nosniff", "{link}");
        assert_eq!(header("content-security-policy"), "sandbox; default-src 'none'", "{link}");
        assert_eq!(header("content-type"), "image/png", "{link}");
        assert!(header("cache-control").contains("no-store"), "{link}");
        let body = resp.bytes().await.unwrap();
        assert_eq!(header("content-length"), body.len().to_string(), "{link}");
        if link == "download" {
            let disposition = header("content-disposition");
            assert!(disposition.starts_with("attachment;"), "{disposition}");
            assert!(
                disposition.contains("filename*=UTF-8''Plan%20%C3%A9t%C3%A9%20%22v2%22.png"),
                "{disposition}"
            );
            assert_eq!(body.as_ref(), bytes.as_slice());
        } else {
            assert!(header("content-disposition").starts_with("inline;"));
            let thumbnail = image::load_from_memory(&body).unwrap();
            assert_eq!((thumbnail.width(), thumbnail.height()), (256, 192));
        }
    }

    // A text file is served as text, under its name.
    let text = b"plain words\n".to_vec();
    let ready = ready_attachment(&user, &task, "notes.txt", "text/plain", text.clone()).await;
    assert!(ready["thumbnail"].is_null(), "{ready}");
    let resp = app.client.get(ready["download"]["url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert!(
        resp.headers()["content-disposition"].to_str().unwrap().contains("notes.txt"),
        "{:?}",
        resp.headers()
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), text.as_slice());
}

#[tokio::test]
async fn expired_tampered_and_borrowed_links_are_refused() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let owner = User::new(&app).await;
    let other = User::new(&app).await;
    let task = owner.task().await;
    let ready = ready_attachment(&owner, &task, "plan.png", "image/png", png(64, 48)).await;
    let id = ready["id"].as_str().unwrap().to_owned();
    let download = ready["download"]["url"].as_str().unwrap().to_owned();
    let thumbnail = ready["thumbnail"]["url"].as_str().unwrap().to_owned();
    assert_eq!(app.client.get(&download).send().await.unwrap().status(), StatusCode::OK);

    // Signed by the server's key, but already over: refused as expired.
    let links = DownloadLinks::new(
        &app.settings.jwt_secret,
        url::Url::parse(&app.address).unwrap(),
        app.settings.attachments.download_url_ttl,
    );
    let what = LinkTarget {
        task: task.parse().unwrap(),
        attachment: id.parse().unwrap(),
        target: DownloadTarget::File,
    };
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    let expired = links.url_until(what, past);
    assert_eq!(refusal(&app, &expired).await, (StatusCode::FORBIDDEN, "link_expired".into()));
    // The same key makes a live link: the refusal above is the expiry, nothing else.
    let live = links.url_until(what, chrono::Utc::now() + chrono::Duration::seconds(60));
    assert_eq!(app.client.get(&live).send().await.unwrap().status(), StatusCode::OK);

    // Any change to a link breaks its signature.
    let invalid = (StatusCode::FORBIDDEN, "invalid_link".to_owned());
    let signature = query_of(&download, "signature");
    let mut flipped = signature.clone().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let expires: i64 = query_of(&download, "expires").parse().unwrap();
    let mut no_signature = url::Url::parse(&download).unwrap();
    no_signature.set_query(Some(&format!("expires={expires}")));
    for tampered in [
        with_query(&download, "signature", &flipped),
        with_query(&download, "signature", "not base64!"),
        with_query(&download, "expires", &(expires + 3600).to_string()),
        with_query(&download, "expires", "soon"),
        no_signature.to_string(),
        // The file's signature does not open the thumbnail, nor the other way round.
        download.replace("/content?", "/thumbnail?"),
        thumbnail.replace("/thumbnail?", "/content?"),
        // Ids that are not even UUIDs are no link of ours either (not a 400).
        download.replace(&id, "null,null"),
    ] {
        assert_eq!(refusal(&app, &tampered).await, invalid, "{tampered}");
    }

    // Another user's attachment with a valid-looking link: the owner's signature does not
    // carry over to other ids, and no bearer token helps.
    let other_task = other.task().await;
    let theirs =
        ready_attachment(&other, &other_task, "theirs.png", "image/png", png(64, 48)).await;
    let their_id = theirs["id"].as_str().unwrap();
    let borrowed = download.replace(&task, &other_task).replace(&id, their_id);
    assert_ne!(borrowed, download);
    assert_eq!(refusal(&app, &borrowed).await, invalid);
    let resp = app.client.get(&borrowed).bearer_auth(&owner.token).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let only_id = download.replace(&id, their_id);
    assert_eq!(refusal(&app, &only_id).await, invalid);
    // Their own link works for them: the refusals above are the signature.
    let their_link = theirs["download"]["url"].as_str().unwrap();
    assert_eq!(app.client.get(their_link).send().await.unwrap().status(), StatusCode::OK);

    // A link outlives neither its task in the trash nor its attachment.
    assert_eq!(
        owner.delete(&format!("/api/v1/tasks/{task}")).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(refusal(&app, &download).await, (StatusCode::NOT_FOUND, "not_found".into()));
    let restored =
        app.post(&format!("/api/v1/tasks/{task}/restore"), &json!({}), Some(&owner.token)).await;
    assert_eq!(restored.status(), StatusCode::OK);
    assert_eq!(app.client.get(&download).send().await.unwrap().status(), StatusCode::OK);
    let resp = owner.delete(&format!("/api/v1/tasks/{task}/attachments/{id}")).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(refusal(&app, &download).await, (StatusCode::NOT_FOUND, "not_found".into()));
    assert_eq!(refusal(&app, &thumbnail).await, (StatusCode::NOT_FOUND, "not_found".into()));
}

#[tokio::test]
async fn a_25_mib_download_streams_through_an_api_with_a_1_mib_body_limit() {
    let app = TestApp::spawn_with(|settings| settings.max_body_bytes = 1024 * 1024).await;
    let _worker = app.spawn_worker().await;
    let user = User::new(&app).await;
    let task = user.task().await;
    let size = usize::try_from(app.settings.attachments.max_bytes).unwrap();
    assert_eq!(size, 25 * 1024 * 1024);
    // Text that differs line by line, so a truncated or reordered body shows in the hash.
    let mut bytes = Vec::with_capacity(size);
    let mut line = 0u64;
    while bytes.len() < size {
        bytes.extend_from_slice(format!("line {line:>12} of a large download\n").as_bytes());
        line += 1;
    }
    bytes.truncate(size - 1);
    bytes.push(b'\n');
    let expected = Sha256::digest(&bytes);
    let ready = ready_attachment(&user, &task, "large.txt", "text/plain", bytes).await;

    let mut resp = app.client.get(ready["download"]["url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-length"], size.to_string());
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    // Read as a stream, chunk by chunk: the body arrives in pieces, never as one buffer.
    let (mut hasher, mut received, mut chunks) = (Sha256::new(), 0, 0);
    while let Some(chunk) = resp.chunk().await.unwrap() {
        hasher.update(&chunk);
        received += chunk.len();
        chunks += 1;
    }
    assert_eq!(received, size);
    assert!(chunks > 1, "the body came in {chunks} chunk(s)");
    assert_eq!(hasher.finalize(), expected);
}

#[tokio::test]
async fn a_download_while_the_store_is_down_is_503_and_works_once_it_is_back() {
    // The API reads objects through the gate; it still signs uploads for the real store.
    let gate = TcpGate::s3(GateMode::Forward).await;
    let app = TestApp::spawn_with(|settings| settings.s3.endpoint = gate.url("http")).await;
    let _worker = app.spawn_worker().await;
    let user = User::new(&app).await;
    let task = user.task().await;
    let text = b"kept safe\n".to_vec();
    let ready = ready_attachment(&user, &task, "kept.txt", "text/plain", text.clone()).await;
    let url = ready["download"]["url"].as_str().unwrap();

    gate.set(GateMode::Refuse);
    let resp = app.client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(resp.headers()["content-type"], "application/problem+json");

    gate.set(GateMode::Forward);
    let resp = app.client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), text.as_slice());
}
