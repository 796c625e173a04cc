//! Request receipts (SPEC section 13): a caller sees what one of their own requests set in
//! motion — its jobs with kind, state, each attempt and times, and the events it published
//! — never anyone else's; an anonymous request's receipt belongs to the account it acts on;
//! and the progress of those jobs, each failed attempt included, reaches their event stream.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tasklane_testkit::{BusyMailbox, PASSWORD, TestApp, TestWorker, email_address, wait_until};

const WAIT: Duration = Duration::from_secs(20);

/// The data of the next `count` `request.progress` events of `request_id` on an SSE body.
async fn progress_of<B: AsRef<[u8]>>(
    body: &mut (impl futures::Stream<Item = reqwest::Result<B>> + Unpin),
    request_id: &str,
    count: usize,
) -> Vec<Value> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    tokio::time::timeout(WAIT, async {
        while events.len() < count {
            let chunk = body.next().await.expect("the stream stays open").unwrap();
            buffer.push_str(std::str::from_utf8(chunk.as_ref()).unwrap());
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let Some(data) = block.lines().find_map(|line| line.strip_prefix("data:")) else {
                    continue;
                };
                let event: Value = serde_json::from_str(data.trim()).unwrap();
                if event["type"] == "request.progress" && event["data"]["request_id"] == request_id
                {
                    events.push(event["data"].clone());
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{count} progress events within {WAIT:?}, got {events:?}"));
    events
}

async fn receipt(app: &TestApp, token: &str, request_id: &str) -> (StatusCode, Value) {
    let resp = app.get_as(&format!("/api/v1/requests/{request_id}"), token).await;
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_receipt_shows_the_callers_jobs_and_events_and_a_stranger_gets_404() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let email = email_address();
    let resp = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .header("x-request-id", "receipt-register-1")
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let token = resp.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    app.wait_for_emails(&email, 1, WAIT).await;
    // Registering is anonymous, but its receipt belongs to the new account: its
    // verification email, once signed in.
    let body = wait_until(WAIT, "the registration's email to succeed", || async {
        let (status, body) = receipt(&app, &token, "receipt-register-1").await;
        let kept = body["jobs"][0]["history"].as_array().is_some_and(|h| !h.is_empty());
        (status == StatusCode::OK && kept).then_some(body)
    })
    .await;
    assert_eq!(body["jobs"][0]["state"], "succeeded", "{body}");
    assert_eq!(body["jobs"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["jobs"][0]["kind"], "send_email");
    let history = body["jobs"][0]["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{body}");
    assert_eq!((&history[0]["attempt"], &history[0]["outcome"]), (&json!(1), &json!("succeeded")));

    // The caller asks for another verification link: one job, on their receipt.
    let resent = app
        .client
        .post(app.url("/api/v1/me/verification"))
        .bearer_auth(&token)
        .header("x-request-id", "receipt-resend-1")
        .send()
        .await
        .unwrap();
    assert!(resent.status().is_success(), "{}", resent.status());

    // The verification email: queued, then sent once.
    let body = wait_until(WAIT, "the verification email to succeed", || async {
        let (status, body) = receipt(&app, &token, "receipt-resend-1").await;
        (status == StatusCode::OK && body["jobs"][0]["state"] == "succeeded").then_some(body)
    })
    .await;
    assert_eq!(body["request_id"], "receipt-resend-1");
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{body}");
    let job = &jobs[0];
    assert_eq!(job["kind"], "send_email");
    assert_eq!(job["attempts"], 1);
    let at = |field: &str| {
        job[field].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap()
    };
    assert!(at("created_at") <= at("queued_at") && at("queued_at") <= at("finished_at"), "{job}");
    // Kind, state, attempts and times only: no payload, address or token.
    let mut fields: Vec<&str> = job.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["attempts", "created_at", "finished_at", "history", "id", "kind", "queued_at", "state"]
    );
    assert!(!body.to_string().contains(&email));
    assert_eq!(app.wait_for_emails(&email, 2, WAIT).await.len(), 2);

    // A request that publishes an event: trashing a task.
    let created = app.post("/api/v1/tasks", &json!({ "title": "receipt" }), Some(&token)).await;
    let task = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let deleted = app
        .client
        .delete(app.url(&format!("/api/v1/tasks/{task}")))
        .bearer_auth(&token)
        .header("x-request-id", "receipt-delete-1")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let body = wait_until(WAIT, "the task.deleted event in the receipt", || async {
        let (status, body) = receipt(&app, &token, "receipt-delete-1").await;
        (status == StatusCode::OK).then_some(body)
    })
    .await;
    assert_eq!(body["jobs"], json!([]));
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["type"], "task.deleted");
    assert!(events[0]["id"].as_str().unwrap().contains('-'), "the stream id: {body}");

    // Someone else, and an id nobody used: the same 404.
    let stranger =
        app.register(&email_address()).await["access_token"].as_str().unwrap().to_owned();
    for (token, id) in [
        (&stranger, "receipt-register-1"),
        (&stranger, "receipt-resend-1"),
        (&stranger, "receipt-delete-1"),
        (&token, "no-such-request"),
    ] {
        let (status, body) = receipt(&app, token, id).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {body}");
        assert_eq!(body["status"], 404);
    }
    let anonymous =
        app.client.get(app.url("/api/v1/requests/receipt-register-1")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn job_progress_reaches_the_callers_event_stream() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let email = email_address();
    let token = app.register(&email).await["access_token"].as_str().unwrap().to_owned();
    let stream =
        app.client.get(app.url("/api/v1/events")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let mut body = stream.bytes_stream().boxed();

    let resent = app
        .client
        .post(app.url("/api/v1/me/verification"))
        .bearer_auth(&token)
        .header("x-request-id", "progress-resend-1")
        .send()
        .await
        .unwrap();
    assert!(resent.status().is_success(), "{}", resent.status());

    // `request.progress` events of that request, in order: queued, then succeeded.
    let events = progress_of(&mut body, "progress-resend-1", 2).await;
    let states: Vec<&str> = events.iter().map(|data| data["state"].as_str().unwrap()).collect();
    assert!(events.iter().all(|data| data["kind"] == "send_email"), "{events:?}");
    assert_eq!(states, ["queued", "succeeded"]);
}

#[tokio::test]
async fn a_receipt_lists_each_attempt_and_each_failure_reaches_the_event_stream() {
    let app = TestApp::spawn().await;
    let smtp = BusyMailbox::start(false).await;
    let mut settings = app.worker_settings();
    settings.smtp_url = smtp.url().into();
    // send_email's backoff starts at 30 s: compressed, as SPEC section 9 allows.
    settings.retry_scale = 0.05;
    let _worker = TestWorker::spawn(settings).await;
    let email = email_address();
    let token = app.register(&email).await["access_token"].as_str().unwrap().to_owned();
    app.wait_for_emails(&email, 1, WAIT).await;
    let stream =
        app.client.get(app.url("/api/v1/events")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let mut stream = stream.bytes_stream().boxed();

    // The mailbox answers 450 ("mailbox busy", quoting nothing safe to show) until the
    // receipt shows a failed attempt.
    smtp.set_busy(true);
    let resent = app
        .client
        .post(app.url("/api/v1/me/verification"))
        .bearer_auth(&token)
        .header("x-request-id", "attempts-resend-1")
        .send()
        .await
        .unwrap();
    assert!(resent.status().is_success(), "{}", resent.status());
    wait_until(WAIT, "a failed attempt in the receipt", || async {
        let (_, body) = receipt(&app, &token, "attempts-resend-1").await;
        body["jobs"][0]["history"].as_array().is_some_and(|h| !h.is_empty()).then_some(())
    })
    .await;
    smtp.set_busy(false);
    // The queue tells of the success before the outcome recorder keeps the attempt.
    let body = wait_until(WAIT, "the succeeded attempt in the receipt", || async {
        let (_, body) = receipt(&app, &token, "attempts-resend-1").await;
        let history = body["jobs"][0]["history"].as_array().cloned().unwrap_or_default();
        history.last().is_some_and(|last| last["outcome"] == "succeeded").then_some(body)
    })
    .await;

    // Attempt 1 (and any other before the mailbox took it) failed with a safe reason and a
    // retry time; the last succeeded.
    let job = &body["jobs"][0];
    let history = job["history"].as_array().unwrap();
    let (last, failures) = history.split_last().unwrap();
    assert!(!failures.is_empty(), "{body}");
    for (n, attempt) in failures.iter().enumerate() {
        assert_eq!(attempt["attempt"], n + 1, "{body}");
        assert_eq!(attempt["outcome"], "failed", "{body}");
        assert_eq!(attempt["reason"], "the mail server answered 450", "{body}");
        let at = |field: &str| {
            attempt[field].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap()
        };
        assert!(at("retry_at") > at("ended_at"), "{attempt}");
    }
    assert_eq!(last["attempt"], history.len());
    assert_eq!(last["outcome"], "succeeded");
    assert_eq!(last["reason"], Value::Null);
    assert_eq!(job["attempts"], history.len());
    let text = body.to_string();
    assert!(!text.contains(&email) && !text.contains("busy"), "{body}");

    // The stream: queued, a `retrying` per failed attempt (with its reason and retry time,
    // as in the receipt), then succeeded.
    let events = progress_of(&mut stream, "attempts-resend-1", history.len() + 1).await;
    let states: Vec<&str> = events.iter().map(|data| data["state"].as_str().unwrap()).collect();
    let mut expected = vec!["queued"];
    expected.extend(failures.iter().map(|_| "retrying"));
    expected.push("succeeded");
    assert_eq!(states, expected, "{events:?}");
    for (event, attempt) in events[1..].iter().zip(failures) {
        assert_eq!(event["attempt"], attempt["attempt"]);
        assert_eq!(event["reason"], attempt["reason"]);
        let retry_at = |value: &Value| {
            value.as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap()
        };
        assert_eq!(retry_at(&event["retry_at"]), retry_at(&attempt["retry_at"]));
    }
}

#[tokio::test]
async fn a_password_resets_receipt_belongs_to_the_account_and_the_caller_learns_nothing() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let email = email_address();
    let token = app.register(&email).await["access_token"].as_str().unwrap().to_owned();
    let stranger =
        app.register(&email_address()).await["access_token"].as_str().unwrap().to_owned();
    let forgot = |address: String, request_id: &'static str| {
        let app = &app;
        async move {
            let resp = app
                .client
                .post(app.url("/api/v1/auth/forgot-password"))
                .header("x-request-id", request_id)
                .json(&json!({ "email": address }))
                .send()
                .await
                .unwrap();
            (resp.status(), resp.text().await.unwrap())
        }
    };
    // The same answer for an account and for an address nobody has.
    let known = forgot(email.clone(), "reset-known-1").await;
    let unknown = forgot(email_address(), "reset-unknown-1").await;
    assert_eq!(known, unknown);
    assert_eq!(known.0, StatusCode::ACCEPTED);

    // The account sees the reset email in the receipt once signed in; nobody else does.
    let body = wait_until(WAIT, "the reset email to succeed", || async {
        let (status, body) = receipt(&app, &token, "reset-known-1").await;
        (status == StatusCode::OK && body["jobs"][0]["state"] == "succeeded").then_some(body)
    })
    .await;
    assert_eq!(body["jobs"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["jobs"][0]["kind"], "send_email");
    assert!(!body.to_string().contains(&email));
    for (token, id) in [(&stranger, "reset-known-1"), (&stranger, "reset-unknown-1")] {
        assert_eq!(receipt(&app, token, id).await.0, StatusCode::NOT_FOUND, "{id}");
    }
}

#[tokio::test]
async fn the_task_created_events_of_a_creation_are_in_its_receipt() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let token = app.register(&email_address()).await["access_token"].as_str().unwrap().to_owned();
    let created = app
        .client
        .post(app.url("/api/v1/tasks"))
        .bearer_auth(&token)
        .header("x-request-id", "receipt-create-1")
        .json(&json!({ "title": "receipt" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let body = wait_until(WAIT, "the task.created event in the receipt", || async {
        let (status, body) = receipt(&app, &token, "receipt-create-1").await;
        (status == StatusCode::OK).then_some(body)
    })
    .await;
    assert_eq!(body["jobs"], json!([]));
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["type"], "task.created");
}
