//! The Tasklane HTTP API.
//!
//! # Layout
//!
//! Imports flow one way, top to bottom: [`app`] and [`openapi`] gather the [`routes`] (and
//! [`ops`]); routes use [`security`], [`state`], [`services`] and [`tags`]; the state holds
//! the [`auth`] services and the [`hub`]; everything below knows nothing above it.
//!
//! - [`app`]: builds the server from settings ([`app::Application`]), the entry point of
//!   `main` and of the test harness.
//! - [`openapi`]: the document, every API struct in one place; [`tags`]: its tags, which
//!   every route names.
//! - [`hot_reads`]: `GET /me`, a task and the first page answered from memory before the
//!   routes, by the same functions (the policy's fast path; it sits beside [`app`] and
//!   reaches the policy through [`http::FastPath`]).
//! - [`routes`]: one module per resource; [`ops`]: health and metrics; [`console`]: the
//!   operator console's page and assets (a client of the admin API).
//! - [`security`]: the bearer scheme, the authenticated caller of every operation.
//! - [`services`]: the rules, SQL and Redis work beneath the routes, per resource (tasks,
//!   attachments, accounts and sessions, flags).
//! - [`state`]: what handlers share.
//! - [`auth`]: passwords, tokens, the account cache and its announcements, login limits.
//! - [`hub`]: the real-time event hub (SSE and WebSocket streams), one Redis subscription
//!   per instance.
//! - [`http`]: the policy every response passes through (request id, problem+json, security
//!   headers, CORS, body limit, metrics); [`input_guard`]: NUL characters and non-strings
//!   for strings refused before any handler, against the document's operations;
//!   [`trace_http`]: the request's span, continuing the caller's W3C trace context.
//! - [`problem`]: the RFC 9457 error shape; [`raw_json`]: a JSON body rendered once and
//!   sent as is (cached responses).

// Handlers' error types are the documented problem responses themselves; their size is the
// price of one response type per status, paid only on the error path.
#![allow(clippy::result_large_err)]

pub mod app;
pub mod auth;
pub mod console;
pub mod hot_reads;
pub mod http;
pub mod hub;
pub mod input_guard;
pub mod openapi;
pub mod ops;
pub mod problem;
pub mod raw_json;
pub mod routes;
pub mod security;
pub mod services;
pub mod state;
pub mod tags;
pub mod trace_http;
