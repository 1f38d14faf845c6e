//! HTTP load with wrk, as the targets in docs/BENCHMARKS.md are stated: `wrk -t2 -c16 --latency`,
//! and its report parsed.
//!
//! wrk is a closed loop (each connection sends its next request when the answer arrives), like
//! the gRPC load generator, so the two protocols are measured the same way.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::process;

/// wrk's threads and connections (`-t2 -c16`, the load the targets are stated for).
pub const THREADS: u32 = 2;
pub const CONNECTIONS: u32 = 16;

/// What one wrk run measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// Non-2xx answers and socket errors (connect, read, write, timeout).
    pub errors: u64,
}

/// The wrk command for `url` over `duration`, with an optional Lua `script` (for a POST).
pub fn command(url: &str, duration: Duration, script: Option<&Path>) -> Command {
    let mut command = Command::new("wrk");
    command
        .arg(format!("-t{THREADS}"))
        .arg(format!("-c{CONNECTIONS}"))
        // wrk takes whole seconds (no `ms` unit).
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .args(["--timeout", "2s", "--latency"]);
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    command.arg(url);
    command
}

/// Runs wrk to completion and parses its report.
pub fn run(url: &str, duration: Duration, script: Option<&Path>) -> anyhow::Result<Report> {
    let stdout = process::stdout_of(command(url, duration, script), url)?;
    parse(&stdout).with_context(|| format!("cannot read wrk's report:\n{stdout}"))
}

/// The Lua script that makes wrk POST `body`.
pub fn post_script(body: &str) -> String {
    format!(
        "wrk.method = \"POST\"\nwrk.body = \"{body}\"\nwrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n"
    )
}

/// Parses the report `wrk --latency` prints.
pub fn parse(report: &str) -> anyhow::Result<Report> {
    let percentile = |label: &str| -> anyhow::Result<f64> {
        let line = report
            .lines()
            .map(str::trim)
            .find(|line| line.starts_with(label))
            .with_context(|| format!("no {label} latency"))?;
        let value = line[label.len()..].trim();
        duration_ms(value).with_context(|| format!("latency {value:?}"))
    };
    let rps = report
        .lines()
        .find_map(|line| line.trim().strip_prefix("Requests/sec:"))
        .context("no Requests/sec")?
        .trim()
        .parse()?;
    let requests = report
        .lines()
        .find_map(|line| line.trim().split_once(" requests in "))
        .context("no request count")?
        .0
        .parse()?;
    let non_2xx: u64 = report
        .lines()
        .find_map(|line| line.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .map_or(Ok(0), |count| count.trim().parse())?;
    // "Socket errors: connect 0, read 0, write 0, timeout 0"
    let socket_errors: u64 = report
        .lines()
        .find_map(|line| line.trim().strip_prefix("Socket errors:"))
        .map(|counts| {
            counts
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Ok(Report {
        rps,
        p50_ms: percentile("50%")?,
        p90_ms: percentile("90%")?,
        p99_ms: percentile("99%")?,
        requests,
        errors: non_2xx + socket_errors,
    })
}

/// `102.00us`, `1.23ms`, `2.00s` or `1.50m` in milliseconds (wrk's and h2load's units).
pub(crate) fn duration_ms(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(number * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 2s test @ http://127.0.0.1:40123/32
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   501.20us  300.10us   9.87ms   90.00%
    Req/Sec    15.10k     1.20k   17.00k    70.00%
  Latency Distribution
     50%  420.00us
     75%  600.00us
     90%  800.00us
     99%    1.52ms
  60123 requests in 2.00s, 7.12MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  30061.50
Transfer/sec:      3.56MB
";

    #[test]
    fn reads_throughput_percentiles_and_errors() {
        let report = parse(REPORT).unwrap();
        assert_eq!(
            report,
            Report {
                rps: 30061.5,
                p50_ms: 0.42,
                p90_ms: 0.8,
                p99_ms: 1.52,
                requests: 60123,
                errors: 7,
            }
        );
    }

    #[test]
    fn a_clean_run_has_no_errors() {
        let clean: String = REPORT
            .lines()
            .filter(|line| !line.contains("errors") && !line.contains("Non-2xx"))
            .map(|line| format!("{line}\n"))
            .collect();
        assert_eq!(parse(&clean).unwrap().errors, 0);
    }

    #[test]
    fn a_report_without_percentiles_is_refused() {
        assert!(parse("Requests/sec: 10\n").is_err());
    }

    #[test]
    fn reads_every_unit_wrk_prints() {
        assert_eq!(duration_ms("250.00us"), Some(0.25));
        assert_eq!(duration_ms("2.00s"), Some(2000.0));
        assert_eq!(duration_ms("1.50m"), Some(90_000.0));
        assert_eq!(duration_ms("12"), None);
    }
}
