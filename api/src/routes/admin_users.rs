//! `/api/v1/admin/users`: account administration (admins only; others get 403).

use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use uuid::Uuid;

use crate::auth::Role;
use crate::problem::{AuthedError, FieldError, Problem};
use crate::routes::user_view::UserView;
use crate::security::BearerAuth;
use crate::services::audit;
use crate::services::users::{self, UserRow};
use crate::state::AppState;
use crate::tags::ApiTags;

pub struct AdminUsersApi;

/// A page of accounts, oldest first.
#[derive(Debug, Object)]
pub struct UserPage {
    pub data: Vec<UserView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
    /// Page mode only.
    pub page: Option<u32>,
    pub total: Option<i64>,
    pub total_pages: Option<i64>,
}

/// What an admin may change; absent fields stay as they are.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct AdminUpdateUser {
    pub role: Option<Role>,
    /// A disabled account cannot sign in, and its sessions are revoked.
    pub disabled: Option<bool>,
}

#[derive(ApiResponse)]
pub enum ListResponse {
    #[oai(status = 200)]
    Ok(Json<UserPage>),
    /// Bad paging parameters (`limit` out of range, `cursor` and `page` together, a cursor
    /// that is not ours).
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
    /// The caller is not an admin.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
}

#[derive(ApiResponse)]
pub enum UpdateResponse {
    #[oai(status = 200)]
    Ok(Json<UserView>),
    /// The caller is not an admin.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// No such account.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// Admins cannot demote or disable themselves, nor the last active admin (someone must
    /// stay in charge).
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
}

#[OpenApi(prefix_path = "/api/v1/admin/users", tag = "ApiTags::Admin")]
impl AdminUsersApi {
    /// List accounts.
    ///
    /// `limit` 1-100 (default 20) with either `cursor` (keyset, from `next_cursor`) or `page`
    /// (from 1, adds `total` and `total_pages`), not both.
    #[oai(path = "/", method = "get")]
    async fn list(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        limit: Query<Option<u32>>,
        cursor: Query<Option<String>>,
        page: Query<Option<u32>>,
    ) -> Result<ListResponse, AuthedError> {
        if let Err(problem) = auth.require_admin() {
            return Ok(ListResponse::Forbidden(Json(problem)));
        }
        let limit = limit.0.unwrap_or(20);
        let mut errors = Vec::new();
        if !(1..=100).contains(&limit) {
            errors.push(FieldError::new("limit", "out_of_range", "must be between 1 and 100"));
        }
        if cursor.0.is_some() && page.0.is_some() {
            errors.push(FieldError::new("page", "conflict", "use either cursor or page, not both"));
        }
        if page.0 == Some(0) {
            errors.push(FieldError::new("page", "out_of_range", "pages start at 1"));
        }
        let after = match cursor.0.as_deref().map(super::id_cursor::decode) {
            Some(None) => {
                errors.push(FieldError::new("cursor", "invalid", "is not a cursor from this list"));
                None
            }
            Some(Some(id)) => Some(id),
            None => None,
        };
        if !errors.is_empty() {
            return Ok(ListResponse::Invalid(Json(Problem::validation(errors))));
        }
        let limit = i64::from(limit);
        // Ids are UUIDv7, so id order is creation order and a stable keyset.
        let (rows, page_info): (Vec<UserRow>, _) = if let Some(page) = page.0 {
            let rows = users::page(&state.db, limit + 1, (i64::from(page) - 1) * limit).await?;
            let total = users::count(&state.db).await?;
            (rows, Some((page, total)))
        } else {
            (users::after(&state.db, limit + 1, after).await?, None)
        };
        let more = rows.len() as i64 > limit;
        let rows: Vec<UserRow> =
            rows.into_iter().take(usize::try_from(limit).unwrap_or(20)).collect();
        let next_cursor = match (&page_info, more, rows.last()) {
            (None, true, Some(last)) => Some(super::id_cursor::encode(last.id)),
            _ => None,
        };
        Ok(ListResponse::Ok(Json(UserPage {
            data: rows.into_iter().map(UserView::from).collect(),
            next_cursor,
            page: page_info.map(|(page, _)| page),
            total: page_info.map(|(_, total)| total),
            total_pages: page_info.map(|(_, total)| (total + limit - 1) / limit),
        })))
    }

    /// Change an account's role or disable it.
    #[oai(path = "/:id", method = "patch")]
    async fn update(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        id: Path<Uuid>,
        body: Json<AdminUpdateUser>,
    ) -> Result<UpdateResponse, AuthedError> {
        let admin = match auth.require_admin() {
            Ok(admin) => admin.clone(),
            Err(problem) => return Ok(UpdateResponse::Forbidden(Json(problem))),
        };
        if id.0 == admin.id && (body.role == Some(Role::User) || body.disabled == Some(true)) {
            let problem = Problem::new(
                StatusCode::CONFLICT,
                "self_demotion",
                "admins cannot demote or disable themselves",
            );
            return Ok(UpdateResponse::Conflict(Json(problem)));
        }
        let mut tx = state.db.begin().await?;
        // Someone must stay in charge: with the active admins locked, refuse a change that
        // would leave none (two admins demoting each other at once cannot both succeed).
        if body.role == Some(Role::User) || body.disabled == Some(true) {
            let admins = sqlx::query_scalar!(
                "select id from users where role = 'admin' and not disabled for update"
            )
            .fetch_all(&mut *tx)
            .await?;
            if admins.contains(&id.0) && admins.len() == 1 {
                let problem = Problem::new(
                    StatusCode::CONFLICT,
                    "last_admin",
                    "this is the last active admin",
                );
                return Ok(UpdateResponse::Conflict(Json(problem)));
            }
        }
        let updated = sqlx::query!(
            "update users set role = coalesce($2, role), disabled = coalesce($3, disabled),
                              updated_at = now()
             where id = $1",
            id.0,
            body.role.map(Role::as_str),
            body.disabled
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(UpdateResponse::NotFound(Json(Problem::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such account",
            ))));
        }
        if body.disabled == Some(true) {
            users::revoke_sessions(&mut *tx, id.0, None).await?;
        }
        let detail =
            serde_json::json!({ "role": body.role.map(Role::as_str), "disabled": body.disabled });
        audit::record(&mut tx, admin.id, "user.update", &format!("user:{}", id.0), detail).await?;
        let user = users::find(&mut *tx, id.0).await?;
        tx.commit().await?;
        state.accounts.changed(id.0).await;
        tracing::info!(admin = %admin.id, user = %id.0, role = ?body.role, disabled = ?body.disabled, "account updated by an admin");
        match user {
            Some(user) => Ok(UpdateResponse::Ok(Json(user.into()))),
            None => Ok(UpdateResponse::NotFound(Json(Problem::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such account",
            )))),
        }
    }
}
