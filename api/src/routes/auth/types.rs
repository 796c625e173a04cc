//! The request and response types of `/api/v1/auth`: what the handlers in [`super`] take
//! and answer, as the document describes them.

use poem::http::StatusCode;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

use crate::problem::Problem;
use crate::routes::user_view::UserView;

#[derive(Debug, Object)]
#[oai(example)]
pub struct RegisterRequest {
    /// Your email address; a verification link is sent to it.
    pub email: String,
    /// 12 to 128 characters, not a common password, not your email.
    pub password: String,
    /// How you want to be greeted (up to 100 characters).
    pub display_name: Option<String>,
}

impl poem_openapi::types::Example for RegisterRequest {
    fn example() -> Self {
        Self {
            email: "ada@example.com".into(),
            password: "correct horse battery staple".into(),
            display_name: Some("Ada".into()),
        }
    }
}

#[derive(Debug, Object)]
#[oai(example)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

impl poem_openapi::types::Example for LoginRequest {
    fn example() -> Self {
        Self { email: "ada@example.com".into(), password: "correct horse battery staple".into() }
    }
}

/// A signed-in session.
#[derive(Debug, Object)]
pub struct Session {
    pub user: UserView,
    /// JWT for `Authorization: Bearer …`; valid for `expires_in` seconds.
    pub access_token: String,
    /// Opaque; exchange it at `/auth/refresh` for a new pair. Each one works once.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Lifetime of the access token, in seconds.
    pub expires_in: u64,
}

#[derive(Debug, Object)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Object)]
pub struct EmailRequest {
    pub email: String,
}

#[derive(Debug, Object)]
pub struct ResetPasswordRequest {
    /// The token from the reset link.
    pub token: String,
    pub new_password: String,
}

#[derive(Debug, Object)]
pub struct TokenRequest {
    /// The token from the verification link.
    pub token: String,
}

/// The same answer whether or not the account exists.
#[derive(Debug, Object)]
pub struct Accepted {
    pub message: String,
}

#[derive(ApiResponse)]
pub enum RegisterResponse {
    /// The account exists and is signed in; a verification email is on its way.
    #[oai(status = 201)]
    Created(Json<Session>),
    /// An account with this email already exists.
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// A field is invalid; `errors` says which and why.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
}

#[derive(ApiResponse)]
pub enum LoginResponse {
    #[oai(status = 200)]
    Ok(Json<Session>),
    /// Unknown email, wrong password or disabled account (one answer for all three).
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(Json<Problem>),
    /// The password is longer than any the policy accepts (`too_long`); nothing was checked.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
    /// Too many failures for this email from this address; retry after `Retry-After` seconds.
    #[oai(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Json<Problem>, #[oai(header = "Retry-After")] u64),
    /// The login limit cannot be checked (Redis is down).
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u64),
}

#[derive(ApiResponse)]
pub enum RefreshResponse {
    /// A new pair; the token presented is now used up.
    #[oai(status = 200)]
    Ok(Json<Session>),
    /// Unknown, expired, revoked or already-used token. Presenting an already-used token
    /// revokes every token of its login.
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(Json<Problem>),
}

#[derive(ApiResponse)]
pub enum NoContentResponse {
    #[oai(status = 204)]
    NoContent,
}

#[derive(ApiResponse)]
pub enum AcceptedResponse {
    /// Always, whether or not the account exists.
    #[oai(status = 202)]
    Accepted(Json<Accepted>),
}

#[derive(ApiResponse)]
pub enum TokenActionResponse {
    #[oai(status = 204)]
    NoContent,
    /// The token is unknown, expired or already used (`invalid_token`).
    #[oai(status = 400, content_type = "application/problem+json")]
    InvalidToken(Json<Problem>),
    /// The new password breaks the policy.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
}

#[derive(ApiResponse)]
pub enum VerifyEmailResponse {
    #[oai(status = 204)]
    NoContent,
    /// The token is unknown, expired or already used (`invalid_token`).
    #[oai(status = 400, content_type = "application/problem+json")]
    InvalidToken(Json<Problem>),
}

pub(super) fn invalid_token() -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid_token",
        "the token is invalid, expired or already used",
    )
}
