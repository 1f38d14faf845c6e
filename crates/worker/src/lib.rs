//! worker: the miner. Asks rng for random bytes, hasher for their digest, and once a second adds
//! the units of work done to the Redis key `hashes` (coins go to the hash `wallet`).
//!
//! With the defaults, one unit takes 0.1 s of pause, 0.1 s in rng and 0.1 s in hasher: one worker
//! does about 3.33 units a second, as in the workshop. `WORKER_CONCURRENCY` runs several units at
//! once in one process, like several worker containers would.

pub mod flush;
pub mod golden;
pub mod mine;
pub mod retry;
pub mod tally;

use std::net::SocketAddr;
use std::time::Duration;

use dockercoins::hasher::v1::hasher_service_client::HasherServiceClient;
use dockercoins::rng::v1::rng_service_client::RngServiceClient;
use mesh::client::balance::{self, Balanced, Policy};
use mesh::client::discovery::{self, ChannelSettings, Endpoints, parse_endpoints};
use tokio::task::AbortHandle;
use tracing::info;

use crate::flush::Flusher;
use crate::mine::Backends;
use crate::tally::Tally;

/// worker's configuration: every field is a flag and an environment variable.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "worker",
    version,
    about = "DockerCoins worker: mines coins with rng and hasher, counts them in Redis"
)]
pub struct Config {
    /// gRPC endpoint(s) of rng: a name behind which every replica is found (re-resolved every
    /// RNG_RESOLVE_INTERVAL), or a comma-separated list.
    #[arg(long, env = "RNG_ENDPOINT", default_value = "http://127.0.0.1:8001", value_parser = parse_endpoints)]
    pub rng_endpoint: Endpoints,
    /// gRPC endpoint(s) of hasher, like RNG_ENDPOINT.
    #[arg(long, env = "HASHER_ENDPOINT", default_value = "http://127.0.0.1:8002", value_parser = parse_endpoints)]
    pub hasher_endpoint: Endpoints,
    /// How often rng's name is resolved again to find replicas that came or went.
    #[arg(long, env = "RNG_RESOLVE_INTERVAL", default_value = "5s", value_parser = mesh::config::parse_interval)]
    pub rng_resolve_interval: Duration,
    /// How often hasher's name is resolved again.
    #[arg(long, env = "HASHER_RESOLVE_INTERVAL", default_value = "5s", value_parser = mesh::config::parse_interval)]
    pub hasher_resolve_interval: Duration,
    /// How calls are spread over the replicas: round_robin (in turn, failing or slow replicas
    /// ejected for a while; `p2c` is another name for it), least_request (the one with fewer
    /// calls in flight of two at random, likewise), pick_first (the pinning problem).
    #[arg(long, env = "WORKER_LB", default_value = "round_robin", value_enum)]
    pub lb: Policy,
    /// Redis holding the `hashes` counter and the `wallet`.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", value_parser = mesh::redis::parse_url)]
    pub redis_url: String,
    /// Pause between units of work ("0s" = none).
    #[arg(long, env = "WORKER_DELAY", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub delay: Duration,
    /// Units of work in flight in this process.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Units of work per pair of calls: 1 is the workshop's (Generate 32 bytes, then Hash them);
    /// more asks rng for that many times 32 bytes and hashes them with one HashBatch call, each
    /// 32 bytes still one unit (turbo mode: far fewer calls per unit).
    #[arg(long, env = "WORKER_BATCH", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_BATCH as i64))]
    pub batch: u32,
    /// Leading hex zeros of a digest that make it a coin: 1 is the original's rule (one unit in
    /// 16); each step is 16 times rarer. Raise it when mining flat out, so that the wallet in
    /// Redis grows by a few coins a second rather than tens of thousands.
    #[arg(long, env = "WORKER_DIFFICULTY", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=MAX_DIFFICULTY as i64))]
    pub difficulty: u8,
    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "WORKER_ADMIN_LISTEN", default_value = "0.0.0.0:9000")]
    pub admin_listen: SocketAddr,
    /// Deadline of each call to rng or hasher (rng's queue alone can hold ten workers ~1 s).
    #[arg(long, env = "WORKER_RPC_TIMEOUT", default_value = "5s", value_parser = mesh::config::parse_interval)]
    pub rpc_timeout: Duration,
    /// Limits of every listener (`LISTEN_*`; see `mesh::server::limits`).
    #[command(flatten)]
    pub limits: mesh::Limits,
    /// `healthcheck` or `forward`, instead of serving.
    #[command(subcommand)]
    pub command: Option<mesh::Command>,
}

impl mesh::binary::ServiceConfig for Config {
    const PROBE: mesh::admin::command::Probe = mesh::admin::command::Probe::Http("/healthz");

    fn listen(&self) -> SocketAddr {
        self.admin_listen
    }

    fn admin_listen(&self) -> SocketAddr {
        self.admin_listen
    }

    fn limits(&self) -> &mesh::Limits {
        &self.limits
    }

    fn command(&self) -> Option<&mesh::Command> {
        self.command.as_ref()
    }
}

/// Largest `WORKER_DIFFICULTY`: 16 hex zeros is one digest in 2^64, already never.
pub const MAX_DIFFICULTY: u8 = 16;

/// Largest `WORKER_BATCH`: 32 KiB of random bytes per call, well under rng's and hasher's caps.
pub const MAX_BATCH: u32 = 1024;

/// Largest answer rng sends this worker: the random bytes for one batch, plus framing.
const RNG_MAX_ANSWER: usize = (mine::RANDOM_BYTES * MAX_BATCH) as usize + 64;

/// Largest answer hasher sends this worker: a digest (64 characters and 2 bytes of framing) per
/// unit of a batch.
const HASHER_MAX_ANSWER: usize = 66 * MAX_BATCH as usize + 64;

/// Largest request this worker sends: a HashBatch of one batch's random bytes, each item with up
/// to 3 bytes of framing (a GenerateRequest is a few bytes).
const MAX_REQUEST: usize = ((mine::RANDOM_BYTES + 3) * MAX_BATCH) as usize + 64;

/// Deadline to open a connection to one replica.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A channel that spreads calls over every serving replica behind `endpoints`, and the
/// discovery task that feeds it.
fn balanced(
    config: &Config,
    endpoints: &Endpoints,
    resolve_interval: Duration,
    shutdown: &mesh::Shutdown,
) -> (Balanced, AbortHandle) {
    let settings = ChannelSettings {
        connect_timeout: CONNECT_TIMEOUT,
        resolve_interval,
    };
    let (changes, discovery) = discovery::spawn(endpoints.clone(), settings, shutdown.clone());
    (
        balance::channel(config.lb, changes, config.rpc_timeout),
        discovery,
    )
}

/// Why the worker is not alive.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the discovery of {service} replicas has stopped")]
struct DiscoveryStopped {
    service: &'static str,
}

/// The worker's liveness: it cannot work once the discovery of rng or hasher has stopped (it only
/// stops on shutdown, so anything else is a bug that a restart fixes).
fn liveness(
    discoveries: [(&'static str, AbortHandle); 2],
    shutdown: mesh::Shutdown,
) -> impl Fn() -> Result<(), DiscoveryStopped> + Send + Sync + 'static {
    move || match discoveries.iter().find(|(_, task)| task.is_finished()) {
        Some(&(service, _)) if !shutdown.is_cancelled() => Err(DiscoveryStopped { service }),
        _ => Ok(()),
    }
}

/// Mines until `shutdown`, then flushes the count that is left, all within a second.
///
/// Serves the admin routes on `admin` meanwhile.
pub async fn run(
    config: Config,
    admin: tokio::net::TcpListener,
    shutdown: mesh::Shutdown,
) -> anyhow::Result<()> {
    let worker_id = format!("{}-{:016x}", mesh::hostname(), rand::random::<u64>());
    info!(
        worker_id,
        rng = %config.rng_endpoint,
        hasher = %config.hasher_endpoint,
        lb = ?config.lb,
        delay = ?config.delay,
        concurrency = config.concurrency,
        difficulty = config.difficulty,
        "worker starting"
    );
    mesh::telemetry::metrics::install();
    // One connection for the counts' flush, one for the golden metrics, one spare.
    let pool = mesh::redis::pool(&config.redis_url, 3)?;
    let (rng, rng_discovery) = balanced(
        &config,
        &config.rng_endpoint,
        config.rng_resolve_interval,
        &shutdown,
    );
    let (hasher, hasher_discovery) = balanced(
        &config,
        &config.hasher_endpoint,
        config.hasher_resolve_interval,
        &shutdown,
    );
    let backends = Backends {
        // Limits in both directions: a confused or hostile replica cannot make the worker buffer
        // more than one batch's answer (tonic's default decoding limit is 4 MiB).
        rng: RngServiceClient::new(rng)
            .max_decoding_message_size(RNG_MAX_ANSWER)
            .max_encoding_message_size(MAX_REQUEST),
        retries: retry::budget(),
        batch: config.batch,
        difficulty: config.difficulty,
        hasher: HasherServiceClient::new(hasher)
            .max_decoding_message_size(HASHER_MAX_ANSWER)
            .max_encoding_message_size(MAX_REQUEST),
        golden: std::sync::Arc::default(),
    };
    let admin_app = mesh::admin::Admin::new(shutdown.clone())
        .liveness(liveness(
            [("rng", rng_discovery), ("hasher", hasher_discovery)],
            shutdown.clone(),
        ))
        .router();
    let tally = std::sync::Arc::new(Tally::default());

    let mut miners = tokio::task::JoinSet::new();
    for _ in 0..config.concurrency {
        let (backends, tally, shutdown) = (backends.clone(), tally.clone(), shutdown.clone());
        miners.spawn(
            async move { mine::mine_forever(backends, config.delay, &tally, shutdown).await },
        );
    }
    let admin = {
        let (limits, shutdown) = (config.limits.clone(), shutdown.clone());
        tokio::spawn(async move { mesh::serve(admin, admin_app, &limits, shutdown).await })
    };
    // Golden metrics on their own task at the flush's pace, not inside the exactly-once flush:
    // they are best-effort, so a slow or failed send must neither delay nor retry the counts.
    let (golden_pool, golden_stats) = (pool.clone(), backends.golden.clone());
    let golden = {
        let (pool, golden, shutdown) = (pool.clone(), backends.golden.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(flush::FLUSH_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
                golden::send(&pool, &golden).await;
            }
        })
    };
    let mut flusher = Flusher::new(pool, &worker_id);
    flusher.run_until(&tally, &shutdown).await;
    // Miners return as soon as shutdown starts; once they are gone the tally no longer moves, and
    // the flusher has the rest of the second to land it.
    while miners.join_next().await.is_some() {}
    flusher
        .drain(&tally, mesh::server::shutdown::DRAIN_DEADLINE)
        .await;
    golden.await?;
    // The last second's calls, once the miners are gone; only if Redis just took the counts, so
    // that an outage does not stretch the shutdown past its second.
    if tally.is_empty() {
        golden::send(&golden_pool, &golden_stats).await;
    }
    admin.await??;
    info!("worker stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_worker_is_dead_once_a_discovery_stops_but_not_while_shutting_down() {
        let forever = || tokio::spawn(std::future::pending::<()>()).abort_handle();
        let rng = forever();
        let hasher = forever();
        let shutdown = mesh::Shutdown::new();
        let alive = liveness([("rng", rng.clone()), ("hasher", hasher)], shutdown.clone());
        assert_eq!(alive(), Ok(()));

        rng.abort();
        tokio::task::yield_now().await;
        let dead = alive().unwrap_err();
        assert_eq!(dead, DiscoveryStopped { service: "rng" });
        assert_eq!(
            dead.to_string(),
            "the discovery of rng replicas has stopped"
        );
        shutdown.cancel();
        assert_eq!(alive(), Ok(()), "discovery stops on shutdown, as it should");
    }

    #[test]
    fn the_largest_batch_fits_the_clients_message_limits() {
        use dockercoins::hasher::v1::{HashBatchRequest, HashBatchResponse};
        use dockercoins::rng::v1::GenerateResponse;
        use prost::Message;

        let units = MAX_BATCH as usize;
        let random = GenerateResponse {
            data: vec![0xff; mine::RANDOM_BYTES as usize * units],
        };
        assert!(random.encoded_len() <= RNG_MAX_ANSWER);
        let batch = HashBatchRequest {
            data: vec![vec![0xff; mine::RANDOM_BYTES as usize]; units],
        };
        assert!(batch.encoded_len() <= MAX_REQUEST);
        // A digest as hasher writes it: 64 hexadecimal characters.
        let digests = HashBatchResponse {
            digests: vec!["0".repeat(64); units],
        };
        assert!(digests.encoded_len() <= HASHER_MAX_ANSWER);
    }
}
