//! The hashing speed, worked out from timestamped readings of the `hashes` counter.
//!
//! The original dashboard subtracted two reads of `/json` taken a second apart. The worker adds
//! its work to `hashes` once a second, so two reads a second apart hold one flush, or none, or
//! two, and the speed shown jumped between 0, 3.33 and 6.67. Here the counter is read every
//! 250 ms and only the moments at which it *changed* count: those are when work landed. The speed
//! is the slope of the line fitted through the changes of the last [`WINDOW`] (least squares, as
//! Prometheus's `deriv()` does). The two-point version, (h_last - h_first) / (t_last - t_first),
//! is a line through the first and the last change only: with flushes of 3 or 4 units and
//! readings up to 300 ms late, it is up to 6% off once the window fills in the tests below, where
//! the fit over every change stays under 4%.
//!
//! This module is pure (no Redis, no clock) so that the arithmetic can be tested against made-up
//! flushes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back the speed looks: long enough to average ten flushes, short enough that the
/// dashboard follows a scale-up of the workers within seconds.
pub const WINDOW: Duration = Duration::from_secs(10);

/// With no change for this long the work has slowed or stopped, so "now" counts as a point at the
/// last value and the speed decays towards 0 instead of holding its last value forever. Twice the
/// worker's flush interval, so that one late flush does not count as a stop.
pub const STALE_AFTER: Duration = Duration::from_secs(2);

/// Bound on the changes kept: a change per 250 ms reading over [`WINDOW`] is 40, and readings
/// that come closer together than planned still fit.
const MAX_CHANGES: usize = 64;

/// One reading of the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reading {
    at: Instant,
    hashes: u64,
}

/// The readings the speed is computed from.
#[derive(Debug, Default)]
pub struct HashRate {
    /// Readings at which the counter differed from the reading before, oldest first.
    changes: VecDeque<Reading>,
    /// The latest reading, changed or not, to tell whether the next one is a change.
    latest: Option<Reading>,
}

impl HashRate {
    /// Records that the counter read `hashes` at `at`.
    ///
    /// A counter lower than before means Redis lost it (restarted empty, FLUSHALL): what came
    /// before says nothing about the new counter, so the window starts again from this reading.
    pub fn record(&mut self, at: Instant, hashes: u64) {
        let reading = Reading { at, hashes };
        match self.latest {
            // One task records, in order; a reading no later than the latest would be a vertical
            // step in the fit.
            Some(latest) if at <= latest.at => return,
            Some(latest) if hashes < latest.hashes => self.changes.clear(),
            Some(latest) if hashes > latest.hashes => {
                if self.changes.len() == MAX_CHANGES {
                    self.changes.pop_front();
                }
                self.changes.push_back(reading);
            }
            // The first reading only sets the baseline: when the work in it was done is unknown.
            _ => {}
        }
        self.latest = Some(reading);
        while self
            .changes
            .front()
            .is_some_and(|first| at.duration_since(first.at) > WINDOW)
        {
            self.changes.pop_front();
        }
    }

    /// Hashes per second at `now`: 0 until two changes have been seen, never negative.
    pub fn per_second(&self, now: Instant) -> f64 {
        // Readings stop while Redis is away, so the window is cut here too, not only in `record`.
        let mut recent = self
            .changes
            .iter()
            .filter(|change| now.saturating_duration_since(change.at) <= WINDOW)
            .peekable();
        let Some(&first) = recent.peek() else {
            return 0.0;
        };
        let last = *self.changes.back().expect("a recent change is a change");
        // Relative to the first change, so that a counter in the billions keeps its precision.
        let point = move |reading: Reading| {
            (
                reading.at.saturating_duration_since(first.at).as_secs_f64(),
                (reading.hashes - first.hashes) as f64,
            )
        };
        let stopped = (now.saturating_duration_since(last.at) > STALE_AFTER).then_some(Reading {
            at: now,
            hashes: last.hashes,
        });
        let points = recent.copied().chain(stopped).map(point);
        slope(points).max(0.0)
    }
}

/// The least-squares slope of `points`, 0 when they do not span any time.
fn slope(points: impl Iterator<Item = (f64, f64)> + Clone) -> f64 {
    let (n, sum_x, sum_y) = points.clone().fold((0.0, 0.0, 0.0), |(n, sx, sy), (x, y)| {
        (n + 1.0, sx + x, sy + y)
    });
    if n < 2.0 {
        return 0.0;
    }
    let (mean_x, mean_y) = (sum_x / n, sum_y / n);
    let (covariance, variance) = points.fold((0.0, 0.0), |(c, v), (x, y)| {
        let dx = x - mean_x;
        (c + dx * (y - mean_y), v + dx * dx)
    });
    if variance > 0.0 {
        covariance / variance
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRUE_RATE: f64 = 10.0 / 3.0;
    const SAMPLE_EVERY: Duration = Duration::from_millis(250);

    /// A small deterministic generator, so that the jitter is the same on every run.
    struct Jitter(u64);

    impl Jitter {
        /// A duration in `[-max, +max]`, in seconds.
        fn next(&mut self, max: f64) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * max
        }
    }

    /// The worker at the workshop's default speed: a unit every 300 ms, flushed once a second, so
    /// that flushes add 3 or 4 units. Flushes start `phase` seconds after the webui and stop at
    /// `stop_at`; the counter already held `start`, and the unit under way was `progress` done.
    struct Worker {
        phase: f64,
        stop_at: f64,
        start: u64,
        progress: f64,
    }

    impl Worker {
        fn hashes_at(&self, t: f64) -> u64 {
            let flushes = if t < self.phase {
                0.0
            } else {
                (t.min(self.stop_at) - self.phase).floor() + 1.0
            };
            self.start + (flushes * TRUE_RATE + self.progress).floor() as u64
        }
    }

    /// Reads `worker` every 250 ms (±50 ms) for `seconds`, returning `(t, rate)` after each read.
    fn observe(worker: &Worker, seed: u64, seconds: f64) -> Vec<(f64, f64)> {
        let origin = Instant::now();
        let mut jitter = Jitter(seed);
        let mut rate = HashRate::default();
        let mut seen = Vec::new();
        let mut t = 0.0;
        while t < seconds {
            let at = origin + Duration::from_secs_f64(t);
            rate.record(at, worker.hashes_at(t));
            seen.push((t, rate.per_second(at)));
            t += SAMPLE_EVERY.as_secs_f64() + jitter.next(0.05);
        }
        seen
    }

    /// Many phases and jitter sequences, so that no lucky alignment passes the test.
    fn runs(stop_at: f64, seconds: f64) -> impl Iterator<Item = Vec<(f64, f64)>> {
        (1..=40u64).map(move |seed| {
            let worker = Worker {
                phase: seed as f64 * 0.0247,
                stop_at,
                start: 1_000_000_000 + seed,
                progress: (seed % 3) as f64 / 3.0 + 0.1,
            };
            observe(&worker, seed * 7919, seconds)
        })
    }

    fn off_by(rate: f64) -> f64 {
        (rate - TRUE_RATE).abs() / TRUE_RATE
    }

    #[test]
    fn a_steady_speed_never_dips_to_zero() {
        for run in runs(f64::INFINITY, 60.0) {
            for &(t, rate) in run.iter().filter(|(t, _)| *t >= 3.0) {
                assert!(rate > 0.0, "0 hashes/s at {t:.2}s");
            }
        }
    }

    #[test]
    fn a_steady_speed_is_within_5_percent_once_the_window_fills() {
        for run in runs(f64::INFINITY, 60.0) {
            for &(t, rate) in run.iter().filter(|(t, _)| *t >= 8.0) {
                assert!(off_by(rate) < 0.05, "{rate:.3} hashes/s at {t:.2}s");
            }
        }
    }

    #[test]
    fn early_readings_are_as_close_as_a_few_flushes_allow() {
        // At 3 s, two or three flushes of 3 or 4 units are all there is: 3+3 and 3+4 units in two
        // seconds already differ by 14%, so closer than that cannot be known yet.
        for run in runs(f64::INFINITY, 10.0) {
            for &(t, rate) in &run {
                let bound = match t {
                    t if t < 3.0 => continue,
                    t if t < 4.0 => 0.25,
                    t if t < 5.0 => 0.10,
                    t if t < 6.0 => 0.08,
                    _ => 0.06,
                };
                assert!(off_by(rate) < bound, "{rate:.3} hashes/s at {t:.2}s");
            }
        }
    }

    #[test]
    fn the_speed_decays_to_zero_when_work_stops() {
        // The last flush comes at 30 s at the latest; 2 s later the decay starts.
        for run in runs(30.0, 50.0) {
            let after_stop: Vec<(f64, f64)> = run.into_iter().filter(|(t, _)| *t >= 32.5).collect();
            for pair in after_stop.windows(2) {
                let ((_, before), (t, after)) = (pair[0], pair[1]);
                assert!(
                    after <= before,
                    "rose from {before:.3} to {after:.3} at {t:.2}s"
                );
            }
            for &(t, rate) in after_stop.iter().filter(|(t, _)| *t >= 36.0) {
                assert!(rate < TRUE_RATE / 2.0, "{rate:.3} hashes/s at {t:.2}s");
            }
            for &(t, rate) in after_stop.iter().filter(|(t, _)| *t >= 41.0) {
                assert_eq!(rate, 0.0, "{rate} hashes/s at {t:.2}s");
            }
        }
    }

    #[test]
    fn a_counter_that_goes_down_restarts_the_window() {
        let origin = Instant::now();
        let at = |seconds: f64| origin + Duration::from_secs_f64(seconds);
        let mut rate = HashRate::default();
        for second in 0..10u32 {
            rate.record(at(f64::from(second)), 1000 + 10 * u64::from(second));
        }
        assert!((rate.per_second(at(9.0)) - 10.0).abs() < 1e-9);

        // Redis restarted empty: the counter starts again from what the next flush adds.
        rate.record(at(10.0), 4);
        assert_eq!(rate.per_second(at(10.0)), 0.0);
        rate.record(at(11.0), 7);
        assert_eq!(rate.per_second(at(11.0)), 0.0, "one change is no speed yet");
        rate.record(at(12.0), 10);
        assert!((rate.per_second(at(12.0)) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn a_missing_counter_after_a_flushall_gives_no_negative_speed() {
        let origin = Instant::now();
        let at = |seconds: u64| origin + Duration::from_secs(seconds);
        let mut rate = HashRate::default();
        rate.record(at(0), 500);
        rate.record(at(1), 504);
        rate.record(at(2), 0);
        for second in 2..20 {
            assert!(rate.per_second(at(second)) >= 0.0);
        }
        assert_eq!(rate.per_second(at(3)), 0.0);
    }

    #[test]
    fn changes_older_than_the_window_are_ignored_while_readings_stop() {
        // Redis away: no readings, so the last changes age out of the window at query time.
        let origin = Instant::now();
        let at = |seconds: u64| origin + Duration::from_secs(seconds);
        let mut rate = HashRate::default();
        for second in 0..5 {
            rate.record(at(second), 3 * second);
        }
        assert!((rate.per_second(at(4)) - 3.0).abs() < 1e-9);
        assert_eq!(
            rate.per_second(at(4) + WINDOW + Duration::from_secs(1)),
            0.0
        );
    }

    #[test]
    fn the_ring_stays_bounded_whatever_the_reading_rate() {
        let origin = Instant::now();
        let mut rate = HashRate::default();
        for i in 0..10_000u64 {
            rate.record(origin + Duration::from_micros(i), i);
        }
        assert!(rate.changes.len() <= MAX_CHANGES);
        let now = origin + Duration::from_micros(9_999);
        assert!((rate.per_second(now) - 1e6).abs() < 1.0);
    }

    #[test]
    fn no_reading_and_one_reading_give_zero() {
        let now = Instant::now();
        let mut rate = HashRate::default();
        assert_eq!(rate.per_second(now), 0.0);
        rate.record(now, 42);
        assert_eq!(rate.per_second(now), 0.0);
    }
}
