//! `/console`: the operator console (SPEC section 11), one static page, a script module and
//! a stylesheet compiled into the binary (`api/console/`), so it ships with every build and
//! needs no CDN, no separate server and no front-end build step.
//!
//! The page holds no data and no privilege of its own: it signs in through `/api/v1/auth`
//! and reads and steers everything through the admin API, so it can never do what the API
//! would refuse. Its policy allows scripts, styles and calls from this origin only (no
//! inline script or style, no frames), so an injected string can run nothing.

use poem::http::{StatusCode, header};
use poem::{Endpoint, IntoResponse, Response, Route, get};

/// The console's CSP: everything from this origin, nothing inline, never framed.
pub const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                               img-src 'self'; connect-src 'self'; base-uri 'none'; \
                               form-action 'none'; frame-ancestors 'none'";

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");
const ICON: &str = include_str!("../console/icon.svg");

fn asset(content_type: &'static str, body: &'static str) -> impl Endpoint<Output = Response> {
    poem::endpoint::make_sync(move |_| {
        Response::builder()
            .status(StatusCode::OK)
            .content_type(content_type)
            .header(header::CONTENT_SECURITY_POLICY, CONSOLE_CSP)
            .body(body)
            .into_response()
    })
}

/// The page and its assets, to nest at `/console`.
pub fn routes() -> impl Endpoint<Output = Response> {
    Route::new()
        .at("/", get(asset("text/html; charset=utf-8", INDEX)))
        .at("/console.js", get(asset("text/javascript; charset=utf-8", SCRIPT)))
        .at("/console.css", get(asset("text/css; charset=utf-8", STYLE)))
        .at("/icon.svg", get(asset("image/svg+xml", ICON)))
}
