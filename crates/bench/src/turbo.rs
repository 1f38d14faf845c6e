//! The turbo pipeline's speed, read where the workshop reads it: the Redis counter `hashes`.
//!
//! The worker adds its units to `hashes` once a second, so the counter moves in steps. Polling it
//! every few milliseconds finds each step within that much of the flush; the speed is the units
//! added between the first flush after warm-up and the first flush a whole window later, divided
//! by the time between those two flushes. Measured from flush to flush, the one-second batching
//! cancels out (the same method as the end-to-end tests' rate).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How often `hashes` is read: 200 cheap GETs a second, next to tens of thousands of calls.
const POLL: Duration = Duration::from_millis(5);
/// How long past the window the flushes may be late before the measurement fails.
const GRACE: Duration = Duration::from_secs(5);

/// One flush of the worker, as seen in Redis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flush {
    pub at: Instant,
    pub hashes: u64,
}

/// A connection to the Redis the worker writes to.
pub struct Counter {
    connection: redis::Connection,
}

impl Counter {
    pub fn connect(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let connection = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .with_context(|| format!("connect to {url}"))?;
        Ok(Self { connection })
    }

    /// `GET hashes`, 0 before the first flush.
    pub fn hashes(&mut self) -> anyhow::Result<u64> {
        let value: Option<u64> = redis::cmd("GET")
            .arg(ledger::HASHES)
            .query(&mut self.connection)?;
        Ok(value.unwrap_or(0))
    }

    /// Waits for the counter to move past `after`, and returns when and to what.
    pub fn next_flush(&mut self, after: u64, deadline: Instant) -> anyhow::Result<Flush> {
        loop {
            let hashes = self.hashes()?;
            let at = Instant::now();
            if hashes > after {
                return Ok(Flush { at, hashes });
            }
            if at > deadline {
                bail!("`hashes` stayed at {after}: the worker did not flush");
            }
            std::thread::sleep(POLL);
        }
    }

    /// After `warmup`, the first flush and the first one at least `window` later: the two ends
    /// of the measurement. `on_first` runs at the first (to start CPU accounting there).
    pub fn window(
        &mut self,
        warmup: Duration,
        window: Duration,
        on_first: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<(Flush, Flush)> {
        let deadline = Instant::now() + warmup + window + GRACE;
        std::thread::sleep(warmup);
        let settled = self.hashes()?;
        let first = self.next_flush(settled, deadline)?;
        on_first()?;
        let mut last = self.next_flush(first.hashes, deadline)?;
        while last.at - first.at < window {
            last = self.next_flush(last.hashes, deadline)?;
        }
        Ok((first, last))
    }
}

/// Hashes per second between two flushes.
pub fn rate(first: Flush, last: Flush) -> f64 {
    (last.hashes - first.hashes) as f64 / (last.at - first.at).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_units_over_the_time_between_flushes() {
        let start = Instant::now();
        let first = Flush {
            at: start,
            hashes: 1000,
        };
        let last = Flush {
            at: start + Duration::from_millis(2000),
            hashes: 21_000,
        };
        assert_eq!(rate(first, last), 10_000.0);
    }
}
