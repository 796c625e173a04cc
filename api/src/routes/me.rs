//! `/api/v1/me`: the caller's own account.

use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{ApiResponse, Object, OpenApi};
use tasklane_shared::domain::users::EmailTokenPurpose;

use crate::auth::accounts::Account;
use crate::auth::password;
use crate::http::RequestId;
use crate::problem::{AuthedError, FieldError, Problem, ServerError};
use crate::raw_json::RawJson;
use crate::routes::user_view::UserView;
use crate::security::BearerAuth;
use crate::services::users;
use crate::state::AppState;
use crate::tags::ApiTags;

pub struct MeApi;

/// Changes to your account; absent fields stay as they are.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct UpdateMeRequest {
    /// Up to 100 characters; `null` removes it.
    pub display_name: MaybeUndefined<String>,
    /// An IANA time zone such as `Europe/Paris`.
    pub timezone: Option<String>,
    pub digest_enabled: Option<bool>,
    /// Local hour of the daily digest, 0-23.
    pub digest_hour: Option<u8>,
}

#[derive(Debug, Object)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    pub new_password: String,
}

#[derive(ApiResponse)]
pub enum MeResponse {
    #[oai(status = 200)]
    Ok(Json<UserView>),
    /// A field is invalid; `errors` says which and why.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
}

#[derive(ApiResponse)]
pub enum ResendVerificationResponse {
    /// A new link is on its way; earlier ones stop working.
    #[oai(status = 202)]
    Accepted,
    /// The address is already verified.
    #[oai(status = 409, content_type = "application/problem+json")]
    AlreadyVerified(Json<Problem>),
    /// At most 3 verification emails per hour.
    #[oai(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Json<Problem>, #[oai(header = "Retry-After")] u64),
}

/// Verification emails per account per hour.
const VERIFICATIONS_PER_HOUR: i64 = 3;

#[derive(ApiResponse)]
pub enum GetMeResponse {
    #[oai(status = 200)]
    Ok(RawJson<UserView>),
}

#[derive(ApiResponse)]
pub enum ChangePasswordResponse {
    /// Changed; every other session is signed out and a notice is emailed.
    #[oai(status = 204)]
    NoContent,
    /// The current password is wrong or too long, or the new one breaks the policy (both
    /// checked before any hashing).
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
    /// Too many wrong current passwords (5 per 15 minutes).
    #[oai(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Json<Problem>, #[oai(header = "Retry-After")] u64),
}

/// `GET /me`'s answer from the account as the account cache holds it: its view is rendered
/// once per cache entry (the hot reads answer with it too).
pub(crate) fn answer(account: &Account) -> GetMeResponse {
    let body = account
        .rendered
        .get_or_init(|| RawJson::<UserView>::render(&UserView::from(account)).as_bytes().clone());
    GetMeResponse::Ok(RawJson::from_rendered(body.clone()))
}

#[OpenApi(prefix_path = "/api/v1/me", tag = "ApiTags::Account")]
impl MeApi {
    /// Your account.
    ///
    /// Answered from the server's cache of callers' accounts, which every change of the
    /// account (through any instance) drops before the next read.
    #[oai(path = "/", method = "get")]
    async fn get(&self, auth: BearerAuth) -> Result<GetMeResponse, AuthedError> {
        // The account was read (or found cached) to authenticate the call.
        Ok(answer(&auth.0.account))
    }

    /// Update your profile and digest preferences.
    #[oai(path = "/", method = "patch")]
    async fn update(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        body: Json<UpdateMeRequest>,
    ) -> Result<MeResponse, AuthedError> {
        let body = body.0;
        let mut errors = Vec::new();
        let display_name = match &body.display_name {
            MaybeUndefined::Undefined => None,
            MaybeUndefined::Null => Some(None),
            MaybeUndefined::Value(name) => {
                let name = name.trim().to_owned();
                if name.is_empty() || name.chars().count() > 100 {
                    errors.push(FieldError::new(
                        "display_name",
                        "invalid_length",
                        "must be 1 to 100 characters, or null",
                    ));
                }
                Some(Some(name))
            }
        };
        if let Some(zone) = &body.timezone
            && zone.parse::<chrono_tz::Tz>().is_err()
        {
            errors.push(FieldError::new(
                "timezone",
                "unknown_timezone",
                "is not an IANA time zone such as Europe/Paris",
            ));
        }
        if body.digest_hour.is_some_and(|hour| hour > 23) {
            errors.push(FieldError::new("digest_hour", "out_of_range", "must be between 0 and 23"));
        }
        if !errors.is_empty() {
            return Ok(MeResponse::Invalid(Json(Problem::validation(errors))));
        }
        sqlx::query!(
            "update users set
                display_name = case when $2 then $3 else display_name end,
                timezone = coalesce($4, timezone),
                digest_enabled = coalesce($5, digest_enabled),
                digest_hour = coalesce($6, digest_hour),
                updated_at = now()
             where id = $1",
            auth.0.id,
            display_name.is_some(),
            display_name.flatten(),
            body.timezone,
            body.digest_enabled,
            body.digest_hour.map(i16::from)
        )
        .execute(&state.db)
        .await?;
        // Every instance's cached copy of the account (`GET /me`) is stale from now on.
        state.accounts.changed(auth.0.id).await;
        let user = users::find(&state.db, auth.0.id)
            .await?
            .ok_or_else(|| ServerError::internal("the caller vanished"))?;
        Ok(MeResponse::Ok(Json(user.into())))
    }

    /// Send a new verification link (the old one expires after 24 hours, or got lost).
    #[oai(path = "/verification", method = "post")]
    async fn resend_verification(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        request_id: Data<&RequestId>,
    ) -> Result<ResendVerificationResponse, AuthedError> {
        let mut tx = state.db.begin().await?;
        // Locking the user serialises concurrent requests, so the hourly limit holds.
        let user = sqlx::query!(
            r#"select email_verified_at is not null as "verified!", display_name
               from users where id = $1 for update"#,
            auth.0.id
        )
        .fetch_one(&mut *tx)
        .await?;
        if user.verified {
            let problem = Problem::new(
                StatusCode::CONFLICT,
                "already_verified",
                "this address is already verified",
            );
            return Ok(ResendVerificationResponse::AlreadyVerified(Json(problem)));
        }
        let recent =
            users::email_tokens_last_hour(&mut *tx, auth.0.id, EmailTokenPurpose::VerifyEmail)
                .await?;
        if recent >= VERIFICATIONS_PER_HOUR {
            let problem = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_emails",
                "at most 3 verification emails an hour",
            );
            return Ok(ResendVerificationResponse::TooManyRequests(Json(problem), 3600));
        }
        users::send_verification(
            &mut tx,
            auth.0.id,
            auth.0.email(),
            user.display_name,
            &request_id.0.0,
        )
        .await?;
        tx.commit().await?;
        Ok(ResendVerificationResponse::Accepted)
    }

    /// Change your password.
    ///
    /// Signs out every other session (this one stays) and emails a notice.
    #[oai(path = "/password", method = "post")]
    async fn change_password(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        request_id: Data<&RequestId>,
        body: Json<ChangePasswordRequest>,
    ) -> Result<ChangePasswordResponse, AuthedError> {
        let body = body.0;
        let user =
            sqlx::query!("select password_hash, display_name from users where id = $1", auth.0.id)
                .fetch_one(&state.db)
                .await?;
        let (hash, display_name) = (user.password_hash, user.display_name);
        // Both fields before the limit and argon2: a megabyte of current password costs a
        // length check, and a new password the policy refuses is not worth a guess.
        let errors: Vec<FieldError> = [
            password::check_length("current_password", &body.current_password),
            password::check_policy(
                "new_password",
                &body.new_password,
                auth.0.email(),
                display_name.as_deref(),
            ),
        ]
        .into_iter()
        .filter_map(Result::err)
        .collect();
        if !errors.is_empty() {
            return Ok(ChangePasswordResponse::Invalid(Json(Problem::validation(errors))));
        }
        // The same limit as sign-in: a stolen access token must not buy unlimited guesses
        // at the password that would let it take the account over.
        let throttle_key = format!("user:{}", auth.0.id);
        if let Some(retry_after) = state.throttle.attempt(&throttle_key, None).await? {
            let problem = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_attempts",
                "too many wrong passwords; try again later",
            );
            return Ok(ChangePasswordResponse::TooManyRequests(Json(problem), retry_after));
        }
        if !state.hasher.verify(body.current_password, Some(hash)).await? {
            let error =
                FieldError::new("current_password", "incorrect", "is not your current password");
            return Ok(ChangePasswordResponse::Invalid(Json(Problem::validation(vec![error]))));
        }
        if let Err(err) = state.throttle.clear(&throttle_key, None).await {
            tracing::warn!(error = %err, "cannot reset the password-check counter");
        }
        let hash = state.hasher.hash(body.new_password).await?;
        let mut tx = state.db.begin().await?;
        let ended = users::change_password(
            &mut tx,
            auth.0.id,
            auth.0.email(),
            display_name,
            &hash,
            Some(auth.0.session),
            &request_id.0.0,
        )
        .await?;
        tx.commit().await?;
        state.accounts.sessions_ended(auth.0.id, ended).await;
        Ok(ChangePasswordResponse::NoContent)
    }
}
