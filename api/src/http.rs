//! The HTTP policy every response passes through (SPEC section 2).
//!
//! One middleware, outermost, so that nothing — not a 404 from the router, a 405 from
//! poem-openapi, a body it cannot parse, nor a panic-free internal error — escapes without
//! the request id, the security headers, CORS and a problem+json body. It also enforces
//! the body limit, runs the [`InputGuard`] (NUL characters, non-strings for strings) before
//! the handler, and records the request metrics.
//!
//! A [`FastPath`] may answer a request first: the hot reads answered from this instance's
//! memory (see `crate::hot_reads`) skip the routes but not the policy: the same request id,
//! headers and metrics.
//!
//! Why not poem's own middlewares: `SizeLimit` answers 411 to every request without a
//! `Content-Length` (so to plain GETs) and never bounds a chunked body; `Cors` answers 403 to
//! any origin not on its list, which would break same-origin requests from Swagger UI
//! (browsers send `Origin` on POST). Both rules are a few lines here.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use futures::future::BoxFuture;
use metrics::{Counter, Histogram};
use poem::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use poem::{Body, Endpoint, IntoResponse, Middleware, Request, Response, Result};
use tracing::Instrument;

use crate::input_guard::InputGuard;
use crate::problem::Problem;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";
/// Swagger UI is one HTML page with inline script and style that calls the API itself.
const DOCS_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                        img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";
const CORS_ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";
const CORS_ALLOW_HEADERS: &str =
    "authorization, content-type, if-match, if-none-match, last-event-id, x-request-id";
const CORS_EXPOSE_HEADERS: &str = "etag, location, retry-after, x-cache, x-request-id";

/// The id of the current request, available to handlers as request data.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Settings of the policy, taken from [`tasklane_shared::config::Settings`].
#[derive(Clone)]
pub struct HttpPolicy {
    pub cors_origins: Vec<String>,
    pub max_body_bytes: usize,
    /// NUL characters and non-strings for strings, refused before any handler runs.
    pub input: Arc<InputGuard>,
    /// Answers some requests before the routes; `None` sends every request the full way.
    pub fast: Option<Arc<dyn FastPath>>,
    /// Whether the log filter may write a line for a request (`info` or finer anywhere).
    /// The fast path then answers inside the request's span, whose fields the line carries.
    pub logs_requests: bool,
}

/// Requests answered before the routes and their span (see `crate::hot_reads`).
pub trait FastPath: Send + Sync {
    /// The work of answering `req`, when it may be answered here at all; it yields the
    /// response and its route pattern (the metrics' label), or `None` to send the request
    /// the full way after all. `None` at once for every other request, without allocating.
    fn answer<'a>(&'a self, req: &'a Request) -> Option<BoxFuture<'a, Option<Answer<'a>>>>;
}

/// A response of the [`FastPath`].
pub struct Answer<'a> {
    pub resp: Response,
    /// Its route pattern, the metrics' label.
    pub route: &'a Arc<str>,
    /// The route's series of its usual status, found once rather than per request.
    pub series: &'a RequestSeries,
}

impl<E: Endpoint> Middleware<E> for HttpPolicy {
    type Output = HttpPolicyEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        HttpPolicyEndpoint {
            inner,
            policy: Arc::new(self.clone()),
            metrics: RequestMetrics::default(),
            unmatched: Arc::from("unmatched"),
            preflight: Arc::from("preflight"),
        }
    }
}

pub struct HttpPolicyEndpoint<E> {
    inner: E,
    policy: Arc<HttpPolicy>,
    metrics: RequestMetrics,
    /// The route label of requests no route matched, and of CORS preflights.
    unmatched: Arc<str>,
    preflight: Arc<str>,
}

/// The request counter and duration histogram of each method, route and status, found in
/// the registry once: building their labels and looking them up again on every request
/// cost more than recording the figures.
#[derive(Default)]
struct RequestMetrics(RwLock<HashMap<MetricsKey, RequestSeries>>);

/// Method, route pattern and status.
type MetricsKey = (Method, Arc<str>, u16);

impl RequestMetrics {
    fn record(&self, method: &Method, route: &Arc<str>, status: StatusCode, seconds: f64) {
        let key = (method.clone(), route.clone(), status.as_u16());
        if let Some(series) = self.0.read().unwrap_or_else(PoisonError::into_inner).get(&key) {
            series.record(seconds);
            return;
        }
        let series = RequestSeries::new(method, route, status);
        series.record(seconds);
        self.0.write().unwrap_or_else(PoisonError::into_inner).insert(key, series);
    }
}

/// The request counter and duration histogram of one method, route and status.
pub struct RequestSeries {
    status: StatusCode,
    count: Counter,
    duration: Histogram,
}

impl RequestSeries {
    pub fn new(method: &Method, route: &str, status: StatusCode) -> Self {
        let labels = [
            ("method", method.to_string()),
            ("route", route.to_owned()),
            ("status", status.as_u16().to_string()),
        ];
        let count = metrics::counter!("http_requests_total", &labels);
        let duration = metrics::histogram!("http_request_duration_seconds", &labels);
        Self { status, count, duration }
    }

    fn record(&self, seconds: f64) {
        self.count.increment(1);
        self.duration.record(seconds);
    }
}

impl<E: Endpoint> Endpoint for HttpPolicyEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Response> {
        let noted = Noted {
            started: Instant::now(),
            request_id: incoming_request_id(&req)
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            method: req.method().clone(),
            origin: req
                .headers()
                .get(header::ORIGIN)
                .filter(|origin| self.policy.allows_origin(origin))
                .cloned(),
            docs: req.uri().path().starts_with("/docs"),
        };
        // Unless a line may be logged for the request, which carries its span's fields, the
        // fast path answers without a span: nothing else would see it.
        if !self.policy.logs_requests
            && let Some(Answer { mut resp, route, series }) = self.policy.fast_answer(&req).await
        {
            self.finish(&mut resp, route, Some(series), &noted);
            return Ok(resp);
        }
        // Boxed: the fast path's requests should not move this larger future around.
        Box::pin(self.call_routed(req, noted)).await
    }
}

impl<E: Endpoint> HttpPolicyEndpoint<E> {
    /// The request in its span: answered by the fast path when it may be (while request
    /// lines are logged), else by the routes.
    async fn call_routed(&self, mut req: Request, noted: Noted) -> Result<Response> {
        req.set_data(RequestId(noted.request_id.clone()));
        let span = crate::trace_http::request_span(&req, &noted.request_id);
        let scope = noted.request_id.clone();

        let work = async move {
            let fast = match self.policy.logs_requests {
                true => self.policy.fast_answer(&req).await,
                false => None,
            };
            let (mut resp, route, series) = match fast {
                Some(Answer { resp, route, series }) => (resp, route.clone(), Some(series)),
                None if noted.origin.is_some() && is_preflight(&req) => {
                    (preflight_response(), self.preflight.clone(), None)
                }
                None => {
                    let (resp, route) = self.call_inner(req, &noted.request_id).await;
                    (resp, route, None)
                }
            };
            let status = resp.status();
            crate::trace_http::record_outcome(&noted.method, &route, status);
            let elapsed = self.finish(&mut resp, &route, series, &noted);
            tracing::info!(status = status.as_u16(), elapsed_ms = elapsed * 1000.0, "request done");
            Ok(resp)
        }
        .instrument(span);
        tasklane_shared::trace::in_request(scope, work).await
    }
}

/// What the policy notes of a request before it is answered.
struct Noted {
    started: Instant,
    request_id: String,
    method: Method,
    /// The request's `Origin`, when it is allowed.
    origin: Option<HeaderValue>,
    /// Swagger UI, which has a policy of its own.
    docs: bool,
}

impl<E: Endpoint> HttpPolicyEndpoint<E> {
    /// What every response gets, however it was answered: the headers of the policy and the
    /// request's metrics (in `series` when it is of its status). Returns the seconds it took.
    fn finish(
        &self,
        resp: &mut Response,
        route: &Arc<str>,
        series: Option<&RequestSeries>,
        noted: &Noted,
    ) -> f64 {
        let status = resp.status();
        apply_headers(resp, &noted.request_id, noted.origin.clone(), noted.docs);
        let elapsed = noted.started.elapsed().as_secs_f64();
        match series {
            Some(series) if series.status == status => series.record(elapsed),
            _ => self.metrics.record(&noted.method, route, status, elapsed),
        }
        elapsed
    }

    /// Runs the inner endpoint; returns the response (errors as problems) and the matched
    /// route pattern, which labels metrics without one series per task id.
    async fn call_inner(&self, mut req: Request, request_id: &str) -> (Response, Arc<str>) {
        if let Err(problem) = self.limit_body(&mut req).await {
            return (problem.with_request_id(request_id).into_response(), self.unmatched.clone());
        }
        if let Err((problem, route)) = self.guard_input(&mut req).await {
            return (problem.with_request_id(request_id).into_response(), route);
        }
        // Boxed: the routes' future is large, and poem moves this one (which would hold it)
        // through every wrapper on the way to its own box.
        match Box::pin(self.inner.call(req)).await {
            Ok(resp) => {
                let resp = resp.into_response();
                let route = self.route_of(resp.data::<poem::PathPattern>());
                (with_request_id(resp, request_id).await, route)
            }
            // A documented error response (e.g. `ServerError`): already a problem.
            Err(err) if err.is_from_response() => {
                let route = self.route_of(err.data::<poem::PathPattern>());
                (with_request_id(err.into_response(), request_id).await, route)
            }
            Err(err) => {
                let route = self.route_of(err.data::<poem::PathPattern>());
                let problem = Problem::from_error(&err);
                (problem.with_request_id(request_id).into_response(), route)
            }
        }
    }

    /// The [`InputGuard`] over the operation the request reaches, with its JSON body read
    /// (already bounded by [`Self::limit_body`]) and handed on. A refusal comes with the
    /// operation's route pattern, for the metrics.
    async fn guard_input(&self, req: &mut Request) -> Result<(), (Problem, Arc<str>)> {
        let guard = &self.policy.input;
        let Some(op) = guard.operation(req.method().as_str(), req.uri().path()) else {
            return Ok(());
        };
        let route = || Arc::from(op.path().replace('{', ":").replace('}', ""));
        let body = if op.takes_body() && is_json(req) {
            // Boxed: a read only some requests make stays out of every request's future.
            let read = Box::pin(req.take_body().into_bytes());
            let bytes = read.await.map_err(|err| {
                let detail = format!("the request body could not be read: {err}");
                (Problem::new(StatusCode::BAD_REQUEST, "bad_request", detail), route())
            })?;
            req.set_body(Body::from_bytes(bytes.clone()));
            Some(bytes)
        } else {
            None
        };
        guard
            .check(op, req.uri().path(), req.uri().query(), body.as_deref())
            .map_err(|problem| (problem, route()))
    }

    fn route_of(&self, pattern: Option<&poem::PathPattern>) -> Arc<str> {
        pattern.map_or_else(|| self.unmatched.clone(), |p| p.0.clone())
    }

    /// 413 for a body over the limit: by `Content-Length` when given, otherwise by reading
    /// at most the limit of the body (which is then handed on from memory).
    async fn limit_body(&self, req: &mut Request) -> Result<(), Problem> {
        let max = self.policy.max_body_bytes;
        let too_large = || {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body is larger than the limit of {max} bytes"),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match declared {
            Some(length) if length > max as u64 => Err(too_large()),
            Some(_) => Ok(()),
            // No declared length: chunked HTTP/1.1, or HTTP/2 (which has no
            // Transfer-Encoding and may omit Content-Length). Read at most the limit whatever
            // the framing; a request known to have no body (a plain GET) is not read at all.
            None => {
                let body = req.take_body();
                if body.is_empty() {
                    req.set_body(body);
                    return Ok(());
                }
                // Boxed: its 4 KiB read buffer would otherwise sit in every request's future,
                // which poem moves from box to box.
                let read = Box::pin(body.into_bytes_limit(max));
                let bytes = read.await.map_err(|_| too_large())?;
                req.set_body(Body::from_bytes(bytes));
                Ok(())
            }
        }
    }
}

/// Handlers build problems without knowing the request id; it is filled in here so every
/// problem carries it.
async fn with_request_id(resp: Response, request_id: &str) -> Response {
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(crate::problem::CONTENT_TYPE.as_bytes()));
    if !is_problem {
        return resp;
    }
    // Boxed, like the body reads above: only problems pay for it.
    Box::pin(fill_request_id(resp, request_id)).await
}

/// A problem's body with `request_id` added, unless it has one.
async fn fill_request_id(mut resp: Response, request_id: &str) -> Response {
    let Ok(bytes) = resp.take_body().into_bytes().await else {
        return resp;
    };
    let body = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut problem)) => {
            problem.entry("request_id").or_insert_with(|| request_id.into());
            serde_json::to_vec(&problem).unwrap_or_else(|_| bytes.to_vec())
        }
        _ => bytes.to_vec(),
    };
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    resp.set_body(body);
    resp
}

impl HttpPolicy {
    async fn fast_answer<'a>(&'a self, req: &'a Request) -> Option<Answer<'a>> {
        self.fast.as_ref()?.answer(req)?.await
    }

    /// Origins match exactly (scheme, host and port), as browsers send them.
    fn allows_origin(&self, origin: &HeaderValue) -> bool {
        origin
            .to_str()
            .map(|origin| self.cors_origins.iter().any(|allowed| allowed == origin))
            .unwrap_or(false)
    }
}

/// An incoming id is kept only if it is short and plain, so it cannot forge log lines.
fn incoming_request_id(req: &Request) -> Option<String> {
    let value = req.headers().get(REQUEST_ID)?.to_str().ok()?;
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    (!value.is_empty() && value.len() <= 128 && value.chars().all(plain)).then(|| value.to_owned())
}

/// `application/json` or a `+json` type, as poem-openapi's `Json` payload accepts them.
fn is_json(req: &Request) -> bool {
    let Some(content_type) = req.headers().get(header::CONTENT_TYPE) else {
        return false;
    };
    let essence = content_type.to_str().unwrap_or_default().split(';').next().unwrap_or_default();
    let essence = essence.trim().to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn is_preflight(req: &Request) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn preflight_response() -> Response {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(header::ACCESS_CONTROL_ALLOW_METHODS, CORS_ALLOW_METHODS)
        .header(header::ACCESS_CONTROL_ALLOW_HEADERS, CORS_ALLOW_HEADERS)
        .header(header::ACCESS_CONTROL_MAX_AGE, "600")
        .finish()
}

fn apply_headers(resp: &mut Response, request_id: &str, origin: Option<HeaderValue>, docs: bool) {
    let status = resp.status();
    let headers = resp.headers_mut();
    // Room for what follows at once, rather than growing the map on the way.
    headers.reserve(8);
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, id);
    }
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // A handler that sets its own policy (a download's `sandbox`) means it.
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(if docs { DOCS_CSP } else { API_CSP }),
        );
    }
    // A handler that sets its own caching (an ETag, an explicit Cache-Control) means it.
    if !headers.contains_key(header::CACHE_CONTROL) && !headers.contains_key(header::ETAG) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    // Responses differ by Origin whether or not this one was allowed, so caches must key on it.
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(CORS_EXPOSE_HEADERS),
        );
    }
}
