//! Closing connections that hold a slot without using it.
//!
//! hyper has a header-read timeout for HTTP/1 but no idle timeout, and nothing bounds a
//! connection that never finishes its first request in HTTP/2 (or never sends a byte, while the
//! server still waits to learn which protocol it speaks). So each connection's reads are noted in
//! an [`Activity`], and [`Activity::expired`] resolves when the connection should go:
//! - nothing was read for the idle timeout (an HTTP/2 client answering keepalive PINGs reads as
//!   activity, so it is never idle; a client that stops sending half-way through a request body
//!   is, even though its request reached the service);
//! - or, when a first-request deadline is given, no request arrived within it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// What a connection did lately, shared between its I/O, its requests and its watchdog.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last read.
    last_ms: AtomicU64,
    requested: AtomicBool,
}

/// Why a connection was closed by its watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No request arrived in time after the connection opened.
    NoRequest,
    /// Nothing was read for the idle timeout.
    Idle,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            requested: AtomicBool::new(false),
        })
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Notes a request that reached the service, which lifts the first-request deadline.
    pub fn request(&self) {
        self.requested.store(true, Ordering::Relaxed);
    }

    /// When the connection should close as things stand.
    fn deadline(&self, idle: Duration, first_request: Option<Duration>) -> Instant {
        let idle = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle;
        match first_request.filter(|_| !self.requested.load(Ordering::Relaxed)) {
            Some(limit) => idle.min(self.start + limit),
            None => idle,
        }
    }

    /// Resolves when the connection has been idle for `idle`, or has not sent a request within
    /// `first_request` (if given) of opening.
    pub async fn expired(&self, idle: Duration, first_request: Option<Duration>) -> Expired {
        loop {
            let deadline = self.deadline(idle, first_request);
            if deadline > Instant::now() {
                tokio::time::sleep_until(deadline).await;
                continue;
            }
            let requested = self.requested.load(Ordering::Relaxed);
            return if first_request.is_some() && !requested {
                Expired::NoRequest
            } else {
                Expired::Idle
            };
        }
    }
}

pin_project_lite::pin_project! {
    /// An I/O stream whose reads count as activity.
    #[derive(Debug)]
    pub struct Tracked<IO> {
        #[pin]
        io: IO,
        activity: Arc<Activity>,
    }
}

impl<IO> Tracked<IO> {
    pub fn new(io: IO, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<IO: AsyncRead> AsyncRead for Tracked<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.io.poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        polled
    }
}

impl<IO: AsyncWrite> AsyncWrite for Tracked<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);
    const FIRST_REQUEST: Duration = Duration::from_secs(10);

    /// Why and how long after now `activity` expires (time is paused: no real waiting).
    async fn expiry(activity: &Activity, first_request: Option<Duration>) -> (Expired, Duration) {
        let start = Instant::now();
        let expired = activity.expired(IDLE, first_request).await;
        (expired, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_reads_nothing_expires_after_the_idle_timeout() {
        let activity = Activity::new();
        assert_eq!(expiry(&activity, None).await, (Expired::Idle, IDLE));
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_restarts_the_idle_period() {
        let activity = Activity::new();
        let touched = activity.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            touched.touch();
        });
        let expected = (Expired::Idle, Duration::from_secs(90));
        assert_eq!(expiry(&activity, None).await, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn no_request_within_the_first_request_deadline_expires_first() {
        let activity = Activity::new();
        let expected = (Expired::NoRequest, FIRST_REQUEST);
        assert_eq!(expiry(&activity, Some(FIRST_REQUEST)).await, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_request_lifts_the_first_request_deadline_but_not_the_idle_one() {
        let activity = Activity::new();
        activity.request();
        let expected = (Expired::Idle, IDLE);
        assert_eq!(expiry(&activity, Some(FIRST_REQUEST)).await, expected);
    }
}
