//! Accepting connections under a cap, without spinning when accepting fails.
//!
//! Every listener of the mesh (service, admin, forwarder) accepts through an [`Acceptor`]: past
//! `LISTEN_MAX_CONNECTIONS` open connections a new one is closed as soon as it is accepted (the
//! kernel would otherwise queue it in the backlog, where it waits unseen), and the open ones keep
//! working. An accept error such as EMFILE (out of file descriptors) fails again at once if
//! retried at once, so the acceptor backs off and logs it at most once a second.
//!
//! Each accepted connection gets the socket options that every listener wants: TCP_NODELAY, and
//! the kernel's checks for a peer that is gone ([`PeerCheck`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::server::limits::Limits;

/// One accepted connection and its slot under the cap; the slot frees when it is dropped.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub slot: OwnedSemaphorePermit,
}

/// A listener with a cap on open connections and a backoff on accept errors.
pub struct Acceptor {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    max_connections: u32,
    backoff: Backoff,
    /// While backing off: when to try accepting again. Kept here so that a cancelled `accept`
    /// does not shorten the pause.
    resume_at: Option<Instant>,
    errors: Throttle,
    refused: Throttle,
    peer_check: PeerCheck,
}

impl Acceptor {
    pub fn new(listener: TcpListener, limits: &Limits) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(limits.max_connections as usize)),
            max_connections: limits.max_connections,
            backoff: Backoff::default(),
            resume_at: None,
            errors: Throttle::default(),
            refused: Throttle::default(),
            peer_check: PeerCheck::new(limits),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Waits for the next connection that fits under the cap, closing those that do not.
    ///
    /// Cancel-safe: a connection is either returned or never taken from the listener, and a
    /// pause after an error resumes where it was.
    pub async fn accept(&mut self) -> Accepted {
        loop {
            if let Some(resume_at) = self.resume_at {
                tokio::time::sleep_until(resume_at).await;
                self.resume_at = None;
            }
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.backoff.reset();
                    match self.slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            if let Err(err) = self.peer_check.apply(&stream) {
                                tracing::debug!(%peer, %err, "could not set socket options");
                            }
                            return Accepted { stream, peer, slot };
                        }
                        Err(_) => {
                            // Dropping the stream closes it: the client sees the connection
                            // end at once instead of hanging in the backlog.
                            drop(stream);
                            if let Some(more) = self.refused.allow(Instant::now()) {
                                tracing::warn!(
                                    max_connections = self.max_connections,
                                    %peer,
                                    also_refused = more,
                                    "connection cap reached, closing new connections"
                                );
                            }
                        }
                    }
                }
                Err(err) => {
                    let pause = self.backoff.next_pause();
                    let now = Instant::now();
                    self.resume_at = Some(now + pause);
                    if let Some(more) = self.errors.allow(now) {
                        tracing::warn!(%err, ?pause, also_failed = more, "accept failed, pausing");
                    }
                }
            }
        }
    }
}

/// The socket options of an accepted connection: TCP_NODELAY, and how its kernel finds a peer
/// that is gone (a host that died or was cut off sends no FIN, and its connection would hold a
/// slot forever).
///
/// After `LISTEN_KEEPALIVE_INTERVAL` with nothing received, the kernel sends TCP keepalive
/// probes, [`PROBES`](Self::PROBES) per `LISTEN_KEEPALIVE_TIMEOUT`; TCP_USER_TIMEOUT, the interval
/// and the timeout together, closes the connection once nothing has come back for that long,
/// whether probes or data sent went unanswered (Linux; elsewhere the probes' count decides).
/// The kernel answers probes without waking the process, so checking costs no work per request,
/// unlike HTTP/2 PINGs, whose bookkeeping hyper does at every frame received
/// (docs/BENCHMARKS.md, "TCP keepalive in place of PINGs"). TCP counts the keepalive times in
/// whole seconds, so they round up to one.
#[derive(Debug, Clone)]
struct PeerCheck {
    keepalive: TcpKeepalive,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    user_timeout: Duration,
}

impl PeerCheck {
    /// Probes per keepalive timeout: enough that one lost probe does not close a live connection.
    const PROBES: u32 = 4;

    fn new(limits: &Limits) -> Self {
        let keepalive = TcpKeepalive::new().with_time(whole_seconds(limits.keepalive_interval));
        #[cfg(target_os = "linux")]
        let keepalive = keepalive
            .with_interval(whole_seconds(limits.keepalive_timeout / Self::PROBES))
            .with_retries(Self::PROBES);
        Self {
            keepalive,
            user_timeout: limits.keepalive_interval + limits.keepalive_timeout,
        }
    }

    fn apply(&self, stream: &TcpStream) -> std::io::Result<()> {
        // Small unary RPCs: Nagle's algorithm would hold each response back for the peer's ACK.
        stream.set_nodelay(true)?;
        let socket = SockRef::from(stream);
        socket.set_tcp_keepalive(&self.keepalive)?;
        #[cfg(target_os = "linux")]
        socket.set_tcp_user_timeout(Some(self.user_timeout))?;
        Ok(())
    }
}

/// `duration` rounded up to whole seconds, from one to the 32,767 that Linux accepts (nine hours;
/// a longer keepalive time would fail to set, leaving none).
fn whole_seconds(duration: Duration) -> Duration {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    Duration::from_secs(seconds.clamp(1, 32_767))
}

/// Pauses after consecutive accept errors: 50 ms, doubling up to 1 s, back to 50 ms after a
/// success. Short enough that the listener recovers soon after descriptors free up, long enough
/// that a persistent error costs no CPU.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(50);
    pub const MAX: Duration = Duration::from_secs(1);

    /// The pause before the next try, and doubles the one after it.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        pause
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

/// Lets one log line through per second; counts the ones held back, so that the next line can
/// say how many there were.
#[derive(Debug, Default)]
pub struct Throttle {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    pub const PERIOD: Duration = Duration::from_secs(1);

    /// `Some(held back since the last line)` if a line may be logged at `now`, else `None`.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < Self::PERIOD => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_pause_doubles_up_to_a_second_and_resets_after_a_success() {
        let mut backoff = Backoff::default();
        let pauses: Vec<u64> = (0..7)
            .map(|_| backoff.next_pause().as_millis() as u64)
            .collect();
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next_pause(), Backoff::FIRST);
    }

    #[test]
    fn a_burst_of_errors_logs_one_line_a_second() {
        let mut throttle = Throttle::default();
        let start = Instant::now();
        let logged: Vec<_> = (0..30)
            .map(|i| throttle.allow(start + Duration::from_millis(100 * i)))
            .collect();
        // At 0 s, 1 s, 2 s: three lines in three seconds, each counting the nine held back.
        let lines: Vec<_> = logged.iter().flatten().copied().collect();
        assert_eq!(lines, [0, 9, 9]);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_over_ten_seconds_try_accepting_a_bounded_number_of_times() {
        // What the accept loop does on a persistent error: with the pauses it takes, ten seconds
        // of EMFILE cost about a dozen tries, not millions.
        let mut backoff = Backoff::default();
        let start = Instant::now();
        let mut tries = 0;
        while start.elapsed() < Duration::from_secs(10) {
            tries += 1;
            tokio::time::sleep(backoff.next_pause()).await;
        }
        assert!(tries <= 15, "{tries} tries in 10 s");
    }

    async fn echo_once(mut accepted: Accepted) {
        let mut byte = [0];
        while accepted.stream.read_exact(&mut byte).await.is_ok() {
            if accepted.stream.write_all(&byte).await.is_err() {
                break;
            }
        }
    }

    /// Whether `stream` still echoes a byte.
    async fn echoes(stream: &mut TcpStream) -> bool {
        let mut byte = [0];
        stream.write_all(b"x").await.is_ok()
            && tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut byte))
                .await
                .is_ok_and(|read| read.is_ok())
    }

    /// Whether the server closed `stream` (EOF or reset) within two seconds.
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut byte = [0];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn past_the_cap_new_connections_are_closed_and_a_freed_slot_lets_one_in() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let mut acceptor = Acceptor::new(listener, &limits);
        tokio::spawn(async move {
            loop {
                let accepted = acceptor.accept().await;
                tokio::spawn(echo_once(accepted));
            }
        });

        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert!(echoes(&mut first).await && echoes(&mut second).await);
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed(&mut third).await,
            "the third connection is over the cap"
        );
        assert!(echoes(&mut first).await, "open connections keep working");

        drop(first);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut next = TcpStream::connect(addr).await.unwrap();
            if echoes(&mut next).await {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a freed slot lets a connection in"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn an_accepted_connection_has_nodelay_and_the_kernels_peer_check() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            keepalive_interval: Duration::from_millis(1500),
            keepalive_timeout: Duration::from_secs(20),
            ..Limits::default()
        };
        let mut acceptor = Acceptor::new(listener, &limits);
        let _client = TcpStream::connect(addr).await.unwrap();
        let accepted = acceptor.accept().await;

        assert!(accepted.stream.nodelay().unwrap());
        let socket = SockRef::from(&accepted.stream);
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(2),
            "rounded up to whole seconds"
        );
        #[cfg(target_os = "linux")]
        {
            assert_eq!(
                socket.tcp_keepalive_interval().unwrap(),
                Duration::from_secs(5)
            );
            assert_eq!(socket.tcp_keepalive_retries().unwrap(), PeerCheck::PROBES);
            assert_eq!(
                socket.tcp_user_timeout().unwrap(),
                Some(Duration::from_millis(21_500)),
                "the interval and the timeout together"
            );
        }
    }

    #[test]
    fn keepalive_times_round_up_to_whole_seconds() {
        let rounded = |ms| whole_seconds(Duration::from_millis(ms)).as_secs();
        assert_eq!(
            [rounded(1), rounded(1000), rounded(1001), rounded(20_000)],
            [1, 1, 2, 20]
        );
        assert_eq!(whole_seconds(Duration::ZERO).as_secs(), 1);
        assert_eq!(whole_seconds(Duration::from_secs(86_400)).as_secs(), 32_767);
    }
}
