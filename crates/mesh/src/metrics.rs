//! Prometheus metrics: every service serves `GET /metrics` (the worker on its admin port).
//!
//! The `metrics` facade records; metrics-exporter-prometheus keeps the values and renders the text
//! format. Names follow Prometheus conventions, units in the name: `dockercoins_requests_total`,
//! `dockercoins_request_duration_seconds`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: from a turbo call (tens of µs) to the workshop's queue (seconds).
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// How often histogram samples are folded into their buckets. The exporter keeps every sample
/// recorded since the last fold: without it, memory grows with each request until something
/// scrapes `/metrics` (30,000 requests a second leave ~0.5 MB of samples per second).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder once, and returns the handle that renders it. Called inside a
/// Tokio runtime, it also starts the task that folds histogram samples every second.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), &BUCKETS)
                .expect("the buckets are not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let handle = handle.clone();
                runtime.spawn(async move {
                    let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
                    loop {
                        ticks.tick().await;
                        handle.run_upkeep();
                    }
                });
            }
            handle
        })
        .clone()
}

/// `GET /metrics` in the Prometheus text format.
pub fn routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    let handle = install();
    axum::Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    handle.render(),
                )
            }
        }),
    )
}

/// Middleware (for `Router::route_layer`, which runs after routing) that counts and times every
/// request: `dockercoins_requests_total` and
/// `dockercoins_request_duration_seconds`, labelled by protocol (grpc or http), route and outcome
/// (the gRPC status code, or the HTTP status).
pub async fn record(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
    // The matched route, not the raw path, for HTTP: `/{n}` must not make one series per size.
    // gRPC routes match a whole service; the method is the path.
    let route = match request.extensions().get::<MatchedPath>() {
        Some(_) if grpc => request.uri().path().to_string(),
        Some(matched) => matched.as_str().to_string(),
        None => "unmatched".to_string(),
    };
    let response = next.run(request).await;
    let code = if grpc {
        // tonic answers errors trailers-only (the status in the headers); success has it in the
        // trailers, after this middleware sees the response.
        response
            .headers()
            .get("grpc-status")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("0")
            .to_string()
    } else {
        response.status().as_u16().to_string()
    };
    let protocol = if grpc { "grpc" } else { "http" };
    let labels = [
        ("protocol", protocol.to_string()),
        ("route", route),
        ("code", code),
    ];
    metrics::counter!("dockercoins_requests_total", &labels).increment(1);
    metrics::histogram!("dockercoins_request_duration_seconds", &labels[..2])
        .record(started.elapsed().as_secs_f64());
    response.into_response()
}
