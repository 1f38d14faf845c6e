//! Shutdown as a value passed down to every task, not a global.
//!
//! SIGTERM (what `docker stop` and Kubernetes send) and SIGINT (^C) both cancel one token; each
//! task watches it and finishes its own part: report NOT_SERVING, stop accepting, drain, flush.

use std::time::Duration;

pub use tokio_util::sync::CancellationToken as Shutdown;

/// How long in-flight work may take once shutdown starts. Every service must be gone within one
/// second of SIGTERM; this leaves room for the flush that follows the drain and for process exit.
pub const DRAIN_DEADLINE: Duration = Duration::from_millis(700);

/// Returns a token that is cancelled on the first SIGTERM or SIGINT.
///
/// Must be called from inside the Tokio runtime.
pub fn on_signal() -> Shutdown {
    let shutdown = Shutdown::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        token.cancel();
    });
    shutdown
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler can be installed");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler can be installed");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
