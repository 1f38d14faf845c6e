//! A gRPC load generator: rng `Generate` or hasher `Hash` unary calls, from N concurrent streams
//! over a few HTTP/2 connections, timed into an HDR histogram.
//!
//! It uses the same generated tonic client as the worker, so it measures what a real caller sees.
//! Each stream is a closed loop (send, await the answer, send again), as wrk's connections are.
//! Only calls that complete inside the steady window count, both for the rate and the latency;
//! the warm-up before it lets connections open and the servers' allocators settle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use dockercoins::hasher::v1::HashRequest;
use dockercoins::hasher::v1::hasher_service_client::HasherServiceClient;
use dockercoins::rng::v1::GenerateRequest;
use dockercoins::rng::v1::rng_service_client::RngServiceClient;
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};

/// Which unary RPC to call.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rpc {
    /// `dockercoins.rng.v1.RngService/Generate` of 32 bytes.
    Rng,
    /// `dockercoins.hasher.v1.HasherService/Hash` of 32 bytes.
    Hasher,
}

/// Bytes asked of rng and sent to hasher per call, as the worker does.
const PAYLOAD: usize = 32;
/// Deadline of one call: far above any latency worth measuring, so it only ends hung calls.
const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// Latencies up to a minute, in microseconds, to three significant digits.
const HISTOGRAM_MAX_US: u64 = 60_000_000;

/// One load run.
#[derive(Debug, Clone)]
pub struct Load {
    pub rpc: Rpc,
    /// `http://127.0.0.1:port`
    pub url: String,
    /// Calls in flight at once.
    pub streams: usize,
    /// HTTP/2 connections the streams are spread over.
    pub connections: usize,
    /// Threads of the client, each a current-thread runtime with its share of the connections
    /// and streams (at most one thread per connection).
    pub threads: usize,
    pub warmup: Duration,
    pub window: Duration,
}

/// What one run measured, over the steady window.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub requests: u64,
    /// Failed calls and wrong answers (a short read from rng, a digest that is not 64 hex).
    pub errors: u64,
}

/// Shared with whoever watches a run in the background: calls done so far, and a stop switch.
#[derive(Debug, Default)]
pub struct Progress {
    pub completed: AtomicU64,
    pub stop: AtomicBool,
}

/// Runs `load` and returns what it measured.
///
/// The load is split into shards, one per thread, each a current-thread runtime with its own
/// connections and streams (as h2load's `-t` splits its clients). A thread polling its own
/// HTTP/2 connection spends less CPU per call than a multi-thread scheduler (about 15 µs here,
/// from 20; `mesh::runtime` has the server's side), and on two shared cores the client's CPU is
/// what the server does not get.
pub fn measure(load: &Load, progress: Arc<Progress>) -> anyhow::Result<Report> {
    let shards = load.shards();
    // One schedule for every shard; connecting is part of the warm-up.
    let window_start = Instant::now() + load.warmup;
    let end = window_start + load.window;
    let outcomes = std::thread::scope(|scope| {
        let running: Vec<_> = (0..shards)
            .map(|shard| {
                let (load, progress) = (load.clone(), progress.clone());
                scope.spawn(move || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?
                        .block_on(run_shard(load, shard, window_start, end, progress))
                })
            })
            .collect();
        running
            .into_iter()
            .map(|shard| shard.join().expect("a load thread panicked"))
            .collect::<Vec<anyhow::Result<Stream>>>()
    });
    let mut latencies = histogram();
    let mut errors = 0;
    for outcome in outcomes {
        let outcome = outcome?;
        latencies.add(&outcome.latencies)?;
        errors += outcome.errors;
    }
    let ms = |quantile: f64| latencies.value_at_quantile(quantile) as f64 / 1000.0;
    Ok(Report {
        rps: latencies.len() as f64 / load.window.as_secs_f64(),
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: latencies.max() as f64 / 1000.0,
        requests: latencies.len(),
        errors,
    })
}

/// One `Generate(32)` to rng at `url`, on a connection of its own; checks the answer's size.
pub fn generate_once(url: &str) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let channel = Endpoint::from_shared(url.to_string())?
                .connect_timeout(Duration::from_secs(2))
                .timeout(CALL_DEADLINE)
                .connect()
                .await
                .with_context(|| format!("connect to {url}"))?;
            let answer = RngServiceClient::new(channel)
                .generate(GenerateRequest {
                    size: PAYLOAD as u32,
                })
                .await?;
            let got = answer.get_ref().data.len();
            anyhow::ensure!(got == PAYLOAD, "asked {PAYLOAD} bytes, got {got}");
            Ok(())
        })
}

impl Load {
    /// Threads the load runs on: at most one per connection, at least one.
    pub fn shards(&self) -> usize {
        self.threads.min(self.connections).max(1)
    }

    /// How many of `total` (connections or streams) shard `shard` of `shards` takes: the
    /// remainder goes to the first shards.
    fn share(total: usize, shard: usize, shards: usize) -> usize {
        total / shards + usize::from(shard < total % shards)
    }
}

/// One stream's outcome, or a shard's: its histogram of latencies inside the window, and its
/// errors.
struct Stream {
    latencies: Histogram<u64>,
    errors: u64,
}

/// Shard `shard` of `load`: its share of the connections and streams, on the calling runtime.
async fn run_shard(
    load: Load,
    shard: usize,
    window_start: Instant,
    end: Instant,
    progress: Arc<Progress>,
) -> anyhow::Result<Stream> {
    let shards = load.shards();
    let mut channels = Vec::new();
    for _ in 0..Load::share(load.connections.max(1), shard, shards) {
        let channel = Endpoint::from_shared(load.url.clone())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .timeout(CALL_DEADLINE)
            .connect()
            .await
            .with_context(|| format!("connect to {}", load.url))?;
        channels.push(channel);
    }
    let mut streams = tokio::task::JoinSet::new();
    for stream in 0..Load::share(load.streams.max(1), shard, shards) {
        let channel = channels[stream % channels.len()].clone();
        let progress = progress.clone();
        streams.spawn(call_until(load.rpc, channel, window_start, end, progress));
    }
    let mut outcome = Stream {
        latencies: histogram(),
        errors: 0,
    };
    while let Some(stream) = streams.join_next().await {
        let stream = stream??;
        outcome.latencies.add(&stream.latencies)?;
        outcome.errors += stream.errors;
    }
    Ok(outcome)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("valid histogram bounds")
}

/// One stream: calls back to back until `end` (or the stop switch), timing those that complete
/// inside `[window_start, end)`.
async fn call_until(
    rpc: Rpc,
    channel: Channel,
    window_start: Instant,
    end: Instant,
    progress: Arc<Progress>,
) -> anyhow::Result<Stream> {
    let mut rng = RngServiceClient::new(channel.clone());
    let mut hasher = HasherServiceClient::new(channel);
    let data = vec![0x5a; PAYLOAD];
    let mut stream = Stream {
        latencies: histogram(),
        errors: 0,
    };
    while Instant::now() < end && !progress.stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let ok = match rpc {
            Rpc::Rng => rng
                .generate(GenerateRequest {
                    size: PAYLOAD as u32,
                })
                .await
                .is_ok_and(|answer| answer.get_ref().data.len() == PAYLOAD),
            Rpc::Hasher => hasher
                .hash(HashRequest { data: data.clone() })
                .await
                .is_ok_and(|answer| answer.get_ref().digest.len() == 64),
        };
        let done = Instant::now();
        progress.completed.fetch_add(1, Ordering::Relaxed);
        if !ok {
            stream.errors += 1;
            // A server that went away fails calls at once: do not spin on it.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        if sent >= window_start && done < end {
            let micros = (done - sent).as_micros().max(1) as u64;
            stream.latencies.saturating_record(micros);
        }
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_connections_and_streams_without_losing_any() {
        let load = Load {
            rpc: Rpc::Rng,
            url: String::new(),
            streams: 65,
            connections: 3,
            threads: 2,
            warmup: Duration::ZERO,
            window: Duration::ZERO,
        };
        assert_eq!(load.shards(), 2);
        let shares = |total| [Load::share(total, 0, 2), Load::share(total, 1, 2)];
        assert_eq!(shares(65), [33, 32]);
        assert_eq!(shares(3), [2, 1]);
        // Never more threads than connections.
        let one = Load {
            connections: 1,
            streams: 1,
            ..load
        };
        assert_eq!(one.shards(), 1);
        assert_eq!(Load::share(1, 0, 1), 1);
    }
}
