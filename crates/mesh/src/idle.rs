//! Closing connections that hold a slot without using it.
//!
//! hyper has a header-read timeout for HTTP/1 but no idle timeout, and nothing bounds a
//! connection that never finishes its first request in HTTP/2 (or never sends a byte, while the
//! server still waits to learn which protocol it speaks). So each connection's reads are noted in
//! an [`Activity`], and [`Activity::expired`] resolves when the connection should go:
//! - nothing was read for the idle timeout and no request is waiting for its answer (an HTTP/2
//!   client answering keepalive PINGs reads as activity, so it is never idle);
//! - or, when a first-request deadline is given, no request arrived within it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// What a connection did lately, shared between its I/O, its requests and its watchdog.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last read (or the end of the last request).
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    requested: AtomicBool,
}

/// Why a connection was closed by its watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No request arrived in time after the connection opened.
    NoRequest,
    /// Nothing was read, and nothing was being answered, for the idle timeout.
    Idle,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            requested: AtomicBool::new(false),
        })
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Notes a request that reached the service; the returned guard marks its answer given.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.requested.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// When the connection should close as things stand, or `None` while a request is answered.
    fn deadline(&self, idle: Duration, first_request: Option<Duration>) -> Option<Instant> {
        let no_request = first_request
            .filter(|_| !self.requested.load(Ordering::Relaxed))
            .map(|limit| self.start + limit);
        let idle = (self.in_flight.load(Ordering::Relaxed) == 0).then(|| {
            self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
        });
        match (no_request, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Resolves when the connection has been idle for `idle`, or has not sent a request within
    /// `first_request` (if given) of opening.
    pub async fn expired(&self, idle: Duration, first_request: Option<Duration>) -> Expired {
        loop {
            match self.deadline(idle, first_request) {
                Some(deadline) if deadline <= Instant::now() => {
                    let requested = self.requested.load(Ordering::Relaxed);
                    return if first_request.is_some() && !requested {
                        Expired::NoRequest
                    } else {
                        Expired::Idle
                    };
                }
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                // Busy answering: look again once an idle period could have passed.
                None => tokio::time::sleep(idle).await,
            }
        }
    }
}

/// A request being answered; dropping it counts as activity, so that the idle period starts
/// when the answer is given rather than when the request was read.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
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

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_reads_nothing_expires_after_the_idle_timeout() {
        let activity = Activity::new();
        let start = Instant::now();
        assert_eq!(activity.expired(IDLE, None).await, Expired::Idle);
        assert_eq!(start.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_restarts_the_idle_period() {
        let activity = Activity::new();
        let start = Instant::now();
        let touched = activity.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            touched.touch();
        });
        assert_eq!(activity.expired(IDLE, None).await, Expired::Idle);
        assert_eq!(start.elapsed(), Duration::from_secs(90));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_being_answered_is_not_idle_and_its_end_restarts_the_period() {
        let activity = Activity::new();
        let start = Instant::now();
        let request = activity.request();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(150)).await;
            drop(request);
        });
        assert_eq!(activity.expired(IDLE, None).await, Expired::Idle);
        assert_eq!(start.elapsed(), Duration::from_secs(210));
    }

    #[tokio::test(start_paused = true)]
    async fn no_request_within_the_first_request_deadline_expires_first() {
        let activity = Activity::new();
        let start = Instant::now();
        let expired = activity.expired(IDLE, Some(Duration::from_secs(10))).await;
        assert_eq!(expired, Expired::NoRequest);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_request_lifts_the_first_request_deadline() {
        let activity = Activity::new();
        let start = Instant::now();
        drop(activity.request());
        let expired = activity.expired(IDLE, Some(Duration::from_secs(10))).await;
        assert_eq!(expired, Expired::Idle);
        assert_eq!(start.elapsed(), IDLE);
    }
}
