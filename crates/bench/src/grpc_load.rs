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
    /// Tokio worker threads of the client (1 = a current-thread runtime).
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

/// Runs `load` on a runtime of its own and returns what it measured.
pub fn measure(load: &Load, progress: Arc<Progress>) -> anyhow::Result<Report> {
    let runtime = if load.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(load.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(run(load.clone(), progress))
}

/// One stream's outcome: its histogram of latencies inside the window, and its errors.
struct Stream {
    latencies: Histogram<u64>,
    errors: u64,
}

async fn run(load: Load, progress: Arc<Progress>) -> anyhow::Result<Report> {
    let mut channels = Vec::new();
    for _ in 0..load.connections.max(1) {
        let channel = Endpoint::from_shared(load.url.clone())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .timeout(CALL_DEADLINE)
            .connect()
            .await
            .with_context(|| format!("connect to {}", load.url))?;
        channels.push(channel);
    }
    let started = Instant::now();
    let window_start = started + load.warmup;
    let end = window_start + load.window;
    let mut streams = tokio::task::JoinSet::new();
    for stream in 0..load.streams.max(1) {
        let channel = channels[stream % channels.len()].clone();
        let progress = progress.clone();
        streams.spawn(call_until(load.rpc, channel, window_start, end, progress));
    }
    let mut latencies = histogram();
    let mut errors = 0;
    while let Some(stream) = streams.join_next().await {
        let stream = stream??;
        latencies.add(&stream.latencies)?;
        errors += stream.errors;
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
