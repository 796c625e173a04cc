//! The HTTP conventions of SPEC sections 2-3, against the real API process.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use reqwest::StatusCode;
use tasklane_testkit::{TestApp, TestRedis, wait_until};

fn assert_security_headers(resp: &reqwest::Response) {
    let h = resp.headers();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert!(h["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    assert!(h.contains_key("x-request-id"));
}

async fn problem(resp: reqwest::Response, status: StatusCode) -> serde_json::Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert_security_headers(&resp);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert_eq!(body["request_id"], request_id.as_str());
    assert!(body["type"].as_str().unwrap().starts_with("urn:tasklane:problem:"));
    assert!(!body["detail"].as_str().unwrap().is_empty());
    body
}

#[tokio::test]
async fn live_is_200_with_security_headers() {
    let app = TestApp::spawn().await;
    let resp = app.client.get(app.url("/health/live")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_security_headers(&resp);
    assert_eq!(resp.headers()["cache-control"], "no-store");
}

#[tokio::test]
async fn ready_is_200_when_postgres_and_redis_answer() {
    let app = TestApp::spawn().await;
    let resp = app.client.get(app.url("/health/ready")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn ready_is_503_naming_redis_while_redis_is_down_and_recovers() {
    let mut redis = TestRedis::start().await;
    let url = redis.url();
    let app = TestApp::spawn_with(|s| s.redis_url = url.into()).await;
    let ready = || async { app.client.get(app.url("/health/ready")).send().await.unwrap() };
    assert_eq!(ready().await.status(), StatusCode::OK);

    redis.stop().await;
    let resp = ready().await;
    assert_eq!(resp.headers()["retry-after"], "5");
    let body = problem(resp, StatusCode::SERVICE_UNAVAILABLE).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("redis"), "{detail}");
    assert!(!detail.contains("postgres"), "{detail}");

    redis.start_again().await;
    wait_until(Duration::from_secs(10), "ready again", || async {
        (ready().await.status() == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test]
async fn unknown_route_is_a_problem_404() {
    let app = TestApp::spawn().await;
    let resp = app.client.get(app.url("/api/v1/nothing-here")).send().await.unwrap();
    let body = problem(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(body["type"], "urn:tasklane:problem:not_found");
}

#[tokio::test]
async fn wrong_method_is_a_problem_405() {
    let app = TestApp::spawn().await;
    let resp = app.client.delete(app.url("/health/live")).send().await.unwrap();
    problem(resp, StatusCode::METHOD_NOT_ALLOWED).await;
}

#[tokio::test]
async fn oversized_body_is_a_problem_413_by_length_and_when_streamed() {
    let app = TestApp::spawn_with(|s| s.max_body_bytes = 1024).await;
    let resp =
        app.client.post(app.url("/health/live")).body(vec![b'x'; 2048]).send().await.unwrap();
    let body = problem(resp, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert!(body["detail"].as_str().unwrap().contains("1024"));

    // Without Content-Length (chunked), the limit still holds.
    let chunks = futures::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 512])));
    let resp = app
        .client
        .post(app.url("/health/live"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    problem(resp, StatusCode::PAYLOAD_TOO_LARGE).await;
}

#[tokio::test]
async fn request_id_is_echoed_when_plain_and_replaced_otherwise() {
    let app = TestApp::spawn().await;
    let resp = app
        .client
        .get(app.url("/health/live"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");

    let resp = app
        .client
        .get(app.url("/health/live"))
        .header("x-request-id", "bad id\twith spaces")
        .send()
        .await
        .unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(generated, "bad id\twith spaces");
    assert!(uuid::Uuid::parse_str(generated).is_ok());

    let resp = app.client.get(app.url("/health/live")).send().await.unwrap();
    assert!(uuid::Uuid::parse_str(resp.headers()["x-request-id"].to_str().unwrap()).is_ok());
}

#[tokio::test]
async fn cors_echoes_an_allowed_origin_and_ignores_others() {
    let app = TestApp::spawn_with(|s| s.cors_origins = vec!["https://app.example".into()]).await;
    let resp = app
        .client
        .get(app.url("/health/live"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://app.example");
    assert_eq!(resp.headers()["access-control-allow-credentials"], "true");
    assert!(resp.headers().get_all("vary").iter().any(|v| v.to_str().unwrap().contains("Origin")));

    let resp = app
        .client
        .get(app.url("/health/live"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "same request, just no CORS grant");
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
    assert!(resp.headers().get_all("vary").iter().any(|v| v.to_str().unwrap().contains("Origin")));

    let resp = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/health/live"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PATCH")
        .header("access-control-request-headers", "authorization, if-match")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://app.example");
    assert!(resp.headers()["access-control-allow-methods"].to_str().unwrap().contains("PATCH"));
    assert!(resp.headers()["access-control-allow-headers"].to_str().unwrap().contains("if-match"));
    assert_ne!(resp.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = TestApp::spawn().await;
    app.client.get(app.url("/health/live")).send().await.unwrap();
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total{")
            && l.contains(r#"route="/health/live""#)
            && l.contains(r#"status="200""#)),
        "{text}"
    );
    assert!(text.contains("http_request_duration_seconds_bucket{"), "latency is a histogram");
}

#[tokio::test]
async fn docs_serve_swagger_ui_with_its_own_csp() {
    let app = TestApp::spawn().await;
    let resp = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'unsafe-inline'"), "{csp}");
    let html = resp.text().await.unwrap();
    assert!(html.contains("swagger"));
    // The completed document (the one served as JSON), not poem-openapi's own.
    assert!(html.contains("nul_character") && html.contains("\"nullable\": true"));
}

#[tokio::test]
async fn served_spec_equals_the_committed_openapi_json() {
    let app = TestApp::spawn().await;
    let served =
        app.client.get(app.url("/api/openapi.json")).send().await.unwrap().text().await.unwrap();
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.json"))
            .expect("openapi.json at the repository root");
    assert_eq!(
        served, committed,
        "openapi.json is stale: run `cargo run -p tasklane-api -- openapi > openapi.json` \
         (or `target/debug/tasklane-api openapi > openapi.json`) and commit it"
    );
}

#[tokio::test]
async fn an_http2_body_without_a_length_is_still_limited() {
    let app = TestApp::spawn_with(|s| s.max_body_bytes = 1024).await;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let chunks = futures::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 512])));
    let resp = h2
        .post(app.url("/api/v1/auth/login"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    problem(resp, StatusCode::PAYLOAD_TOO_LARGE).await;
}
