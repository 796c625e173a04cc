//! The document's tags, one per group of operations.
//!
//! Every route module names its tag here; it sits below the routes (and below
//! [`crate::openapi`], which gathers them) so that no route imports the document.

use poem_openapi::Tags;

#[derive(Tags)]
pub enum ApiTags {
    /// Your tasks: create, read, change with If-Match, trash and restore, history, lists.
    Tasks,
    /// Files on your tasks: presigned uploads straight to the object store, verification,
    /// presigned downloads.
    Attachments,
    /// Register, sign in, refresh and sign out; verify an address; reset a password.
    Auth,
    /// Your events, live: Server-Sent Events or a WebSocket, resumable with `Last-Event-ID`.
    Events,
    /// Your own account: profile, digest preferences, password.
    Account,
    /// Administration (admins only): accounts, job queues, schedules.
    Admin,
    /// Health and metrics for operators and orchestrators.
    Operations,
}
