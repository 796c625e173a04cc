//! Feature flags: `GET/PUT/DELETE /api/v1/admin/flags/{key}` for admins, `GET /api/v1/flags`
//! evaluated for the caller. How a flag applies to a user is [`crate::services::flags`].

use std::collections::BTreeMap;

use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::problem::{AuthedError, FieldError, Problem};
use crate::security::BearerAuth;
use crate::services::audit;
// The task list gates `q` on a flag; re-exported until it calls the service directly.
use crate::services::flags::{DEFAULTS, Rule, evaluate};
use crate::state::AppState;
use crate::tags::ApiTags;

/// A flag's settings.
#[derive(Debug, Clone, Object)]
pub struct Flag {
    /// `[a-z0-9_]`, 1-64 characters.
    #[oai(read_only)]
    pub key: String,
    /// The master switch: off means off for everyone.
    pub enabled: bool,
    /// 0-100: the share of users (by stable bucket) who get it.
    pub rollout_percent: i16,
    /// Users who get it whatever the percentage (when enabled).
    pub allow_users: Vec<Uuid>,
}

#[derive(Debug, Object)]
pub struct FlagSettings {
    pub enabled: bool,
    pub rollout_percent: i16,
    #[oai(default)]
    pub allow_users: Vec<Uuid>,
}

/// Every flag the code knows or an admin set, evaluated for the caller.
#[derive(Debug, Object)]
pub struct EvaluatedFlags {
    pub flags: BTreeMap<String, bool>,
}

impl Flag {
    /// The flag's settings as evaluation reads them.
    pub fn rule(&self) -> Rule<'_> {
        Rule {
            enabled: self.enabled,
            rollout_percent: self.rollout_percent,
            allow_users: &self.allow_users,
        }
    }
}

/// The flag `key`, if an admin set it.
pub async fn find(db: impl PgExecutor<'_>, key: &str) -> Result<Option<Flag>, sqlx::Error> {
    sqlx::query_as!(
        Flag,
        "select key, enabled, rollout_percent, allow_users from feature_flags where key = $1",
        key
    )
    .fetch_optional(db)
    .await
}

pub struct FlagsApi;
pub struct AdminFlagsApi;

#[derive(ApiResponse)]
pub enum EvaluatedResponse {
    #[oai(status = 200)]
    Ok(Json<EvaluatedFlags>),
}

#[derive(ApiResponse)]
pub enum FlagListResponse {
    #[oai(status = 200)]
    Ok(Json<Vec<Flag>>),
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
}

#[derive(ApiResponse)]
pub enum FlagResponse {
    #[oai(status = 200)]
    Ok(Json<Flag>),
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// No such flag set.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// A bad key or percentage.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
}

#[derive(ApiResponse)]
pub enum FlagDeleteResponse {
    /// Removed; the flag is back to its built-in default.
    #[oai(status = 204)]
    NoContent,
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
}

fn valid_key(key: &str) -> bool {
    (1..=64).contains(&key.len())
        && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "no such flag is set")
}

#[OpenApi(prefix_path = "/api/v1/flags", tag = "ApiTags::Account")]
impl FlagsApi {
    /// The feature flags as they apply to you.
    #[oai(path = "/", method = "get")]
    async fn evaluated(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
    ) -> Result<EvaluatedResponse, AuthedError> {
        let set = sqlx::query_as!(
            Flag,
            "select key, enabled, rollout_percent, allow_users from feature_flags"
        )
        .fetch_all(&state.db)
        .await?;
        let mut flags: BTreeMap<String, bool> =
            DEFAULTS.iter().map(|(k, on)| ((*k).to_owned(), *on)).collect();
        for flag in &set {
            flags.insert(flag.key.clone(), evaluate(Some(flag.rule()), &flag.key, auth.0.id));
        }
        Ok(EvaluatedResponse::Ok(Json(EvaluatedFlags { flags })))
    }
}

#[OpenApi(prefix_path = "/api/v1/admin/flags", tag = "ApiTags::Admin")]
impl AdminFlagsApi {
    /// Every flag an admin has set.
    #[oai(path = "/", method = "get")]
    async fn list(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
    ) -> Result<FlagListResponse, AuthedError> {
        if let Err(problem) = auth.require_admin() {
            return Ok(FlagListResponse::Forbidden(Json(problem)));
        }
        let flags = sqlx::query_as!(
            Flag,
            "select key, enabled, rollout_percent, allow_users from feature_flags order by key"
        )
        .fetch_all(&state.db)
        .await?;
        Ok(FlagListResponse::Ok(Json(flags)))
    }

    /// One flag.
    #[oai(path = "/:key", method = "get")]
    async fn get(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        key: Path<String>,
    ) -> Result<FlagResponse, AuthedError> {
        if let Err(problem) = auth.require_admin() {
            return Ok(FlagResponse::Forbidden(Json(problem)));
        }
        match find(&state.db, &key.0).await? {
            Some(flag) => Ok(FlagResponse::Ok(Json(flag))),
            None => Ok(FlagResponse::NotFound(Json(not_found()))),
        }
    }

    /// Create or replace a flag.
    #[oai(path = "/:key", method = "put")]
    async fn put(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        key: Path<String>,
        body: Json<FlagSettings>,
    ) -> Result<FlagResponse, AuthedError> {
        let admin = match auth.require_admin() {
            Ok(admin) => admin.id,
            Err(problem) => return Ok(FlagResponse::Forbidden(Json(problem))),
        };
        let mut errors = Vec::new();
        if !valid_key(&key.0) {
            errors.push(FieldError::new(
                "key",
                "invalid",
                "must be 1-64 characters of a-z, 0-9 and _",
            ));
        }
        if !(0..=100).contains(&body.rollout_percent) {
            errors.push(FieldError::new(
                "rollout_percent",
                "out_of_range",
                "must be between 0 and 100",
            ));
        }
        if !errors.is_empty() {
            return Ok(FlagResponse::Invalid(Json(Problem::validation(errors))));
        }
        let mut tx = state.db.begin().await?;
        let flag = sqlx::query_as!(
            Flag,
            "insert into feature_flags (key, enabled, rollout_percent, allow_users)
             values ($1, $2, $3, $4)
             on conflict (key) do update
                set enabled = $2, rollout_percent = $3, allow_users = $4, updated_at = now()
             returning key, enabled, rollout_percent, allow_users",
            key.0,
            body.enabled,
            body.rollout_percent,
            &body.allow_users
        )
        .fetch_one(&mut *tx)
        .await?;
        let detail = serde_json::json!({
            "enabled": flag.enabled, "rollout_percent": flag.rollout_percent,
            "allow_users": flag.allow_users.len(),
        });
        audit::record(&mut tx, admin, "flag.set", &format!("flag:{}", key.0), detail).await?;
        tx.commit().await?;
        tracing::info!(%admin, flag = %key.0, enabled = flag.enabled, rollout = flag.rollout_percent, "feature flag set");
        Ok(FlagResponse::Ok(Json(flag)))
    }

    /// Remove a flag (it returns to its built-in default).
    #[oai(path = "/:key", method = "delete")]
    async fn delete(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        key: Path<String>,
    ) -> Result<FlagDeleteResponse, AuthedError> {
        let admin = match auth.require_admin() {
            Ok(admin) => admin.id,
            Err(problem) => return Ok(FlagDeleteResponse::Forbidden(Json(problem))),
        };
        let mut tx = state.db.begin().await?;
        let deleted = sqlx::query!("delete from feature_flags where key = $1", key.0)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Ok(FlagDeleteResponse::NotFound(Json(not_found())));
        }
        let target = format!("flag:{}", key.0);
        audit::record(&mut tx, admin, "flag.delete", &target, serde_json::json!({})).await?;
        tx.commit().await?;
        Ok(FlagDeleteResponse::NoContent)
    }
}
