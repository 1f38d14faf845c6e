//! The flusher: once a second, adds the work done to Redis, exactly once.
//!
//! Exactly once matters because the workshop reads the speed from `hashes`, and our tests check
//! that `hashes` equals the units the worker logged. Redis can go away at any moment, including
//! after it applied a write and before its answer reached us; retrying a plain `INCRBY` then would
//! count the batch twice. So each batch carries a sequence number, and a Lua script (atomic in
//! Redis) applies it only if this worker's last applied number is lower. A failed batch is retried
//! as it was, same number and same content, until Redis answers; new work waits in the tally
//! meanwhile and goes into the next batch.
//!
//! Redis does not roll back a script that fails halfway, so the script checks every key's type
//! (and that `hashes` holds an integer) before its first write, and is declared as a writing
//! script (`#!lua`), which Redis refuses up front when it is at `maxmemory` or a read-only
//! replica: a batch is applied whole or not at all. The marks it de-duplicates with carry no TTL
//! and are pruned only for workers gone for a day (see `mesh::redis::layout`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use deadpool_redis::Pool;
use mesh::redis::{SERVED_SERVICES, layout};
use redis::RedisError;
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
/// Gone workers' marks and gone replicas' counts pruned per flush at most, so that a flush after
/// a mass scale-down stays short; the rest go at the next flushes.
const PRUNE_PER_FLUSH: u32 = 100;

/// The script's types check, then the batch. KEYS: [`mesh::redis::typed_keys`] in their order
/// (hashes, wallet, flushed, flushed:seen, then counts and seen of rng, of hasher). ARGV: worker
/// id, sequence, units, worker horizon, served horizon, prune limit, then the number of rng and of
/// hasher replicas in the batch, then replica and calls of each (rng's first), then digest and
/// bytes of each coin. Returns 1 when applied, 0 when this batch was already applied; an error
/// that names the key, with nothing written, when a key has the wrong type.
const APPLY_BATCH: &str = r"#!lua
local types = { TYPES }
for k, want in ipairs(types) do
  local got = redis.call('TYPE', KEYS[k])['ok']
  if got ~= 'none' and got ~= want then
    return redis.error_reply('WRONGTYPE key ' .. KEYS[k] .. ' holds a ' .. got .. ', not a ' .. want .. '; nothing written')
  end
end
local count = redis.call('GET', KEYS[1])
if count and not string.match(count, '^%-?%d+$') then
  return redis.error_reply('WRONGTYPE key ' .. KEYS[1] .. ' holds a string that is not an integer; nothing written')
end
local worker, limit = ARGV[1], tonumber(ARGV[6])
local now = tonumber(redis.call('TIME')[1])
local last = tonumber(redis.call('HGET', KEYS[3], worker) or '-1')
redis.call('ZADD', KEYS[4], now, worker)
if tonumber(ARGV[2]) <= last then
  return 0
end
redis.call('HSET', KEYS[3], worker, ARGV[2])
local function prune(counts, seen, horizon)
  local gone = redis.call('ZRANGEBYSCORE', seen, '-inf', now - tonumber(horizon), 'LIMIT', 0, limit)
  for _, name in ipairs(gone) do
    redis.call('HDEL', counts, name)
    redis.call('ZREM', seen, name)
  end
end
prune(KEYS[3], KEYS[4], ARGV[4])
local i = 9
for s = 0, 1 do
  local counts, seen = KEYS[5 + 2 * s], KEYS[6 + 2 * s]
  for _ = 1, tonumber(ARGV[7 + s]) do
    redis.call('HINCRBY', counts, ARGV[i], ARGV[i + 1])
    redis.call('ZADD', seen, now, ARGV[i])
    i = i + 2
  end
  prune(counts, seen, ARGV[5])
end
for j = i, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[j], ARGV[j + 1])
end
redis.call('INCRBY', KEYS[1], ARGV[3])
return 1
";

/// Why a flush failed, as logged.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("cannot reach Redis: {0}")]
    Connect(#[from] deadpool_redis::PoolError),
    #[error("Redis refused the batch: {}", redis_reason(.0))]
    Redis(#[from] RedisError),
    #[error("Redis did not answer within {0:?}")]
    Deadline(Duration),
}

/// A Redis error as Redis wrote it (`WRONGTYPE key hashes holds a list…`), where it sent one.
fn redis_reason(err: &RedisError) -> String {
    match (err.code(), err.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => err.to_string(),
    }
}

/// The kinds of flush failure: the `kind` label of `dockercoins_redis_errors_total` (a fixed
/// set), and what the worker logs once per outage rather than once a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureKind {
    /// Connection refused, reset, or the pool could not open one.
    Unreachable,
    /// No answer within the flush's deadline (Redis frozen, paused or swamped).
    Timeout,
    /// Redis is loading its data after a restart.
    Loading,
    /// Redis is at `maxmemory` and refuses writes (`noeviction`).
    OutOfMemory,
    /// A key the worker writes holds another type (the script names it).
    WrongType,
    /// Redis is a read-only replica.
    ReadOnly,
    /// Anything else Redis answered with an error.
    Other,
}

impl FailureKind {
    /// Every kind, for tests and dashboards.
    pub const ALL: [FailureKind; 7] = [
        Self::Unreachable,
        Self::Timeout,
        Self::Loading,
        Self::OutOfMemory,
        Self::WrongType,
        Self::ReadOnly,
        Self::Other,
    ];

    /// The metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Timeout => "timeout",
            Self::Loading => "loading",
            Self::OutOfMemory => "oom",
            Self::WrongType => "wrong_type",
            Self::ReadOnly => "read_only",
            Self::Other => "other",
        }
    }

    /// The kind of `err`, from Redis's error code where it sent one.
    pub fn of(err: &FlushError) -> Self {
        match err {
            FlushError::Connect(_) => Self::Unreachable,
            FlushError::Deadline(_) => Self::Timeout,
            FlushError::Redis(err) => match err.code() {
                Some("OOM") => Self::OutOfMemory,
                Some("WRONGTYPE") => Self::WrongType,
                Some("READONLY") => Self::ReadOnly,
                Some("LOADING") => Self::Loading,
                _ if err.is_io_error() || err.is_connection_dropped() => Self::Unreachable,
                _ if err.is_timeout() => Self::Timeout,
                _ => Self::Other,
            },
        }
    }
}

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
    worker_id: String,
    keys: Vec<String>,
    next_sequence: u64,
    /// The batch sent and not yet acknowledged: it is retried as it is.
    in_doubt: Option<Batch>,
    /// The kinds of failure logged since Redis last took a batch: each is logged once.
    failing: BTreeSet<FailureKind>,
}

/// The flush script with the types of [`mesh::redis::typed_keys`] filled in, in their order.
fn apply_batch_script() -> String {
    mesh::redis::with_key_types(APPLY_BATCH)
}

impl Flusher {
    /// A flusher for the worker named `worker_id` (unique per process).
    pub fn new(pool: Pool, worker_id: &str) -> Self {
        Self {
            pool,
            script: redis::Script::new(&apply_batch_script()),
            worker_id: worker_id.to_string(),
            keys: mesh::redis::typed_keys()
                .into_iter()
                .map(|(key, _)| key)
                .collect(),
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
        let outcome = match timeout(FLUSH_TIMEOUT, self.apply(batch)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(FlushError::Deadline(FLUSH_TIMEOUT)),
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
                let kind = FailureKind::of(&err);
                metrics::counter!("dockercoins_redis_errors_total", "kind" => kind.label())
                    .increment(1);
                let (units, waiting) = (batch.units, tally.units());
                // Once per kind until Redis takes a batch again: an outage is one line, not one
                // a second, and a second cause (memory full after a restart) still shows.
                if self.failing.insert(kind) {
                    warn!(kind = %kind.label(), units, waiting, error = %one_line(&err), "cannot update Redis, keeping the count for the next try");
                } else {
                    debug!(kind = %kind.label(), units, waiting, error = %one_line(&err), "cannot update Redis yet");
                }
                false
            }
        }
    }

    async fn apply(&self, batch: &Batch) -> Result<bool, FlushError> {
        let mut connection = self.pool.get().await?;
        let mut invocation = self.script.prepare_invoke();
        for key in &self.keys {
            invocation.key(key);
        }
        invocation
            .arg(&self.worker_id)
            .arg(batch.sequence)
            .arg(batch.units)
            .arg(layout::WORKER_HORIZON_SECONDS)
            .arg(layout::SERVED_HORIZON_SECONDS)
            .arg(PRUNE_PER_FLUSH);
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

/// An error on one line: Redis's can span several.
fn one_line(err: &FlushError) -> String {
    err.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_checks_the_type_of_every_key_it_is_given() {
        let script = apply_batch_script();
        assert!(!script.contains("TYPES"));
        let types = mesh::redis::typed_keys();
        let listed = format!(
            "local types = {{{}}}",
            types
                .iter()
                .map(|(_, kind)| format!("'{kind}'"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        assert!(script.contains(&listed), "{script}");
        // Declared as a writing script: Redis refuses it whole when full or read-only.
        assert!(script.starts_with("#!lua\n"));
        // Every check comes before the first write.
        let first_write = ["'ZADD'", "'HSET'", "'HINCRBY'", "'INCRBY'", "'HDEL'"]
            .iter()
            .filter_map(|write| script.find(write))
            .min()
            .unwrap();
        assert!(script.rfind("error_reply").unwrap() < first_write);
    }

    #[test]
    fn failure_kinds_have_distinct_labels() {
        let labels: BTreeSet<&str> = FailureKind::ALL.iter().map(|kind| kind.label()).collect();
        assert_eq!(labels.len(), FailureKind::ALL.len());
    }

    #[test]
    fn errors_are_classified_by_the_code_redis_sent() {
        let server = |line: &str| match redis::parse_redis_value(line.as_bytes()).unwrap() {
            redis::Value::ServerError(err) => FlushError::Redis(err.into()),
            other => panic!("{other:?}"),
        };
        for (line, kind) in [
            (
                "-OOM command not allowed when used memory > 'maxmemory'.\r\n",
                FailureKind::OutOfMemory,
            ),
            (
                "-WRONGTYPE key hashes holds a list, not a string; nothing written\r\n",
                FailureKind::WrongType,
            ),
            (
                "-READONLY You can't write against a read only replica.\r\n",
                FailureKind::ReadOnly,
            ),
            (
                "-LOADING Redis is loading the dataset in memory\r\n",
                FailureKind::Loading,
            ),
            ("-ERR something else\r\n", FailureKind::Other),
        ] {
            assert_eq!(FailureKind::of(&server(line)), kind, "{line}");
        }
        assert_eq!(
            FailureKind::of(&FlushError::Deadline(FLUSH_TIMEOUT)),
            FailureKind::Timeout
        );
    }
}
