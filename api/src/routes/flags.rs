//! Feature flags: `GET/PUT/DELETE /api/v1/admin/flags/{key}` for admins, `GET /api/v1/flags`
//! evaluated for the caller.
//!
//! A flag is on for a user when it is enabled and the user is on its allow list or falls in
//! its rollout: the user's bucket, `sha256("<key>:<user id>") mod 100`, is below
//! `rollout_percent`. Buckets are stable (the same user stays in or out as the percentage
//! grows) and independent across flags. A flag without a row has its built-in default.

use std::collections::BTreeMap;

use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sha2::{Digest, Sha256};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::problem::{AuthedError, FieldError, Problem};
use crate::security::BearerAuth;
use crate::state::AppState;
use crate::tags::ApiTags;

/// Flags the code knows, with their value when no admin has set them.
pub const DEFAULTS: &[(&str, bool)] = &[("task_search", true)];

/// Gates `q` on `GET /tasks`.
pub const TASK_SEARCH: &str = "task_search";

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

/// Whether a flag is on for a user.
pub fn evaluate(flag: Option<&Flag>, key: &str, user: Uuid) -> bool {
    match flag {
        None => DEFAULTS.iter().find(|(k, _)| *k == key).is_some_and(|(_, on)| *on),
        Some(flag) => {
            flag.enabled
                && (flag.allow_users.contains(&user) || bucket(key, user) < flag.rollout_percent)
        }
    }
}

fn bucket(key: &str, user: Uuid) -> i16 {
    let digest = Sha256::digest(format!("{key}:{user}").as_bytes());
    let n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    i16::try_from(n % 100).unwrap_or(0)
}

pub async fn find(db: impl PgExecutor<'_>, key: &str) -> Result<Option<Flag>, sqlx::Error> {
    sqlx::query_as!(
        Flag,
        "select key, enabled, rollout_percent, allow_users from feature_flags where key = $1",
        key
    )
    .fetch_optional(db)
    .await
}

/// Whether `key` is on for `user`, reading the flag.
pub async fn is_on(db: impl PgExecutor<'_>, key: &str, user: Uuid) -> Result<bool, sqlx::Error> {
    Ok(evaluate(find(db, key).await?.as_ref(), key, user))
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
            flags.insert(flag.key.clone(), evaluate(Some(flag), &flag.key, auth.0.id));
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
        .fetch_one(&state.db)
        .await?;
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
        if let Err(problem) = auth.require_admin() {
            return Ok(FlagDeleteResponse::Forbidden(Json(problem)));
        }
        let deleted = sqlx::query!("delete from feature_flags where key = $1", key.0)
            .execute(&state.db)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Ok(FlagDeleteResponse::NotFound(Json(not_found())));
        }
        Ok(FlagDeleteResponse::NoContent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(enabled: bool, rollout: i16, allow: Vec<Uuid>) -> Flag {
        Flag { key: "f".into(), enabled, rollout_percent: rollout, allow_users: allow }
    }

    #[test]
    fn rollout_is_stable_and_close_to_its_percentage() {
        let users: Vec<Uuid> = (0..2000).map(|_| Uuid::now_v7()).collect();
        let on = |rollout| {
            users.iter().filter(|u| evaluate(Some(&flag(true, rollout, vec![])), "f", **u)).count()
        };
        let (ten, fifty) = (on(10), on(50));
        assert!((100..=300).contains(&ten), "{ten}");
        assert!((850..=1150).contains(&fifty), "{fifty}");
        // Growing the rollout only adds users.
        assert!(users.iter().all(|u| !evaluate(Some(&flag(true, 10, vec![])), "f", *u)
            || evaluate(Some(&flag(true, 50, vec![])), "f", *u)));
    }

    #[test]
    fn allow_list_and_master_switch() {
        let user = Uuid::now_v7();
        assert!(evaluate(Some(&flag(true, 0, vec![user])), "f", user));
        assert!(!evaluate(Some(&flag(false, 100, vec![user])), "f", user));
        assert!(evaluate(None, TASK_SEARCH, user), "the built-in default");
        assert!(!evaluate(None, "unknown", user));
    }
}
