//! `/api/v1/auth`: register, login, refresh, logout, email verification and password reset
//! (SPEC section 4). Every email is a `send_email` job written to the outbox in the same
//! transaction as the change that causes it.

use std::time::Duration;

use poem::Request;
use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sqlx::{PgConnection, Row};
use tasklane_shared::jobs::{EmailMessage, SendEmail};
use tasklane_shared::outbox;
use uuid::Uuid;

use crate::auth::tokens::{hash_token, new_opaque_token};
use crate::auth::{Role, client_ip, normalize_email, password};
use crate::http::RequestId;
use crate::openapi::ApiTags;
use crate::problem::{FieldError, Problem, ServerError};
use crate::routes::users::{self, UserRow, UserView};
use crate::state::AppState;

/// How long an email verification link works.
const VERIFY_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a password reset link works.
const RESET_TTL: Duration = Duration::from_secs(30 * 60);
/// Reset emails per account per hour; more requests are answered the same and send nothing.
const RESETS_PER_HOUR: i64 = 3;
const MAX_DISPLAY_NAME: usize = 100;
const INVALID_LOGIN: &str = "the email or password is incorrect";

pub struct AuthApi;

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

fn invalid_token() -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid_token",
        "the token is invalid, expired or already used",
    )
}

#[OpenApi(prefix_path = "/api/v1/auth", tag = "ApiTags::Auth")]
impl AuthApi {
    /// Create an account.
    ///
    /// Signs the new account in and sends a verification email (a `send_email` job written in
    /// the same transaction as the account).
    #[oai(path = "/register", method = "post")]
    async fn register(
        &self,
        state: Data<&AppState>,
        request_id: Data<&RequestId>,
        body: Json<RegisterRequest>,
    ) -> Result<RegisterResponse, ServerError> {
        let body = body.0;
        let mut errors = Vec::new();
        let email = normalize_email(&body.email);
        if email.is_none() {
            errors.push(FieldError::new("email", "invalid", "is not an email address"));
        }
        let display_name = body.display_name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
        if display_name.as_ref().is_some_and(|n| n.chars().count() > MAX_DISPLAY_NAME) {
            errors.push(FieldError::new(
                "display_name",
                "too_long",
                format!("must be at most {MAX_DISPLAY_NAME} characters"),
            ));
        }
        if let Err(error) = password::check_policy(
            "password",
            &body.password,
            email.as_deref().unwrap_or(""),
            display_name.as_deref(),
        ) {
            errors.push(error);
        }
        let Some(email) = email.filter(|_| errors.is_empty()) else {
            return Ok(RegisterResponse::Invalid(Json(Problem::validation(errors))));
        };

        let hash = state.hasher.hash(body.password).await?;
        let id = Uuid::now_v7();
        let mut tx = state.db.begin().await?;
        let inserted = sqlx::query(
            "insert into users (id, email, password_hash, display_name) values ($1, $2, $3, $4)
             on conflict (email) do nothing",
        )
        .bind(id)
        .bind(&email)
        .bind(&hash)
        .bind(&display_name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(RegisterResponse::Conflict(Json(Problem::new(
                StatusCode::CONFLICT,
                "email_taken",
                "an account with this email already exists",
            ))));
        }
        send_verification(&mut tx, id, &email, display_name.clone(), &request_id.0.0).await?;
        let (family, refresh_token) =
            users::start_session(&mut *tx, id, state.tokens.refresh_ttl).await?;
        let user = users::find(&mut *tx, id)
            .await?
            .ok_or_else(|| ServerError::internal("the new user vanished"))?;
        tx.commit().await?;
        tracing::info!(user = %id, "account registered");
        Ok(RegisterResponse::Created(Json(session(&state, user, family, refresh_token)?)))
    }

    /// Sign in with email and password.
    ///
    /// One answer (401, same body) for an unknown email, a wrong password and a disabled
    /// account. After 5 failures for an email from one address within 15 minutes: 429.
    #[oai(path = "/login", method = "post")]
    async fn login(
        &self,
        state: Data<&AppState>,
        req: &Request,
        body: Json<LoginRequest>,
    ) -> Result<LoginResponse, ServerError> {
        let email =
            normalize_email(&body.email).unwrap_or_else(|| body.email.trim().to_lowercase());
        let peer = req.remote_addr().as_socket_addr().map(|addr| addr.ip());
        // Every X-Forwarded-For line, in order: a proxy may add its own line rather than
        // append to the client's.
        let forwarded: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let forwarded = (!forwarded.is_empty()).then(|| forwarded.join(","));
        let ip =
            client_ip::client_ip(peer, forwarded.as_deref(), &state.settings.auth.trusted_proxies);
        match state.throttle.attempt(&email, ip).await {
            Ok(Some(retry_after)) => {
                let problem = Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_attempts",
                    "too many failed sign-ins; try again later",
                );
                return Ok(LoginResponse::TooManyRequests(Json(problem), retry_after));
            }
            Ok(None) => {}
            Err(err) => {
                tracing::error!(error = %err, "cannot check the login limit");
                let problem = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "dependency_unavailable",
                    "sign-in is unavailable for a moment",
                );
                return Ok(LoginResponse::Unavailable(Json(problem), 5));
            }
        }

        let row: Option<(Uuid, String, bool)> =
            sqlx::query_as("select id, password_hash, disabled from users where email = $1")
                .bind(&email)
                .fetch_optional(&state.db)
                .await?;
        let (id, hash, disabled) = match row {
            Some((id, hash, disabled)) => (Some(id), Some(hash), disabled),
            None => (None, None, false),
        };
        let matches = state.hasher.verify(body.0.password, hash).await?;
        let Some(id) = id.filter(|_| matches && !disabled) else {
            return Ok(LoginResponse::Unauthorized(Json(Problem::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                INVALID_LOGIN,
            ))));
        };
        if let Err(err) = state.throttle.clear(&email, ip).await {
            tracing::warn!(error = %err, "cannot reset the login counter");
        }
        let mut tx = state.db.begin().await?;
        let promoted =
            users::promote_configured_admin(&mut *tx, id, &state.settings.auth.admin_emails)
                .await?;
        let (family, refresh_token) =
            users::start_session(&mut *tx, id, state.tokens.refresh_ttl).await?;
        let user = users::find(&mut *tx, id)
            .await?
            .ok_or_else(|| ServerError::internal("the user vanished"))?;
        tx.commit().await?;
        if promoted {
            state.accounts.changed(id).await;
        }
        Ok(LoginResponse::Ok(Json(session(&state, user, family, refresh_token)?)))
    }

    /// Exchange a refresh token for a new pair (rotation).
    ///
    /// Each refresh token works once. Presenting one that was already exchanged means it was
    /// copied: every token of that login is revoked, the newer ones included.
    #[oai(path = "/refresh", method = "post")]
    async fn refresh(
        &self,
        state: Data<&AppState>,
        body: Json<RefreshRequest>,
    ) -> Result<RefreshResponse, ServerError> {
        let unauthorized = |detail: &str| {
            RefreshResponse::Unauthorized(Json(Problem::new(
                StatusCode::UNAUTHORIZED,
                "invalid_refresh_token",
                detail,
            )))
        };
        let mut tx = state.db.begin().await?;
        let row = sqlx::query(
            "select t.id, t.user_id, t.family_id, t.rotated_at is not null as rotated,
                    t.revoked_at is not null or t.expires_at < now() as dead, u.disabled
             from refresh_tokens t join users u on u.id = t.user_id
             where t.token_hash = $1
             for update of t",
        )
        .bind(hash_token(&body.refresh_token))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(unauthorized("the refresh token is not valid"));
        };
        let (token_id, user_id, family): (Uuid, Uuid, Uuid) =
            (row.try_get("id")?, row.try_get("user_id")?, row.try_get("family_id")?);
        if row.try_get::<bool, _>("rotated")? {
            let revoked = sqlx::query("update refresh_tokens set revoked_at = now() where family_id = $1 and revoked_at is null")
                .bind(family)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            tracing::warn!(user = %user_id, %family, revoked, "refresh token reused; the login's tokens are revoked");
            return Ok(unauthorized(
                "this refresh token was already used; the session has been revoked",
            ));
        }
        if row.try_get::<bool, _>("dead")? || row.try_get::<bool, _>("disabled")? {
            return Ok(unauthorized("the refresh token is not valid"));
        }
        sqlx::query("update refresh_tokens set rotated_at = now() where id = $1")
            .bind(token_id)
            .execute(&mut *tx)
            .await?;
        let refresh_token =
            users::issue_refresh(&mut *tx, user_id, family, state.tokens.refresh_ttl).await?;
        let user = users::find(&mut *tx, user_id)
            .await?
            .ok_or_else(|| ServerError::internal("the user vanished"))?;
        tx.commit().await?;
        Ok(RefreshResponse::Ok(Json(session(&state, user, family, refresh_token)?)))
    }

    /// Sign out: revokes the login the refresh token belongs to. Always 204.
    #[oai(path = "/logout", method = "post")]
    async fn logout(
        &self,
        state: Data<&AppState>,
        body: Json<RefreshRequest>,
    ) -> Result<NoContentResponse, ServerError> {
        sqlx::query(
            "update refresh_tokens set revoked_at = now()
             where revoked_at is null
               and family_id = (select family_id from refresh_tokens where token_hash = $1)",
        )
        .bind(hash_token(&body.refresh_token))
        .execute(&state.db)
        .await?;
        Ok(NoContentResponse::NoContent)
    }

    /// Ask for a password reset email.
    ///
    /// Always 202 with the same body, whether or not the account exists. For an existing
    /// account: a single-use link valid 30 minutes (earlier ones stop working), at most 3
    /// emails per hour.
    #[oai(path = "/forgot-password", method = "post")]
    async fn forgot_password(
        &self,
        state: Data<&AppState>,
        request_id: Data<&RequestId>,
        body: Json<EmailRequest>,
    ) -> Result<AcceptedResponse, ServerError> {
        let accepted = AcceptedResponse::Accepted(Json(Accepted {
            message: "if an account exists for this address, a reset link is on its way".into(),
        }));
        let Some(email) = normalize_email(&body.email) else {
            return Ok(accepted);
        };
        let mut tx = state.db.begin().await?;
        // Locking the user serialises concurrent requests, so the hourly limit holds.
        let user: Option<(Uuid, Option<String>)> = sqlx::query_as(
            "select id, display_name from users where email = $1 and not disabled for update",
        )
        .bind(&email)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((user_id, display_name)) = user else {
            return Ok(accepted);
        };
        let recent: i64 = sqlx::query_scalar(
            "select count(*) from email_tokens
             where user_id = $1 and purpose = 'reset_password' and created_at > now() - interval '1 hour'",
        )
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
        if recent >= RESETS_PER_HOUR {
            tracing::info!(user = %user_id, "reset email limit reached; sending nothing");
            return Ok(accepted);
        }
        sqlx::query("update email_tokens set used_at = now() where user_id = $1 and purpose = 'reset_password' and used_at is null")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let (token_id, token) =
            create_email_token(&mut tx, user_id, "reset_password", RESET_TTL).await?;
        let email_job = SendEmail {
            idempotency_key: format!("reset_password:{token_id}"),
            to: email,
            message: EmailMessage::ResetPassword { display_name, token },
        };
        outbox::enqueue(&mut tx, &email_job, Some(&request_id.0.0)).await?;
        tx.commit().await?;
        Ok(accepted)
    }

    /// Set a new password with the token from a reset email.
    ///
    /// Signs out every session (all refresh tokens are revoked; none is issued) and sends a
    /// "password changed" email.
    #[oai(path = "/reset-password", method = "post")]
    async fn reset_password(
        &self,
        state: Data<&AppState>,
        request_id: Data<&RequestId>,
        body: Json<ResetPasswordRequest>,
    ) -> Result<TokenActionResponse, ServerError> {
        let body = body.0;
        let token_hash = hash_token(&body.token);
        let target: Option<(Uuid, String, Option<String>)> = sqlx::query_as(
            "select u.id, u.email, u.display_name from email_tokens t join users u on u.id = t.user_id
             where t.token_hash = $1 and t.purpose = 'reset_password' and t.used_at is null and t.expires_at > now()",
        )
        .bind(&token_hash)
        .fetch_optional(&state.db)
        .await?;
        let Some((user_id, email, display_name)) = target else {
            return Ok(TokenActionResponse::InvalidToken(Json(invalid_token())));
        };
        if let Err(error) = password::check_policy(
            "new_password",
            &body.new_password,
            &email,
            display_name.as_deref(),
        ) {
            return Ok(TokenActionResponse::Invalid(Json(Problem::validation(vec![error]))));
        }
        let hash = state.hasher.hash(body.new_password).await?;

        let mut tx = state.db.begin().await?;
        // Used once: the update succeeds for exactly one of two concurrent resets.
        let used = sqlx::query(
            "update email_tokens set used_at = now()
             where token_hash = $1 and purpose = 'reset_password' and used_at is null and expires_at > now()",
        )
        .bind(&token_hash)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if used != 1 {
            return Ok(TokenActionResponse::InvalidToken(Json(invalid_token())));
        }
        change_password(&mut tx, user_id, &email, display_name, &hash, None, &request_id.0.0)
            .await?;
        tx.commit().await?;
        tracing::info!(user = %user_id, "password reset");
        Ok(TokenActionResponse::NoContent)
    }

    /// Confirm an email address with the token from the verification email.
    ///
    /// An address listed in `TASKLANE_ADMIN_EMAILS` becomes an admin when it is verified.
    #[oai(path = "/verify-email", method = "post")]
    async fn verify_email(
        &self,
        state: Data<&AppState>,
        body: Json<TokenRequest>,
    ) -> Result<VerifyEmailResponse, ServerError> {
        let mut tx = state.db.begin().await?;
        let user: Option<Uuid> = sqlx::query_scalar(
            "update email_tokens set used_at = now()
             where token_hash = $1 and purpose = 'verify_email' and used_at is null and expires_at > now()
             returning user_id",
        )
        .bind(hash_token(&body.token))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(user_id) = user else {
            return Ok(VerifyEmailResponse::InvalidToken(Json(invalid_token())));
        };
        sqlx::query("update users set email_verified_at = coalesce(email_verified_at, now()), updated_at = now() where id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let promoted =
            users::promote_configured_admin(&mut *tx, user_id, &state.settings.auth.admin_emails)
                .await?;
        tx.commit().await?;
        if promoted {
            tracing::info!(user = %user_id, "verified address is a configured admin; promoted");
            state.accounts.changed(user_id).await;
        }
        Ok(VerifyEmailResponse::NoContent)
    }
}

/// Sets a new password hash, revokes sessions (all, or all but `keep`) and queues the
/// "password changed" email, on the caller's transaction.
pub async fn change_password(
    tx: &mut PgConnection,
    user: Uuid,
    email: &str,
    display_name: Option<String>,
    hash: &str,
    keep: Option<Uuid>,
    request_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("update users set password_hash = $2, updated_at = now() where id = $1")
        .bind(user)
        .bind(hash)
        .execute(&mut *tx)
        .await?;
    users::revoke_sessions(&mut *tx, user, keep).await?;
    let job = SendEmail {
        idempotency_key: format!("password_changed:{}", Uuid::now_v7()),
        to: email.to_owned(),
        message: EmailMessage::PasswordChanged { display_name },
    };
    outbox::enqueue(tx, &job, Some(request_id)).await?;
    Ok(())
}

/// Voids earlier verification links and sends a new one, on the caller's transaction.
pub async fn send_verification(
    tx: &mut PgConnection,
    user: Uuid,
    email: &str,
    display_name: Option<String>,
    request_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("update email_tokens set used_at = now() where user_id = $1 and purpose = 'verify_email' and used_at is null")
        .bind(user)
        .execute(&mut *tx)
        .await?;
    let (token_id, token) = create_email_token(tx, user, "verify_email", VERIFY_TTL).await?;
    let job = SendEmail {
        idempotency_key: format!("verify_email:{token_id}"),
        to: email.to_owned(),
        message: EmailMessage::VerifyEmail { display_name, token },
    };
    outbox::enqueue(tx, &job, Some(request_id)).await?;
    Ok(())
}

/// Stores a new single-use token (hashed) and returns its id and the token.
async fn create_email_token(
    tx: &mut PgConnection,
    user: Uuid,
    purpose: &str,
    ttl: Duration,
) -> Result<(Uuid, String), sqlx::Error> {
    let id = Uuid::now_v7();
    let token = new_opaque_token();
    sqlx::query(
        "insert into email_tokens (id, user_id, purpose, token_hash, expires_at)
         values ($1, $2, $3, $4, now() + make_interval(secs => $5))",
    )
    .bind(id)
    .bind(user)
    .bind(purpose)
    .bind(hash_token(&token))
    .bind(ttl.as_secs_f64())
    .execute(tx)
    .await?;
    Ok((id, token))
}

fn session(
    state: &AppState,
    user: UserRow,
    family: Uuid,
    refresh_token: String,
) -> Result<Session, ServerError> {
    let role = Role::parse(&user.role).unwrap_or(Role::User);
    let access_token = state.tokens.issue(user.id, role, family)?;
    Ok(Session {
        user: user.into(),
        access_token,
        refresh_token,
        token_type: "Bearer".into(),
        expires_in: state.tokens.access_ttl.as_secs(),
    })
}
