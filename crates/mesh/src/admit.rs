//! Large request bodies are read a few at a time; small ones never wait.
//!
//! tonic reads a gRPC message whole into memory before the handler runs, and axum's `Bytes`
//! extractor does the same for an HTTP body. A client can open 200 HTTP/2 streams on one
//! connection and send 1 MiB on each: without a bound that is 200 MiB buffered at once, whatever
//! the per-message cap. This layer looks at how large a body says it is before anything reads it:
//!
//! - gRPC: the 5-byte prefix of the (first) message, which carries its length. Only the first
//!   data frame is read for this, at most one HTTP/2 frame (16 KiB by default) per stream.
//! - HTTP: the `Content-Length`; a chunked body, whose length is unknown, counts as large.
//!
//! A body of at most `threshold` bytes (the worker's 32-byte Hash, or a 32 KiB HashBatch) goes
//! straight on. A larger one takes one of `at_once` turns, held until its answer is ready, so
//! that at most `at_once` large bodies (and what is decoded from them) are in memory at once.
//!
//! A large body that finds every turn taken is refused at once (gRPC RESOURCE_EXHAUSTED, HTTP 503
//! with `Retry-After: 1`) rather than left waiting. Waiting would be the friendlier choice, but
//! on HTTP/2 it can deadlock: the data a client has already sent on a waiting stream stays in
//! the server's receive buffer and counts against the connection's flow-control window (hyper's
//! default is 1 MiB, the same as one stream's), so a few waiting streams can use up the whole
//! window and stall the very streams that hold the turns. A refused stream is dropped, which
//! gives its buffered data back to the window. The memory of all the unread data on a connection
//! is bounded by that window.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures::StreamExt;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

use crate::queue::Refusal;

/// The length prefix of a gRPC message: a compression flag, then the length as a big-endian u32.
const GRPC_PREFIX: usize = 5;

/// Lets large bodies through `at_once` at a time (see the module doc).
#[derive(Clone, Debug)]
pub struct Admission {
    turns: Arc<Semaphore>,
    at_once: usize,
    threshold: usize,
}

impl Admission {
    /// At most `at_once` bodies larger than `threshold` bytes are read and served at once.
    pub fn new(at_once: usize, threshold: usize) -> Self {
        Self {
            turns: Arc::new(Semaphore::new(at_once)),
            at_once,
            threshold,
        }
    }

    /// Large bodies being served now.
    pub fn in_use(&self) -> usize {
        self.at_once - self.turns.available_permits()
    }
}

impl<S> Layer<S> for Admission {
    type Service = Admitted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admitted {
            inner,
            admission: self.clone(),
        }
    }
}

/// A service behind an [`Admission`].
#[derive(Clone, Debug)]
pub struct Admitted<S> {
    inner: S,
    admission: Admission,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Admitted<S> {
    const NAME: &'static str = S::NAME;
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body type that can be rebuilt around what was already read of it: axum's, for the
/// HTTP shim, and tonic's, for a gRPC service.
pub trait Rebuild:
    http_body::Body<Data = Bytes, Error: Into<BoxError>> + Unpin + Send + 'static
{
    fn rebuild<T>(body: T) -> Self
    where
        T: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static;
}

impl Rebuild for axum::body::Body {
    fn rebuild<T>(body: T) -> Self
    where
        T: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static,
    {
        axum::body::Body::new(body)
    }
}

impl Rebuild for tonic::body::Body {
    fn rebuild<T>(body: T) -> Self
    where
        T: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static,
    {
        tonic::body::Body::new(body)
    }
}

impl<S, RB, B> Service<http::Request<RB>> for Admitted<S>
where
    S: Service<http::Request<RB>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    RB: Rebuild,
    B: Refusal + 'static,
{
    type Response = http::Response<B>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The inner service is called through `oneshot`, which waits for its readiness.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<RB>) -> Self::Future {
        let inner = self.inner.clone();
        let admission = self.admission.clone();
        Box::pin(async move {
            let grpc = crate::grpc::is_grpc(request.headers());
            let (request, size) = if grpc {
                peek_grpc_length(request).await
            } else {
                let size = request.body().size_hint().upper();
                (request, size)
            };
            let large = size.is_none_or(|size| size > admission.threshold as u64);
            if !large {
                return inner.oneshot(request).await;
            }
            let Ok(turn) = admission.turns.clone().try_acquire_owned() else {
                metrics::counter!("dockercoins_large_bodies_refused_total").increment(1);
                return Ok(refuse(grpc, admission.at_once));
            };
            let response = inner.oneshot(request).await;
            drop(turn);
            response
        })
    }
}

/// Reads the first message's length prefix, and gives back the request with its body whole.
///
/// The size is `None` (large) if the body ends or fails before the prefix is complete: that
/// request is malformed, and tonic will say so, after a turn like any unknown size.
async fn peek_grpc_length<RB: Rebuild>(
    request: http::Request<RB>,
) -> (http::Request<RB>, Option<u64>) {
    let (parts, mut body) = request.into_parts();
    let mut read: Vec<Result<Frame<Bytes>, BoxError>> = Vec::new();
    let mut prefix = Vec::with_capacity(GRPC_PREFIX);
    while prefix.len() < GRPC_PREFIX {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.map_err(Into::into);
        let data = match &frame {
            Ok(frame) => frame.data_ref().cloned(),
            Err(_) => None,
        };
        let stop = data.is_none();
        read.push(frame);
        if let Some(mut data) = data {
            let wanted = (GRPC_PREFIX - prefix.len()).min(data.remaining());
            prefix.extend_from_slice(&data.split_to(wanted));
        }
        if stop {
            break;
        }
    }
    let size = (prefix.len() == GRPC_PREFIX).then(|| {
        u64::from(u32::from_be_bytes([
            prefix[1], prefix[2], prefix[3], prefix[4],
        ]))
    });
    let rest = http_body_util::BodyStream::new(body.map_err(Into::into));
    let body = RB::rebuild(http_body_util::StreamBody::new(
        futures::stream::iter(read).chain(rest),
    ));
    (http::Request::from_parts(parts, body), size)
}

/// The answer to a large body that found every turn taken.
fn refuse<B: Refusal>(grpc: bool, at_once: usize) -> http::Response<B> {
    let reason = format!("{at_once} large requests are being read already, retry later");
    if grpc {
        return tonic::Status::resource_exhausted(reason).into_http();
    }
    let mut response = http::Response::new(B::text(format!("{reason}\n")));
    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    response
}
