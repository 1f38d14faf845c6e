//! The soak run (`scripts/bench --soak 600`): one turbo worker flat out for minutes, at the
//! bench's difficulty, against a Redis run as deployed, to show that Redis's memory stays under
//! its `maxmemory` and that the rate does not fall as the wallet and the append-only file grow.
//!
//! Every [`INTERVAL`] it reads `hashes`, the coins (`HLEN wallet`) and `INFO memory`, and prints
//! one line; at the end, a summary with the verdicts, also written to `soak.json`. The verdicts
//! are reported, not asserted: a benchmark prints numbers.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::run::{DIFFICULTY, Options, Stack};

/// Time between two readings.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// The rate at the end may be this much below the rate at the start and still count as steady:
/// two shared cores wander by a few percent from minute to minute.
const STEADY: f64 = 0.9;

/// One reading.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reading {
    /// Seconds since the first reading.
    pub at_s: f64,
    pub hashes: u64,
    pub coins: u64,
    /// Hashes per second since the previous reading.
    pub rate: f64,
    /// Bytes that count against `maxmemory` (`used_memory` less `mem_not_counted_for_evict`).
    pub used_bytes: u64,
    pub maxmemory_bytes: u64,
}

/// What the soak run found.
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub concurrency: u32,
    pub batch: u32,
    pub difficulty: u8,
    pub readings: Vec<Reading>,
    /// Highest share of `maxmemory` used.
    pub peak_memory_share: f64,
    /// Mean rate over the last minute over the mean rate over the first.
    pub rate_last_over_first: f64,
    /// Redis stayed under its `maxmemory`.
    pub memory_ok: bool,
    /// The rate did not fall (see [`STEADY`]).
    pub rate_ok: bool,
}

struct Probe {
    connection: redis::Connection,
}

impl Probe {
    fn connect(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let connection = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .with_context(|| format!("connect to {url}"))?;
        Ok(Self { connection })
    }

    /// hashes, coins, used bytes, maxmemory.
    fn read(&mut self) -> anyhow::Result<(u64, u64, u64, u64)> {
        let (hashes, coins): (Option<u64>, u64) = redis::pipe()
            .get(ledger::HASHES)
            .hlen(ledger::WALLET)
            .query(&mut self.connection)?;
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query(&mut self.connection)?;
        let field = |name: &str| -> u64 {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0)
        };
        let used = field("used_memory").saturating_sub(field("mem_not_counted_for_evict"));
        Ok((hashes.unwrap_or(0), coins, used, field("maxmemory")))
    }
}

/// Runs the stack with one worker (`concurrency` call pairs of `batch` units in flight) for
/// `duration`, reading Redis every [`INTERVAL`].
pub fn soak(
    options: &Options,
    (concurrency, batch): (u32, u32),
    duration: Duration,
) -> anyhow::Result<Summary> {
    let logs = options.out_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    let stack = Stack::start(options, &logs)?;
    let mut worker = stack.worker(options, &logs, (concurrency, batch), "0s")?;
    let mut probe = Probe::connect(&stack.redis_url)?;
    eprintln!(
        "bench soak: {concurrency}x{batch} at difficulty {DIFFICULTY} for {duration:?}, a line every {INTERVAL:?}"
    );
    println!("| s | hashes | hashes/s | coins | Redis MiB | of maxmemory |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let start = Instant::now();
    let mut readings: Vec<Reading> = Vec::new();
    let mut previous: Option<(Instant, u64)> = None;
    while start.elapsed() <= duration {
        let (hashes, coins, used, maxmemory) = probe.read()?;
        let now = Instant::now();
        let rate = previous.map_or(0.0, |(at, before)| {
            (hashes - before) as f64 / (now - at).as_secs_f64()
        });
        previous = Some((now, hashes));
        let reading = Reading {
            at_s: (now - start).as_secs_f64(),
            hashes,
            coins,
            rate,
            used_bytes: used,
            maxmemory_bytes: maxmemory,
        };
        println!(
            "| {:.0} | {} | {:.0} | {} | {:.1} | {:.1}% |",
            reading.at_s,
            hashes,
            rate,
            coins,
            used as f64 / 1048576.0,
            share(&reading) * 100.0
        );
        readings.push(reading);
        std::thread::sleep(INTERVAL.saturating_sub(now.elapsed()));
    }
    worker.terminate()?;
    let summary = summarize(concurrency, batch, readings);
    let out = options.out_dir.join("soak.json");
    std::fs::write(&out, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("write {}", out.display()))?;
    println!(
        "\npeak Redis memory {:.1}% of maxmemory ({}); rate over the last minute {:.1}% of the first ({})",
        summary.peak_memory_share * 100.0,
        if summary.memory_ok {
            "under"
        } else {
            "AT THE LIMIT"
        },
        summary.rate_last_over_first * 100.0,
        if summary.rate_ok { "steady" } else { "FELL" },
    );
    eprintln!("bench soak: wrote {}", display(&out));
    Ok(summary)
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

fn share(reading: &Reading) -> f64 {
    if reading.maxmemory_bytes == 0 {
        0.0
    } else {
        reading.used_bytes as f64 / reading.maxmemory_bytes as f64
    }
}

/// The verdicts: memory stayed under the limit; the last minute's mean rate is within
/// [`STEADY`] of the first minute's (the first reading, which has no rate, left out).
pub fn summarize(concurrency: u32, batch: u32, readings: Vec<Reading>) -> Summary {
    let peak = readings.iter().map(share).fold(0.0, f64::max);
    let rated: Vec<&Reading> = readings.iter().skip(1).collect();
    let per_minute = (60.0 / INTERVAL.as_secs_f64()).round() as usize;
    let mean = |part: &[&Reading]| {
        part.iter().map(|reading| reading.rate).sum::<f64>() / part.len().max(1) as f64
    };
    let take = per_minute.min(rated.len());
    let first = mean(&rated[..take]);
    let last = mean(&rated[rated.len() - take..]);
    let ratio = if first > 0.0 { last / first } else { 0.0 };
    Summary {
        concurrency,
        batch,
        difficulty: DIFFICULTY,
        readings,
        peak_memory_share: peak,
        rate_last_over_first: ratio,
        memory_ok: peak < 1.0,
        rate_ok: ratio >= STEADY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at_s: f64, rate: f64, used_bytes: u64) -> Reading {
        Reading {
            at_s,
            hashes: 0,
            coins: 0,
            rate,
            used_bytes,
            maxmemory_bytes: 100,
        }
    }

    #[test]
    fn a_steady_run_under_the_limit_passes_both_verdicts() {
        let readings = (0..20)
            .map(|n| reading(n as f64 * 10.0, 1000.0 - n as f64, 50 + n))
            .collect();
        let summary = summarize(4, 256, readings);
        assert!(summary.memory_ok && summary.rate_ok, "{summary:?}");
        assert!((summary.peak_memory_share - 0.69).abs() < 1e-9);
    }

    #[test]
    fn a_falling_rate_or_a_full_redis_is_reported() {
        let readings = (0..20)
            .map(|n| reading(n as f64 * 10.0, 1000.0 - 50.0 * n as f64, 90 + n))
            .collect();
        let summary = summarize(4, 256, readings);
        assert!(!summary.rate_ok, "{summary:?}");
        assert!(!summary.memory_ok, "{summary:?}");
    }
}
