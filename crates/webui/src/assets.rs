//! The dashboard's files, built into the binary.
//!
//! The webui is one self-contained binary: the page, its stylesheet and its script are compiled
//! in with `include_str!`, so there is nothing to install beside it, and nothing is fetched from
//! a CDN (workshop networks are often offline or slow). The files themselves live in `assets/`,
//! as plain HTML, CSS and JavaScript, so that they can be edited as such.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const DASHBOARD_CSS: &str = include_str!("../assets/dashboard.css");
const DASHBOARD_JS: &str = include_str!("../assets/dashboard.js");
const FAVICON_SVG: &str = include_str!("../assets/favicon.svg");

/// The routes serving the dashboard: the page at `/` and `/index.html` (what the original
/// served), and the files it links to, by relative paths so that the page also works behind a
/// proxy that mounts it under a prefix.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/assets/dashboard.css", get(stylesheet))
        .route("/assets/dashboard.js", get(script))
        .route("/assets/favicon.svg", get(favicon))
}

async fn index() -> impl IntoResponse {
    with_type("text/html; charset=utf-8", INDEX_HTML)
}

async fn stylesheet() -> impl IntoResponse {
    with_type("text/css; charset=utf-8", DASHBOARD_CSS)
}

async fn script() -> impl IntoResponse {
    with_type("text/javascript; charset=utf-8", DASHBOARD_JS)
}

async fn favicon() -> impl IntoResponse {
    with_type("image/svg+xml", FAVICON_SVG)
}

fn with_type(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
}
