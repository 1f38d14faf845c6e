//! Calls per second of each rng and hasher replica, for the dashboard's per-replica chart.
//!
//! The workers count the calls each replica served into one Redis hash per service of
//! [`ledger::SERVED_SERVICES`] (field: the replica's hostname, see [`ledger::served_key`]), in
//! the same exactly-once script as `hashes`. The sampler reads them with `hashes`; each replica's
//! counter gets its own [`HashRate`], the same least-squares slope as the hashing speed. Only the
//! replicas whose counter moved in the last [`WINDOW`] are reported: the others are gone (scaled
//! down, or replaced). Redis keeps their counts ten minutes more, then the workers' flush script
//! prunes them ([`ledger::SERVED_HORIZON_SECONDS`]), so that the hashes do not grow with every replica ever
//! started.

use std::collections::BTreeMap;
use std::time::Instant;

use ledger::SERVED_SERVICES;

use crate::rate::{HashRate, WINDOW};

/// One replica as `/json` reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Replica {
    /// Its name: the hostname it reports (a container's id in Docker).
    pub name: String,
    /// Calls it served, in all.
    pub calls: u64,
    /// Calls per second over the last 10 seconds.
    pub rate: f64,
}

/// The replicas of every service, as `/json` reports them: service name to replicas by name.
pub type Report = BTreeMap<&'static str, Vec<Replica>>;

#[derive(Debug)]
struct Tracked {
    rate: HashRate,
    calls: u64,
    /// When its counter last moved; `None` if not since the webui started.
    changed: Option<Instant>,
}

/// The replicas seen lately, per service.
#[derive(Debug, Default)]
pub struct ReplicaRates {
    services: BTreeMap<&'static str, BTreeMap<String, Tracked>>,
}

impl ReplicaRates {
    /// Records that `service`'s replicas had served `counts` calls at `at`.
    pub fn record(&mut self, at: Instant, service: &'static str, counts: Vec<(String, u64)>) {
        let replicas = self.services.entry(service).or_default();
        for (name, calls) in counts {
            let tracked = replicas.entry(name).or_insert_with(|| Tracked {
                rate: HashRate::default(),
                calls,
                changed: None,
            });
            if calls != tracked.calls {
                tracked.changed = Some(at);
            }
            tracked.calls = calls;
            tracked.rate.record(at, calls);
        }
    }

    /// Every service of [`SERVED_SERVICES`] with its replicas by name, as of `now`.
    pub fn report(&self, now: Instant) -> Report {
        SERVED_SERVICES
            .iter()
            .copied()
            .map(|service| {
                let replicas = self
                    .services
                    .get(service)
                    .into_iter()
                    .flatten()
                    .filter(|(_, tracked)| {
                        tracked
                            .changed
                            .is_some_and(|changed| now.saturating_duration_since(changed) <= WINDOW)
                    })
                    .map(|(name, tracked)| Replica {
                        name: name.clone(),
                        calls: tracked.calls,
                        // As the hashing speed: a few percent is all the precision there is.
                        rate: (tracked.rate.per_second(now) * 100.0).round() / 100.0,
                    })
                    .collect();
                (service, replicas)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
        pairs
            .iter()
            .map(|(name, calls)| (name.to_string(), *calls))
            .collect()
    }

    #[test]
    fn each_replica_gets_its_own_rate() {
        let start = Instant::now();
        let mut rates = ReplicaRates::default();
        // a serves 10 calls a second, b 5; one flush a second.
        for second in 0..=10u64 {
            let at = start + Duration::from_secs(second);
            rates.record(at, "rng", counts(&[("a", 10 * second), ("b", 5 * second)]));
        }
        let report = rates.report(start + Duration::from_secs(10));
        let rng: Vec<(&str, f64)> = report["rng"]
            .iter()
            .map(|replica| (replica.name.as_str(), replica.rate))
            .collect();
        assert_eq!(rng, [("a", 10.0), ("b", 5.0)]);
        assert!(report["hasher"].is_empty(), "every service is reported");
    }

    #[test]
    fn a_replica_that_never_moves_is_not_shown() {
        let start = Instant::now();
        let mut rates = ReplicaRates::default();
        for second in 0..3 {
            let at = start + Duration::from_secs(second);
            rates.record(at, "rng", counts(&[("gone", 42)]));
            assert!(rates.report(at)["rng"].is_empty());
        }
    }

    #[test]
    fn a_replica_that_stops_leaves_after_the_window() {
        let start = Instant::now();
        let mut rates = ReplicaRates::default();
        for second in 0..=30u64 {
            let at = start + Duration::from_secs(second);
            // b stops serving after 5 s.
            let b = 10 * second.min(5);
            rates.record(at, "rng", counts(&[("a", 10 * second), ("b", b)]));
            let names: Vec<String> = rates.report(at)["rng"]
                .iter()
                .map(|replica| replica.name.clone())
                .collect();
            let expected: &[&str] = match second {
                0 => &[],
                1..=15 => &["a", "b"],
                _ => &["a"],
            };
            assert_eq!(names, expected, "at {second} s");
        }
    }
}
