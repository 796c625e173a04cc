//! Traces (SPEC section 13): one request is one trace, from the HTTP request through the
//! outbox and the queue to the job's SMTP call, exported over OTLP by the API and by a real
//! worker process, each attempt of a retried job with its own wait in the queue; and a
//! collector that is down never slows the API.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tasklane_shared::jobs::Queue;
use tasklane_shared::telemetry;
use tasklane_testkit::{
    BusyMailbox, OtlpReceiver, PASSWORD, ReceivedSpan, TestApp, base_settings, email_address,
    wait_until,
};

/// The caller's own trace and span, continued by the API.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|span| span.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {:#?}", names(spans)))
}

fn names(spans: &[ReceivedSpan]) -> Vec<(String, String, String, String)> {
    spans
        .iter()
        .map(|s| (s.service.clone(), s.name.clone(), s.span_id.clone(), s.parent_span_id.clone()))
        .collect()
}

/// Whether `ancestor` is `span`'s parent, grandparent, ... within `spans`.
fn descends_from(spans: &[ReceivedSpan], span: &ReceivedSpan, ancestor: &ReceivedSpan) -> bool {
    let by_id: HashMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut parent = span.parent_span_id.as_str();
    while let Some(next) = by_id.get(parent) {
        if next.span_id == ancestor.span_id {
            return true;
        }
        parent = next.parent_span_id.as_str();
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_registration_is_one_trace_from_the_request_to_the_smtp_call() {
    let collector = OtlpReceiver::start().await;
    let mut settings = base_settings();
    settings.trace.endpoint = Some(collector.traces_url());
    let _tracing = telemetry::init_tracing(&settings, telemetry::API_SERVICE);
    let app = TestApp::spawn().await;
    let _worker = app
        .worker_process()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint)
        .spawn()
        .expect("worker starts");

    let email = email_address();
    let resp = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .json(&serde_json::json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .expect("request sent");
    assert_eq!(resp.status(), 201);
    app.wait_for_emails(&email, 1, Duration::from_secs(30)).await;

    let wanted = ["db.transaction", "outbox.wait", "queue.wait", "job send_email", "smtp.send"];
    let spans = wait_until(Duration::from_secs(30), "the whole trace at the collector", || {
        let spans = collector.trace(TRACE_ID);
        let complete = wanted.iter().all(|name| spans.iter().any(|s| &s.name == name))
            && spans.iter().any(|s| s.parent_span_id == CALLER_SPAN);
        std::future::ready(complete.then_some(spans))
    })
    .await;

    // The API's span continues the caller's trace and is named by its route.
    let api = spans.iter().find(|s| s.parent_span_id == CALLER_SPAN).expect("the API span");
    assert_eq!(api.service, "tasklane-api");
    assert_eq!(api.name, "POST /api/v1/auth/register");
    assert_eq!(api.attribute("http.response.status_code"), Some("201"));

    // The transaction that wrote the account and its outbox row is a child of the request,
    // inside it.
    let transaction = named(&spans, "db.transaction");
    assert_eq!(transaction.service, "tasklane-api");
    assert_eq!(transaction.parent_span_id, api.span_id, "{:#?}", names(&spans));
    assert_eq!(transaction.attribute("db.operation"), Some("register"));
    assert!(transaction.start_unix_nano >= api.start_unix_nano);
    assert!(transaction.end_unix_nano <= api.end_unix_nano);

    // The outbox wait, the queue wait and the attempt hang off the request; the SMTP call
    // off the attempt. The worker exported them under its own service name.
    let outbox_wait = named(&spans, "outbox.wait");
    let queue_wait = named(&spans, "queue.wait");
    let attempt = named(&spans, "job send_email");
    let smtp = named(&spans, "smtp.send");
    for span in [outbox_wait, queue_wait, attempt] {
        assert!(
            descends_from(&spans, span, api),
            "{} under the API span: {:#?}",
            span.name,
            names(&spans)
        );
        assert_eq!(span.service, "tasklane-worker", "{}", span.name);
    }
    assert_eq!(smtp.parent_span_id, attempt.span_id, "{:#?}", names(&spans));
    assert_eq!(smtp.attribute("smtp.code"), Some("250"));
    assert_eq!(attempt.attribute("attempt"), Some("1"));

    // The waits are where the time went, in order: outbox, then queue, then the attempt.
    assert!(outbox_wait.start_unix_nano >= api.start_unix_nano);
    assert!(outbox_wait.end_unix_nano <= queue_wait.start_unix_nano + 5_000_000);
    assert!(queue_wait.end_unix_nano <= attempt.start_unix_nano + 5_000_000);
    assert_eq!(outbox_wait.attribute("job.id"), attempt.attribute("id"));
    assert_eq!(queue_wait.attribute("job.id"), attempt.attribute("id"));

    // The admin view of the job names its trace.
    let store = app.spawn_store();
    let job_id = attempt.attribute("id").expect("the job id");
    let job = store.job(Queue::Emails, job_id).await.expect("Redis").expect("the job");
    assert_eq!(job.trace_id.as_deref(), Some(TRACE_ID));

    // The job record in Postgres keeps the trace it belongs to.
    let traceparent: Option<String> =
        sqlx::query_scalar("select traceparent from outbox where kind = 'send_email'")
            .fetch_one(&app.db)
            .await
            .expect("the job record");
    assert!(traceparent.expect("a traceparent").contains(TRACE_ID));
}

/// A retried email: every attempt gets its own wait in the queue, the second one from when
/// its retry fell due to its claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_attempt_of_a_retried_job_has_its_own_queue_wait() {
    let collector = OtlpReceiver::start().await;
    let mut settings = base_settings();
    settings.trace.endpoint = Some(collector.traces_url());
    let _tracing = telemetry::init_tracing(&settings, telemetry::API_SERVICE);
    let app = TestApp::spawn().await;
    let smtp = BusyMailbox::start(true).await;
    let _worker = app
        .worker_process()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint)
        .env("SMTP_URL", smtp.url())
        // send_email's backoff starts at 30 s: compressed, as SPEC section 9 allows.
        .env("TASKLANE_RETRY_SCALE", "0.05")
        .spawn()
        .expect("worker starts");
    let email = email_address();
    let resp = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .json(&serde_json::json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .expect("request sent");
    assert_eq!(resp.status(), 201);

    // The first attempt fails (450); then the mailbox takes the email.
    let attempt_ends =
        |spans: &[ReceivedSpan]| spans.iter().filter(|s| s.name == "job send_email").count();
    wait_until(Duration::from_secs(30), "a failed first attempt", || {
        std::future::ready((attempt_ends(&collector.trace(TRACE_ID)) >= 1).then_some(()))
    })
    .await;
    smtp.set_busy(false);
    app.wait_for_emails(&email, 1, Duration::from_secs(30)).await;
    let spans = wait_until(Duration::from_secs(30), "every attempt and its wait", || {
        let spans = collector.trace(TRACE_ID);
        let attempts = attempt_ends(&spans);
        let waits = spans.iter().filter(|s| s.name == "queue.wait").count();
        let sent =
            spans.iter().any(|s| s.name == "smtp.send" && s.attribute("smtp.code") == Some("250"));
        std::future::ready((sent && attempts >= 2 && waits == attempts).then_some(spans))
    })
    .await;

    let api = spans.iter().find(|s| s.parent_span_id == CALLER_SPAN).expect("the API span");
    let mut attempts: Vec<&ReceivedSpan> =
        spans.iter().filter(|s| s.name == "job send_email").collect();
    attempts.sort_by_key(|s| s.start_unix_nano);
    for (n, attempt) in attempts.iter().enumerate() {
        let number = (n + 1).to_string();
        assert_eq!(attempt.attribute("attempt"), Some(number.as_str()));
        let wait = spans
            .iter()
            .find(|s| s.name == "queue.wait" && s.attribute("job.attempt") == Some(&number))
            .unwrap_or_else(|| panic!("no queue.wait of attempt {number}: {:#?}", names(&spans)));
        assert!(descends_from(&spans, wait, api), "{:#?}", names(&spans));
        assert_eq!(wait.attribute("job.id"), attempt.attribute("id"));
        // The wait ends as its attempt starts (Redis' clock and the worker's, one machine).
        assert!(wait.end_unix_nano <= attempt.start_unix_nano + 5_000_000, "attempt {number}");
        if n > 0 {
            // A retry waits from when it fell due: after the failed attempt ended.
            let failed = attempts[n - 1];
            assert!(wait.start_unix_nano + 5_000_000 >= failed.end_unix_nano, "attempt {number}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_keeps_its_latency_with_the_collector_down() {
    // A collector that takes connections and never answers (the worst kind of down: every
    // export waits out its timeout).
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = hanging.local_addr().expect("address");
    let mut settings = base_settings();
    settings.trace.endpoint = Some(format!("http://{addr}/v1/traces"));
    let _tracing = telemetry::init_tracing(&settings, telemetry::API_SERVICE);
    let app = TestApp::spawn().await;
    let session = app.register(&email_address()).await;
    let token = session["access_token"].as_str().expect("token").to_owned();

    let mut slowest = Duration::ZERO;
    for _ in 0..200 {
        let started = Instant::now();
        let resp = app.get_as("/api/v1/me", &token).await;
        assert_eq!(resp.status(), 200);
        slowest = slowest.max(started.elapsed());
    }
    // Every span of those requests was handed to the exporter off the request path; a
    // request that waited on the collector would wait out the 5 s export timeout.
    assert!(slowest < Duration::from_secs(2), "slowest request took {slowest:?}");
    drop(hanging);
}

/// Without an OTLP endpoint (the default) no span is exported, yet the trace is still
/// continued: the job a request causes carries the caller's trace id under a span id of the
/// API's own, with the caller's sampling flag, and a request without `traceparent` starts a
/// trace of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_an_exporter_a_request_still_continues_its_trace_into_its_jobs() {
    let mut settings = base_settings();
    settings.trace.endpoint = None;
    let _tracing = telemetry::init_tracing(&settings, telemetry::API_SERVICE);
    let app = TestApp::spawn().await;

    let mut stored = Vec::new();
    for traceparent in [Some(format!("00-{TRACE_ID}-{CALLER_SPAN}-01")), None] {
        let mut request = app.client.post(app.url("/api/v1/auth/register"));
        if let Some(value) = &traceparent {
            request = request.header("traceparent", value);
        }
        let resp = request
            .json(&serde_json::json!({ "email": email_address(), "password": PASSWORD }))
            .send()
            .await
            .expect("request sent");
        assert_eq!(resp.status(), 201);
        let request_id = resp.headers()["x-request-id"].to_str().expect("ascii").to_owned();
        let traceparent: Option<String> =
            sqlx::query_scalar("select traceparent from outbox where request_id = $1 limit 1")
                .bind(&request_id)
                .fetch_one(&app.db)
                .await
                .expect("the request's job");
        stored.push(traceparent.expect("a traceparent"));
    }

    let parts = |traceparent: &str| -> Vec<String> {
        traceparent.split('-').map(str::to_owned).collect::<Vec<_>>()
    };
    let continued = parts(&stored[0]);
    assert_eq!(continued.len(), 4, "{}", stored[0]);
    assert_eq!(continued[0], "00");
    assert_eq!(continued[1], TRACE_ID, "the caller's trace");
    assert_eq!(continued[2].len(), 16);
    assert_ne!(continued[2], CALLER_SPAN, "a span of the API's own");
    assert_eq!(continued[3], "01", "the caller's sampling decision");

    let started = parts(&stored[1]);
    assert_eq!(started.len(), 4, "{}", stored[1]);
    assert_eq!(started[1].len(), 32);
    assert_ne!(started[1], TRACE_ID);
    assert_ne!(started[1], "0".repeat(32), "a valid trace id");
    assert_eq!(started[3], "01", "sampled at the default ratio of 1");
}
