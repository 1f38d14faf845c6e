//! Golden metrics per replica, as the workers saw them: the layout both sides share.
//!
//! Each worker adds what it saw in the last second to one hash per service and per second of
//! Redis's clock, `dockercoins:golden:{service}:{second}`, which expires after [`TTL_SECONDS`]:
//! nothing to prune, and memory bounded by the replicas seen in a minute. Fields are
//! `{replica}|c` (calls), `{replica}|e` (failed calls), `{replica}|s` (their latencies summed, in
//! µs, for the mean) and `{replica}|{bucket}` (calls whose latency fell in that bucket of
//! [`bucket_of`]). Counts from many workers add up with `HINCRBY`, and so do histograms with
//! fixed buckets: the webui sums the last ten seconds and reads percentiles from the sum.
//! Best-effort: a second a worker could not flush is lost, not retried (the counts that must be
//! exact are [`crate::HASHES`] and [`crate::WALLET`]).

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_five_percent_of_the_latency() {
        for micros in [3u64, 40, 250, 1_000, 100_000, 500_000, 2_000_000] {
            let latency = Duration::from_micros(micros);
            let shown = bucket_value(bucket_of(latency));
            let error = (shown.as_secs_f64() / latency.as_secs_f64() - 1.0).abs();
            assert!(error < 0.05, "{latency:?} shown as {shown:?}");
        }
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_secs(3600)), BUCKETS - 1);
    }

    #[test]
    fn fields_parse_back() {
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
}
