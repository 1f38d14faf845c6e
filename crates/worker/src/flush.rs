//! The flusher: once a second, adds the work done to Redis, exactly once.
//!
//! Exactly once matters because the workshop reads the speed from `hashes`, and our tests check
//! that `hashes` equals the units the worker logged. Redis can go away at any moment, including
//! after it applied a write and before its answer reached us; retrying a plain `INCRBY` then would
//! count the batch twice. So each batch carries a sequence number, and a Lua script (atomic in
//! Redis) applies it only if this worker's last applied number is lower. A failed batch is retried
//! as it was, same number and same content, until Redis answers; new work waits in the tally
//! meanwhile and goes into the next batch.

use std::collections::BTreeMap;
use std::time::Duration;

use deadpool_redis::Pool;
use mesh::redis::SERVED_SERVICES;
use tokio::time::{MissedTickBehavior, timeout};
use tracing::{info, warn};

use crate::tally::{Coin, Pending, Replica, Tally};

/// How often the work done is added to Redis (the original's "once a second").
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Deadline of one flush, so that a frozen Redis never stalls the flusher.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between tries while shutting down with Redis unreachable.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Coins per batch: keeps one script call small (under a megabyte) whatever piled up.
const MAX_COINS_PER_BATCH: usize = crate::tally::COINS_PER_BATCH;
/// Batches per flush. A turbo worker finds tens of thousands of coins a second: batches follow
/// one another until the coins found so far are in Redis, so the wallet keeps up.
const MAX_BATCHES_PER_FLUSH: usize = crate::tally::MAX_PENDING_COINS / MAX_COINS_PER_BATCH;
/// How long Redis remembers a worker's last batch number. A retry comes within seconds; a worker
/// gone for an hour is not coming back with the same batch.
const SEQUENCE_TTL_SECONDS: u64 = 3600;

/// KEYS: hashes, wallet, this worker's sequence key, then the served-calls hashes of rng and
/// hasher. ARGV: sequence, units, sequence TTL, then the number of rng and of hasher replicas in
/// the batch, then replica and calls of each (rng's first), then digest and bytes of each coin.
/// Returns 1 when applied, 0 when this batch was already applied.
const APPLY_BATCH: &str = r"
local last = tonumber(redis.call('GET', KEYS[3]) or '-1')
if tonumber(ARGV[1]) <= last then
  return 0
end
redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[3])
local i = 6
for k = 4, 5 do
  for _ = 1, tonumber(ARGV[k]) do
    redis.call('HINCRBY', KEYS[k], ARGV[i], ARGV[i + 1])
    i = i + 2
  end
end
for j = i, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[j], ARGV[j + 1])
end
redis.call('INCRBY', KEYS[1], ARGV[2])
return 1
";

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
    script: redis::Script,
    sequence_key: String,
    served_keys: [String; 2],
    next_sequence: u64,
    /// The batch sent and not yet acknowledged: it is retried as it is.
    in_doubt: Option<Batch>,
}

impl Flusher {
    /// A flusher for the worker named `worker_id` (unique per process).
    pub fn new(pool: Pool, worker_id: &str) -> Self {
        Self {
            pool,
            script: redis::Script::new(APPLY_BATCH),
            sequence_key: format!("dockercoins:worker:{worker_id}:flushed"),
            served_keys: SERVED_SERVICES.map(mesh::redis::served_key),
            next_sequence: 1,
            in_doubt: None,
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
    /// retrying while Redis is unreachable.
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
            let units = self.in_doubt.as_ref().map_or(0, |batch| batch.units) + tally.units();
            warn!(units, "shutting down with work that could not reach Redis");
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
            if units > 0 {
                info!("{units} units of work done, updating hash counter");
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
        let outcome = timeout(FLUSH_TIMEOUT, self.apply(batch)).await;
        if !matches!(outcome, Ok(Ok(_))) {
            metrics::counter!("dockercoins_redis_errors_total").increment(1);
        }
        let unflushed = if matches!(outcome, Ok(Ok(_))) {
            0
        } else {
            batch.units
        };
        metrics::gauge!("dockercoins_units_pending").set((unflushed + tally.units()) as f64);
        match outcome {
            Ok(Ok(applied)) => {
                if !applied {
                    info!(
                        sequence = batch.sequence,
                        "batch was already applied before Redis went away"
                    );
                }
                self.in_doubt = None;
                true
            }
            Ok(Err(err)) => {
                warn!(units = batch.units, waiting = tally.units(), %err, "cannot update Redis, keeping the count for the next try");
                false
            }
            Err(_) => {
                warn!(
                    units = batch.units,
                    ?FLUSH_TIMEOUT,
                    "Redis did not answer in time, keeping the count for the next try"
                );
                false
            }
        }
    }

    async fn apply(&self, batch: &Batch) -> anyhow::Result<bool> {
        let mut connection = self.pool.get().await?;
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key("hashes")
            .key("wallet")
            .key(&self.sequence_key)
            .key(&self.served_keys[0])
            .key(&self.served_keys[1])
            .arg(batch.sequence)
            .arg(batch.units)
            .arg(SEQUENCE_TTL_SECONDS);
        let of = |service| {
            batch
                .served
                .iter()
                .filter(move |((of, _), _)| *of == service)
        };
        for service in SERVED_SERVICES {
            invocation.arg(of(service).count());
        }
        for service in SERVED_SERVICES {
            for ((_, replica), calls) in of(service) {
                invocation.arg(replica).arg(calls);
            }
        }
        for coin in &batch.coins {
            invocation.arg(coin.digest_hex()).arg(&coin.data[..]);
        }
        let applied: i64 = invocation.invoke_async(&mut *connection).await?;
        Ok(applied == 1)
    }
}
