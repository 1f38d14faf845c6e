//! Golden metrics from the caller's side: per rng and hasher replica, the calls this worker made,
//! how many failed, and a histogram of their latency, sent to Redis once a second.
//!
//! The worker is where a sick replica shows: it sees every answer (or its absence) and how long it
//! took, whatever the replica says about itself. Recording must stay cheap at turbo rates
//! (hundreds of thousands of calls a second), so a call costs a read lock, a short scan of the
//! replicas known (a handful) and four atomic adds into that replica's fixed histogram: no
//! allocation and no lock held for writing, except the first time a replica is seen. Memory is
//! bounded whatever the churn: at most [`MAX_REPLICAS`] per service, and a replica not called for
//! [`IDLE_FLUSHES`] flushes is forgotten.
//!
//! Sending is best-effort (see [`ledger::golden`]): a second Redis did not take is dropped.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use deadpool_redis::Pool;
use ledger::SERVED_SERVICES;
use ledger::golden::{self, BUCKETS, Field};
use mesh::redis::Error;

/// Replicas tracked per service; calls to others are counted in [`Golden::untracked`] only.
pub const MAX_REPLICAS: usize = 64;
/// Flushes without a call after which a replica is forgotten (scaled down, or replaced).
pub const IDLE_FLUSHES: u32 = 10;
/// Deadline of one send: golden metrics never hold up the next second.
const SEND_TIMEOUT: Duration = Duration::from_millis(500);

/// Adds a second's counts to the hash of Redis's current second, and sets its expiry.
/// KEYS: the service's key prefix. ARGV: TTL, then field and increment pairs.
const ADD_SECOND: &str = r"#!lua
local key = KEYS[1] .. redis.call('TIME')[1]
for i = 2, #ARGV, 2 do
  redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', key, ARGV[1])
return 1
";

/// What one replica's calls looked like since the last take.
#[derive(Debug)]
struct Stats {
    calls: AtomicU64,
    errors: AtomicU64,
    micros: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
    /// Takes in a row that found no call.
    idle: AtomicU32,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            micros: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            idle: AtomicU32::new(0),
        }
    }
}

/// One replica's second, as taken for Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Second {
    pub service: &'static str,
    pub replica: String,
    pub calls: u64,
    pub errors: u64,
    /// Latencies summed, in microseconds.
    pub micros: u64,
    /// Non-empty buckets and their counts.
    pub buckets: Vec<(usize, u64)>,
}

/// The replicas this worker calls, with their stats.
#[derive(Debug, Default)]
pub struct Golden {
    replicas: RwLock<Vec<(&'static str, String, Arc<Stats>)>>,
    /// Calls to replicas past [`MAX_REPLICAS`], not shown per replica.
    untracked: AtomicU64,
}

impl Golden {
    /// Counts one call to `replica` of `service` that took `elapsed` and succeeded or not.
    pub fn record(&self, service: &'static str, replica: &str, elapsed: Duration, ok: bool) {
        let stats = self.stats(service, replica);
        let Some(stats) = stats else {
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return;
        };
        stats.calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        stats
            .micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        stats.buckets[golden::bucket_of(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    /// The stats of `replica`, added if new and under the cap.
    fn stats(&self, service: &'static str, replica: &str) -> Option<Arc<Stats>> {
        let find = |replicas: &[(&'static str, String, Arc<Stats>)]| {
            replicas
                .iter()
                .find(|(of, name, _)| *of == service && name == replica)
                .map(|(_, _, stats)| stats.clone())
        };
        let known = self.replicas.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(stats) = find(&known) {
            return Some(stats);
        }
        drop(known);
        let mut known = self
            .replicas
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(stats) = find(&known) {
            return Some(stats);
        }
        if known.iter().filter(|(of, _, _)| *of == service).count() >= MAX_REPLICAS {
            return None;
        }
        let stats = Arc::new(Stats::default());
        known.push((service, replica.to_string(), stats.clone()));
        Some(stats)
    }

    /// Takes every replica's counts since the last take, and forgets the replicas idle for
    /// [`IDLE_FLUSHES`] takes.
    pub fn take(&self) -> Vec<Second> {
        let mut taken = Vec::new();
        let mut idle = false;
        {
            let known = self.replicas.read().unwrap_or_else(PoisonError::into_inner);
            for (service, replica, stats) in known.iter() {
                let calls = stats.calls.swap(0, Ordering::Relaxed);
                let errors = stats.errors.swap(0, Ordering::Relaxed);
                let micros = stats.micros.swap(0, Ordering::Relaxed);
                // A call recorded between the swaps shows in its bucket now and in the count
                // next second: best-effort, and no count is lost.
                let buckets: Vec<(usize, u64)> = stats
                    .buckets
                    .iter()
                    .enumerate()
                    .map(|(bucket, count)| (bucket, count.swap(0, Ordering::Relaxed)))
                    .filter(|(_, count)| *count > 0)
                    .collect();
                if calls == 0 && buckets.is_empty() {
                    idle |= stats.idle.fetch_add(1, Ordering::Relaxed) + 1 >= IDLE_FLUSHES;
                    continue;
                }
                stats.idle.store(0, Ordering::Relaxed);
                taken.push(Second {
                    service,
                    replica: replica.clone(),
                    calls,
                    errors,
                    micros,
                    buckets,
                });
            }
        }
        if idle {
            self.replicas
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|(_, _, stats)| stats.idle.load(Ordering::Relaxed) < IDLE_FLUSHES);
        }
        taken
    }

    /// Replicas tracked now.
    pub fn tracked(&self) -> usize {
        self.replicas
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Sends what `golden` holds to Redis, best-effort: one script call per service that had calls.
pub async fn send(pool: &Pool, golden: &Golden) {
    let seconds = golden.take();
    if seconds.is_empty() {
        return;
    }
    let script = redis::Script::new(ADD_SECOND);
    let sent = mesh::redis::within(SEND_TIMEOUT, async {
        let mut connection = pool.get().await?;
        for &service in SERVED_SERVICES {
            let mut invocation = script.prepare_invoke();
            invocation
                .key(golden::key_prefix(service))
                .arg(golden::TTL_SECONDS);
            let mut any = false;
            for second in seconds.iter().filter(|second| second.service == service) {
                any = true;
                let replica = &second.replica;
                invocation
                    .arg(golden::field(replica, Field::Calls))
                    .arg(second.calls);
                if second.errors > 0 {
                    invocation
                        .arg(golden::field(replica, Field::Errors))
                        .arg(second.errors);
                }
                invocation
                    .arg(golden::field(replica, Field::Micros))
                    .arg(second.micros);
                for (bucket, count) in &second.buckets {
                    invocation
                        .arg(golden::field(replica, Field::Bucket(*bucket)))
                        .arg(count);
                }
            }
            if any {
                let _: i64 = invocation.invoke_async(&mut *connection).await?;
            }
        }
        Ok::<(), Error>(())
    })
    .await;
    let Err(error) = sent else {
        return;
    };
    // The flush of the counts logs Redis's outages; this one only counts its lost seconds.
    metrics::counter!("dockercoins_golden_seconds_dropped_total").increment(1);
    tracing::debug!(error = %error.one_line(), "golden metrics of the last second dropped");
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn calls_errors_and_latencies_are_counted_per_replica_until_taken() {
        let golden = Golden::default();
        golden.record("rng", "a", 2 * MS, true);
        golden.record("rng", "a", 500 * MS, false);
        golden.record("hasher", "a", MS, true);
        let mut taken = golden.take();
        taken.sort_by_key(|second| second.service);
        assert_eq!(taken.len(), 2);
        let (hasher, rng) = (&taken[0], &taken[1]);
        assert_eq!((rng.service, rng.calls, rng.errors), ("rng", 2, 1));
        assert_eq!(rng.micros, 502_000);
        assert_eq!(
            rng.buckets,
            vec![
                (golden::bucket_of(2 * MS), 1),
                (golden::bucket_of(500 * MS), 1)
            ]
        );
        assert_eq!(
            (hasher.service, hasher.calls, hasher.errors),
            ("hasher", 1, 0)
        );
        assert!(golden.take().is_empty(), "taken once");
    }

    #[test]
    fn replicas_past_the_cap_are_not_tracked() {
        let golden = Golden::default();
        for n in 0..MAX_REPLICAS + 5 {
            golden.record("rng", &format!("rng-{n}"), MS, true);
        }
        assert_eq!(golden.tracked(), MAX_REPLICAS);
        assert_eq!(golden.untracked.load(Ordering::Relaxed), 5);
        golden.record("hasher", "h", MS, true);
        assert_eq!(golden.tracked(), MAX_REPLICAS + 1, "the cap is per service");
    }

    #[test]
    fn idle_replicas_are_forgotten() {
        let golden = Golden::default();
        golden.record("rng", "gone", MS, true);
        for _ in 0..=IDLE_FLUSHES {
            golden.record("rng", "busy", MS, true);
            golden.take();
        }
        let known = golden.replicas.read().unwrap();
        let names: Vec<&str> = known.iter().map(|(_, name, _)| name.as_str()).collect();
        assert_eq!(names, ["busy"]);
    }
}
