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
//! An admitted large request is also served on a blocking thread of its own (at most `at_once`
//! of them), not on the runtime: decoding a large message is work in proportion to its size
//! (a 1 MiB HashBatch of 500,000 empty items held hasher's one runtime thread for 300 ms in a
//! debug build), and health checks and small calls must not wait behind it. The connection's
//! I/O stays on the runtime; only the request's own future moves.
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
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures::StreamExt;
use futures::future::{BoxFuture, Either};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use crate::answer::{Answers, TextBody, refusal};

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

    /// Whether a body of `size` bytes (`None`: unknown) needs a turn.
    fn large(&self, size: Option<u64>) -> bool {
        size.is_none_or(|size| size > self.threshold as u64)
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
    S: Answers<RB, Body = B>,
    RB: Rebuild,
    B: TextBody + Send + 'static,
{
    type Response = http::Response<B>;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Self::Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RB>) -> Self::Future {
        let grpc = crate::headers::is_grpc(request.headers());
        // An HTTP body says its size in its head: a small one goes straight on, with no future of
        // ours around it. Only a gRPC message's size needs reading from the body.
        if !grpc && !self.admission.large(request.body().size_hint().upper()) {
            return Either::Left(self.inner.call(request));
        }
        // The service that was made ready goes into the future; this one keeps a clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let admission = self.admission.clone();
        Either::Right(Box::pin(async move {
            let (request, size) = if grpc {
                peek_grpc_length(request).await
            } else {
                let size = request.body().size_hint().upper();
                (request, size)
            };
            if !admission.large(size) {
                return inner.call(request).await;
            }
            let Ok(turn) = admission.turns.clone().try_acquire_owned() else {
                metrics::counter!("dockercoins_large_bodies_refused_total").increment(1);
                return Ok(refuse(grpc, admission.at_once));
            };
            let served = inner.call(request);
            let runtime = tokio::runtime::Handle::current();
            // The turn goes with the work: if the caller leaves, the thread still finishes (a
            // request's future cannot be cancelled from here), and the turn is still taken.
            let served = tokio::task::spawn_blocking(move || {
                let response = runtime.block_on(served);
                drop(turn);
                response
            });
            served
                .await
                .unwrap_or_else(|panicked| std::panic::resume_unwind(panicked.into_panic()))
        }))
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
fn refuse<B: TextBody>(grpc: bool, at_once: usize) -> http::Response<B> {
    let reason = format!("{at_once} large requests are being read already, retry later");
    refusal(tonic::Status::resource_exhausted(reason), grpc)
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::body::Body;
    use tokio::sync::Notify;
    use tower::{ServiceExt, service_fn};

    /// A handler that reads the whole body, waits for `release`, and answers with what it read.
    fn reader(
        release: Arc<Notify>,
    ) -> impl Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        service_fn(move |request: http::Request<Body>| {
            let release = release.clone();
            async move {
                let read = request.into_body().collect().await.unwrap().to_bytes();
                release.notified().await;
                Ok::<_, Infallible>(http::Response::new(Body::from(read)))
            }
        })
    }

    /// A gRPC request carrying one message of `size` bytes, in frames of at most 3 bytes so that
    /// the prefix spans frames.
    fn grpc_request(size: u32) -> (http::Request<Body>, Bytes) {
        let mut message = vec![0u8];
        message.extend_from_slice(&size.to_be_bytes());
        message.extend(std::iter::repeat_n(7u8, size as usize));
        let message = Bytes::from(message);
        let frames: Vec<Result<Bytes, Infallible>> = message
            .chunks(3)
            .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
            .collect();
        let body = Body::from_stream(futures::stream::iter(frames));
        let request = http::Request::builder()
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(body)
            .unwrap();
        (request, message)
    }

    fn http_request(body: Body) -> http::Request<Body> {
        http::Request::builder().method("POST").body(body).unwrap()
    }

    fn grpc_code<B>(response: &http::Response<B>) -> tonic::Code {
        tonic::Status::from_header_map(response.headers())
            .map_or(tonic::Code::Ok, |status| status.code())
    }

    async fn text(response: http::Response<Body>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn bodies_reach_the_handler_whole_after_the_peek() {
        let release = Arc::new(Notify::new());
        release.notify_one();
        let service = Admission::new(1, 8).layer(reader(release.clone()));
        for size in [0, 8, 9, 1000] {
            let (request, sent) = grpc_request(size);
            let response = service.clone().oneshot(request).await.unwrap();
            assert_eq!(text(response).await, sent, "{size} bytes");
            release.notify_one();
        }
    }

    #[tokio::test]
    async fn large_bodies_past_the_turns_are_refused_and_small_ones_pass() {
        let release = Arc::new(Notify::new());
        let admission = Admission::new(1, 8);
        let service = admission.layer(reader(release.clone()));
        let (large, _) = grpc_request(9);
        let held = tokio::spawn(service.clone().oneshot(large));
        while admission.in_use() == 0 {
            tokio::task::yield_now().await;
        }

        let (large, _) = grpc_request(100);
        let refused = service.clone().oneshot(large).await.unwrap();
        assert_eq!(grpc_code(&refused), tonic::Code::ResourceExhausted);
        let refused = service
            .clone()
            .oneshot(http_request(Body::from(vec![0u8; 9])))
            .await
            .unwrap();
        assert_eq!(refused.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[http::header::RETRY_AFTER], "1");
        let chunked = Body::from_stream(futures::stream::iter([Ok::<_, Infallible>(
            Bytes::from_static(b"x"),
        )]));
        let refused = service
            .clone()
            .oneshot(http_request(chunked))
            .await
            .unwrap();
        assert_eq!(
            refused.status(),
            http::StatusCode::SERVICE_UNAVAILABLE,
            "a body of unknown length counts as large"
        );

        let (small, sent) = grpc_request(8);
        let small = tokio::spawn(service.clone().oneshot(small));
        let plain = tokio::spawn(
            service
                .clone()
                .oneshot(http_request(Body::from(vec![1u8; 8]))),
        );
        release.notify_waiters();
        while !small.is_finished() || !plain.is_finished() || !held.is_finished() {
            release.notify_waiters();
            tokio::task::yield_now().await;
        }
        assert_eq!(text(small.await.unwrap().unwrap()).await, sent);
        assert_eq!(text(plain.await.unwrap().unwrap()).await, vec![1u8; 8]);
        let held = held.await.unwrap().unwrap();
        assert_eq!(grpc_code(&held), tonic::Code::Ok);
        assert_eq!(
            admission.in_use(),
            0,
            "the turn is given back with the answer"
        );
    }
}
