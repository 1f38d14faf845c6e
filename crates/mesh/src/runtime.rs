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

/// The most worker threads a replica may ask for (Tokio itself panics on 0 or on a value that is
/// not a number, and a huge one would exhaust the process's threads).
pub const MAX_THREADS: usize = 1024;

/// Why the runtime could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// [`THREADS_VARIABLE`] is not a number from 1 to [`MAX_THREADS`].
    #[error(
        "{THREADS_VARIABLE}: invalid value {0:?}: expected a number of threads from 1 to {MAX_THREADS}"
    )]
    Threads(String),
    #[error("cannot start the Tokio runtime: {0}")]
    Start(#[from] std::io::Error),
}

/// The runtime for this process: current-thread, or multi-thread when [`THREADS_VARIABLE`] is
/// set. A value that is not a number from 1 to [`MAX_THREADS`] is refused with one line naming
/// the variable, before anything starts.
pub fn build() -> Result<Runtime, RuntimeError> {
    let mut builder = match threads(std::env::var(THREADS_VARIABLE).ok().as_deref())? {
        Some(threads) => {
            let mut builder = Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
        None => Builder::new_current_thread(),
    };
    Ok(builder.enable_all().build()?)
}

/// The number of worker threads `raw` asks for, if any.
fn threads(raw: Option<&str>) -> Result<Option<usize>, RuntimeError> {
    let Some(raw) = raw else { return Ok(None) };
    match raw.trim().parse::<usize>() {
        Ok(threads) if (1..=MAX_THREADS).contains(&threads) => Ok(Some(threads)),
        _ => Err(RuntimeError::Threads(raw.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_means_one_thread_and_a_count_means_that_many() {
        assert_eq!(threads(None).unwrap(), None);
        assert_eq!(threads(Some("4")).unwrap(), Some(4));
    }

    #[test]
    fn bad_counts_are_refused_naming_the_variable() {
        for bad in ["0", "-1", "many", "", "1025", "99999999999999999999"] {
            let err = threads(Some(bad)).unwrap_err().to_string();
            assert!(
                err.starts_with("TOKIO_WORKER_THREADS: invalid value"),
                "{err}"
            );
        }
    }
}
