//! The OpenAPI document: every API struct of the service in one place, at the top of the
//! import graph (nothing imports it but the app and `main`; the tags routes share are in
//! [`crate::tags`]).
//!
//! [`service`] needs no state, so `tasklane-api openapi` and the drift test build the same
//! document the server serves without a database.

use poem_openapi::OpenApiService;

use crate::ops::OpsApi;
use crate::routes::admin_jobs::AdminJobsApi;
use crate::routes::admin_users::AdminUsersApi;
use crate::routes::attachments::AttachmentsApi;
use crate::routes::attachments::download::DownloadsApi;
use crate::routes::auth::AuthApi;
use crate::routes::events::EventsApi;
use crate::routes::flags::{AdminFlagsApi, FlagsApi};
use crate::routes::me::MeApi;
use crate::routes::tasks::TasksApi;

pub type Apis = (
    AuthApi,
    MeApi,
    FlagsApi,
    TasksApi,
    AttachmentsApi,
    DownloadsApi,
    EventsApi,
    AdminUsersApi,
    AdminFlagsApi,
    AdminJobsApi,
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
            AdminUsersApi,
            AdminFlagsApi,
            AdminJobsApi,
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
             limit), and any operation with a JSON body 400 (malformed JSON or a wrong field \
             type) or 415 (not `application/json`), all as problem+json.",
    )
}

/// The document as committed in `openapi.json` (pretty JSON with a trailing newline).
pub fn spec_json() -> String {
    let mut spec = service().spec();
    spec.push('\n');
    spec
}
