//! gRPC load with h2load (nghttp2's HTTP/2 load tool): `h2load -t2 -c2 -m32`, the same load on
//! rng and on the bare tonic server, so that the ratio between them is what rng's layers cost.
//!
//! h2load knows nothing of gRPC: it POSTs a file. The file is one length-prefixed gRPC message
//! (a zero compression flag, the length as 4 big-endian bytes, the protobuf), sent with
//! `content-type: application/grpc` and `te: trailers`. It counts HTTP statuses only, and gRPC
//! sends its status in trailers with HTTP 200, so a refused call would count as a success: the
//! harness makes one real tonic call first to prove the path works, and [`parse`] counts calls
//! as errors when the data received falls short of a whole answer per call (a refusal carries
//! none; h2load counts the warm-up's data too, so this catches a server refusing most calls).
//!
//! h2load prints no percentiles (only min, max, mean and deviation), so its rows have a rate and
//! no p50/p90/p99.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use dockercoins::rng::v1::{GenerateRequest, GenerateResponse};
use prost::Message;

/// Threads, connections and streams per connection: 64 calls in flight, as the gRPC rows.
pub const THREADS: u32 = 2;
pub const CONNECTIONS: u32 = 2;
pub const STREAMS: u32 = 32;

/// The bytes one Generate asks for.
const SIZE: u32 = 32;

/// The gRPC path of rng's Generate.
const GENERATE_PATH: &str = "/dockercoins.rng.v1.RngService/Generate";

/// What one h2load run measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    pub rps: f64,
    /// Mean time per call (h2load's only central figure).
    pub mean_ms: f64,
    pub requests: u64,
    /// Calls that failed, errored, timed out, answered other than 2xx, or without a message.
    pub errors: u64,
}

/// `message` framed as one gRPC message: flag 0 (not compressed), the length, the bytes.
pub fn grpc_frame(message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(0);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// The request body of a `Generate(32)`.
pub fn generate_body() -> Vec<u8> {
    grpc_frame(&GenerateRequest { size: SIZE })
}

/// The size of a `Generate(32)` answer as framed on the wire: what every answer's data must
/// reach.
fn generate_answer_len() -> u64 {
    grpc_frame(&GenerateResponse {
        data: vec![0; SIZE as usize],
    })
    .len() as u64
}

/// Runs h2load on Generate at `url` (`http://127.0.0.1:port`) for `window` after `warmup`,
/// POSTing the file at `body` (see [`generate_body`]), and parses its report.
pub fn run(url: &str, body: &Path, warmup: Duration, window: Duration) -> anyhow::Result<Report> {
    let url = format!("{url}{GENERATE_PATH}");
    let mut command = Command::new("h2load");
    command
        .arg(format!("-t{THREADS}"))
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-m{STREAMS}"))
        .arg(format!("--duration={}ms", window.as_millis().max(1)))
        .arg(format!("--warm-up-time={}ms", warmup.as_millis().max(1)))
        .arg("--data")
        .arg(body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg(&url);
    let stdout = crate::process::stdout_of(command, &url)?;
    let report =
        parse(&stdout).with_context(|| format!("cannot read h2load's report:\n{stdout}"))?;
    if report.requests == 0 {
        bail!("h2load {url} completed no call:\n{stdout}");
    }
    Ok(report)
}

/// Parses h2load's report; `errors` counts every call that was not a 2xx with a whole answer.
pub fn parse(report: &str) -> anyhow::Result<Report> {
    let line = |prefix: &str| {
        report
            .lines()
            .map(str::trim)
            .find_map(|line| line.strip_prefix(prefix))
            .with_context(|| format!("no {prefix:?} line"))
    };
    // "finished in 10.00s, 130000.00 req/s, 5.91MB/s"
    let rps: f64 = line("finished in")?
        .split(", ")
        .find_map(|part| part.strip_suffix(" req/s"))
        .context("no req/s")?
        .parse()?;
    // "requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout"
    let requests = counts(line("requests:")?);
    // "status codes: 100 2xx, 0 3xx, 0 4xx, 0 5xx"
    let statuses = counts(line("status codes:")?);
    // "traffic: 6.09MB (6381904) total, 1.24MB (1302000) headers (space savings 95.24%), 2.90MB (3042000) data"
    let data: u64 = line("traffic:")?
        .split(", ")
        .find(|part| part.ends_with(" data"))
        .and_then(|part| part.split_once('(')?.1.split_once(')'))
        .context("no data bytes")?
        .0
        .parse()?;
    // "time for request:      111us     12.34ms       489us       210us    75.00%" (min max mean sd)
    let mean = line("time for request:")?
        .split_whitespace()
        .nth(2)
        .and_then(crate::wrk::duration_ms)
        .context("no mean time for request")?;
    let count = |counts: &[(String, u64)], name: &str| {
        counts
            .iter()
            .find(|(label, _)| label == name)
            .map(|(_, n)| *n)
            .with_context(|| format!("no {name} count"))
    };
    let done = count(&requests, "done")?;
    let ok = count(&statuses, "2xx")?;
    let answered = data / generate_answer_len();
    // h2load counts `errored` (network failures, resets) within `failed`; `timeout` alone.
    let failed = count(&requests, "failed")? + count(&requests, "timeout")?;
    let unanswered = done.saturating_sub(ok).max(done.saturating_sub(answered));
    Ok(Report {
        rps,
        mean_ms: mean,
        requests: done,
        errors: failed.max(unanswered),
    })
}

/// `100 total, 0 failed` → `[("total", 100), ("failed", 0)]`.
fn counts(line: &str) -> Vec<(String, u64)> {
    line.split(',')
        .filter_map(|part| {
            let (n, label) = part.trim().split_once(' ')?;
            Some((label.trim().to_string(), n.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "starting benchmark...
spawning thread #0: 1 total client(s). Timing-based test with 1s of warm-up time and 2s of main duration for measurements.
Main benchmark duration is over for thread #0. Stopping all clients.

finished in 2.00s, 130000.50 req/s, 5.91MB/s
requests: 260001 total, 260065 started, 260001 done, 260001 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 260001 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 12.09MB (12681904) total, 1.24MB (1302000) headers (space savings 95.24%), 9.67MB (10140039) data
                     min         max         mean         sd        +/- sd
time for request:      111us     12.34ms       489us       210us    75.00%
time for connect:      101us       120us       110us         9us   100.00%
";

    #[test]
    fn frames_a_generate_as_one_grpc_message() {
        assert_eq!(generate_body(), [0, 0, 0, 0, 2, 0x08, 32]);
        assert_eq!(generate_answer_len(), 5 + 2 + 32);
    }

    #[test]
    fn reads_the_rate_the_mean_and_a_clean_run() {
        let report = parse(REPORT).unwrap();
        assert_eq!(
            report,
            Report {
                rps: 130000.5,
                mean_ms: 0.489,
                requests: 260001,
                errors: 0,
            }
        );
    }

    #[test]
    fn counts_failures_and_answers_without_a_message_as_errors() {
        let failed = REPORT.replace(
            "260001 succeeded, 0 failed, 0 errored",
            "259990 succeeded, 11 failed, 3 errored",
        );
        assert_eq!(parse(&failed).unwrap().errors, 11);
        // HTTP 200 with a gRPC error in the trailers: counted a success by h2load, no data.
        let refused = REPORT.replace("(10140039) data", "(39) data");
        assert_eq!(parse(&refused).unwrap().errors, 260000);
    }

    #[test]
    fn a_report_without_counts_is_refused() {
        assert!(parse("finished in 2.00s, 10.00 req/s, 1MB/s\n").is_err());
    }
}
