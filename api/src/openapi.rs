//! The OpenAPI document: every API struct of the service in one place, at the top of the
//! import graph (nothing imports it but the app and `main`; the tags routes share are in
//! [`crate::tags`]).
//!
//! [`service`] needs no state, so `tasklane-api openapi` and the drift test build the same
//! document the server serves without a database. [`document`] is poem-openapi's document
//! completed by [`complete`]: the statuses every operation answers before its handler and
//! `nullable` on optional fields, added in one place rather than on every type.

use poem_openapi::OpenApiService;
use serde_json::{Map, Value};

use crate::ops::OpsApi;
use crate::routes::admin_jobs::AdminJobsApi;
use crate::routes::admin_live::AdminLiveApi;
use crate::routes::admin_ops::AdminOpsApi;
use crate::routes::admin_outbox::AdminOutboxApi;
use crate::routes::admin_users::AdminUsersApi;
use crate::routes::attachments::AttachmentsApi;
use crate::routes::attachments::download::DownloadsApi;
use crate::routes::auth::AuthApi;
use crate::routes::events::EventsApi;
use crate::routes::flags::{AdminFlagsApi, FlagsApi};
use crate::routes::me::MeApi;
use crate::routes::requests::RequestsApi;
use crate::routes::tasks::TasksApi;

pub type Apis = (
    AuthApi,
    MeApi,
    FlagsApi,
    TasksApi,
    AttachmentsApi,
    DownloadsApi,
    EventsApi,
    RequestsApi,
    AdminUsersApi,
    AdminFlagsApi,
    AdminJobsApi,
    AdminOpsApi,
    AdminOutboxApi,
    AdminLiveApi,
    OpsApi,
);

pub fn service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            AuthApi,
            MeApi,
            FlagsApi,
            TasksApi,
            AttachmentsApi,
            DownloadsApi,
            EventsApi,
            RequestsApi,
            AdminUsersApi,
            AdminFlagsApi,
            AdminJobsApi,
            AdminOpsApi,
            AdminOutboxApi,
            AdminLiveApi,
            OpsApi,
        ),
        "Tasklane API",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Task management over a durable job queue. Errors are `application/problem+json` \
             (RFC 9457). Every response carries `X-Request-Id`. To call authenticated \
             operations from this page: register or log in, copy `access_token`, press \
             Authorize and paste it. Besides the statuses each operation lists, any request \
             may get 404 (no such route), 405 (method not allowed) or 413 (body over the \
             limit), as problem+json. A field with no value is sent as `null` (it is declared \
             `nullable`), never left out.",
    )
}

/// The document as served and committed: poem-openapi's, completed with what every
/// operation answers before its handler runs (see [`complete`]).
pub fn document() -> Value {
    let mut document: Value =
        serde_json::from_str(&service().spec()).unwrap_or_else(|_| Value::Object(Map::new()));
    complete(&mut document);
    document
}

/// The document as committed in `openapi.json` (pretty JSON with a trailing newline).
pub fn spec_json() -> String {
    let mut spec = serde_json::to_string_pretty(&document()).unwrap_or_default();
    spec.push('\n');
    spec
}

/// Swagger UI over [`document`] (poem-openapi's page embeds its own, uncompleted, one).
pub fn swagger_ui_html() -> String {
    let service = service();
    service.swagger_ui_html().replacen(&service.spec(), &spec_json(), 1)
}

/// What poem-openapi leaves out of the document, added once for every operation and
/// every schema, so a new one is covered without thought:
///
/// - 400 on an operation with a JSON body or a path or query parameter: malformed JSON, a
///   wrong field type (refused by poem-openapi or by [`crate::input_guard`]), a parameter
///   that does not parse.
/// - 415 on an operation with a body: no `Content-Type`, or not JSON.
/// - 422 on an operation with any input: a NUL character in a string
///   ([`crate::input_guard`]); an operation that already lists 422 keeps its description.
/// - `nullable` on every property that is not required: an optional field with no value is
///   sent as `null` (and accepted as `null`, which poem-openapi reads as absent).
pub fn complete(document: &mut Value) {
    let paths = document.get_mut("paths").and_then(Value::as_object_mut);
    for item in paths.into_iter().flat_map(|paths| paths.values_mut()) {
        for op in item.as_object_mut().into_iter().flat_map(|item| item.values_mut()) {
            let body = op.get("requestBody").is_some();
            let params = op["parameters"].as_array().is_some_and(|params| {
                params.iter().any(|p| p["in"] == "path" || p["in"] == "query")
            });
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            let mut add = |status: &str, description: &str| {
                responses.entry(status).or_insert_with(|| problem_response(description));
            };
            if body || params {
                add(
                    "400",
                    "Malformed JSON, a field of the wrong type (`errors` names it, e.g. `false` \
                     for a string), or a path or query parameter that does not parse.",
                );
                add("422", "A string holds a NUL character (`nul_character`); `errors` names it.");
            }
            if body {
                add("415", "The body is missing or not `application/json`.");
            }
        }
    }
    let schemas = document.pointer_mut("/components/schemas").and_then(Value::as_object_mut);
    for schema in schemas.into_iter().flat_map(|schemas| schemas.values_mut()) {
        let required: Vec<Value> = schema["required"].as_array().cloned().unwrap_or_default();
        let properties = schema.get_mut("properties").and_then(Value::as_object_mut);
        for (name, property) in properties.into_iter().flatten() {
            if required.iter().any(|r| r == name.as_str()) {
                continue;
            }
            // OpenAPI 3.0 ignores anything beside a `$ref`: wrap it to say `nullable`.
            if let Some(target) = property.get("$ref").cloned() {
                *property = serde_json::json!({ "allOf": [{ "$ref": target }] });
            }
            if let Some(property) = property.as_object_mut() {
                property.insert("nullable".to_owned(), Value::Bool(true));
            }
        }
    }
}

fn problem_response(description: &str) -> Value {
    serde_json::json!({
        "description": description,
        "content": { "application/problem+json": {
            "schema": { "$ref": "#/components/schemas/Problem" }
        } }
    })
}
