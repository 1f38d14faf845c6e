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
//! `x-queue-wait-ms` (how long it waited). The worker's balancer takes the wait out of the
//! latency it measures, so that it tells a slow replica from a busy one (see `crate::load`).

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

/// The response header (gRPC metadata) that says how many requests wait in the queue.
pub const QUEUE_DEPTH: &str = "x-queue-depth";
/// The response header (gRPC metadata) that says how long this request waited in the queue, in
/// milliseconds.
pub const QUEUE_WAIT: &str = "x-queue-wait-ms";

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
}

impl Queue {
    /// A queue that lets `limit` requests run at once; `0` means unlimited.
    pub fn new(limit: usize) -> Self {
        if limit > 0 {
            metrics::gauge!("dockercoins_queue_depth").set(0.0);
        }
        Self {
            shared: (limit > 0).then(|| {
                Arc::new(Shared {
                    semaphore: Semaphore::new(limit),
                    waiting: AtomicUsize::new(0),
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

impl<S, R, B> Service<R> for Queued<S>
where
    S: Service<R, Response = http::Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    R: Send + 'static,
    B: 'static,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = <Either<Limited<S>, S> as Service<R>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.inner.call(request)
    }
}

/// The limited case: waits for a turn inside the response future, so that the wait can be timed
/// and counted (tower's concurrency limit waits in `poll_ready`, where neither shows).
#[derive(Clone, Debug)]
pub struct Limited<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, R, B> Service<R> for Limited<S>
where
    S: Service<R, Response = http::Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    R: Send + 'static,
    B: 'static,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the queue's turn, taken in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        let inner = self.inner.clone();
        let shared = self.shared.clone();
        Box::pin(async move {
            let queued = Instant::now();
            let permit = {
                let _waiting = Waiting::enter(&shared);
                shared
                    .semaphore
                    .acquire()
                    // The wait shows in the request's trace (see `crate::trace`).
                    .instrument(tracing::debug_span!(target: crate::trace::TARGET, "queue wait"))
                    .await
                    .expect("the queue's semaphore is never closed")
            };
            let waited = queued.elapsed();
            metrics::histogram!("dockercoins_queue_wait_seconds").record(waited.as_secs_f64());
            let mut response = inner.oneshot(request).await?;
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

/// Counts one request as waiting until dropped, also when its caller gives up while it waits.
struct Waiting<'a>(&'a Shared);

impl<'a> Waiting<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let depth = shared.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("dockercoins_queue_depth").set(depth as f64);
        Self(shared)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let depth = self.0.waiting.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("dockercoins_queue_depth").set(depth as f64);
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
    ) -> impl Service<(), Response = http::Response<()>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static {
        service_fn(move |()| async move {
            tokio::time::sleep(pause).await;
            Ok::<_, Infallible>(http::Response::new(()))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn one_at_a_time_in_arrival_order_with_the_depth_reported() {
        let queue = Queue::new(1);
        let service = queue.service(slow(Duration::from_millis(100)));
        let started = tokio::time::Instant::now();
        let calls: Vec<_> = (0..3)
            .map(|_| tokio::spawn(service.clone().oneshot(())))
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
        let queue = Queue::new(1);
        let service = queue.service(slow(Duration::from_millis(100)));
        let first = tokio::spawn(service.clone().oneshot(()));
        let second = tokio::spawn(service.clone().oneshot(()));
        tokio::task::yield_now().await;
        assert_eq!(queue.depth(), 1);
        second.abort();
        let _ = second.await;
        assert_eq!(queue.depth(), 0);
        first.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn unlimited_means_no_queue() {
        let queue = Queue::new(0);
        let response = queue
            .service(slow(Duration::ZERO))
            .oneshot(())
            .await
            .unwrap();
        assert!(response.headers().get(QUEUE_DEPTH).is_none());
        assert!(response.headers().get(QUEUE_WAIT).is_none());
        assert_eq!(queue.depth(), 0);
    }
}
