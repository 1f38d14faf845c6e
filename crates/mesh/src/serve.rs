//! Serving gRPC and HTTP/1.x on one listener, until shutdown.
//!
//! The workshop's users point `httping` and `curl` (HTTP/1.x) and `grpcurl` (h2c, HTTP/2 without
//! TLS) at the same port. axum's server detects the protocol of each connection, and tonic's
//! services are axum routes, so one router and one listener serve both.

use std::future::IntoFuture;
use std::io;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::shutdown::{DRAIN_DEADLINE, Shutdown};

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains in-flight requests for at
/// most [`DRAIN_DEADLINE`].
///
/// On shutdown, HTTP/2 clients receive GOAWAY and idle HTTP/1 connections are closed; requests
/// still running at the deadline are dropped so that the process exits in time.
pub async fn serve(listener: TcpListener, app: Router, shutdown: Shutdown) -> io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    // Small unary RPCs: Nagle's algorithm would hold each response back for the peer's ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "could not set TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN_DEADLINE).await;
    };
    tokio::select! {
        result = server => result?,
        () = deadline => tracing::warn!(?DRAIN_DEADLINE, "drain deadline passed, dropping in-flight requests"),
    }
    tracing::info!("stopped serving");
    Ok(())
}

/// Binds `addr`, naming it in the error (a busy port is the common failure).
pub async fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}")))
}
