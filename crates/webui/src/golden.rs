//! Golden metrics per replica and per service, as the workers saw them: calls per second, success
//! rate and latency percentiles over the last ten seconds, with the sick replicas marked.
//!
//! The workers add each second's calls, failures and latency histogram per replica to a Redis
//! hash of that second (see [`ledger::golden`]). Once a second the sampler reads the last ten
//! complete seconds in one script (Redis's clock picks the seconds, the same clock the workers'
//! script named them by), and this module sums them: counts add up, and so do the fixed
//! histograms, whatever the number of workers, so the percentiles are those of every call made.
//! Memory stays bounded: at most [`MAX_REPLICAS`] replicas per service are kept from a reading.

use std::collections::BTreeMap;

use deadpool_redis::Pool;
use ledger::SERVED_SERVICES;
use ledger::golden::{self, BUCKETS, Field, WINDOW_SECONDS};
use mesh::redis::Error;

use crate::counters::within_deadline;

/// Replicas per service kept from one reading; the others are left out of the table.
pub const MAX_REPLICAS: usize = 100;
/// Below this success rate a replica is marked failing.
pub const FAILING_BELOW: f64 = 0.95;
/// A replica whose median latency is over this many times the median of the others' is slow.
pub const SLOW_FACTOR: f64 = 2.0;

/// Reads the hashes of the last [`WINDOW_SECONDS`] complete seconds of every service.
/// KEYS: the services' key prefixes. ARGV: the number of seconds.
const READ_SECONDS: &str = r"
local now = tonumber(redis.call('TIME')[1])
local out = {}
for s = 1, #KEYS do
  local seconds = {}
  for i = 1, tonumber(ARGV[1]) do
    seconds[i] = redis.call('HGETALL', KEYS[s] .. (now - i))
  end
  out[s] = seconds
end
return out
";

/// One replica's calls, or a whole service's, summed over the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    pub calls: u64,
    pub errors: u64,
    pub micros: u64,
    pub buckets: Box<[u64; BUCKETS]>,
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            calls: 0,
            errors: 0,
            micros: 0,
            buckets: Box::new([0; BUCKETS]),
        }
    }
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.calls += other.calls;
        self.errors += other.errors;
        self.micros += other.micros;
        for (sum, count) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *sum += count;
        }
    }

    /// The latency under which a share `q` of the calls fell, in milliseconds.
    fn percentile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        let bucket = self.buckets.iter().position(|count| {
            seen += count;
            seen >= rank
        })?;
        let ms = golden::bucket_value(bucket).as_secs_f64() * 1000.0;
        // Three digits past the millisecond: a turbo call is tens of µs.
        Some((ms * 1000.0).round() / 1000.0)
    }

    fn golden(&self, name: Option<String>) -> Golden {
        let success_rate = (self.calls > 0)
            .then(|| (self.calls - self.errors.min(self.calls)) as f64 / self.calls as f64)
            .map(|rate| (rate * 10_000.0).round() / 10_000.0);
        Golden {
            name,
            calls: self.calls,
            errors: self.errors,
            rate: (self.calls as f64 / WINDOW_SECONDS as f64 * 100.0).round() / 100.0,
            success_rate,
            mean_ms: (self.calls > 0)
                .then(|| (self.micros as f64 / self.calls as f64).round() / 1000.0),
            p50_ms: self.percentile_ms(0.50),
            p95_ms: self.percentile_ms(0.95),
            p99_ms: self.percentile_ms(0.99),
            sick: None,
        }
    }
}

/// Golden metrics of a replica or of a service, as `/json` reports them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Golden {
    /// The replica's name (its hostname, as `x-served-by` gives it); absent for a service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Calls the workers made in the window, and how many failed.
    pub calls: u64,
    pub errors: u64,
    /// Calls per second over the window.
    pub rate: f64,
    /// Share of calls that succeeded, 0 to 1; `null` without calls.
    pub success_rate: Option<f64>,
    /// Mean latency seen by the workers, in milliseconds, failures included.
    pub mean_ms: Option<f64>,
    /// Latency percentiles seen by the workers, in milliseconds, failures included.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Why this replica stands out ("failing", "slow", or both), `null` when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sick: Option<String>,
}

/// One service: the whole, and each replica seen in the window, by name.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Service {
    pub service: Golden,
    pub replicas: Vec<Golden>,
}

/// Every service of [`SERVED_SERVICES`], as `/json`'s `golden` reports them.
pub type Report = BTreeMap<&'static str, Service>;

/// Sums the seconds of one service (each a flat `HGETALL` answer: field, value, …) per replica.
pub fn sum_seconds(seconds: &[Vec<String>]) -> BTreeMap<String, Counts> {
    let mut replicas: BTreeMap<String, Counts> = BTreeMap::new();
    for second in seconds {
        for pair in second.chunks_exact(2) {
            let (Some((replica, what)), Ok(count)) =
                (golden::parse_field(&pair[0]), pair[1].parse::<u64>())
            else {
                continue;
            };
            if !replicas.contains_key(replica) && replicas.len() >= MAX_REPLICAS {
                continue;
            }
            let counts = replicas.entry(replica.to_string()).or_default();
            match what {
                Field::Calls => counts.calls += count,
                Field::Errors => counts.errors += count,
                Field::Micros => counts.micros += count,
                Field::Bucket(bucket) => counts.buckets[bucket] += count,
            }
        }
    }
    replicas
}

/// The golden metrics of one service from its replicas' sums, the sick ones marked.
pub fn service(replicas: &BTreeMap<String, Counts>) -> Service {
    let mut whole = Counts::default();
    for counts in replicas.values() {
        whole.add(counts);
    }
    let mut shown: Vec<Golden> = replicas
        .iter()
        .filter(|(_, counts)| counts.calls > 0)
        .map(|(name, counts)| counts.golden(Some(name.clone())))
        .collect();
    let medians: Vec<Option<f64>> = shown.iter().map(|golden| golden.p50_ms).collect();
    for (i, golden) in shown.iter_mut().enumerate() {
        let mut reasons = Vec::new();
        if golden.success_rate.is_some_and(|rate| rate < FAILING_BELOW) {
            reasons.push("failing");
        }
        let mut others: Vec<f64> = medians
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .filter_map(|(_, median)| *median)
            .collect();
        others.sort_by(f64::total_cmp);
        if let (Some(mine), Some(typical)) = (golden.p50_ms, others.get(others.len() / 2)) {
            // The extra millisecond keeps turbo's tens of µs from looking slow over noise.
            if mine > SLOW_FACTOR * typical + 1.0 {
                reasons.push("slow");
            }
        }
        golden.sick = (!reasons.is_empty()).then(|| reasons.join(", "));
    }
    Service {
        service: whole.golden(None),
        replicas: shown,
    }
}

/// Reads the last [`WINDOW_SECONDS`] of every service and sums them into the report.
pub async fn read(pool: &Pool) -> Result<Report, Error> {
    within_deadline(async {
        let mut connection = pool.get().await?;
        let script = redis::Script::new(READ_SECONDS);
        let mut invocation = script.prepare_invoke();
        for service in SERVED_SERVICES {
            invocation.key(golden::key_prefix(service));
        }
        invocation.arg(WINDOW_SECONDS);
        let services: Vec<Vec<Vec<String>>> = invocation.invoke_async(&mut *connection).await?;
        Ok(SERVED_SERVICES
            .iter()
            .copied()
            .zip(services)
            .map(|(name, seconds)| (name, service(&sum_seconds(&seconds))))
            .collect())
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A second's `HGETALL` answer: `replica` made `calls` calls of `latency`, `errors` failing.
    fn second(replica: &str, calls: u64, errors: u64, latency: Duration) -> Vec<String> {
        let bucket = golden::bucket_of(latency);
        vec![
            golden::field(replica, Field::Calls),
            calls.to_string(),
            golden::field(replica, Field::Errors),
            errors.to_string(),
            golden::field(replica, Field::Micros),
            (calls * latency.as_micros() as u64).to_string(),
            golden::field(replica, Field::Bucket(bucket)),
            calls.to_string(),
        ]
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn seconds_from_many_workers_add_up() {
        // Ten seconds: two workers call a 5 times a second each; b 4 times, one failing.
        let mut seconds = Vec::new();
        for _ in 0..10 {
            seconds.push(second("a", 5, 0, ms(100)));
            seconds.push(second("a", 5, 0, ms(100)));
            seconds.push(second("b", 4, 1, ms(100)));
        }
        let summed = sum_seconds(&seconds);
        assert_eq!((summed["a"].calls, summed["a"].errors), (100, 0));
        assert_eq!((summed["b"].calls, summed["b"].errors), (40, 10));
        let report = service(&summed);
        let a = &report.replicas[0];
        assert_eq!((a.rate, a.success_rate), (10.0, Some(1.0)));
        let p50 = a.p50_ms.unwrap();
        assert!((p50 - 100.0).abs() < 5.0, "{p50}");
        assert_eq!(report.service.calls, 140);
        assert_eq!(report.service.mean_ms, Some(100.0));
        assert_eq!(report.service.success_rate, Some(0.9286));
    }

    #[test]
    fn percentiles_come_from_the_summed_histogram() {
        let mut counts = Counts {
            calls: 100,
            ..Counts::default()
        };
        counts.buckets[golden::bucket_of(ms(10))] = 90;
        counts.buckets[golden::bucket_of(ms(200))] = 9;
        counts.buckets[golden::bucket_of(ms(2000))] = 1;
        let near = |got: Option<f64>, want: f64| (got.unwrap() / want - 1.0).abs() < 0.05;
        assert!(near(counts.percentile_ms(0.5), 10.0));
        assert!(near(counts.percentile_ms(0.95), 200.0));
        assert!(near(counts.percentile_ms(0.99), 200.0));
        assert!(near(counts.percentile_ms(1.0), 2000.0));
        assert_eq!(Counts::default().percentile_ms(0.5), None);
    }

    #[test]
    fn the_slow_and_the_failing_replica_are_marked() {
        let seconds = vec![
            second("fine", 100, 0, ms(100)),
            second("slow", 20, 0, ms(600)),
            second("failing", 100, 50, ms(90)),
        ];
        let report = service(&sum_seconds(&seconds));
        let marks: Vec<(&str, Option<&str>)> = report
            .replicas
            .iter()
            .map(|r| (r.name.as_deref().unwrap(), r.sick.as_deref()))
            .collect();
        assert_eq!(
            marks,
            [
                ("failing", Some("failing")),
                ("fine", None),
                ("slow", Some("slow"))
            ]
        );
    }

    #[test]
    fn turbo_noise_is_not_slow() {
        let seconds = vec![
            second("a", 100, 0, Duration::from_micros(40)),
            second("b", 100, 0, Duration::from_micros(120)),
        ];
        let report = service(&sum_seconds(&seconds));
        assert!(report.replicas.iter().all(|r| r.sick.is_none()));
    }

    #[test]
    fn replicas_past_the_cap_are_left_out() {
        let seconds: Vec<Vec<String>> = (0..MAX_REPLICAS + 10)
            .map(|n| second(&format!("r{n}"), 1, 0, ms(1)))
            .collect();
        assert_eq!(sum_seconds(&seconds).len(), MAX_REPLICAS);
    }

    #[test]
    fn fields_of_no_known_shape_are_skipped() {
        let seconds = vec![vec![
            "junk".to_string(),
            "1".to_string(),
            "a|c".to_string(),
            "not a number".to_string(),
            "a|c".to_string(),
            "3".to_string(),
        ]];
        assert_eq!(sum_seconds(&seconds)["a"].calls, 3);
    }
}
