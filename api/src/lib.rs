//! The Tasklane HTTP API.
//!
//! # Layout
//! - [`app`]: builds the server from settings ([`app::Application`]), the entry point of
//!   `main` and of the test harness.
//! - [`http`]: the policy every response passes through (request id, problem+json, security
//!   headers, CORS, body limit, metrics).
//! - [`problem`]: the RFC 9457 error shape; [`raw_json`]: a JSON body rendered once and
//!   sent as is (cached responses).
//! - [`openapi`]: the document and its tags; [`ops`]: health and metrics.
//! - [`auth`]: passwords, tokens, the bearer scheme, login limits.
//! - [`routes`]: one module per resource.
//! - [`services`]: what routes call below HTTP (SQL, Redis, group commit), per resource.
//! - [`events`]: the real-time event hub (SSE and WebSocket streams).
//! - [`state`]: what handlers share.

// Handlers' error types are the documented problem responses themselves; their size is the
// price of one response type per status, paid only on the error path.
#![allow(clippy::result_large_err)]

pub mod app;
pub mod auth;
pub mod events;
pub mod http;
pub mod openapi;
pub mod ops;
pub mod problem;
pub mod raw_json;
pub mod routes;
pub mod services;
pub mod state;
