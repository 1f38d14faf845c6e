//! Shutdown as a value passed down to every task, not a global.
//!
//! SIGTERM (what `docker stop` and Kubernetes send) and SIGINT (^C) start it; it then runs in two
//! phases, each a token that tasks watch:
//!
//! 1. **Stopping**, at the signal: gRPC health reports NOT_SERVING and `/readyz` 503; tasks that
//!    start work stop starting it, and flush what they hold. The listeners still accept and
//!    serve, so that a call a balancer sends before it has seen NOT_SERVING is answered, not
//!    refused.
//! 2. **Draining**, a short grace later (`LISTEN_SHUTDOWN_GRACE`): the listeners stop accepting,
//!    HTTP/2 clients get GOAWAY, health watches end, and in-flight calls have [`DRAIN_DEADLINE`]
//!    to finish. The grace is for the clients connected when the signal came (the balancers that
//!    watch this process's health): it ends early once none is connected, and is skipped when
//!    none was, so an idle process exits in milliseconds.
//!
//! This is the order of tonic's `serve_with_shutdown` fed with a signal future that first reports
//! NOT_SERVING and then sleeps, and of Kubernetes' preStop sleep; here it is one value, so that
//! every listener of a process drains at the same moment.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// How long in-flight work may take once the drain starts. Every service must be gone within one
/// second of SIGTERM: with the default grace of 200 ms this ends the drain 700 ms after the
/// signal, which leaves room for the flushes that follow it and for process exit.
pub const DRAIN_DEADLINE: Duration = Duration::from_millis(500);

/// The longest `LISTEN_SHUTDOWN_GRACE`: `docker stop` sends SIGKILL after 10 s.
pub const MAX_GRACE: Duration = Duration::from_secs(10);

/// A clap value parser for the grace: a duration from `0s` (drain at once) to [`MAX_GRACE`].
pub fn parse_grace(raw: &str) -> Result<Duration, String> {
    let grace = humantime::parse_duration(raw).map_err(|err| err.to_string())?;
    if grace > MAX_GRACE {
        return Err(format!(
            "must be at most {}",
            humantime::format_duration(MAX_GRACE)
        ));
    }
    Ok(grace)
}

/// The two phases of one process's shutdown; clones share them.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Cancelled at the signal: report NOT_SERVING, start no new work.
    stopping: CancellationToken,
    /// Cancelled after the grace: stop accepting, end health watches, drain.
    draining: CancellationToken,
    /// The connections open on the process's listeners, which the grace waits for.
    open: Arc<Open>,
}

#[derive(Debug, Default)]
struct Open {
    count: AtomicUsize,
    /// Notified when the count falls to zero.
    none: Notify,
}

impl Open {
    /// Completes when no connection is open.
    async fn none(&self) {
        loop {
            let none = self.none.notified();
            tokio::pin!(none);
            // Registered before the count is read, so that a close in between is not missed.
            none.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            none.await;
        }
    }
}

/// A connection counted as open (see [`Shutdown::connection`]) until this is dropped.
#[derive(Debug)]
pub struct OpenConnection(Arc<Open>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none.notify_waiters();
        }
    }
}

impl Shutdown {
    /// A shutdown that has not started.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs the phases: stopping now, draining once `grace` has passed or no connection is open,
    /// whichever comes first. Returns when the drain has started.
    pub async fn begin(&self, grace: Duration) {
        self.stopping.cancel();
        // Started earlier with no grace (`cancel`): nothing is left to wait for.
        if !self.draining.is_cancelled() {
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                // Nobody connected is nobody to tell.
                () = self.open.none() => {}
            }
        }
        self.draining.cancel();
    }

    /// Counts a connection of one of the process's listeners as open, until the guard drops.
    pub fn connection(&self) -> OpenConnection {
        self.open.count.fetch_add(1, Ordering::AcqRel);
        OpenConnection(self.open.clone())
    }

    /// Both phases at once, with no grace: for tests, and for a task that must stop everything it
    /// started (nothing watches its health).
    pub fn cancel(&self) {
        self.stopping.cancel();
        self.draining.cancel();
    }

    /// Completes when shutdown starts (the stopping phase). Cancel-safe.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.stopping.cancelled()
    }

    /// Whether shutdown has started.
    pub fn is_cancelled(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Completes when the drain starts: time to stop accepting. Cancel-safe.
    pub fn draining(&self) -> WaitForCancellationFuture<'_> {
        self.draining.cancelled()
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Runs `future` until shutdown starts; `None` if it started first.
    pub async fn run_until_cancelled<F: Future>(&self, future: F) -> Option<F::Output> {
        self.stopping.run_until_cancelled(future).await
    }

    /// A shutdown that follows this one, phase by phase, and can also be cancelled on its own
    /// without touching this one.
    pub fn child_token(&self) -> Self {
        Self {
            stopping: self.stopping.child_token(),
            draining: self.draining.child_token(),
            open: self.open.clone(),
        }
    }
}

/// Returns a shutdown that starts on the first SIGTERM or SIGINT and drains `grace` later.
///
/// Must be called from inside the Tokio runtime.
pub fn on_signal(grace: Duration) -> Shutdown {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed here, before the caller binds its listener: a SIGTERM that arrives as soon as the
    // port answers must find the handler, not the default action that kills the process.
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler can be installed");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler can be installed");
    let shutdown = Shutdown::new();
    let phases = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!(?grace, "shutdown signal received, draining after the grace");
        phases.begin(grace).await;
    });
    shutdown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stopping_comes_first_and_the_drain_after_the_grace() {
        let shutdown = Shutdown::new();
        let _watcher = shutdown.connection();
        assert!(!shutdown.is_cancelled() && !shutdown.is_draining());
        let phases = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.begin(Duration::from_millis(200)).await }
        });
        shutdown.cancelled().await;
        let stopped = tokio::time::Instant::now();
        assert!(!shutdown.is_draining(), "the grace comes before the drain");
        tokio::time::sleep(Duration::from_millis(199)).await;
        assert!(!shutdown.is_draining(), "still in the grace");
        shutdown.draining().await;
        let grace = stopped.elapsed();
        assert!(
            grace >= Duration::from_millis(200) && grace <= Duration::from_millis(201),
            "{grace:?}"
        );
        phases.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn with_nobody_connected_there_is_no_grace() {
        let shutdown = Shutdown::new();
        drop(shutdown.connection());
        let started = tokio::time::Instant::now();
        shutdown.begin(Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(shutdown.is_draining());
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_ends_when_the_last_connection_closes() {
        let shutdown = Shutdown::new();
        let first = shutdown.connection();
        let second = shutdown.child_token().connection();
        let phases = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.begin(Duration::from_secs(5)).await }
        });
        shutdown.cancelled().await;
        let stopped = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(first);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!shutdown.is_draining(), "one connection is still open");
        drop(second);
        shutdown.draining().await;
        assert_eq!(stopped.elapsed(), Duration::from_secs(2));
        phases.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_starts_both_phases_at_once() {
        let shutdown = Shutdown::new();
        shutdown.cancel();
        assert!(shutdown.is_cancelled() && shutdown.is_draining());
        // A signal after that waits for no grace.
        let started = tokio::time::Instant::now();
        shutdown.begin(Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_child_follows_its_parent_but_not_the_other_way_round() {
        let parent = Shutdown::new();
        let child = parent.child_token();
        child.cancel();
        assert!(!parent.is_cancelled() && !parent.is_draining());

        let child = parent.child_token();
        parent.cancel();
        assert!(child.is_cancelled() && child.is_draining());
    }
}
