//! The request queue: at most N requests are served at once, the rest wait their turn.
//!
//! This is how the workshop's bottleneck is built. The original rng was a single-threaded web
//! server, so every request to its port, a worker's or `httping`'s, waited behind the others.
//! Putting the HTTP shim and the gRPC service behind one shared queue keeps that lesson: with ten
//! workers, `httping localhost:8001` shows the queue's wait.
//!
//! The queue is a fair semaphore (first come, first served) that also counts what it holds, so
//! that the wait shows: `dockercoins_queue_depth` (requests waiting now) and
//! `dockercoins_queue_wait_seconds` (how long each waited) in `/metrics`, and on every answer
//! (gRPC response metadata) the headers `x-queue-depth` (how many wait behind it) and
//! `x-queue-wait-ms` (how long it waited). The worker's outlier detection takes the wait out of
//! the latency it measures, so that it tells a slow replica from a busy one (see
//! `crate::client::outlier`).
//!
//! The queue is bounded: at most `max_waiting` requests wait, and the next one is refused at once
//! (gRPC RESOURCE_EXHAUSTED, HTTP 503 with `Retry-After: 1`), so that a flood of callers costs
//! the server a refusal each, not memory and an ever longer wait for everyone. A gRPC call also
//! leaves the queue when its `grpc-timeout` expires (DEADLINE_EXCEEDED): its caller has given up,
//! and serving it would only delay the calls behind it. The same deadline caps the call once
//! served, for the same reason.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::Semaphore;
use tonic::server::NamedService;
use tower::util::Either;
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument as _;

use crate::answer::{Answers, TextBody, refusal};
use crate::headers::QUEUE_WAIT;

/// The response header (gRPC metadata) that says how many requests wait in the queue.
pub const QUEUE_DEPTH: &str = "x-queue-depth";

/// The default bound on waiting requests (`RNG_MAX_QUEUE`, `HASHER_MAX_QUEUE`).
///
/// Far above what the mesh queues when it works: the workshop's 10 workers queue about 10 at
/// rng, and 150 workers spread over 30 rng replicas about 5 each. A queue this long at one
/// request per 100 ms is already a 25 s wait, past every client's deadline.
pub const DEFAULT_MAX_WAITING: usize = 256;

/// The longest queue a setting may ask for: 100,000 requests at rng's ten a second is hours of
/// waiting, no bound at all.
pub const MAX_MAX_WAITING: usize = 100_000;

/// Parses a queue bound setting (`RNG_MAX_QUEUE`, `HASHER_MAX_QUEUE`): 0 means nobody waits (a
/// request that finds every turn taken is refused, shedding load instead of queueing it), up to
/// [`MAX_MAX_WAITING`].
pub fn parse_max_waiting(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(value) if value <= MAX_MAX_WAITING => Ok(value),
        _ => Err(format!("expected an integer from 0 to {MAX_MAX_WAITING}")),
    }
}

/// One queue, shared by every route and service it is applied to.
#[derive(Clone, Debug)]
pub struct Queue {
    /// `None` means unlimited: no queue at all, so no cost.
    shared: Option<Arc<Shared>>,
}

#[derive(Debug)]
struct Shared {
    semaphore: Semaphore,
    /// Requests waiting for their turn (not those being served).
    waiting: AtomicUsize,
    /// Most requests that may wait; the next is refused.
    max_waiting: usize,
    /// `dockercoins_queue_depth` and `dockercoins_queue_wait_seconds`, registered once: they
    /// change on every queued request.
    depth: metrics::Gauge,
    wait: metrics::Histogram,
}

impl Queue {
    /// A queue that lets `limit` requests run at once (`0` means unlimited, and then nothing
    /// waits), with room for `max_waiting` more to wait for their turn (`0`: none wait, a
    /// request that finds every turn taken is refused at once).
    ///
    /// Its metrics go to the recorder installed when it is made (mesh's `main` installs it
    /// before a service builds anything).
    pub fn new(limit: usize, max_waiting: usize) -> Self {
        Self {
            shared: (limit > 0).then(|| {
                let depth = metrics::gauge!("dockercoins_queue_depth");
                depth.set(0.0);
                Arc::new(Shared {
                    semaphore: Semaphore::new(limit),
                    waiting: AtomicUsize::new(0),
                    max_waiting,
                    depth,
                    wait: metrics::histogram!("dockercoins_queue_wait_seconds"),
                })
            }),
        }
    }

    /// Requests waiting for their turn now (0 for an unlimited queue).
    pub fn depth(&self) -> usize {
        self.shared
            .as_ref()
            .map_or(0, |shared| shared.waiting.load(Ordering::Relaxed))
    }

    /// Puts a service (a tonic server, or an axum route through [`Queue`] as a layer) behind the
    /// queue, keeping its gRPC name so that it can still be routed.
    pub fn service<S>(&self, inner: S) -> Queued<S> {
        let inner = match &self.shared {
            Some(shared) => Either::Left(Limited {
                inner,
                shared: shared.clone(),
            }),
            None => Either::Right(inner),
        };
        Queued { inner }
    }
}

impl<S> Layer<S> for Queue {
    type Service = Queued<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.service(inner)
    }
}

/// A service behind a [`Queue`].
#[derive(Clone, Debug)]
pub struct Queued<S> {
    inner: Either<Limited<S>, S>,
}

impl<S: NamedService> NamedService for Queued<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, RB, B> Service<http::Request<RB>> for Queued<S>
where
    S: Answers<RB, Body = B>,
    RB: Send + 'static,
    B: TextBody + 'static,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = <Either<Limited<S>, S> as Service<http::Request<RB>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RB>) -> Self::Future {
        self.inner.call(request)
    }
}

/// Why the queue answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the queue is full ({max_waiting} requests waiting), retry later")]
    Full { max_waiting: usize },
    #[error("the call's deadline (grpc-timeout) passed")]
    DeadlineExceeded,
}

impl From<Refused> for tonic::Status {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Full { .. } => tonic::Status::resource_exhausted(refused.to_string()),
            Refused::DeadlineExceeded => tonic::Status::deadline_exceeded(refused.to_string()),
        }
    }
}

impl Refused {
    /// The answer: a gRPC status for a gRPC call, else 503 with `Retry-After` and one line of
    /// text (an HTTP request has no deadline, so only a full queue refuses it).
    fn answer<B: TextBody>(self, grpc: bool) -> http::Response<B> {
        metrics::counter!("dockercoins_queue_refused_total", "reason" => match self {
            Refused::Full { .. } => "full",
            Refused::DeadlineExceeded => "deadline",
        })
        .increment(1);
        refusal(tonic::Status::from(self), grpc)
    }
}

/// The limited case: waits for a turn inside the response future, so that the wait can be timed
/// and counted (tower's concurrency limit waits in `poll_ready`, where neither shows).
#[derive(Clone, Debug)]
pub struct Limited<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, RB, B> Service<http::Request<RB>> for Limited<S>
where
    S: Answers<RB, Body = B>,
    RB: Send + 'static,
    B: TextBody + 'static,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the queue's turn, taken in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<RB>) -> Self::Future {
        let inner = self.inner.clone();
        let shared = self.shared.clone();
        let grpc = crate::headers::is_grpc(request.headers());
        let deadline = grpc
            .then(|| crate::server::deadline::grpc_timeout(request.headers()))
            .flatten()
            .map(|timeout| tokio::time::Instant::now() + timeout);
        Box::pin(async move {
            let queued = Instant::now();
            // The wait shows in the request's trace (see `crate::telemetry::trace`).
            let turn = shared.take_turn(deadline).instrument(
                tracing::debug_span!(target: crate::telemetry::trace::TARGET, "queue wait"),
            );
            let permit = match turn.await {
                Ok(permit) => permit,
                Err(refused) => return Ok(refused.answer(grpc)),
            };
            let waited = queued.elapsed();
            shared.wait.record(waited.as_secs_f64());
            let served = inner.oneshot(request);
            let mut response = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, served).await {
                    Ok(response) => response?,
                    Err(_) => return Ok(Refused::DeadlineExceeded.answer(grpc)),
                },
                None => served.await?,
            };
            // Those still waiting are what the next caller would wait behind.
            let depth = shared.waiting.load(Ordering::Relaxed);
            let headers = response.headers_mut();
            headers.insert(
                http::HeaderName::from_static(QUEUE_DEPTH),
                http::HeaderValue::from(depth),
            );
            let waited = format!("{:.3}", waited.as_secs_f64() * 1000.0);
            if let Ok(waited) = http::HeaderValue::from_str(&waited) {
                headers.insert(http::HeaderName::from_static(QUEUE_WAIT), waited);
            }
            drop(permit);
            Ok(response)
        })
    }
}

impl Shared {
    /// Waits for a turn, unless the queue is full or the deadline passes first.
    async fn take_turn(
        &self,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, Refused> {
        // tokio's semaphore hands a released turn to the first waiter, so a free turn means
        // nobody waits: taking it here jumps no queue.
        if let Ok(permit) = self.semaphore.try_acquire() {
            return Ok(permit);
        }
        let Some(_waiting) = Waiting::enter(self) else {
            return Err(Refused::Full {
                max_waiting: self.max_waiting,
            });
        };
        let acquire = self.semaphore.acquire();
        let permit = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, acquire)
                .await
                .map_err(|_| Refused::DeadlineExceeded)?,
            None => acquire.await,
        };
        Ok(permit.expect("the queue's semaphore is never closed"))
    }
}

/// Counts one request as waiting until dropped, also when its caller gives up while it waits.
struct Waiting<'a>(&'a Shared);

impl<'a> Waiting<'a> {
    /// Takes a place in the queue, if one is left.
    fn enter(shared: &'a Shared) -> Option<Self> {
        let before = shared
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |waiting| {
                (waiting < shared.max_waiting).then_some(waiting + 1)
            })
            .ok()?;
        shared.depth.set((before + 1) as f64);
        Some(Self(shared))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let depth = self.0.waiting.fetch_sub(1, Ordering::Relaxed) - 1;
        self.0.depth.set(depth as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use tower::service_fn;

    /// A handler that holds its turn for `pause`.
    fn slow(
        pause: Duration,
    ) -> impl Service<
        http::Request<()>,
        Response = http::Response<axum::body::Body>,
        Error = Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        service_fn(move |_: http::Request<()>| async move {
            tokio::time::sleep(pause).await;
            Ok::<_, Infallible>(http::Response::new(axum::body::Body::empty()))
        })
    }

    fn http_request() -> http::Request<()> {
        http::Request::new(())
    }

    /// A gRPC call, with a `grpc-timeout` if `timeout` is given.
    fn grpc_request(timeout: Option<&'static str>) -> http::Request<()> {
        let mut request = http::Request::new(());
        let headers = request.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        if let Some(timeout) = timeout {
            headers.insert(
                crate::server::deadline::GRPC_TIMEOUT,
                http::HeaderValue::from_static(timeout),
            );
        }
        request
    }

    fn grpc_code<B>(response: &http::Response<B>) -> tonic::Code {
        tonic::Status::from_header_map(response.headers())
            .map_or(tonic::Code::Ok, |status| status.code())
    }

    #[test]
    fn the_bound_setting_is_from_0_to_the_maximum() {
        assert_eq!(parse_max_waiting("0"), Ok(0));
        assert_eq!(parse_max_waiting("256"), Ok(256));
        assert_eq!(parse_max_waiting("100000"), Ok(MAX_MAX_WAITING));
        for bad in ["100001", "-1", "", "many", "1e3"] {
            assert!(parse_max_waiting(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_at_a_time_in_arrival_order_with_the_depth_reported() {
        let queue = Queue::new(1, 10);
        let service = queue.service(slow(Duration::from_millis(100)));
        let started = tokio::time::Instant::now();
        let calls: Vec<_> = (0..3)
            .map(|_| tokio::spawn(service.clone().oneshot(http_request())))
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(queue.depth(), 2, "one served, two waiting");
        let mut depths = Vec::new();
        for call in calls {
            let response = call.await.unwrap().unwrap();
            depths.push(
                response.headers()[QUEUE_DEPTH]
                    .to_str()
                    .unwrap()
                    .to_string(),
            );
        }
        assert_eq!(depths, ["2", "1", "0"]);
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(queue.depth(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_gives_up_leaves_the_queue() {
        let queue = Queue::new(1, 10);
        let service = queue.service(slow(Duration::from_millis(100)));
        let first = tokio::spawn(service.clone().oneshot(http_request()));
        let second = tokio::spawn(service.clone().oneshot(http_request()));
        tokio::task::yield_now().await;
        assert_eq!(queue.depth(), 1);
        second.abort();
        let _ = second.await;
        assert_eq!(queue.depth(), 0);
        first.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_bound_calls_are_refused_at_once_and_the_bound_holds() {
        let queue = Queue::new(1, 3);
        let service = queue.service(slow(Duration::from_secs(10)));
        let accepted: Vec<_> = (0..4)
            .map(|_| tokio::spawn(service.clone().oneshot(grpc_request(None))))
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(queue.depth(), 3, "one served, three waiting");

        let started = tokio::time::Instant::now();
        let refused = service.clone().oneshot(grpc_request(None)).await.unwrap();
        assert_eq!(grpc_code(&refused), tonic::Code::ResourceExhausted);
        let refused = service.clone().oneshot(http_request()).await.unwrap();
        assert_eq!(refused.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[http::header::RETRY_AFTER], "1");
        assert_eq!(started.elapsed(), Duration::ZERO, "refused without waiting");
        assert_eq!(queue.depth(), 3, "the refused never counted");

        for call in accepted {
            let response = call.await.unwrap().unwrap();
            assert_eq!(grpc_code(&response), tonic::Code::Ok);
        }
        assert_eq!(queue.depth(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn no_waiting_room_refuses_only_when_every_turn_is_taken() {
        let queue = Queue::new(2, 0);
        let service = queue.service(slow(Duration::from_secs(1)));
        let served: Vec<_> = (0..2)
            .map(|_| tokio::spawn(service.clone().oneshot(http_request())))
            .collect();
        tokio::task::yield_now().await;
        let refused = service.clone().oneshot(http_request()).await.unwrap();
        assert_eq!(refused.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        for call in served {
            assert_eq!(call.await.unwrap().unwrap().status(), http::StatusCode::OK);
        }
        let later = service.clone().oneshot(http_request()).await.unwrap();
        assert_eq!(later.status(), http::StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_whose_deadline_passes_while_waiting_leaves_the_queue() {
        let queue = Queue::new(1, 10);
        let service = queue.service(slow(Duration::from_secs(1)));
        let first = tokio::spawn(service.clone().oneshot(grpc_request(None)));
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        let hurried = tokio::spawn(service.clone().oneshot(grpc_request(Some("200m"))));
        let patient = tokio::spawn(service.clone().oneshot(grpc_request(Some("5S"))));
        tokio::task::yield_now().await;
        assert_eq!(queue.depth(), 2);

        let response = hurried.await.unwrap().unwrap();
        assert_eq!(grpc_code(&response), tonic::Code::DeadlineExceeded);
        assert_eq!(started.elapsed(), Duration::from_millis(200));
        assert_eq!(queue.depth(), 1, "only the patient call still waits");

        assert_eq!(grpc_code(&first.await.unwrap().unwrap()), tonic::Code::Ok);
        let response = patient.await.unwrap().unwrap();
        assert_eq!(grpc_code(&response), tonic::Code::Ok);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(2),
            "served after the first"
        );
        assert_eq!(queue.depth(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_served_call_is_cut_at_its_deadline() {
        let queue = Queue::new(1, 10);
        let service = queue.service(slow(Duration::from_secs(1)));
        let started = tokio::time::Instant::now();
        let response = service.oneshot(grpc_request(Some("300m"))).await.unwrap();
        assert_eq!(grpc_code(&response), tonic::Code::DeadlineExceeded);
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn http_requests_have_no_deadline() {
        let queue = Queue::new(1, 10);
        let service = queue.service(slow(Duration::from_secs(1)));
        let mut request = http_request();
        request.headers_mut().insert(
            crate::server::deadline::GRPC_TIMEOUT,
            http::HeaderValue::from_static("1m"),
        );
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
    }

    #[tokio::test]
    async fn unlimited_means_no_queue() {
        let queue = Queue::new(0, 0);
        let response = queue
            .service(slow(Duration::ZERO))
            .oneshot(http_request())
            .await
            .unwrap();
        assert!(response.headers().get(QUEUE_DEPTH).is_none());
        assert!(response.headers().get(QUEUE_WAIT).is_none());
        assert_eq!(queue.depth(), 0);
    }
}
