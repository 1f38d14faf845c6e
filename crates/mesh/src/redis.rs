//! Redis connection pools with deadlines, and the key layout, for the services that read or
//! write the counters (the worker writes, the webui reads: both must agree on every key and type).
//!
//! Every Redis call in the mesh must fail fast when Redis is down or frozen: the worker keeps
//! mining and retries, the webui answers 503 within a second. deadpool-redis does the pooling;
//! this module sets its deadlines once for everyone.

use std::time::Duration;

pub use deadpool_redis::Pool;
use deadpool_redis::{Config, PoolConfig, Runtime, Timeouts};

/// Deadline to get a connection, to open one, and to check an idle one.
pub const CONNECTION_DEADLINE: Duration = Duration::from_millis(500);

/// A pool of at most `max_size` connections to `url`. Connecting is lazy: this never fails because
/// Redis is down, only because the URL is malformed.
pub fn pool(url: &str, max_size: usize) -> Result<Pool, deadpool_redis::CreatePoolError> {
    let mut config = Config::from_url(url);
    let mut pool = PoolConfig::new(max_size);
    pool.timeouts = Timeouts {
        wait: Some(CONNECTION_DEADLINE),
        create: Some(CONNECTION_DEADLINE),
        recycle: Some(CONNECTION_DEADLINE),
    };
    config.pool = Some(pool);
    config.create_pool(Some(Runtime::Tokio1))
}

/// Checks a Redis URL at start-up, as a clap value parser, so that a typo exits with status 2 and
/// the variable's name instead of failing at the first flush.
pub fn parse_url(url: &str) -> Result<String, String> {
    use deadpool_redis::redis::IntoConnectionInfo;
    url.into_connection_info()
        .map(|_| url.to_string())
        .map_err(|err| format!("not a Redis URL such as redis://127.0.0.1:6379 ({err})"))
}

/// The services whose replicas the workers count in [`served_key`], in the order the worker's
/// flush script takes them and the dashboard shows them.
pub const SERVED_SERVICES: [&str; 2] = ["rng", "hasher"];

/// The Redis layout the worker writes and the webui reads.
///
/// Redis 7.0 has no per-field expiry, so everything that must not grow forever is a hash paired
/// with a sorted set of last-seen times (Redis's own clock), pruned by the worker's flush script:
/// per-replica counts go after [`SERVED_HORIZON_SECONDS`], a worker's de-duplication mark after
/// [`WORKER_HORIZON_SECONDS`]. Nothing has a TTL, so nothing can expire or (with
/// `maxmemory-policy noeviction`) be evicted before a retry.
pub mod layout {
    /// Units of work done: a string holding an integer (`INCRBY`).
    pub const HASHES: &str = "hashes";
    /// Coins found: a hash, digest (64 hex digits) to the 32 bytes it is the digest of.
    pub const WALLET: &str = "wallet";
    /// The last batch number applied, per worker process: a hash, worker id to number.
    pub const FLUSHED: &str = "dockercoins:flushed";
    /// When each worker of [`FLUSHED`] last flushed: a sorted set, worker id scored by seconds.
    pub const FLUSHED_SEEN: &str = "dockercoins:flushed:seen";
    /// How long a worker's mark outlives its last flush. A retry comes within seconds; only a
    /// worker cut off from Redis for a day while others flush could see its batch counted twice.
    pub const WORKER_HORIZON_SECONDS: u64 = 24 * 3600;
    /// How long a replica's served count outlives its last call: a scaled-down replica leaves
    /// the hash after this (the dashboard stops showing it after 10 seconds already).
    pub const SERVED_HORIZON_SECONDS: u64 = 600;
}

/// The Redis hash in which the workers count, per replica of `service` ("rng" or "hasher"), the
/// calls it served: field = the replica's name (its hostname), value = calls.
pub fn served_key(service: &str) -> String {
    format!("dockercoins:served:{service}")
}

/// The sorted set of when each replica of `service` last served a call (see [`layout`]).
pub fn served_seen_key(service: &str) -> String {
    format!("dockercoins:served:{service}:seen")
}

/// Golden metrics per replica, as the workers saw them: the layout both sides share.
///
/// Each worker adds what it saw in the last second to one hash per service and per second of
/// Redis's clock, `dockercoins:golden:{service}:{second}`, which expires after [`golden::TTL_SECONDS`]:
/// nothing to prune, and memory bounded by the replicas seen in a minute. Fields are
/// `{replica}|c` (calls), `{replica}|e` (failed calls), `{replica}|s` (their latencies summed, in
/// µs, for the mean) and `{replica}|{bucket}` (calls whose
/// latency fell in that bucket of [`golden::bucket_of`]). Counts from many workers add up with
/// `HINCRBY`, and so do histograms with fixed buckets: the webui sums the last ten seconds and
/// reads percentiles from the sum. Best-effort: a second a worker could not flush is lost, not
/// retried (the counts that must be exact are `hashes` and `wallet`).
pub mod golden {
    use std::time::Duration;

    /// Latency buckets: 8 per doubling, from 1 µs to 2^25 µs (33 s); one bucket is 9% wide, so a
    /// percentile read at a bucket's middle is within 5% of the truth.
    pub const BUCKETS: usize = 200;
    const PER_DOUBLING: f64 = 8.0;
    /// How long a second's hash outlives its second: the webui reads the last ten.
    pub const TTL_SECONDS: u64 = 60;
    /// Seconds the webui sums.
    pub const WINDOW_SECONDS: u64 = 10;

    /// The prefix of `service`'s per-second hashes; the second (Redis's `TIME`) follows.
    pub fn key_prefix(service: &str) -> String {
        format!("dockercoins:golden:{service}:")
    }

    /// The bucket a call that took `elapsed` falls in.
    pub fn bucket_of(elapsed: Duration) -> usize {
        let micros = elapsed.as_secs_f64() * 1e6;
        if micros <= 1.0 {
            return 0;
        }
        ((micros.log2() * PER_DOUBLING) as usize).min(BUCKETS - 1)
    }

    /// The latency a bucket stands for: its geometric middle.
    pub fn bucket_value(bucket: usize) -> Duration {
        let micros = 2f64.powf((bucket as f64 + 0.5) / PER_DOUBLING);
        Duration::from_secs_f64(micros / 1e6)
    }

    /// The field of `replica`'s calls, failed calls, or calls in `bucket`.
    pub fn field(replica: &str, what: Field) -> String {
        match what {
            Field::Calls => format!("{replica}|c"),
            Field::Errors => format!("{replica}|e"),
            Field::Micros => format!("{replica}|s"),
            Field::Bucket(bucket) => format!("{replica}|{bucket}"),
        }
    }

    /// What a field counts.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Field {
        Calls,
        Errors,
        /// Latencies summed, in microseconds.
        Micros,
        Bucket(usize),
    }

    /// A field's replica and what it counts; `None` for a field of no known shape.
    pub fn parse_field(field: &str) -> Option<(&str, Field)> {
        let (replica, what) = field.rsplit_once('|')?;
        let what = match what {
            "c" => Field::Calls,
            "e" => Field::Errors,
            "s" => Field::Micros,
            bucket => Field::Bucket(bucket.parse().ok().filter(|b| *b < BUCKETS)?),
        };
        Some((replica, what))
    }
}

/// Every key the worker writes, with the Redis type it must have: the flush script refuses to
/// start on any other, and the webui names the key on the dashboard.
pub fn typed_keys() -> Vec<(String, &'static str)> {
    let mut keys = vec![
        (layout::HASHES.to_string(), "string"),
        (layout::WALLET.to_string(), "hash"),
        (layout::FLUSHED.to_string(), "hash"),
        (layout::FLUSHED_SEEN.to_string(), "zset"),
    ];
    for service in SERVED_SERVICES {
        keys.push((served_key(service), "hash"));
        keys.push((served_seen_key(service), "zset"));
    }
    keys
}

/// `script` with its `{ TYPES }` placeholder replaced by a Lua table of the types of
/// [`typed_keys`], in their order: the scripts that check the keys they are given.
pub fn with_key_types(script: &str) -> String {
    let types: Vec<String> = typed_keys()
        .into_iter()
        .map(|(_, kind)| format!("'{kind}'"))
        .collect();
    script.replace("{ TYPES }", &format!("{{{}}}", types.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_redis_urls() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://redis",
            "redis://:secret@redis:6380/2",
        ] {
            assert_eq!(parse_url(url).as_deref(), Ok(url));
        }
    }

    #[test]
    fn rejects_what_is_not_a_redis_url() {
        for url in ["127.0.0.1:6379", "http://redis", ""] {
            assert!(parse_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn scripts_get_the_type_of_every_key_in_order() {
        assert_eq!(
            with_key_types("local types = { TYPES }"),
            "local types = {'string', 'hash', 'hash', 'zset', 'hash', 'zset', 'hash', 'zset'}"
        );
        let keys: Vec<String> = typed_keys().into_iter().map(|(key, _)| key).collect();
        assert_eq!(
            keys,
            [
                "hashes",
                "wallet",
                "dockercoins:flushed",
                "dockercoins:flushed:seen",
                "dockercoins:served:rng",
                "dockercoins:served:rng:seen",
                "dockercoins:served:hasher",
                "dockercoins:served:hasher:seen"
            ]
        );
    }

    #[test]
    fn golden_buckets_are_within_five_percent_of_the_latency() {
        for micros in [3u64, 40, 250, 1_000, 100_000, 500_000, 2_000_000] {
            let latency = Duration::from_micros(micros);
            let shown = golden::bucket_value(golden::bucket_of(latency));
            let error = (shown.as_secs_f64() / latency.as_secs_f64() - 1.0).abs();
            assert!(error < 0.05, "{latency:?} shown as {shown:?}");
        }
        assert_eq!(golden::bucket_of(Duration::ZERO), 0);
        assert_eq!(
            golden::bucket_of(Duration::from_secs(3600)),
            golden::BUCKETS - 1
        );
    }

    #[test]
    fn golden_fields_parse_back() {
        use golden::{Field, field, parse_field};
        for what in [
            Field::Calls,
            Field::Errors,
            Field::Micros,
            Field::Bucket(17),
        ] {
            assert_eq!(parse_field(&field("rng-a", what)), Some(("rng-a", what)));
        }
        assert_eq!(parse_field("rng-a|999"), None);
        assert_eq!(parse_field("no-bar"), None);
    }

    #[tokio::test]
    async fn a_pool_is_made_without_reaching_redis() {
        let pool = pool("redis://127.0.0.1:1", 1).unwrap();
        let started = std::time::Instant::now();
        assert!(pool.get().await.is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
