//! The hot reads: `GET /me`, `GET /tasks/{id}` and the first page of `GET /tasks`, the calls
//! clients make most, answered before the routes when this instance has the answer in
//! memory. This is the HTTP policy's [`FastPath`].
//!
//! Only a read in its plainest form is taken: `GET`, the exact path, no query, no body, and
//! a bearer token. It is answered here only when everything it needs is known:
//! - the token verified before (its check is remembered);
//! - the caller's account and session are in the account cache, which trusts them only
//!   while it hears announcements;
//! - for a task or a page, the entry is in the task cache under the owner's current
//!   generation, read from Redis as every cached read reads it.
//!
//! The response is the route's own, made by the same functions from the same entries.
//! Anything else goes the full way and is answered there as before: a miss, a token seen
//! for the first time, an account not held, a request with a query or a body. A task or
//! list miss then reads its generation a second time.
//!
//! What it skips is poem-openapi's routing and extractors, the input guard (with no query
//! and no body there is nothing to check), and the request's span. A span is seen in log
//! lines, in exported traces and in the jobs a request causes. So the fast path is not
//! installed when spans are exported, the policy skips the span only while no log line
//! would be written for the request (it answers inside the span otherwise), and a hit
//! neither logs nor causes a job.

use std::sync::Arc;

use futures::future::BoxFuture;
use poem::http::{Method, StatusCode, header};
use poem::{IntoResponse, Request};
use uuid::Uuid;

use crate::http::{Answer, FastPath, RequestSeries};
use crate::routes::tasks::validate::{ListParams, list_request};
use crate::routes::tasks::{ListResponse, task_answer};
use crate::services::tasks::cache::TaskCache;
use crate::state::AppState;

const ME: &str = "/api/v1/me";
const TASKS: &str = "/api/v1/tasks";

/// The hot reads of one instance, over its state.
pub struct HotReads {
    state: AppState,
    /// The normalized query of the first page (no parameters), as the list route makes it.
    first_page: String,
    /// The route patterns the routes would label the metrics with.
    routes: Routes,
}

/// A read's route pattern, its request metrics at 200, and its count of reads answered
/// here (`http_hot_reads_total{route}`).
struct Route {
    pattern: Arc<str>,
    series: RequestSeries,
    answered: metrics::Counter,
}

impl Route {
    fn new(pattern: String) -> Self {
        let series = RequestSeries::new(&Method::GET, &pattern, StatusCode::OK);
        let answered = metrics::counter!("http_hot_reads_total", "route" => pattern.clone());
        Self { pattern: Arc::from(pattern), series, answered }
    }

    fn answered(&self, resp: impl IntoResponse) -> Option<Answer<'_>> {
        self.answered.increment(1);
        Some(Answer { resp: resp.into_response(), route: &self.pattern, series: &self.series })
    }
}

struct Routes {
    me: Route,
    task: Route,
    tasks: Route,
}

/// Which read a request is.
enum Read {
    Me,
    Task(Uuid),
    FirstPage,
}

impl HotReads {
    pub fn new(state: AppState) -> Self {
        let first_page = list_request(ListParams::default())
            .map(|request| request.normalized())
            .unwrap_or_default();
        let routes = Routes {
            me: Route::new(ME.to_owned()),
            // poem-openapi names path parameters by position.
            task: Route::new(format!("{TASKS}/:param0")),
            tasks: Route::new(TASKS.to_owned()),
        };
        Self { state, first_page, routes }
    }

    /// The answer to `read` by the bearer of `token`, when it is in memory.
    async fn answer_read<'a>(
        &'a self,
        req: &'a Request,
        read: Read,
        token: &'a str,
    ) -> Option<Answer<'a>> {
        let state = &self.state;
        let claims = state.tokens.verify(token).ok()?;
        let account = state.accounts.held(claims.sub, claims.sid)??;
        let cache = TaskCache::new(&state.redis, &state.keys, &state.task_cache);
        match read {
            Read::Me => self.routes.me.answered(crate::routes::me::answer(&account)),
            Read::Task(id) => {
                let task = cache.task(account.id, id).await.hit?;
                // As the route reads its `If-None-Match` header: the first, as text.
                let if_none_match = match req.headers().get(header::IF_NONE_MATCH) {
                    Some(value) => Some(value.to_str().ok()?),
                    None => None,
                };
                self.routes.task.answered(task_answer(task, "hit", if_none_match))
            }
            Read::FirstPage => {
                let body = cache.list(account.id, &self.first_page).await.hit?;
                self.routes.tasks.answered(ListResponse::Ok(body, "hit".into()))
            }
        }
    }
}

impl FastPath for HotReads {
    fn answer<'a>(&'a self, req: &'a Request) -> Option<BoxFuture<'a, Option<Answer<'a>>>> {
        let (read, token) = plain_read(req)?;
        Some(Box::pin(self.answer_read(req, read, token)))
    }
}

/// The read `req` is and its bearer token, when it is one in its plainest form.
fn plain_read(req: &Request) -> Option<(Read, &str)> {
    if req.method() != Method::GET || req.uri().query().is_some() {
        return None;
    }
    let headers = req.headers();
    // A request with a body goes the full way (which may refuse it as too large).
    if headers.contains_key(header::CONTENT_LENGTH)
        || headers.contains_key(header::TRANSFER_ENCODING)
    {
        return None;
    }
    let read = match req.uri().path() {
        ME => Read::Me,
        TASKS => Read::FirstPage,
        path => Read::Task(path.strip_prefix(TASKS)?.strip_prefix('/')?.parse().ok()?),
    };
    let token = headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")?;
    Some((read, token))
}
