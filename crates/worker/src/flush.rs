//! The flusher: once a second, adds the work done to Redis, exactly once.
//!
//! Exactly once matters because the workshop reads the speed from `hashes`, and our tests check
//! that `hashes` equals the units the worker logged. Redis can go away at any moment, including
//! after it applied a write and before its answer reached us; retrying a plain `INCRBY` then would
//! count the batch twice. So each batch carries a sequence number, and the ledger's flush script
//! ([`ledger::flush`]) applies it only if this worker's last applied number is lower, whole or not
//! at all. A failed batch is retried as it was, same number and same content, until Redis answers;
//! new work waits in the tally meanwhile and goes into the next batch.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use deadpool_redis::Pool;
use mesh::redis::{Error, ErrorKind};
use tokio::time::{MissedTickBehavior, timeout};
use tracing::{debug, info, warn};

use crate::tally::{Coin, Pending, Replica, Tally};

/// How often the work done is added to Redis (the original's "once a second").
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Deadline of one flush, so that a frozen Redis never stalls the flusher.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between tries while shutting down with Redis unreachable.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Coins per batch: keeps one script call small (under a megabyte) whatever piled up.
const MAX_COINS_PER_BATCH: usize = crate::tally::COINS_PER_BATCH;
/// Batches per flush. A turbo worker at difficulty 1 finds tens of thousands of coins a second:
/// batches follow one another until the coins found so far are in Redis, so the wallet keeps up.
const MAX_BATCHES_PER_FLUSH: usize = crate::tally::MAX_PENDING_COINS / MAX_COINS_PER_BATCH;

/// One second's work, as sent to Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub sequence: u64,
    pub units: u64,
    pub coins: Vec<Coin>,
    /// Calls served per replica.
    pub served: BTreeMap<Replica, u64>,
}

/// Sends batches to Redis, one at a time, each exactly once.
pub struct Flusher {
    pool: Pool,
    script: ledger::flush::Flush,
    worker_id: String,
    next_sequence: u64,
    /// The batch sent and not yet acknowledged: it is retried as it is.
    in_doubt: Option<Batch>,
    /// The kinds of failure logged since Redis last took a batch: each is logged once.
    failing: BTreeSet<ErrorKind>,
}

impl Flusher {
    /// A flusher for the worker named `worker_id` (unique per process).
    pub fn new(pool: Pool, worker_id: &str) -> Self {
        Self {
            pool,
            script: ledger::flush::Flush::default(),
            worker_id: worker_id.to_string(),
            next_sequence: 1,
            in_doubt: None,
            failing: BTreeSet::new(),
        }
    }

    /// Flushes once a second until `shutdown`.
    pub async fn run_until(&mut self, tally: &Tally, shutdown: &mesh::Shutdown) {
        let mut ticks = tokio::time::interval(FLUSH_INTERVAL);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticks.tick().await; // The first tick is immediate: nothing to flush yet.
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    for _ in 0..MAX_BATCHES_PER_FLUSH {
                        if !self.flush_once(tally).await || !tally.has_coins() {
                            break;
                        }
                    }
                }
                // Between ticks, a full batch of coins goes at once (while Redis answers): memory
                // stays at a batch's worth whatever the rate. The units keep their once a second.
                () = tally.coins_waiting(), if self.in_doubt.is_none() => {
                    self.send(tally, Tally::take_coins).await;
                }
                () = shutdown.cancelled() => break,
            }
        }
    }

    /// Flushes everything left (the batch in doubt, then the whole tally) within `deadline`,
    /// retrying while Redis is unreachable. When it cannot, says how many units are lost: those
    /// of the batch in doubt (already logged as done) plus those not yet in a batch.
    pub async fn drain(&mut self, tally: &Tally, deadline: Duration) {
        let drained = timeout(deadline, async {
            // The batch in doubt first, then everything the tally holds, coins included.
            loop {
                if self.flush_once(tally).await {
                    if tally.is_empty() {
                        return;
                    }
                } else {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        });
        if drained.await.is_err() {
            let batched = self.in_doubt.as_ref().map_or(0, |batch| batch.units);
            let waiting = tally.units();
            warn!(
                units = batched + waiting,
                batched, waiting, "shutting down with work that could not reach Redis"
            );
        }
    }

    /// Sends the batch in doubt, or else a new batch from the tally. Returns whether Redis took it
    /// (or there was nothing to send).
    pub async fn flush_once(&mut self, tally: &Tally) -> bool {
        self.send(tally, Tally::take).await
    }

    /// Sends the batch in doubt, or else a new batch of what `take` takes from the tally.
    async fn send(&mut self, tally: &Tally, take: fn(&Tally, usize) -> Pending) -> bool {
        if self.in_doubt.is_none() {
            let pending = take(tally, MAX_COINS_PER_BATCH);
            if pending.dropped_coins > 0 {
                warn!(
                    coins = pending.dropped_coins,
                    "too many coins waiting for Redis, dropped some"
                );
            }
            if pending.units == 0 && pending.coins.is_empty() {
                return true;
            }
            let units = pending.units;
            // The original's line, once a second; the further batches of a flush carry coins only.
            // The count is also a field, for log collectors (and tests) that read JSON.
            if units > 0 {
                info!(units, "{units} units of work done, updating hash counter");
            }
            self.in_doubt = Some(Batch {
                sequence: self.next_sequence,
                units,
                coins: pending.coins,
                served: pending.served,
            });
            self.next_sequence += 1;
        }
        let batch = self.in_doubt.as_ref().expect("a batch is in doubt");
        let outcome = match timeout(FLUSH_TIMEOUT, self.apply(batch)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::Deadline(FLUSH_TIMEOUT)),
        };
        let unflushed = if outcome.is_ok() { 0 } else { batch.units };
        metrics::gauge!("dockercoins_units_pending").set((unflushed + tally.units()) as f64);
        match outcome {
            Ok(applied) => {
                if !applied {
                    info!(
                        sequence = batch.sequence,
                        "batch was already applied before Redis went away"
                    );
                }
                if !self.failing.is_empty() {
                    info!(units = batch.units, "Redis takes the counts again");
                    self.failing.clear();
                }
                self.in_doubt = None;
                true
            }
            Err(err) => {
                let kind = err.kind();
                metrics::counter!("dockercoins_redis_errors_total", "kind" => kind.label())
                    .increment(1);
                let (units, waiting) = (batch.units, tally.units());
                // Once per kind until Redis takes a batch again: an outage is one line, not one
                // a second, and a second cause (memory full after a restart) still shows.
                if self.failing.insert(kind) {
                    warn!(kind = %kind.label(), units, waiting, error = %err.one_line(), "cannot update Redis, keeping the count for the next try");
                } else {
                    debug!(kind = %kind.label(), units, waiting, error = %err.one_line(), "cannot update Redis yet");
                }
                false
            }
        }
    }

    async fn apply(&self, batch: &Batch) -> Result<bool, Error> {
        let mut connection = self.pool.get().await?;
        let batch = ledger::flush::Batch {
            worker: &self.worker_id,
            sequence: batch.sequence,
            units: batch.units,
            served: (batch.served.iter())
                .map(|((service, replica), calls)| (*service, replica.as_str(), *calls))
                .collect(),
            coins: (batch.coins.iter())
                .map(|coin| (coin.digest_hex(), &coin.data[..]))
                .collect(),
        };
        Ok(self.script.apply(&mut *connection, &batch).await?)
    }
}
