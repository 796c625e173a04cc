//! poem-openapi's own request errors (malformed JSON, wrong content type, bad query and path
//! parameters) leave through the API's HTTP policy as problem+json. The API has no JSON
//! endpoint of its own yet, so a small OpenAPI service is mounted behind the very same
//! middleware the server uses.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use poem::http::StatusCode;
use poem::test::TestClient;
use poem::{EndpointExt, Route};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi, OpenApiService};
use tasklane_api::http::HttpPolicy;
use tasklane_api::input_guard::InputGuard;

#[derive(Object)]
struct Widget {
    name: String,
    #[oai(validator(maximum(value = "10")))]
    size: u32,
}

struct WidgetApi;

#[OpenApi]
impl WidgetApi {
    #[oai(path = "/widgets", method = "post")]
    async fn create(&self, widget: Json<Widget>) -> Json<u32> {
        Json(widget.0.size)
    }

    #[oai(path = "/widgets/:id", method = "get")]
    async fn get(&self, id: Path<uuid::Uuid>, limit: Query<Option<u8>>) -> Json<String> {
        Json(format!("{}:{:?}", id.0, limit.0))
    }
}

fn client() -> TestClient<impl poem::Endpoint> {
    let api = OpenApiService::new(WidgetApi, "test", "1");
    let document = serde_json::from_str(&api.spec()).unwrap();
    let input = Arc::new(InputGuard::from_document(&document));
    let policy = HttpPolicy {
        cors_origins: vec![],
        max_body_bytes: 1024,
        input,
        fast: None,
        logs_requests: true,
    };
    TestClient::new(Route::new().nest("/", api).with(policy))
}

async fn assert_problem(resp: poem::test::TestResponse, status: StatusCode) -> serde_json::Value {
    resp.assert_status(status);
    resp.assert_header("content-type", "application/problem+json");
    resp.assert_header("x-content-type-options", "nosniff");
    let body: serde_json::Value = resp.0.into_body().into_json().await.expect("JSON body");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["request_id"].is_string());
    assert!(!body["detail"].as_str().unwrap_or_default().is_empty());
    body
}

#[tokio::test]
async fn malformed_json_is_a_problem_400() {
    let resp = client()
        .post("/widgets")
        .content_type("application/json")
        .body(r#"{"name": "a", "size": "#)
        .send()
        .await;
    assert_problem(resp, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn invalid_field_is_a_problem_naming_it() {
    let resp = client()
        .post("/widgets")
        .content_type("application/json")
        .body(r#"{"name": "a", "size": 11}"#)
        .send()
        .await;
    let body = assert_problem(resp, StatusCode::BAD_REQUEST).await;
    assert!(body["detail"].as_str().unwrap().contains("size"), "{body}");
}

#[tokio::test]
async fn wrong_content_type_is_a_problem_415() {
    let resp = client().post("/widgets").content_type("text/plain").body("name=a").send().await;
    assert_problem(resp, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
}

#[tokio::test]
async fn bad_path_and_query_parameters_are_problems() {
    let resp = client().get("/widgets/not-a-uuid").send().await;
    assert_problem(resp, StatusCode::BAD_REQUEST).await;
    let resp = client().get(format!("/widgets/{}?limit=999", uuid::Uuid::nil())).send().await;
    let body = assert_problem(resp, StatusCode::BAD_REQUEST).await;
    assert!(body["detail"].as_str().unwrap().contains("limit"), "{body}");
}

#[tokio::test]
async fn handler_output_passes_through_untouched() {
    let resp = client()
        .post("/widgets")
        .content_type("application/json")
        .body(r#"{"name": "a", "size": 7}"#)
        .send()
        .await;
    resp.assert_status_is_ok();
    resp.assert_text("7").await;
}

/// poem-openapi's `String` reads `false` as `"false"`; the guard in front of it refuses what
/// the schema forbids, for any operation, without a line in the handler.
#[tokio::test]
async fn a_boolean_or_number_for_a_string_is_a_problem_400_naming_the_field() {
    for name in ["false", "12", "1.5"] {
        let resp = client()
            .post("/widgets")
            .content_type("application/json")
            .body(format!(r#"{{"name": {name}, "size": 7}}"#))
            .send()
            .await;
        let body = assert_problem(resp, StatusCode::BAD_REQUEST).await;
        assert_eq!(body["errors"][0]["field"], "name", "{body}");
        assert_eq!(body["errors"][0]["code"], "wrong_type", "{body}");
    }
}

#[tokio::test]
async fn a_nul_character_in_a_body_or_parameter_is_a_problem_422_naming_it() {
    let resp = client()
        .post("/widgets")
        .content_type("application/json; charset=utf-8")
        .body(r#"{"name": "a\u0000b", "size": 7}"#)
        .send()
        .await;
    let body = assert_problem(resp, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["errors"][0]["field"], "name", "{body}");
    assert_eq!(body["errors"][0]["code"], "nul_character", "{body}");
    let resp = client().get("/widgets/a%00b").send().await;
    let body = assert_problem(resp, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["errors"][0]["field"], "id", "{body}");
}
