//! Prometheus metrics: every service serves `GET /metrics` (the worker on its admin port).
//!
//! The `metrics` facade records; metrics-exporter-prometheus keeps the values and renders the text
//! format. Names follow Prometheus conventions, units in the name: `dockercoins_requests_total`,
//! `dockercoins_request_duration_seconds`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{LazyLock, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::MatchedPath;
use axum::response::Response;
use axum::routing::get;
use http::Request;
use metrics::{Counter, Histogram, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower::{Layer, Service};

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

/// The layer (for `Router::route_layer`, which runs after routing, so that the matched route is
/// known) that counts and times every request: `dockercoins_requests_total` and
/// `dockercoins_request_duration_seconds`, labelled by protocol (grpc or http), route and outcome
/// (the gRPC status code, or the HTTP status).
///
/// A tower layer rather than `axum::middleware::from_fn`, and with each series' handles looked up
/// once: in callgrind, `from_fn` (which clones the inner router and boxes a large future per
/// request) and the registry's per-call key building cost 5,500 instructions per shim request,
/// 17% of rng's user-space work (docs/BENCHMARKS.md).
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordLayer;

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Record<S> {
        Record { inner }
    }
}

/// A service whose requests [`RecordLayer`] counts and times.
#[derive(Clone, Debug)]
pub struct Record<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Record<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Recorded<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // Labels come from route templates and from the methods a gRPC service answers, never
        // from what a client typed: `/{n}` must not make one series per size, and a gRPC content
        // type on an HTTP route (`POST /123`) is still that HTTP route's series. A gRPC service's
        // route matches the whole service (`/pkg.Service/{*rest}`); the method is the path, kept
        // only if the service knows it (see `record`).
        let route = match request.extensions().get::<MatchedPath>() {
            Some(matched)
                if matched.as_str().ends_with(GRPC_SERVICE_ROUTE)
                    && crate::headers::is_grpc(request.headers()) =>
            {
                Route::Grpc(request.uri().path().into())
            }
            Some(matched) => Route::Http(matched.clone()),
            None => Route::Unmatched,
        };
        Recorded {
            inner: self.inner.call(request),
            started: Instant::now(),
            route: Some(route),
        }
    }
}

/// How tonic's router names a gRPC service's route: `/{service}/{*rest}`.
const GRPC_SERVICE_ROUTE: &str = "/{*rest}";

/// What a request's series is named after, until its answer says its outcome.
enum Route {
    Grpc(Box<str>),
    Http(MatchedPath),
    Unmatched,
}

pin_project_lite::pin_project! {
    /// The response future of [`Record`]: records when the answer is ready.
    pub struct Recorded<F> {
        #[pin]
        inner: F,
        started: Instant,
        route: Option<Route>,
    }
}

impl<F, E> Future for Recorded<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(route)) = (&result, this.route.take()) {
            record(route, response, this.started.elapsed());
        }
        Poll::Ready(result)
    }
}

/// The gRPC status codes as label values: 0 (OK) to 16 (UNAUTHENTICATED).
const GRPC_CODES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];
/// UNIMPLEMENTED: the method does not exist, so its path is not a route worth a series.
const UNIMPLEMENTED: &str = "12";

/// The handles of one route's series, per protocol: the duration, and a count per outcome.
#[derive(Default)]
struct Series {
    routes: [HashMap<Box<str>, RouteSeries>; 2],
}

struct RouteSeries {
    duration: Histogram,
    requests: HashMap<SharedString, Counter>,
}

static SERIES: LazyLock<Mutex<Series>> = LazyLock::new(Mutex::default);

fn record(route: Route, response: &Response, elapsed: Duration) {
    let grpc = matches!(route, Route::Grpc(_));
    let code: SharedString = if grpc {
        // tonic answers errors trailers-only (the status in the headers); success has it in the
        // trailers, after this layer sees the response.
        let code = response
            .headers()
            .get("grpc-status")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("0");
        match GRPC_CODES.iter().find(|known| **known == code) {
            Some(known) => SharedString::const_str(known),
            None => SharedString::from_owned(code.to_string()),
        }
    } else {
        SharedString::from_owned(response.status().as_str().to_string())
    };
    let route = match &route {
        Route::Grpc(_) if &*code == UNIMPLEMENTED => "unmatched",
        Route::Grpc(path) => path,
        Route::Http(matched) => matched.as_str(),
        Route::Unmatched => "unmatched",
    };
    let protocol = if grpc { "grpc" } else { "http" };
    let mut series = SERIES.lock().unwrap_or_else(PoisonError::into_inner);
    let routes = &mut series.routes[usize::from(grpc)];
    if !routes.contains_key(route) {
        let labels = [
            ("protocol", protocol.to_string()),
            ("route", route.to_string()),
        ];
        let duration = metrics::histogram!("dockercoins_request_duration_seconds", &labels);
        let requests = HashMap::new();
        routes.insert(route.into(), RouteSeries { duration, requests });
    }
    let route_series = routes.get_mut(route).expect("inserted above");
    route_series.duration.record(elapsed.as_secs_f64());
    route_series
        .requests
        .entry(code)
        .or_insert_with_key(|code| {
            metrics::counter!(
                "dockercoins_requests_total",
                "protocol" => protocol,
                "route" => route.to_string(),
                "code" => code.clone(),
            )
        })
        .increment(1);
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::post;
    use tower::ServiceExt;

    use super::*;

    /// A stand-in gRPC service (routed as tonic routes one, `/{service}/{*rest}`) beside an HTTP
    /// route with a parameter: answers trailers-only with the status its method name asks for.
    fn grpc_router() -> axum::Router {
        let answer = |request: axum::extract::Request| async move {
            let code = if request.uri().path().ends_with("/Known") {
                "0"
            } else {
                UNIMPLEMENTED
            };
            Response::builder()
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header("grpc-status", code)
                .body(Body::empty())
                .unwrap()
        };
        axum::Router::new()
            .route("/test.v1.Metrics/{*rest}", post(answer))
            .route("/{n}", axum::routing::get(|| async { "bytes" }))
            .route_layer(RecordLayer)
    }

    #[tokio::test]
    async fn counts_grpc_calls_per_method_and_unknown_methods_as_one_series() {
        let handle = install();
        for method in ["Known", "Known", "Bogus1", "Bogus2"] {
            let request = Request::post(format!("/test.v1.Metrics/{method}"))
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .body(Body::empty())
                .unwrap();
            grpc_router().oneshot(request).await.unwrap();
        }
        let text = handle.render();
        let count = |route: &str, code: &str| {
            let series = format!(
                "dockercoins_requests_total{{protocol=\"grpc\",route=\"{route}\",code=\"{code}\"}} "
            );
            text.lines()
                .find_map(|line| line.strip_prefix(&series))
                .and_then(|value| value.parse::<u64>().ok())
        };
        assert_eq!(count("/test.v1.Metrics/Known", "0"), Some(2), "{text}");
        assert_eq!(count("unmatched", UNIMPLEMENTED), Some(2), "{text}");
        assert!(!text.contains("Bogus"), "{text}");
    }

    #[tokio::test]
    async fn a_grpc_content_type_on_an_http_route_makes_no_new_series() {
        let handle = install();
        let series = |text: &str| {
            text.lines()
                .filter(|line| line.starts_with("dockercoins_requests_total"))
                .count()
        };
        let send = |path: String| {
            let request = Request::post(path)
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .body(Body::empty())
                .unwrap();
            grpc_router().oneshot(request)
        };
        send("/0".to_string()).await.unwrap();
        let before = series(&handle.render());
        for n in 1..200 {
            send(format!("/{n}")).await.unwrap();
        }
        let text = handle.render();
        assert_eq!(series(&text), before, "{text}");
        assert!(!text.contains("route=\"/17\""), "{text}");
    }
}
