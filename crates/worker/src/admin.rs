//! The worker's admin listener: a small HTTP port for probes (`/healthz`) and Prometheus
//! (`/metrics`), since the worker serves nothing else. Containers probe it through
//! `worker healthcheck`.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

/// Liveness: answering at all means the runtime is alive. The worker never gives up on rng,
/// hasher or Redis, so their health is not its own, and restarting it would fix nothing.
async fn healthz() -> &'static str {
    "ok"
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "no such path: the worker's admin port serves /healthz and /metrics\n",
    )
}

/// The admin routes.
pub fn app() -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .merge(mesh::metrics::routes())
        .fallback(not_found)
}
