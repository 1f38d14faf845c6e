//! Polling with a deadline, shared by `support` and `support_deploy`.

use std::time::{Duration, Instant};

/// Polls `probe` every `every` until it returns `Some`, or panics after `deadline` naming `what`.
pub fn eventually_every<T>(
    deadline: Duration,
    every: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}
