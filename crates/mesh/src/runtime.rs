//! The Tokio runtime every service runs on: one thread unless asked for more.
//!
//! A replica is one core's worth of work, and the mesh grows by adding replicas, the workshop's
//! lesson; linkerd2-proxy makes the same choice. On one thread, tasks woken by an answer wait
//! their turn behind the tasks already ready, so an HTTP/2 connection writes the answers of many
//! streams in one `writev`. With `#[tokio::main]`'s multi-thread scheduler (one worker per core),
//! rng served 54,500 gRPC calls a second at 26 µs of CPU each; on one thread, 74,000 at 13 µs
//! (docs/BENCHMARKS.md). A multi-thread scheduler with a single worker was the worst of the three:
//! its LIFO slot runs the connection task right after each stream, one `writev` per answer.
//!
//! `TOKIO_WORKER_THREADS=N`, Tokio's own variable, asks for the multi-thread scheduler with `N`
//! workers, for a replica that should use several cores.

use tokio::runtime::{Builder, Runtime};

/// Tokio's variable for the number of worker threads.
pub const THREADS_VARIABLE: &str = "TOKIO_WORKER_THREADS";

/// The runtime for this process: current-thread, or multi-thread when [`THREADS_VARIABLE`] is
/// set (Tokio reads its value, and rejects one that is not a positive number).
pub fn build() -> std::io::Result<Runtime> {
    let mut builder = if std::env::var_os(THREADS_VARIABLE).is_some() {
        Builder::new_multi_thread()
    } else {
        Builder::new_current_thread()
    };
    builder.enable_all().build()
}
