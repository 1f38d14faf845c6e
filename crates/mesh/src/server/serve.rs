//! Serving gRPC and HTTP/1.x on one listener, under the server [`Limits`], until shutdown.
//!
//! The workshop's users point `httping` and `curl` (HTTP/1.x) and `grpcurl` (h2c, HTTP/2 without
//! TLS) at the same port. hyper-util's `auto` connection builder detects the protocol of each
//! connection, and tonic's services are axum routes, so one service (a router, with layers around
//! it) and one listener serve both.
//! axum's own `serve` gives hyper no timer, so it could set no timeout; this one sets every limit
//! of [`Limits`] (see `crate::server::limits`), closes idle connections (see `crate::server::idle`)
//! and caps the open connections (see `crate::server::accept`).
//!
//! Every answer, gRPC (as response metadata) or HTTP, on a service port, an admin port or the
//! dashboard's, says which replica gave it (`x-served-by`, the host's name), so that clients and
//! people can see the load spread. The listener puts it on, as it puts on `date`, rather than a
//! tower-http layer: a layer is one more service cloned and one more future for every request,
//! a measurable part of a gRPC call (docs/BENCHMARKS.md).

use std::io;
use std::sync::Arc;

use futures::TryFutureExt;
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::answer::Answers;
use crate::headers::{SERVED_BY, is_grpc};
use crate::server::accept::{Accepted, Acceptor};
use crate::server::idle::{Activity, Connections, Counted, Tracked};
use crate::server::limits::Limits;
use crate::server::shutdown::{DRAIN_DEADLINE, OpenConnection, Shutdown};
use crate::server::timer::LazyTimer;

/// Serves `app` (an axum `Router`, or a service built around one) on `listener` under `limits`
/// until `shutdown` drains, then drains in-flight requests for at most [`DRAIN_DEADLINE`].
///
/// Between the start of shutdown and its drain (the grace, see `crate::server::shutdown`) the
/// listener still accepts and serves. At the drain it closes, HTTP/2 clients receive GOAWAY and
/// idle HTTP/1 connections are closed; requests still running at the deadline are dropped so that
/// the process exits in time.
pub async fn serve<S, B>(
    listener: TcpListener,
    app: S,
    limits: &Limits,
    shutdown: Shutdown,
) -> io::Result<()>
where
    S: Answers<Counted<Incoming>, Body = B>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    let builder = Arc::new(builder(limits));
    let served_by = served_by();
    let mut acceptor = Acceptor::new(listener, limits);
    let graceful = GracefulShutdown::new();
    // Owned here, so that connections still open at the drain deadline are dropped with it.
    let first_request = Some(limits.header_read_timeout);
    let mut connections = Connections::new(limits.idle_timeout, first_request);
    loop {
        // Each branch is cancel-safe: `accept` loses no connection, `tend` no task and no sweep.
        let accepted = tokio::select! {
            accepted = acceptor.accept() => accepted,
            () = connections.tend() => continue,
            () = shutdown.draining() => break,
        };
        let connection = Connection {
            builder: builder.clone(),
            app: app.clone(),
            served_by: served_by.clone(),
            watcher: graceful.watcher(),
            open: shutdown.connection(),
        };
        connections.spawn(accepted.peer, |activity| {
            connection.serve(accepted, activity)
        });
    }
    // Stop accepting: new clients are refused by the kernel rather than left in the backlog.
    drop(acceptor);
    if tokio::time::timeout(DRAIN_DEADLINE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?DRAIN_DEADLINE,
            open = connections.len(),
            "drain deadline passed, dropping in-flight requests"
        );
    }
    drop(connections);
    tracing::info!("stopped serving");
    Ok(())
}

/// hyper's HTTP/1 and HTTP/2 settings from `limits`.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The timer is what makes hyper's timeouts run at all (see `crate::server::timer`).
        .timer(LazyTimer)
        // Also bounds the wait for the next request head on a keep-alive connection.
        .header_read_timeout(limits.header_read_timeout)
        // A head that does not fit in the read buffer is answered 431.
        .max_buf_size(limits.max_header_bytes as usize);
    builder
        .http2()
        .timer(LazyTimer)
        .max_header_list_size(limits.max_header_bytes)
        .max_concurrent_streams(limits.max_streams)
        // No keepalive PINGs: the kernel finds peers that are gone (see `crate::server::accept`),
        // and hyper's PING bookkeeping would take a lock at every frame received.
        .keep_alive_interval(None)
        // gRPC answers carry no `date`: gRPC's protocol has no use for it and grpc-go sends none,
        // and hyper's costs each call a clock reading, a header and an HPACK entry that changes
        // every second (docs/BENCHMARKS.md, "Clock readings"). HTTP/2 answers that are not gRPC
        // get one from [`dated`], as HTTP asks of a server with a clock.
        .auto_date_header(false);
    builder
}

/// Whether the answer to `request` needs a `date` that hyper will not add: an HTTP/2 request
/// that is not a gRPC call.
fn needs_date<B>(request: &http::Request<B>) -> bool {
    request.version() == http::Version::HTTP_2 && !is_grpc(request.headers())
}

/// `x-served-by`'s value: this host's name, read once. Every answer clones it, and a clone of a
/// static value copies a pointer where one of a value built at run time counts a reference.
fn served_by() -> http::HeaderValue {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let name = NAME.get_or_init(crate::hostname);
    match http::HeaderValue::from_str(name) {
        Ok(_) => http::HeaderValue::from_static(name),
        Err(_) => http::HeaderValue::from_static("unknown"),
    }
}

/// `response` naming this replica in `x-served-by` (in place of any value the service gave).
fn signed<B>(mut response: http::Response<B>, served_by: http::HeaderValue) -> http::Response<B> {
    const NAME: http::HeaderName = http::HeaderName::from_static(SERVED_BY);
    response.headers_mut().insert(NAME, served_by);
    response
}

/// `response` with a `date` (now) unless it has one.
fn dated<B>(mut response: http::Response<B>) -> http::Response<B> {
    let now = httpdate::fmt_http_date(std::time::SystemTime::now());
    if let Ok(value) = http::HeaderValue::from_str(&now) {
        response
            .headers_mut()
            .entry(http::header::DATE)
            .or_insert(value);
    }
    response
}

/// What one connection's task needs.
struct Connection<S> {
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: S,
    /// This replica's name, for every answer.
    served_by: http::HeaderValue,
    watcher: Watcher,
    /// Holds the shutdown's grace while the connection is open.
    open: OpenConnection,
}

impl<S, B> Connection<S>
where
    S: Answers<Counted<Incoming>, Body = B>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Serves one connection until it ends or is shut down gracefully, noting its reads and
    /// requests in `activity`; its watchdog aborts it when it expires.
    async fn serve(self, accepted: Accepted, activity: Arc<Activity>) {
        let Accepted { stream, peer, slot } = accepted;
        let io = TokioIo::new(Tracked::new(stream, activity.clone()));
        let (app, served_by) = (self.app, self.served_by);
        let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
            // A body that can hold no byte has ended. Asked of the size hint, which hyper keeps
            // with the body, rather than of `is_end_stream`, which takes an HTTP/2 connection's
            // lock.
            let ended = request.body().size_hint().exact() == Some(0);
            let (answer, body) = activity.request(ended);
            let date = needs_date(&request);
            let request = request.map(|incoming| Counted::new(incoming, body));
            let served_by = served_by.clone();
            app.clone().oneshot(request).map_ok(move |response| {
                let response = response.map(|body| Counted::new(body, Some(answer)));
                let response = signed(response, served_by);
                if date { dated(response) } else { response }
            })
        });
        let connection = self
            .watcher
            .watch(self.builder.serve_connection(io, service));
        if let Err(err) = connection.await {
            tracing::debug!(%peer, %err, "connection ended with an error");
        }
        drop(slot);
        drop(self.open);
    }
}

/// Binds `addr`, naming it in the error (a busy port is the common failure).
pub async fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}")))
}

#[cfg(test)]
mod tests;
