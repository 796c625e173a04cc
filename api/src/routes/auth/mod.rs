//! `/api/v1/auth`: register, login, refresh, logout, email verification and password reset
//! (SPEC section 4). Every email is a `send_email` job written to the outbox in the same
//! transaction as the change that causes it.

mod types;

use std::time::Duration;

use poem::Request;
use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::payload::Json;
use tasklane_shared::domain::users::EmailTokenPurpose;
use tasklane_shared::{db, trace};
use uuid::Uuid;

pub use self::types::*;
use crate::auth::tokens::hash_token;
use crate::auth::{client_ip, normalize_email, password};
use crate::http::RequestId;
use crate::problem::{FieldError, Problem, ServerError};
use crate::services::users::{self, RefreshGrant, UserRow};
use crate::state::AppState;
use crate::tags::ApiTags;

/// How long a password reset link works.
const RESET_TTL: Duration = Duration::from_secs(30 * 60);
/// Reset emails per account per hour; more requests are answered the same and send nothing.
const RESETS_PER_HOUR: i64 = 3;
const MAX_DISPLAY_NAME: usize = 100;
const INVALID_LOGIN: &str = "the email or password is incorrect";

pub struct AuthApi;

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
        let mut tx = db::begin(&state.db, "register").await?;
        let inserted = sqlx::query!(
            "insert into users (id, email, password_hash, display_name) values ($1, $2, $3, $4)
             on conflict (email) do nothing",
            id,
            email,
            hash,
            display_name.as_deref()
        )
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
        // The new account owns this request's receipt (its verification email).
        trace::own_receipt(id);
        users::send_verification(&mut tx, id, &email, display_name.clone(), &request_id.0.0)
            .await?;
        let grant = users::start_session(&mut *tx, id, state.tokens.refresh_ttl).await?;
        let user = users::find(&mut *tx, id)
            .await?
            .ok_or_else(|| ServerError::internal("the new user vanished"))?;
        tx.commit().await?;
        tracing::info!(user = %id, "account registered");
        Ok(RegisterResponse::Created(Json(session(&state, user, grant)?)))
    }

    /// Sign in with email and password.
    ///
    /// One answer (401, same body) for an unknown email, a wrong password and a disabled
    /// account. A password longer than the policy allows is 422 `too_long` before anything
    /// is looked up or hashed. After 5 failures for an email from one address within 15 minutes: 429.
    #[oai(path = "/login", method = "post")]
    async fn login(
        &self,
        state: Data<&AppState>,
        req: &Request,
        body: Json<LoginRequest>,
    ) -> Result<LoginResponse, ServerError> {
        // Before the limit, the database and argon2: a megabyte of password costs a length
        // check, and the answer says nothing about the account.
        if let Err(error) = password::check_length("password", &body.password) {
            return Ok(LoginResponse::Invalid(Json(Problem::validation(vec![error]))));
        }
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

        let row =
            sqlx::query!("select id, password_hash, disabled from users where email = $1", email)
                .fetch_optional(&state.db)
                .await?;
        let (id, hash, disabled) = match row {
            Some(row) => (Some(row.id), Some(row.password_hash), row.disabled),
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
        let grant = users::start_session(&mut *tx, id, state.tokens.refresh_ttl).await?;
        let user = users::find(&mut *tx, id)
            .await?
            .ok_or_else(|| ServerError::internal("the user vanished"))?;
        tx.commit().await?;
        if promoted {
            state.accounts.changed(id).await;
        }
        Ok(LoginResponse::Ok(Json(session(&state, user, grant)?)))
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
        let row = sqlx::query!(
            r#"select t.id, t.user_id, t.family_id, t.rotated_at is not null as "rotated!",
                      t.revoked_at is not null or t.expires_at < now() as "dead!", u.disabled
               from refresh_tokens t join users u on u.id = t.user_id
               where t.token_hash = $1
               for update of t"#,
            hash_token(&body.refresh_token)
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(unauthorized("the refresh token is not valid"));
        };
        let (token_id, user_id, family) = (row.id, row.user_id, row.family_id);
        if row.rotated {
            let revoked = sqlx::query!(
                "update refresh_tokens set revoked_at = now()
                 where family_id = $1 and revoked_at is null",
                family
            )
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            state.accounts.sessions_ended(user_id, vec![family]).await;
            tracing::warn!(user = %user_id, %family, revoked, "refresh token reused; the login's tokens are revoked");
            return Ok(unauthorized(
                "this refresh token was already used; the session has been revoked",
            ));
        }
        if row.dead || row.disabled {
            return Ok(unauthorized("the refresh token is not valid"));
        }
        sqlx::query!("update refresh_tokens set rotated_at = now() where id = $1", token_id)
            .execute(&mut *tx)
            .await?;
        let refresh_token =
            users::issue_refresh(&mut *tx, user_id, family, state.tokens.refresh_ttl).await?;
        let user = users::find(&mut *tx, user_id)
            .await?
            .ok_or_else(|| ServerError::internal("the user vanished"))?;
        tx.commit().await?;
        let grant = RefreshGrant { family, token: refresh_token };
        Ok(RefreshResponse::Ok(Json(session(&state, user, grant)?)))
    }

    /// Sign out: revokes the login the refresh token belongs to. Always 204.
    ///
    /// The login's access tokens stop working at once too (401); the account's other
    /// sessions are not affected.
    #[oai(path = "/logout", method = "post")]
    async fn logout(
        &self,
        state: Data<&AppState>,
        body: Json<RefreshRequest>,
    ) -> Result<NoContentResponse, ServerError> {
        let ended = sqlx::query!(
            "update refresh_tokens set revoked_at = now()
             where revoked_at is null
               and family_id = (select family_id from refresh_tokens where token_hash = $1)
             returning user_id, family_id",
            hash_token(&body.refresh_token)
        )
        .fetch_all(&state.db)
        .await?;
        if let Some(session) = ended.first() {
            state.accounts.sessions_ended(session.user_id, vec![session.family_id]).await;
        }
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
        let mut tx = db::begin(&state.db, "forgot_password").await?;
        // Locking the user serialises concurrent requests, so the hourly limit holds.
        let user = sqlx::query!(
            "select id, display_name from users where email = $1 and not disabled for update",
            email
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(user) = user else {
            return Ok(accepted);
        };
        let (user_id, display_name) = (user.id, user.display_name);
        let purpose = EmailTokenPurpose::ResetPassword;
        let recent = users::email_tokens_last_hour(&mut *tx, user_id, purpose).await?;
        if recent >= RESETS_PER_HOUR {
            tracing::info!(user = %user_id, "reset email limit reached; sending nothing");
            return Ok(accepted);
        }
        // The account owns the receipt; the anonymous caller sees the same answer either way.
        trace::own_receipt(user_id);
        users::send_reset(&mut tx, user_id, email, display_name, RESET_TTL, &request_id.0.0)
            .await?;
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
        let target = sqlx::query!(
            "select u.id, u.email, u.display_name
             from email_tokens t join users u on u.id = t.user_id
             where t.token_hash = $1 and t.purpose = 'reset_password' and t.used_at is null
               and t.expires_at > now()",
            token_hash
        )
        .fetch_optional(&state.db)
        .await?;
        let Some(target) = target else {
            return Ok(TokenActionResponse::InvalidToken(Json(invalid_token())));
        };
        let (user_id, email, display_name) = (target.id, target.email, target.display_name);
        if let Err(error) = password::check_policy(
            "new_password",
            &body.new_password,
            &email,
            display_name.as_deref(),
        ) {
            return Ok(TokenActionResponse::Invalid(Json(Problem::validation(vec![error]))));
        }
        let hash = state.hasher.hash(body.new_password).await?;

        let mut tx = db::begin(&state.db, "reset_password").await?;
        // Used once: the update succeeds for exactly one of two concurrent resets.
        let used = sqlx::query!(
            "update email_tokens set used_at = now()
             where token_hash = $1 and purpose = 'reset_password' and used_at is null
               and expires_at > now()",
            token_hash
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if used != 1 {
            return Ok(TokenActionResponse::InvalidToken(Json(invalid_token())));
        }
        trace::own_receipt(user_id);
        let ended = users::change_password(
            &mut tx,
            user_id,
            &email,
            display_name,
            &hash,
            None,
            &request_id.0.0,
        )
        .await?;
        tx.commit().await?;
        state.accounts.sessions_ended(user_id, ended).await;
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
        let user = sqlx::query_scalar!(
            "update email_tokens set used_at = now()
             where token_hash = $1 and purpose = 'verify_email' and used_at is null
               and expires_at > now()
             returning user_id",
            hash_token(&body.token)
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(user_id) = user else {
            return Ok(VerifyEmailResponse::InvalidToken(Json(invalid_token())));
        };
        sqlx::query!(
            "update users set email_verified_at = coalesce(email_verified_at, now()),
                              updated_at = now()
             where id = $1",
            user_id
        )
        .execute(&mut *tx)
        .await?;
        let promoted =
            users::promote_configured_admin(&mut *tx, user_id, &state.settings.auth.admin_emails)
                .await?;
        tx.commit().await?;
        if promoted {
            tracing::info!(user = %user_id, "verified address is a configured admin; promoted");
        }
        // The account now shows a verified address (`GET /me`), and maybe a new role.
        state.accounts.changed(user_id).await;
        Ok(VerifyEmailResponse::NoContent)
    }
}

/// The answer to a sign-in: the account, a new access token and the session's refresh token.
fn session(state: &AppState, user: UserRow, grant: RefreshGrant) -> Result<Session, ServerError> {
    let access_token = state.tokens.issue(user.id, user.role, grant.family)?;
    Ok(Session {
        user: user.into(),
        access_token,
        refresh_token: grant.token,
        token_type: "Bearer".into(),
        expires_in: state.tokens.access_ttl.as_secs(),
    })
}
