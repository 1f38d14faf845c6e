//! What `/json` reports, kept up to date by the sampler: the latest reading of the counters, and
//! the speeds worked out from all the readings.
//!
//! `/json` answers from here and never waits for Redis itself: a dashboard poll costs no round
//! trip, so a room full of browsers (or `wrk`) does not load Redis, and the answer is at most one
//! sampling interval (250 ms) old. A reading older than [`MAX_AGE`] is not shown: `/json` then
//! answers 503 with why the sampler cannot read Redis.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::counters::{Sample, Unavailable};
use crate::golden;
use crate::rate::HashRate;
use crate::replicas::{self, ReplicaRates};

/// How old the latest reading may be and still be shown. Four sampling intervals: one late or
/// failed reading does not flicker the page, and an outage shows within a second.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// The body of `GET /json`.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// Coins found: `HLEN wallet`.
    pub coins: u64,
    /// Units of work done: `GET hashes`, 0 before the first.
    pub hashes: u64,
    /// When this was answered, in seconds since the Unix epoch.
    pub now: f64,
    /// Hashes per second over the last 10 seconds (see [`crate::rate`]).
    pub rate: f64,
    /// Calls per second of each rng and hasher replica seen in the last 10 seconds (see
    /// [`crate::replicas`]).
    pub replicas: replicas::Report,
    /// Golden metrics per service and per replica over the last 10 seconds, from the workers'
    /// side, the sick replicas marked (see [`crate::golden`]).
    pub golden: golden::Report,
    /// Why Redis refuses (or soon will refuse) the workers' counts, in one line: memory at
    /// `maxmemory`, a read-only replica, a key of the wrong type. `null` when it takes them. The
    /// workers keep what Redis refuses and flush it once the cause is gone.
    pub write_problem: Option<String>,
}

/// The readings, as the sampler leaves them.
#[derive(Debug, Default)]
pub struct Board {
    rate: HashRate,
    replicas: ReplicaRates,
    golden: golden::Report,
    latest: Option<(Instant, u64, u64)>,
    /// Why the last reading failed, if it did.
    error: Option<String>,
    /// Keys of the wrong type, as of the latest reading.
    wrong_keys: Option<String>,
    /// What `INFO` last said against writes.
    write_health: Option<String>,
}

impl Board {
    /// Takes a reading. `timed` says whether it is precise enough for the speeds (a reading
    /// whose round trip was long only updates the counters).
    pub fn record(&mut self, sample: Sample, timed: bool) {
        self.latest = Some((sample.at, sample.hashes, sample.coins));
        self.error = None;
        self.wrong_keys = sample.wrong_keys;
        if timed {
            self.rate.record(sample.at, sample.hashes);
            for (service, counts) in sample.served {
                self.replicas.record(sample.at, service, counts);
            }
        }
    }

    /// Takes the latest golden metrics.
    pub fn golden(&mut self, report: golden::Report) {
        self.golden = report;
    }

    /// Notes what Redis's memory and role say against writes (`None`: nothing).
    pub fn write_health(&mut self, problem: Option<String>) {
        self.write_health = problem;
    }

    /// Notes that a reading failed, and why.
    pub fn failed(&mut self, reason: String) {
        self.error = Some(reason);
    }

    /// The report as of `now`, or why there is none.
    pub fn report(&self, now: Instant) -> Result<Report, Unavailable> {
        let fresh = self
            .latest
            .filter(|(at, _, _)| now.saturating_duration_since(*at) <= MAX_AGE);
        let Some((_, hashes, coins)) = fresh else {
            return Err(Unavailable(self.error.clone().unwrap_or_else(
                || match self.latest {
                    Some(_) => "Redis has not answered for over a second".to_string(),
                    None => "no reading from Redis yet".to_string(),
                },
            )));
        };
        let rate = self.rate.per_second(now);
        Ok(Report {
            coins,
            hashes,
            now: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
            // The estimate is good to a few percent: more digits would only be noise.
            rate: (rate * 1000.0).round() / 1000.0,
            replicas: self.replicas.report(now),
            golden: self.golden.clone(),
            write_problem: self.write_problem(),
        })
    }
}

impl Board {
    fn write_problem(&self) -> Option<String> {
        let problems: Vec<&str> = [&self.write_health, &self.wrong_keys]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, hashes: u64) -> Sample {
        Sample {
            hashes,
            coins: hashes / 16,
            served: vec![("rng", vec![("r".to_string(), hashes)])],
            wrong_keys: None,
            at,
            round_trip: Duration::from_millis(1),
        }
    }

    #[test]
    fn reports_the_latest_reading_while_it_is_fresh() {
        let start = Instant::now();
        let mut board = Board::default();
        let reason = board.report(start).unwrap_err().0;
        assert_eq!(reason, "no reading from Redis yet");
        board.record(sample(start, 32), true);
        board.record(sample(start + Duration::from_millis(250), 64), false);
        let report = board.report(start + Duration::from_millis(500)).unwrap();
        assert_eq!((report.hashes, report.coins), (64, 4));

        board.failed("cannot reach Redis: refused".to_string());
        assert!(board.report(start + Duration::from_millis(900)).is_ok());
        let reason = board.report(start + Duration::from_secs(2)).unwrap_err().0;
        assert_eq!(reason, "cannot reach Redis: refused");
    }

    #[test]
    fn a_write_problem_shows_until_its_cause_is_gone() {
        let start = Instant::now();
        let mut board = Board::default();
        board.record(sample(start, 32), true);
        assert_eq!(board.report(start).unwrap().write_problem, None);

        board.write_health(Some("Redis is full".to_string()));
        let mut wrong = sample(start, 32);
        wrong.wrong_keys = Some("key wallet holds a string, not a hash".to_string());
        board.record(wrong, true);
        assert_eq!(
            board.report(start).unwrap().write_problem.as_deref(),
            Some("Redis is full; key wallet holds a string, not a hash")
        );

        board.write_health(None);
        board.record(sample(start, 33), true);
        assert_eq!(board.report(start).unwrap().write_problem, None);
    }
}
