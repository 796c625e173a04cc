//! Errors as RFC 9457 `application/problem+json`, the one error shape of the API.
//!
//! Handlers return typed problems in their response enums; everything else that fails a
//! request (unknown route, wrong method, a body poem-openapi cannot parse, an oversized body,
//! an internal error) arrives at the HTTP layer as a `poem::Error` and is turned into the
//! same shape by [`Problem::from_error`]. Internal details never reach the client: a 5xx says
//! only that something failed, and the cause is logged with the request id.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::Object;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// A problem detail (RFC 9457).
#[derive(Debug, Clone, Object, serde::Serialize)]
#[oai(example)]
pub struct Problem {
    /// A URI naming the kind of problem; stable, so clients may branch on it.
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request, for a person.
    pub detail: String,
    /// The request's `X-Request-Id`; quote it when reporting a problem.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// One entry per invalid field, when the problem is invalid input.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    /// On a 412: the resource's current version (its `ETag` without quotes).
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<i32>,
}

/// One invalid field of a request.
#[derive(Debug, Clone, Object, serde::Serialize)]
pub struct FieldError {
    /// Path of the field, e.g. `title` or `tasks[3].title`.
    pub field: String,
    /// A stable machine-readable code, e.g. `too_long`.
    pub code: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl FieldError {
    pub fn new(
        field: impl Into<String>,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self { field: field.into(), code: code.into(), message: message.into() }
    }
}

impl Problem {
    /// 422 listing every invalid field.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        let detail = match errors.as_slice() {
            [one] => format!("{} {}", one.field, one.message),
            _ => format!("invalid fields: {}", fields.join(", ")),
        };
        let mut problem = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", detail);
        problem.errors = Some(errors);
        problem
    }

    /// A problem of the given status; `code` becomes the `type` URN.
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self {
            problem_type: format!("urn:tasklane:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            request_id: None,
            errors: None,
            current_version: None,
        }
    }

    pub fn with_request_id(mut self, request_id: &str) -> Self {
        self.request_id = Some(request_id.to_owned());
        self
    }

    /// Maps any error that escaped a handler to a problem; 5xx details are logged, not sent.
    pub fn from_error(err: &poem::Error) -> Self {
        let status = err.status();
        let code = match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNPROCESSABLE_ENTITY => "validation_failed",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            s if s.is_server_error() => "internal",
            _ => "error",
        };
        let detail = if status.is_server_error() {
            tracing::error!(error = %err, ?status, "request failed");
            "the server could not complete the request; quote the request id when reporting it"
                .to_owned()
        } else {
            match status {
                StatusCode::NOT_FOUND => "no resource matches this path".to_owned(),
                StatusCode::METHOD_NOT_ALLOWED => {
                    "this path does not support this method".to_owned()
                }
                _ => err.to_string(),
            }
        };
        Self::new(status, code, detail)
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl poem_openapi::types::Example for Problem {
    fn example() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no resource matches this path")
            .with_request_id("0193a0c4-5b1e-7c4e-9a51-3f2b9d1e8a77")
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        Response::builder().status(self.status_code()).content_type(CONTENT_TYPE).body(body)
    }
}

/// Failures on our side, as documented responses: every operation can answer them.
/// Details are logged (with the request id, from the request's span), never sent.
#[derive(poem_openapi::ApiResponse)]
pub enum ServerError {
    /// Something failed on our side; quote the request id when reporting it.
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(poem_openapi::payload::Json<Problem>),
    /// A dependency (the database or Redis) is unavailable; retry after `Retry-After` seconds.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(poem_openapi::payload::Json<Problem>, #[oai(header = "Retry-After")] u32),
}

impl ServerError {
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "request failed");
        Self::Internal(poem_openapi::payload::Json(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server could not complete the request; quote the request id when reporting it",
        )))
    }

    fn unavailable(what: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{what} unavailable");
        Self::Unavailable(
            poem_openapi::payload::Json(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "dependency_unavailable",
                format!("{what} is unavailable; retry shortly"),
            )),
            5,
        )
    }
}

/// Database outages (refused, cut, shutting down, no connection within the pool's acquire
/// timeout) are 503 with `Retry-After`, never 500: see `tasklane_shared::db::is_unavailable`.
impl From<sqlx::Error> for ServerError {
    fn from(err: sqlx::Error) -> Self {
        if tasklane_shared::db::is_unavailable(&err) {
            Self::unavailable("the database", err)
        } else {
            Self::internal(err)
        }
    }
}

impl From<redis::RedisError> for ServerError {
    fn from(err: redis::RedisError) -> Self {
        Self::unavailable("redis", err)
    }
}

/// An outage anywhere in the chain (a service wrapped a database or Redis error with
/// context) is still an outage.
impl From<anyhow::Error> for ServerError {
    fn from(err: anyhow::Error) -> Self {
        if tasklane_shared::db::chain_is_unavailable(&err) {
            Self::unavailable("the database", format!("{err:#}"))
        } else if err.chain().any(|cause| cause.is::<redis::RedisError>()) {
            Self::unavailable("redis", format!("{err:#}"))
        } else {
            Self::internal(format!("{err:#}"))
        }
    }
}

/// The failures of an authenticated operation: its bearer token, and our side.
#[derive(poem_openapi::ApiResponse)]
pub enum AuthedError {
    /// The access token is missing, invalid or expired, or the account is disabled
    /// (`WWW-Authenticate: Bearer`).
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(poem_openapi::payload::Json<Problem>),
    /// Something failed on our side; quote the request id when reporting it.
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(poem_openapi::payload::Json<Problem>),
    /// A dependency (the database or Redis) is unavailable; retry after `Retry-After` seconds.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(poem_openapi::payload::Json<Problem>, #[oai(header = "Retry-After")] u32),
}

impl<E: Into<ServerError>> From<E> for AuthedError {
    fn from(err: E) -> Self {
        match err.into() {
            ServerError::Internal(problem) => Self::Internal(problem),
            ServerError::Unavailable(problem, retry) => Self::Unavailable(problem, retry),
        }
    }
}

/// The responses of an operation whose body has its own bad-request handler, with the
/// failures decided before the operation ran passed through as they are.
///
/// poem-openapi hands *every* extractor's error to an operation's bad-request handler,
/// the bearer check's included, and that handler can only answer with one of the
/// operation's own variants (400 or 422). So a 401 for a bad token, or the 503 of a token
/// check that could not reach the database, would come out as a 400. Wrapped in `Checked`,
/// such an operation answers them as every other operation does; only errors of the
/// request's own parsing reach its handler.
pub enum Checked<T> {
    Ran(T),
    Refused(poem::Error),
}

impl<T> From<T> for Checked<T> {
    fn from(response: T) -> Self {
        Self::Ran(response)
    }
}

impl<T: poem_openapi::ApiResponse> poem_openapi::ApiResponse for Checked<T> {
    const BAD_REQUEST_HANDLER: bool = T::BAD_REQUEST_HANDLER;

    fn meta() -> poem_openapi::registry::MetaResponses {
        T::meta()
    }

    fn register(registry: &mut poem_openapi::registry::Registry) {
        T::register(registry);
    }

    fn from_parse_request_error(err: poem::Error) -> Self {
        let status = err.status();
        let refused = status == StatusCode::UNAUTHORIZED
            || status == StatusCode::FORBIDDEN
            || status.is_server_error();
        if refused { Self::Refused(err) } else { Self::Ran(T::from_parse_request_error(err)) }
    }
}

impl<T: IntoResponse> IntoResponse for Checked<T> {
    fn into_response(self) -> Response {
        match self {
            Self::Ran(response) => response.into_response(),
            // A documented response (the token check's `ServerError`) as it was built;
            // anything else (a 401) in the problem shape, as the HTTP layer would.
            Self::Refused(err) if err.is_from_response() => err.into_response(),
            Self::Refused(err) => Problem::from_error(&err).into_response(),
        }
    }
}
