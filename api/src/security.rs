//! The bearer security scheme: Swagger UI's Authorize button, and the caller of every
//! authenticated operation.
//!
//! It reads [`AppState`], so it sits above [`crate::state`] and beside the routes that use
//! it, not among the [`crate::auth`] services the state is made of.
//!
//! The token must verify (HS256, every claim), the account must still exist and not be
//! disabled, and the token's login session (`sid`) must not have ended: the role comes from
//! the account, not the token, so demoting or disabling someone takes effect at once rather
//! than when their token expires, and so does signing out (logout, a password change or
//! reset, refresh-token reuse). See [`crate::auth::accounts`] for how that stays true, and
//! cheap, with accounts and sessions cached.

use std::sync::Arc;

use poem::Request;
use poem::http::StatusCode;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;
use uuid::Uuid;

use crate::auth::Role;
use crate::auth::accounts::Account;
use crate::problem::Problem;
use crate::state::AppState;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub id: Uuid,
    pub role: Role,
    /// The login session (refresh family) the access token belongs to.
    pub session: Uuid,
    /// The account as the account cache holds it (shared, not copied per request).
    pub account: Arc<Account>,
}

impl CurrentUser {
    pub fn email(&self) -> &str {
        &self.account.email
    }
}

/// A JWT access token from `POST /api/v1/auth/login` (or register/refresh).
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "authenticate")]
pub struct BearerAuth(pub CurrentUser);

impl BearerAuth {
    /// 403 unless the caller is an admin.
    pub fn require_admin(&self) -> Result<&CurrentUser, Problem> {
        if self.0.role == Role::Admin {
            Ok(&self.0)
        } else {
            Err(Problem::new(StatusCode::FORBIDDEN, "forbidden", "this operation is for admins"))
        }
    }
}

async fn authenticate(req: &Request, bearer: Bearer) -> poem::Result<CurrentUser> {
    let unauthorized = || {
        poem::Error::from_string(
            "the access token is missing, invalid or expired",
            StatusCode::UNAUTHORIZED,
        )
    };
    let state = req
        .data::<AppState>()
        .ok_or_else(|| poem::Error::from_status(StatusCode::INTERNAL_SERVER_ERROR))?;
    let claims = state.tokens.verify(&bearer.token).map_err(|_| unauthorized())?;
    let user = authenticate_user(state, claims.sub, claims.sid).await?.ok_or_else(unauthorized)?;
    // Jobs and events this request causes now belong to its caller's receipts.
    tasklane_shared::trace::own_receipt(user.id);
    Ok(user)
}

/// The account behind a verified credential, unless it is gone or disabled or the
/// credential's login session ended.
pub async fn authenticate_user(
    state: &AppState,
    user: Uuid,
    session: Uuid,
) -> poem::Result<Option<CurrentUser>> {
    let account = state
        .accounts
        .get(&state.db, user, session)
        .await
        .map_err(|err| poem::Error::from(crate::problem::ServerError::from(err)))?;
    Ok(account.map(|account| CurrentUser { id: user, role: account.role, session, account }))
}
