//! Prometheus metrics: every service serves `GET /metrics` (the worker on its admin port).
//!
//! The `metrics` facade records; metrics-exporter-prometheus keeps the values and renders the text
//! format. Names follow Prometheus conventions, units in the name: `dockercoins_requests_total`,
//! `dockercoins_request_duration_seconds`.
//!
//! Requests are recorded through handles (`metrics::Counter`, `metrics::Histogram`) that belong to
//! one route or one gRPC method, registered the first time it is used and then shared without a
//! lock: the request path looks nothing up by name. A request's outcome and duration are taken
//! when its answer ends, not when its headers are ready: a gRPC status travels in the trailers
//! after a streamed answer, and the answer's body is part of what a caller waits for.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::MatchedPath;
use axum::routing::get;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use metrics::{Counter, Histogram};
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

/// The layer, for `Router::route_layer` (which runs after routing, so that the matched route is
/// known), that counts and times every request: `dockercoins_requests_total` and
/// `dockercoins_request_duration_seconds`, labelled by protocol (grpc or http), route and outcome
/// (the gRPC status code, or the HTTP status).
///
/// Labels come from route templates and from the gRPC methods the layer was given, never from
/// what a client typed: `/{n}` must not make one series per size, an unknown method must not make
/// one series per name, and a gRPC content type on an HTTP route (`POST /123`) is still that HTTP
/// route's series. Every gRPC call to a method the layer does not know shares one `unmatched`
/// series.
///
/// `route_layer` calls [`Layer::layer`] once per route, so each route's service keeps the handles
/// of its own series. A tower layer rather than `axum::middleware::from_fn`, which clones the
/// inner router and boxes a large future per request.
///
/// A server builds its layer once, as it starts, and serves with it until it exits, so the series
/// live as long as the process: the layer leaks them (a few hundred bytes per method and route),
/// and a request and a route's service refer to them without a reference count. axum clones a
/// route's service for every request, and on this path each shared count taken and given back
/// was a measurable part of a call (docs/BENCHMARKS.md).
#[derive(Clone, Debug)]
pub struct RecordLayer {
    known: &'static Known,
}

impl Default for RecordLayer {
    /// A layer for a router that serves no gRPC method: every gRPC call is `unmatched`.
    fn default() -> Self {
        Self::with_grpc_methods(std::iter::empty::<String>())
    }
}

impl RecordLayer {
    /// A layer that names a gRPC call's series after its method when the method is one of
    /// `methods`, each a full path (`/dockercoins.rng.v1.RngService/Generate`).
    pub fn with_grpc_methods(methods: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let methods = methods
            .into_iter()
            .map(|method| {
                let method: Box<str> = Into::<String>::into(method).into();
                let series = kept(Series::new(Protocol::Grpc, &method));
                (method, series)
            })
            .collect();
        Self {
            known: kept(Known {
                methods,
                unmatched_grpc: kept(Series::new(Protocol::Grpc, UNMATCHED)),
                unmatched_http: kept(Series::new(Protocol::Http, UNMATCHED)),
            }),
        }
    }
}

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Record<S> {
        Record {
            inner,
            series: kept(Routes {
                known: self.known,
                route: OnceLock::new(),
            }),
        }
    }
}

/// Keeps `value` for the rest of the process (see [`RecordLayer`]).
fn kept<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

/// The series one layer knows before any request: one per gRPC method, and the `unmatched` ones.
/// Read-only once built, so requests share it without a lock.
#[derive(Debug)]
struct Known {
    /// A handful (a service's methods, health's and reflection's): a scan compares fewer bytes
    /// than hashing the path would read.
    methods: Box<[(Box<str>, &'static Series)]>,
    unmatched_grpc: &'static Series,
    unmatched_http: &'static Series,
}

/// The route label of every request that has no series of its own.
const UNMATCHED: &str = "unmatched";

/// How tonic's router names a gRPC service's route: `/{service}/{*rest}`.
const GRPC_SERVICE_ROUTE: &str = "/{*rest}";

/// A service whose requests [`RecordLayer`] counts and times.
#[derive(Clone, Debug)]
pub struct Record<S> {
    inner: S,
    /// One pointer, copied when axum clones a route's service for each request.
    series: &'static Routes,
}

/// The series one [`Record`] may record to.
#[derive(Debug)]
struct Routes {
    known: &'static Known,
    /// The series of the HTTP route this service serves, set by its first request (the route's
    /// template is known only from a request's `MatchedPath`).
    route: OnceLock<&'static Series>,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Record<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Record<S> {
    /// The series of a request: its gRPC method's, its HTTP route's, or an `unmatched` one.
    fn series<B>(&self, request: &Request<B>) -> SeriesOf {
        let Some(matched) = request.extensions().get::<MatchedPath>() else {
            return SeriesOf::Kept(self.series.known.unmatched_http);
        };
        let matched = matched.as_str();
        // A gRPC service's route matches the whole service; the method is the path.
        if matched.ends_with(GRPC_SERVICE_ROUTE) && crate::headers::is_grpc(request.headers()) {
            let path = request.uri().path();
            let known = &self.series.known;
            let series = known.methods.iter().find(|(method, _)| **method == *path);
            return SeriesOf::Kept(series.map_or(known.unmatched_grpc, |(_, series)| series));
        }
        let series = self
            .series
            .route
            .get_or_init(|| kept(Series::new(Protocol::Http, matched)));
        if &*series.route == matched {
            SeriesOf::Kept(series)
        } else {
            // The layer wraps several routes (`Router::layer`, not `route_layer`): still one
            // series per template, with handles registered per request.
            SeriesOf::Own(Box::new(Series::new(Protocol::Http, matched)))
        }
    }
}

impl<S, B, ResBody> Service<Request<B>> for Record<S>
where
    S: Service<Request<B>, Response = http::Response<ResBody>>,
    ResBody: Body,
{
    type Response = http::Response<RecordedBody<ResBody>>;
    type Error = S::Error;
    type Future = Recorded<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let pending = Pending {
            series: self.series(&request),
            started: quanta::Instant::now(),
            code: None,
        };
        Recorded {
            inner: self.inner.call(request),
            pending: Some(pending),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Record`]: hands the answer's outcome so far to its body.
    pub struct Recorded<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F, B, E> Future for Recorded<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Body,
{
    type Output = Result<http::Response<RecordedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        Poll::Ready(result.map(|response| {
            let pending = this
                .pending
                .take()
                .map(|pending| pending.answered(&response));
            response.map(|body| RecordedBody::new(body, pending))
        }))
    }
}

pin_project_lite::pin_project! {
    /// An answer's body that records its request when it ends: at its last frame (the trailers
    /// of a gRPC answer), at once if it is empty, or when it is dropped unfinished.
    pub struct RecordedBody<B> {
        #[pin]
        inner: B,
        pending: Option<Pending>,
    }

    impl<B> PinnedDrop for RecordedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before its end: the client went away, or the connection did.
            if let Some(pending) = this.project().pending.take() {
                pending.finish(CANCELLED);
            }
        }
    }
}

impl<B: Body> RecordedBody<B> {
    fn new(inner: B, pending: Option<Pending>) -> Self {
        // An empty body (a trailers-only gRPC answer, a 204) may never be polled.
        let pending = match pending {
            Some(pending) if inner.is_end_stream() => {
                pending.finish(NO_STATUS);
                None
            }
            pending => pending,
        };
        Self { inner, pending }
    }
}

impl<B: Body> Body for RecordedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            Some(Ok(frame)) => {
                if let (Some(trailers), Some(pending)) =
                    (frame.trailers_ref(), this.pending.as_mut())
                {
                    pending.trailers(trailers);
                }
                this.inner.is_end_stream().then_some(NO_STATUS)
            }
            // hyper resets the stream, which gRPC clients report as INTERNAL.
            Some(Err(_)) => Some(INTERNAL),
            None => Some(NO_STATUS),
        };
        if let Some(otherwise) = ended
            && let Some(pending) = this.pending.take()
        {
            pending.finish(otherwise);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// gRPC status codes this module names.
const CANCELLED: u16 = 1;
const UNKNOWN: u16 = 2;
const PERMISSION_DENIED: u16 = 7;
const UNIMPLEMENTED: u16 = 12;
const INTERNAL: u16 = 13;
const UNAVAILABLE: u16 = 14;
const UNAUTHENTICATED: u16 = 16;
/// What a gRPC answer that ended without a `grpc-status` counts as: UNKNOWN, as clients see it.
const NO_STATUS: u16 = UNKNOWN;

/// The series a request records to: one its layer keeps, or one made for it alone.
enum SeriesOf {
    Kept(&'static Series),
    Own(Box<Series>),
}

impl std::ops::Deref for SeriesOf {
    type Target = Series;

    fn deref(&self) -> &Series {
        match self {
            SeriesOf::Kept(series) => series,
            SeriesOf::Own(series) => series,
        }
    }
}

/// A request on its way: its series, when it started, and its outcome once known (an HTTP status,
/// or a gRPC status code from the headers of a trailers-only answer or from the trailers).
struct Pending {
    series: SeriesOf,
    /// quanta reads the TSC itself, where `std::time::Instant` goes through the C library and
    /// the vDSO for the same reading: a quarter less per reading (docs/BENCHMARKS.md), on the
    /// clock the exporter already reads for each sample.
    started: quanta::Instant,
    code: Option<u16>,
}

impl Pending {
    /// Takes what the answer's head says.
    fn answered<B: Body>(mut self, response: &http::Response<B>) -> Self {
        let status = response.status();
        self.code = match self.series.protocol {
            Protocol::Http => Some(status.as_u16()),
            // A successful answer with a body sends its status in the trailers, not in the head.
            Protocol::Grpc
                if status == http::StatusCode::OK && !response.body().is_end_stream() =>
            {
                None
            }
            Protocol::Grpc => grpc_status(response.headers())
                .or_else(|| (status != http::StatusCode::OK).then(|| grpc_code_of(status))),
        };
        self
    }

    /// Takes a gRPC status from the trailers, where a streamed answer sends it.
    fn trailers(&mut self, trailers: &http::HeaderMap) {
        if self.series.protocol == Protocol::Grpc
            && let Some(code) = grpc_status(trailers)
        {
            self.code = Some(code);
        }
    }

    /// Records the request, as `otherwise` if no gRPC status came.
    fn finish(self, otherwise: u16) {
        let code = self.code.unwrap_or(otherwise);
        self.series.record(code, self.started.elapsed());
    }
}

/// The `grpc-status` in `headers`, if any; a value no gRPC code has is UNKNOWN, as tonic reads it.
fn grpc_status(headers: &http::HeaderMap) -> Option<u16> {
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    let value = headers.get(GRPC_STATUS)?;
    Some(tonic::Code::from_bytes(value.as_bytes()) as u16)
}

/// What a gRPC client makes of an HTTP status that came without a `grpc-status`
/// (grpc/doc/http-grpc-status-mapping.md, as tonic applies it).
fn grpc_code_of(status: http::StatusCode) -> u16 {
    match status.as_u16() {
        400 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Grpc,
    Http,
}

impl Protocol {
    fn label(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
        }
    }
}

/// How many outcomes a series keeps handles for: every gRPC code, and more HTTP statuses than a
/// route answers with. An outcome past them is recorded by name, which is slower, not wrong.
const OUTCOMES: usize = 17;

/// The handles of one route's (or method's) series: its duration, and a count per outcome. Each
/// is registered with the recorder when first used, so that `/metrics` lists only what happened.
#[derive(Debug)]
struct Series {
    protocol: Protocol,
    route: Box<str>,
    duration: OnceLock<Histogram>,
    /// Filled in order, each slot once: lock-free to read, and a race for a slot is lost by one
    /// side only, which moves on to the next.
    outcomes: [OnceLock<(u16, Counter)>; OUTCOMES],
}

impl Series {
    fn new(protocol: Protocol, route: &str) -> Self {
        Self {
            protocol,
            route: route.into(),
            duration: OnceLock::new(),
            outcomes: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    fn record(&self, code: u16, elapsed: Duration) {
        self.duration
            .get_or_init(|| {
                metrics::histogram!(
                    "dockercoins_request_duration_seconds",
                    "protocol" => self.protocol.label(),
                    "route" => self.route.to_string(),
                )
            })
            .record(elapsed.as_secs_f64());
        let register = || {
            metrics::counter!(
                "dockercoins_requests_total",
                "protocol" => self.protocol.label(),
                "route" => self.route.to_string(),
                "code" => code.to_string(),
            )
        };
        for slot in &self.outcomes {
            let (outcome, requests) = slot.get_or_init(|| (code, register()));
            if *outcome == code {
                requests.increment(1);
                return;
            }
        }
        register().increment(1);
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::body::Body as AxumBody;
    use axum::response::Response;
    use axum::routing::post;
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use tower::ServiceExt;

    use super::*;

    /// A stand-in gRPC service (routed as tonic routes one, `/{service}/{*rest}`) beside an HTTP
    /// route with a parameter: `Known` answers OK trailers-only, other methods UNIMPLEMENTED.
    fn grpc_router() -> axum::Router {
        let answer = |request: axum::extract::Request| async move {
            let code = if request.uri().path().ends_with("/Known") {
                "0"
            } else {
                "12"
            };
            Response::builder()
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header("grpc-status", code)
                .body(AxumBody::empty())
                .unwrap()
        };
        axum::Router::new()
            .route("/test.v1.Metrics/{*rest}", post(answer))
            .route("/{n}", get(|| async { "bytes" }))
            .route_layer(RecordLayer::with_grpc_methods(["/test.v1.Metrics/Known"]))
            .with_state(())
    }

    /// A gRPC call to `path` with an empty body.
    fn call(path: &str) -> Request<AxumBody> {
        Request::post(path)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(AxumBody::empty())
            .unwrap()
    }

    /// The value of the sample `name{labels}` in the Prometheus text.
    fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
        let series = format!("{name}{{{labels}}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&series))
            .and_then(|value| value.parse().ok())
    }

    /// The calls counted for a gRPC route and code.
    fn grpc_count(text: &str, route: &str, code: &str) -> Option<f64> {
        let labels = format!("protocol=\"grpc\",route=\"{route}\",code=\"{code}\"");
        sample(text, "dockercoins_requests_total", &labels)
    }

    #[tokio::test]
    async fn counts_grpc_calls_per_method_and_unknown_methods_as_one_series() {
        let handle = install();
        for method in ["Known", "Known", "Bogus1", "Bogus2"] {
            let path = format!("/test.v1.Metrics/{method}");
            grpc_router().oneshot(call(&path)).await.unwrap();
        }
        let text = handle.render();
        assert_eq!(grpc_count(&text, "/test.v1.Metrics/Known", "0"), Some(2.0));
        assert_eq!(grpc_count(&text, "unmatched", "12"), Some(2.0), "{text}");
        assert!(!text.contains("Bogus"), "{text}");
    }

    #[tokio::test]
    async fn a_grpc_content_type_on_an_http_route_makes_no_new_series() {
        let handle = install();
        // Only the series this router's HTTP route could make: the other tests share the
        // process's recorder, and record to their methods and `unmatched` meanwhile.
        let series = |text: &str| {
            text.lines()
                .filter(|line| line.starts_with("dockercoins_requests_total"))
                .filter(|line| !line.contains("test.v1.") && !line.contains("unmatched"))
                .count()
        };
        grpc_router().oneshot(call("/0")).await.unwrap();
        let before = series(&handle.render());
        for n in 1..200 {
            grpc_router().oneshot(call(&format!("/{n}"))).await.unwrap();
        }
        let text = handle.render();
        assert_eq!(series(&text), before, "{text}");
        assert!(!text.contains("route=\"/17\""), "{text}");
    }

    /// A gRPC service that answers every call with a message, then waits `pause`, then sends
    /// `grpc-status: code` in the trailers, as a streamed (not trailers-only) answer does.
    fn streaming_router(method: &str, code: &'static str, pause: Duration) -> axum::Router {
        let answer = move || async move {
            let message = futures::stream::once(async {
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"\0\0\0\0\0")))
            });
            let trailers = futures::stream::once(async move {
                tokio::time::sleep(pause).await;
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static(code));
                Ok(Frame::trailers(trailers))
            });
            let body = StreamBody::new(futures::StreamExt::chain(message, trailers));
            Response::builder()
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .body(AxumBody::new(body))
                .unwrap()
        };
        let method = format!("/test.v1.Streaming/{method}");
        axum::Router::new()
            .route("/test.v1.Streaming/{*rest}", post(answer))
            .route_layer(RecordLayer::with_grpc_methods([method]))
            .with_state(())
    }

    #[tokio::test]
    async fn a_grpc_error_in_the_trailers_is_counted_as_that_error() {
        let handle = install();
        let router = streaming_router("Unavailable", "14", Duration::ZERO);
        let response = router.oneshot(call("/test.v1.Streaming/Unavailable")).await;
        let route = "/test.v1.Streaming/Unavailable";
        assert_eq!(
            grpc_count(&handle.render(), route, "14"),
            None,
            "not before the end"
        );
        response.unwrap().into_body().collect().await.unwrap();
        let text = handle.render();
        assert_eq!(grpc_count(&text, route, "14"), Some(1.0), "{text}");
        assert_eq!(grpc_count(&text, route, "0"), None, "{text}");
    }

    #[tokio::test]
    async fn the_duration_covers_a_slow_body() {
        let handle = install();
        let pause = Duration::from_millis(200);
        let router = streaming_router("Slow", "0", pause);
        let response = router.oneshot(call("/test.v1.Streaming/Slow")).await;
        response.unwrap().into_body().collect().await.unwrap();
        let text = handle.render();
        let labels = "protocol=\"grpc\",route=\"/test.v1.Streaming/Slow\"";
        let name = "dockercoins_request_duration_seconds";
        assert_eq!(sample(&text, &format!("{name}_count"), labels), Some(1.0));
        let seconds = sample(&text, &format!("{name}_sum"), labels).unwrap();
        assert!(seconds >= pause.as_secs_f64(), "{seconds} s: {text}");
    }

    #[tokio::test]
    async fn a_call_whose_answer_is_dropped_unfinished_counts_as_cancelled() {
        let handle = install();
        let router = streaming_router("Dropped", "0", Duration::from_secs(60));
        let response = router.oneshot(call("/test.v1.Streaming/Dropped")).await;
        let mut body = response.unwrap().into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        let text = handle.render();
        let route = "/test.v1.Streaming/Dropped";
        assert_eq!(grpc_count(&text, route, "1"), Some(1.0), "{text}");
        assert_eq!(grpc_count(&text, route, "0"), None, "{text}");
    }
}
