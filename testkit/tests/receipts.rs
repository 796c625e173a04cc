//! Request receipts (SPEC section 13): a caller sees what one of their own requests set in
//! motion — its jobs with kind, state, attempts and times, and the events it published —
//! never anyone else's (nor anonymous requests'), and the progress of those jobs reaches
//! their event stream.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tasklane_testkit::{PASSWORD, TestApp, email_address, wait_until};

const WAIT: Duration = Duration::from_secs(20);

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
    // An anonymous request (registering) has no caller, so no receipt.
    assert_eq!(receipt(&app, &token, "receipt-register-1").await.0, StatusCode::NOT_FOUND);

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
        ["attempts", "created_at", "finished_at", "id", "kind", "queued_at", "state"]
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
    let mut buffer = String::new();
    let mut states = Vec::new();
    tokio::time::timeout(WAIT, async {
        while states.len() < 2 {
            let chunk = body.next().await.expect("the stream stays open").unwrap();
            buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let Some(data) = block.lines().find_map(|line| line.strip_prefix("data:")) else {
                    continue;
                };
                let event: Value = serde_json::from_str(data.trim()).unwrap();
                if event["type"] == "request.progress"
                    && event["data"]["request_id"] == "progress-resend-1"
                {
                    assert_eq!(event["data"]["kind"], "send_email");
                    states.push(event["data"]["state"].as_str().unwrap().to_owned());
                }
            }
        }
    })
    .await
    .expect("both progress events within the deadline");
    assert_eq!(states, ["queued", "succeeded"]);
}
