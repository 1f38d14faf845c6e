//! Side by side: the same measurements of two builds, taken in one run, in one table.
//!
//! A change on the request path is judged against the commit before it on the same machine in
//! the same hour: across days the host's load moves every rate by more than the change does (see
//! docs/BENCHMARKS.md). `scripts/bench-compare REV` builds both, runs `bench run --quick` on each
//! in turn (before, after, before, after, …) so that a drift in the machine hits both alike, and
//! hands the result files to [`table`], which reports each measure's median per build and the
//! ratio after/before.

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// A measure to compare: its key in results.json, and whether more is better.
struct Measure {
    key: String,
    higher_is_better: bool,
}

/// The measures every `results.json` has: the turbo rate, each load's rate and p99, the ratios
/// to the floor, and each service's memory idle and at its peak.
fn measures(sample: &Value) -> Vec<Measure> {
    let mut measures = vec![Measure {
        key: "turbo_hashes_per_s".into(),
        higher_is_better: true,
    }];
    if let Some(object) = sample.as_object() {
        let mut keys: Vec<&String> = object.keys().collect();
        keys.sort();
        for key in keys {
            // Rates, and rng's rate over the floor's (`rng_grpc_vs_bare_tonic`).
            if key.ends_with("_rps") || key.contains("_vs_bare_") {
                measures.push(Measure {
                    key: key.clone(),
                    higher_is_better: true,
                });
            } else if key.ends_with("_p99_ms") {
                measures.push(Measure {
                    key: key.clone(),
                    higher_is_better: false,
                });
            }
        }
    }
    for memory in ["rss_idle_mib", "rss_mib"] {
        if let Some(services) = sample[memory].as_object() {
            for service in services.keys() {
                measures.push(Measure {
                    key: format!("{memory}.{service}"),
                    higher_is_better: false,
                });
            }
        }
    }
    measures
}

/// The number at `key` (`a.b` descends into objects).
fn number(results: &Value, key: &str) -> Option<f64> {
    key.split('.')
        .try_fold(results, |value, part| value.get(part))
        .and_then(Value::as_f64)
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// Reads every `results.json` in `dirs`.
pub fn load(dirs: &[impl AsRef<Path>]) -> anyhow::Result<Vec<Value>> {
    dirs.iter()
        .map(|dir| {
            let path = dir.as_ref().join("results.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("read {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
        })
        .collect()
}

/// The markdown table of `before` against `after` (several runs of each): per measure, the
/// median of each, the ratio, and whether the change is within `tolerance` (0.05 = 5%) of
/// `before` in the bad direction.
pub fn table(labels: (&str, &str), before: &[Value], after: &[Value], tolerance: f64) -> String {
    let mut out = format!(
        "| measure | {} (median of {}) | {} (median of {}) | after / before | within {:.0}% |\n|---|---|---|---|---|\n",
        labels.0,
        before.len(),
        labels.1,
        after.len(),
        tolerance * 100.0
    );
    let Some(sample) = after.first().or(before.first()) else {
        return out;
    };
    for measure in measures(sample) {
        let of = |runs: &[Value]| {
            median(
                runs.iter()
                    .filter_map(|r| number(r, &measure.key))
                    .collect(),
            )
        };
        let (Some(old), Some(new)) = (of(before), of(after)) else {
            continue;
        };
        let ratio = if old == 0.0 { f64::NAN } else { new / old };
        let ok = if measure.higher_is_better {
            ratio >= 1.0 - tolerance
        } else {
            ratio <= 1.0 + tolerance
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.3} | {} |\n",
            measure.key,
            shown(old),
            shown(new),
            ratio,
            if ok { "yes" } else { "no" }
        ));
    }
    out
}

fn shown(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn medians_ratios_and_the_tolerance_in_the_bad_direction() {
        let run = |turbo: f64, p99: f64, rss: f64| {
            json!({"turbo_hashes_per_s": turbo, "rng_http_rps": turbo, "rng_http_p99_ms": p99,
                   "rss_idle_mib": {"rng": rss / 2.0}, "rss_mib": {"rng": rss}})
        };
        let before = [
            run(100.0, 1.0, 10.0),
            run(110.0, 1.0, 10.0),
            run(90.0, 1.0, 10.0),
        ];
        let after = [
            run(96.0, 1.2, 9.0),
            run(97.0, 1.2, 9.0),
            run(94.0, 1.2, 9.0),
        ];
        let table = table(("before", "after"), &before, &after, 0.05);
        assert!(
            table.contains("| turbo_hashes_per_s | 100 | 96.00 | 0.960 | yes |"),
            "{table}"
        );
        assert!(
            table.contains("| rng_http_p99_ms | 1.00 | 1.20 | 1.200 | no |"),
            "{table}"
        );
        assert!(
            table.contains("| rss_mib.rng | 10.00 | 9.00 | 0.900 | yes |"),
            "{table}"
        );
        assert!(
            table.contains("| rss_idle_mib.rng | 5.00 | 4.50 | 0.900 | yes |"),
            "{table}"
        );
    }
}
