//! Closing connections that hold a slot without using it.
//!
//! hyper has a header-read timeout for HTTP/1 but no idle timeout, and nothing bounds a
//! connection that never finishes its first request in HTTP/2 (or never sends a byte, while the
//! server still waits to learn which protocol it speaks). So each connection's reads and open
//! requests are noted in an [`Activity`], and its listener's [`Connections`] close it when it
//! should go:
//! - nothing was read for the idle timeout, unless every open request has been read to its end
//!   and only its answer is still to come. A gRPC health `Watch` is such a request: it may stay
//!   quiet for hours, and its client holds nothing that it did not ask for. A connection with no
//!   request open is closed, and so is one with a request whose body stopped half-way, even
//!   though that request reached the service;
//! - or, when a first-request deadline is given, no request arrived within it.
//!
//! A peer that is gone is not found here but by the kernel (`crate::server::accept`).
//!
//! The listener looks at all of its connections a few times per limit, rather than each
//! connection arming a timer of its own: a read costs a store to a flag, not a clock read,
//! and a connection's task is not made to poll a timer each time a request wakes it. The price is
//! precision: a connection closes between its limit and two sweep periods after it (each period
//! an eighth of the shorter limit).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::{AbortHandle, Id, JoinSet};
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// What a connection did since its listener last looked, shared between its I/O, its requests
/// and [`Connections`].
#[derive(Debug, Default)]
pub struct Activity {
    /// Set by every read that brought bytes; cleared by each sweep.
    read: AtomicBool,
    requested: AtomicBool,
    /// The open requests: [`ANSWER`] for each whose answer has not ended, plus [`BODY`] for each
    /// whose body has not, in one word so that a request's arrival is one write.
    open: AtomicU64,
}

/// One request whose answer has not ended, in [`Activity::open`].
const ANSWER: u64 = 1;
/// One request whose body has not ended, in [`Activity::open`]'s upper half.
const BODY: u64 = 1 << 32;

/// Why a connection was closed for idleness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// No request arrived in time after the connection opened.
    NoRequest,
    /// Nothing was read for the idle timeout, and a request body, or the next request, is due.
    Idle,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::default()
    }

    fn touch(&self) {
        self.read.store(true, Ordering::Relaxed);
    }

    /// Notes a request that reached the service, which lifts the first-request deadline, and
    /// counts it open: its answer, and its body unless `body_ended`, each until it ends or its
    /// handle is dropped. Hand each handle to the [`Counted`] body it counts.
    pub fn request(self: &Arc<Self>, body_ended: bool) -> (Open, Option<Open>) {
        self.requested.store(true, Ordering::Relaxed);
        let counted = if body_ended { ANSWER } else { ANSWER + BODY };
        self.open.fetch_add(counted, Ordering::Relaxed);
        let answer = Open {
            activity: self.clone(),
            counted: ANSWER,
        };
        let body = (!body_ended).then(|| Open {
            activity: self.clone(),
            counted: BODY,
        });
        (answer, body)
    }

    /// Whether requests are open and every one of them has been read to its end: the
    /// connection waits for the service, not for its client.
    fn awaits_answers_only(&self) -> bool {
        let open = self.open.load(Ordering::Relaxed);
        open != 0 && open < BODY
    }
}

/// A part of a request (its answer or its body) counted open in its connection's [`Activity`]
/// until dropped.
#[derive(Debug)]
pub struct Open {
    activity: Arc<Activity>,
    counted: u64,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.activity
            .open
            .fetch_sub(self.counted, Ordering::Relaxed);
        // Quiet from now on, not from the last sweep that found the connection waiting.
        self.activity.touch();
    }
}

pin_project_lite::pin_project! {
    /// A request's body, or its answer's, counted open in its connection's [`Activity`] until it
    /// is read to its end or is dropped (hyper drops an answer at its end, or when the client
    /// resets the stream).
    #[derive(Debug)]
    pub struct Counted<B> {
        #[pin]
        body: B,
        open: Option<Open>,
    }
}

impl<B> Counted<B> {
    /// `body`, counted by `open` (see [`Activity::request`]).
    pub fn new(body: B, open: Option<Open>) -> Self {
        Self { body, open }
    }
}

impl<B: Body> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        // An error ends the body too: hyper reads or sends nothing more of it. The end is the
        // `None` that follows the last frame, not `is_end_stream` after each frame, which takes
        // an HTTP/2 connection's lock on every call; tonic and axum read a body to that `None`
        // or drop it.
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            *this.open = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Sweeps per limit: a connection closes at most two sweep periods past its limit.
const SWEEPS_PER_LIMIT: u32 = 8;

/// The shortest period between sweeps, for limits of a few milliseconds.
const MIN_SWEEP_PERIOD: Duration = Duration::from_millis(5);

/// The connection tasks of one listener, each closed when it expires.
///
/// The accept loop owns it: [`spawn`](Self::spawn) each connection, and wait on
/// [`tend`](Self::tend) beside `accept`. Dropped, it aborts every connection still open. It holds
/// no more tasks than the listener has open connections, which the connection cap bounds.
#[derive(Debug)]
pub struct Connections {
    tasks: JoinSet<()>,
    watchdog: Watchdog,
}

impl Connections {
    /// Closes connections on which nothing was read for `idle` (unless every open request
    /// awaits only its answer), and those that sent no request within `first_request` (if given)
    /// of opening.
    pub fn new(idle: Duration, first_request: Option<Duration>) -> Self {
        Self {
            tasks: JoinSet::new(),
            watchdog: Watchdog::new(idle, first_request),
        }
    }

    /// Runs the connection from `peer` that `serve` returns, given the [`Activity`] it is to note
    /// its reads and requests in.
    pub fn spawn<F>(&mut self, peer: SocketAddr, serve: impl FnOnce(Arc<Activity>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let activity = Activity::new();
        let task = self.tasks.spawn(serve(activity.clone()));
        self.watchdog.watch(task, activity, peer);
    }

    /// Waits until a connection ends, or until the next sweep has closed those past a limit.
    ///
    /// Cancel-safe: cancelled, it has lost no task and skipped no sweep.
    pub async fn tend(&mut self) {
        tokio::select! {
            Some(ended) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                self.watchdog.forget(ended.map_or_else(|err| err.id(), |(id, ())| id));
            }
            () = self.watchdog.sweep() => {}
        }
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

/// The watched connections of one listener: sweeps them a few times per limit, and aborts the
/// tasks of those past one.
#[derive(Debug)]
struct Watchdog {
    idle: Duration,
    first_request: Option<Duration>,
    sweeps: Interval,
    watched: HashMap<Id, Watched>,
}

#[derive(Debug)]
struct Watched {
    activity: Arc<Activity>,
    connection: AbortHandle,
    peer: SocketAddr,
    opened: Instant,
    /// The sweep that last found a read or only answers awaited, or the opening.
    quiet_since: Instant,
}

impl Watchdog {
    fn new(idle: Duration, first_request: Option<Duration>) -> Self {
        let shortest = first_request.map_or(idle, |first| first.min(idle));
        let period = (shortest / SWEEPS_PER_LIMIT).max(MIN_SWEEP_PERIOD);
        let mut sweeps = tokio::time::interval(period);
        // After a stall, one sweep and the period again, not a burst of sweeps.
        sweeps.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            idle,
            first_request,
            sweeps,
            watched: HashMap::new(),
        }
    }

    /// Watches the connection from `peer` whose task `connection` aborts and whose reads and
    /// requests `activity` notes.
    fn watch(&mut self, connection: AbortHandle, activity: Arc<Activity>, peer: SocketAddr) {
        let now = Instant::now();
        let watched = Watched {
            activity,
            connection,
            peer,
            opened: now,
            quiet_since: now,
        };
        self.watched.insert(watched.connection.id(), watched);
    }

    /// Forgets the connection whose task `ended`.
    fn forget(&mut self, ended: Id) {
        self.watched.remove(&ended);
    }

    /// Waits for the next sweep, then aborts the task of each connection past a limit.
    ///
    /// Cancel-safe: cancelled while it waits, it has done nothing.
    async fn sweep(&mut self) {
        self.sweeps.tick().await;
        // The time now, not the tick's: a late sweep must not date a read it finds too early.
        let now = Instant::now();
        let (idle, first_request) = (self.idle, self.first_request);
        self.watched.retain(|_, watched| {
            let Some(expired) = watched.expired(now, idle, first_request) else {
                return true;
            };
            tracing::debug!(peer = %watched.peer, ?expired, "closing connection");
            watched.connection.abort();
            false
        });
    }
}

impl Watched {
    /// Why the connection should close at `now`, if it should; notes a read since the last
    /// sweep, or requests that await only their answers.
    fn expired(
        &mut self,
        now: Instant,
        idle: Duration,
        first_request: Option<Duration>,
    ) -> Option<Expired> {
        if self.activity.read.swap(false, Ordering::Relaxed) || self.activity.awaits_answers_only()
        {
            self.quiet_since = now;
        }
        let requested = self.activity.requested.load(Ordering::Relaxed);
        if let Some(limit) = first_request
            && !requested
            && now - self.opened >= limit
        {
            return Some(Expired::NoRequest);
        }
        (now - self.quiet_since >= idle).then_some(Expired::Idle)
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
    use http_body_util::BodyExt;

    const IDLE: Duration = Duration::from_secs(60);
    const FIRST_REQUEST: Duration = Duration::from_secs(10);
    const PEER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        1,
    ));

    /// Opens a connection that never ends by itself; returns the activity it notes in.
    fn open(connections: &mut Connections) -> Arc<Activity> {
        let mut noted = None;
        connections.spawn(PEER, |activity| {
            noted = Some(activity);
            std::future::pending()
        });
        noted.expect("spawn hands the connection its activity")
    }

    /// How long `connections` take to close every connection (time is paused: no real waiting).
    /// Fails if one is still open after an hour.
    async fn all_closed_after(connections: &mut Connections) -> Duration {
        let start = Instant::now();
        let all_closed = async {
            while !connections.is_empty() {
                connections.tend().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(3600), all_closed)
            .await
            .expect("every connection is closed within an hour");
        start.elapsed()
    }

    /// Asserts that `lifetime` is `limit`, or later by at most two sweep periods.
    fn assert_closed_after(lifetime: Duration, limit: Duration, shortest: Duration) {
        let slack = shortest / SWEEPS_PER_LIMIT * 2;
        assert!(
            lifetime >= limit && lifetime <= limit + slack,
            "closed after {lifetime:?}, for a limit of {limit:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_reads_nothing_is_closed_after_the_idle_timeout() {
        let mut connections = Connections::new(IDLE, None);
        open(&mut connections);
        let lifetime = all_closed_after(&mut connections).await;
        assert_closed_after(lifetime, IDLE, IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_restarts_the_idle_period() {
        let mut connections = Connections::new(IDLE, None);
        let activity = open(&mut connections);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            activity.touch();
        });
        let lifetime = all_closed_after(&mut connections).await;
        assert_closed_after(lifetime, Duration::from_secs(90), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn no_request_within_the_first_request_deadline_closes_first() {
        let mut connections = Connections::new(IDLE, Some(FIRST_REQUEST));
        open(&mut connections);
        let lifetime = all_closed_after(&mut connections).await;
        assert_closed_after(lifetime, FIRST_REQUEST, FIRST_REQUEST);
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_request_lifts_the_first_request_deadline_but_not_the_idle_one() {
        let mut connections = Connections::new(IDLE, Some(FIRST_REQUEST));
        drop(open(&mut connections).request(true));
        let lifetime = all_closed_after(&mut connections).await;
        assert_closed_after(lifetime, IDLE, FIRST_REQUEST);
    }

    #[tokio::test(start_paused = true)]
    async fn the_reason_is_the_first_request_while_none_came_then_idleness() {
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        let activity = Activity::new();
        let mut watched = Watched {
            activity: activity.clone(),
            connection: tasks.spawn(std::future::pending::<()>()),
            peer: PEER,
            opened: start,
            quiet_since: start,
        };
        let mut at = |seconds| {
            let now = start + Duration::from_secs(seconds);
            watched.expired(now, IDLE, Some(FIRST_REQUEST))
        };
        assert_eq!(at(9), None);
        assert_eq!(at(10), Some(Expired::NoRequest));
        assert_eq!(at(60), Some(Expired::NoRequest));
        drop(activity.request(true));
        assert_eq!(at(59), None, "the answer's end restarted the idle period");
        assert_eq!(at(118), None);
        assert_eq!(at(119), Some(Expired::Idle));
        activity.touch();
        assert_eq!(at(120), None, "the read restarted the idle period");
        assert_eq!(at(180), Some(Expired::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_awaiting_only_their_answers_hold_the_connection_until_they_end() {
        let mut connections = Connections::new(IDLE, Some(FIRST_REQUEST));
        let activity = open(&mut connections);
        let (answer, body) = activity.request(false);
        let mut body = Counted::new(http_body_util::Full::new(bytes::Bytes::from("32")), body);
        // The body read to its end, as a health `Watch`'s is before its answer starts.
        while let Some(frame) = body.frame().await {
            frame.unwrap();
        }
        let (later_answer, no_body) = activity.request(true);
        assert!(
            no_body.is_none(),
            "a request that came with its end has no body to wait for"
        );
        tokio::spawn(async move {
            tokio::time::sleep(IDLE * 3).await;
            drop(later_answer);
            tokio::time::sleep(IDLE).await;
            drop(answer);
        });
        let lifetime = all_closed_after(&mut connections).await;
        // Quiet from the last answer's end, at four idle periods.
        assert_closed_after(lifetime, IDLE * 5, FIRST_REQUEST);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_body_not_ended_leaves_the_idle_timeout_in_force() {
        let mut connections = Connections::new(IDLE, None);
        let activity = open(&mut connections);
        let (answer, body) = activity.request(false);
        let body = Counted::new(http_body_util::Empty::<bytes::Bytes>::new(), body);
        // A second request awaiting its answer does not shelter the stalled one.
        let (other, _) = activity.request(true);
        let lifetime = all_closed_after(&mut connections).await;
        assert_closed_after(lifetime, IDLE, IDLE);
        drop((answer, body, other));
    }

    #[test]
    fn each_part_of_a_request_counts_until_it_ends_or_is_dropped() {
        let activity = Activity::new();
        let (answer, body) = activity.request(false);
        assert!(!activity.awaits_answers_only(), "its body is due");
        let body = Counted::new(http_body_util::Empty::<bytes::Bytes>::new(), body);
        drop(body);
        assert!(activity.awaits_answers_only());
        let answer = Counted::new(http_body_util::Empty::<bytes::Bytes>::new(), Some(answer));
        drop(answer);
        assert!(!activity.awaits_answers_only(), "nothing is open");
        assert_eq!(activity.open.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_ends_is_forgotten_at_once() {
        let mut connections = Connections::new(IDLE, None);
        connections.spawn(PEER, |_| async {});
        let lifetime = all_closed_after(&mut connections).await;
        assert_eq!(lifetime, Duration::ZERO);
        assert!(connections.watchdog.watched.is_empty());
    }
}
