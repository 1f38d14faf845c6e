//! The request queue: at most N requests are served at once, the rest wait their turn.
//!
//! This is how the workshop's bottleneck is built. The original rng was a single-threaded web
//! server, so every request to its port, a worker's or `httping`'s, waited behind the others.
//! Putting the HTTP shim and the gRPC service behind one shared limit keeps that lesson: with ten
//! workers, `httping localhost:8001` shows the queue's wait. tower's global concurrency limit does
//! the queueing; this module only shares one semaphore between axum routes and a tonic service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tonic::server::NamedService;
use tower::Service;
use tower::limit::{ConcurrencyLimit, GlobalConcurrencyLimitLayer};
use tower::util::Either;

/// One queue, shared by every route and service it is applied to.
#[derive(Clone, Debug)]
pub struct Queue {
    /// `None` means unlimited: no layer at all, so no cost.
    semaphore: Option<Arc<Semaphore>>,
}

impl Queue {
    /// A queue that lets `limit` requests run at once; `0` means unlimited.
    pub fn new(limit: usize) -> Self {
        Self {
            semaphore: (limit > 0).then(|| Arc::new(Semaphore::new(limit))),
        }
    }

    /// The queue as a layer for axum routes (`Router::layer(option_layer(queue.layer()))`).
    pub fn layer(&self) -> Option<GlobalConcurrencyLimitLayer> {
        self.semaphore
            .clone()
            .map(GlobalConcurrencyLimitLayer::with_semaphore)
    }

    /// Puts a tonic service behind the queue, keeping its gRPC name so it can still be routed.
    pub fn service<S>(&self, inner: S) -> Queued<S> {
        let inner = match &self.semaphore {
            Some(semaphore) => {
                Either::Left(ConcurrencyLimit::with_semaphore(inner, semaphore.clone()))
            }
            None => Either::Right(inner),
        };
        Queued { inner }
    }
}

/// A tonic service behind a [`Queue`].
#[derive(Clone, Debug)]
pub struct Queued<S> {
    inner: Either<ConcurrencyLimit<S>, S>,
}

impl<S: NamedService> NamedService for Queued<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, R> Service<R> for Queued<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = <Either<ConcurrencyLimit<S>, S> as Service<R>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.inner.call(request)
    }
}
