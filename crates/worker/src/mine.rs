//! One unit of work, and the loop that repeats it.
//!
//! A unit asks rng for 32 random bytes, asks hasher for their SHA-256 and, when the digest starts
//! with `WORKER_DIFFICULTY` zeros (one by default, as in the original), has found a coin. In turbo mode (`WORKER_BATCH` > 1) one pair of calls does many
//! units: rng gives that many times 32 bytes, and hasher's HashBatch hashes each 32 on its own. The loop pauses `WORKER_DELAY` between units, as the original did,
//! and when rng or hasher fails it logs, backs off (capped at one second) and tries again: a
//! worker never hangs and never exits because a dependency is down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tower::retry::budget::TpsBudget;

use backon::{BackoffBuilder, ExponentialBuilder};
use dockercoins::hasher::v1::hasher_service_client::HasherServiceClient;
use dockercoins::hasher::v1::hasher_service_server;
use dockercoins::hasher::v1::{HashBatchRequest, HashRequest};
use dockercoins::rng::v1::GenerateRequest;
use dockercoins::rng::v1::rng_service_client::RngServiceClient;
use dockercoins::rng::v1::rng_service_server;
use mesh::client::balance::Balanced;
use mesh::telemetry::trace::TraceContext;
use tracing::{Instrument as _, debug, info, warn};

use crate::golden::Golden;
use crate::retry::with_retries;
use crate::tally::{Coin, Replica, Tally};

/// Bytes asked of rng per unit, as in the original.
pub const RANDOM_BYTES: u32 = 32;

/// Why a unit of work failed.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("rng failed: {0}")]
    Rng(tonic::Status),
    #[error("hasher failed: {0}")]
    Hasher(tonic::Status),
    #[error("rng returned {got} bytes instead of {asked}")]
    ShortRead { got: usize, asked: usize },
    #[error("hasher returned {got} digests instead of {asked}")]
    MissingDigests { got: usize, asked: usize },
    #[error("hasher returned {digest:?}, not a SHA-256 digest in 64 hex digits")]
    BadDigest { digest: String },
}

/// The two services a worker calls.
#[derive(Clone)]
pub struct Backends {
    pub rng: RngServiceClient<Balanced>,
    pub hasher: HasherServiceClient<Balanced>,
    /// Shared by every miner of the process.
    pub retries: Arc<TpsBudget>,
    /// Units per pair of calls (`WORKER_BATCH`).
    pub batch: u32,
    /// Leading hex zeros that make a digest a coin (`WORKER_DIFFICULTY`).
    pub difficulty: u8,
    /// Every call's replica, outcome and latency, for the dashboard's golden metrics.
    pub golden: Arc<Golden>,
}

/// Units of work done by one pair of calls.
#[derive(Debug)]
pub struct Mined {
    pub units: u64,
    /// The coins they found.
    pub coins: Vec<Coin>,
    /// The rng and hasher replicas that served the calls.
    pub served_by: [Replica; 2],
}

impl Backends {
    /// Does one unit of work, or `batch` of them, in one trace.
    pub async fn mine(&mut self) -> Result<Mined, UnitError> {
        let unit = mesh::telemetry::trace::unit_span(self.batch);
        // Exported, the unit's span starts the trace; else a trace of our own, for the logs.
        let trace = TraceContext::of(&unit).unwrap_or_default();
        tracing::debug!(trace_id = %trace.trace_id(), "unit of work");
        if unit.is_disabled() {
            return self.mine_in(&trace).await;
        }
        self.mine_in(&trace).instrument(unit).await
    }

    /// [`Backends::mine`] within `trace`: both calls carry it, so rng's and hasher's spans and
    /// logs show the unit.
    async fn mine_in(&mut self, trace: &TraceContext) -> Result<Mined, UnitError> {
        let asked = RANDOM_BYTES * self.batch;
        let data = with_retries(&self.retries, || {
            let mut rng = self.rng.clone();
            let request = GenerateRequest { size: asked };
            let golden = self.golden.clone();
            async move {
                let started = Instant::now();
                let result = mesh::telemetry::trace::call(
                    rng_service_server::SERVICE_NAME,
                    "Generate",
                    trace,
                    request,
                    |request| rng.generate(request),
                )
                .await;
                record_call(&golden, "rng", started, &result);
                result
            }
        })
        .await
        .map_err(UnitError::Rng)?;
        let rng = served_by("rng", &data);
        let data = data.into_inner().data;
        if data.len() != asked as usize {
            return Err(UnitError::ShortRead {
                got: data.len(),
                asked: asked as usize,
            });
        }
        let (digests, hasher) = if self.batch == 1 {
            let digest = with_retries(&self.retries, || {
                let mut hasher = self.hasher.clone();
                let request = HashRequest { data: data.clone() };
                let golden = self.golden.clone();
                async move {
                    let started = Instant::now();
                    let result = mesh::telemetry::trace::call(
                        hasher_service_server::SERVICE_NAME,
                        "Hash",
                        trace,
                        request,
                        |request| hasher.hash(request),
                    )
                    .await;
                    record_call(&golden, "hasher", started, &result);
                    result
                }
            })
            .await
            .map_err(UnitError::Hasher)?;
            let hasher = served_by("hasher", &digest);
            (vec![digest.into_inner().digest], hasher)
        } else {
            let items: Vec<Vec<u8>> = data
                .chunks(RANDOM_BYTES as usize)
                .map(<[u8]>::to_vec)
                .collect();
            let digests = with_retries(&self.retries, || {
                let mut hasher = self.hasher.clone();
                let request = HashBatchRequest {
                    data: items.clone(),
                };
                let golden = self.golden.clone();
                async move {
                    let started = Instant::now();
                    let result = mesh::telemetry::trace::call(
                        hasher_service_server::SERVICE_NAME,
                        "HashBatch",
                        trace,
                        request,
                        |request| hasher.hash_batch(request),
                    )
                    .await;
                    record_call(&golden, "hasher", started, &result);
                    result
                }
            })
            .await
            .map_err(UnitError::Hasher)?;
            let hasher = served_by("hasher", &digests);
            (digests.into_inner().digests, hasher)
        };
        if digests.len() != self.batch as usize {
            return Err(UnitError::MissingDigests {
                got: digests.len(),
                asked: self.batch as usize,
            });
        }
        let mut coins = Vec::new();
        for (digest, data) in digests.iter().zip(data.chunks(RANDOM_BYTES as usize)) {
            if is_coin(digest, self.difficulty) {
                coins.push(Coin {
                    digest: parse_digest(digest)?,
                    data: data
                        .try_into()
                        .expect("rng's answer is whole 32-byte units"),
                });
            }
        }
        Ok(Mined {
            units: self.batch.into(),
            coins,
            served_by: [rng, hasher],
        })
    }
}

/// Which replica answered, from its `x-served-by` metadata; counted in `dockercoins_picks_total`.
fn served_by<T>(service: &'static str, response: &tonic::Response<T>) -> Replica {
    let replica = response
        .metadata()
        .get(mesh::headers::SERVED_BY)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("unknown")
        .to_string();
    metrics::counter!("dockercoins_picks_total", "service" => service, "replica" => replica.clone())
        .increment(1);
    (service, replica)
}

/// Counts one attempt in the golden metrics, under the replica that answered: its `x-served-by`,
/// which every answer carries, failures included; "unknown" when no replica answered (a deadline
/// passed, or the connection broke).
fn record_call<T>(
    golden: &Golden,
    service: &'static str,
    started: Instant,
    result: &Result<tonic::Response<T>, tonic::Status>,
) {
    let elapsed = started.elapsed();
    let metadata = match result {
        Ok(response) => response.metadata(),
        Err(status) => status.metadata(),
    };
    let replica = metadata
        .get(mesh::headers::SERVED_BY)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("unknown");
    golden.record(service, replica, elapsed, result.is_ok());
}

/// A SHA-256 digest from its 64 hex digits.
fn parse_digest(digest: &str) -> Result<[u8; 32], UnitError> {
    let mut bytes = [0; 32];
    hex::decode_to_slice(digest, &mut bytes).map_err(|_| UnitError::BadDigest {
        digest: digest.to_string(),
    })?;
    Ok(bytes)
}

/// A digest that starts with `difficulty` zeros is a coin: one in 16 to that power. The
/// original's rule is difficulty 1; each step up makes coins, and the wallet's growth in Redis,
/// sixteen times rarer.
pub fn is_coin(digest: &str, difficulty: u8) -> bool {
    let zeros = usize::from(difficulty);
    digest.len() >= zeros && digest.bytes().take(zeros).all(|digit| digit == b'0')
}

/// Longest pause between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The retry schedule after a failed unit: 50 ms doubling up to 1 s, with jitter so that many
/// workers do not retry in step, and never giving up.
fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times()
        .build()
        // Jitter adds to the delay; the cap is a promise.
        .map(|pause| pause.min(MAX_BACKOFF))
}

/// Mines until `shutdown`: pause, one unit, count it; on failure, back off and go on.
///
/// A unit still in flight at shutdown is abandoned, not counted: only finished work is counted.
pub async fn mine_forever(
    mut backends: Backends,
    delay: Duration,
    tally: &Tally,
    shutdown: mesh::Shutdown,
) {
    let mut retries = backoff();
    loop {
        if !delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return,
            }
        }
        // `mine` holds no state across its awaits that matters once dropped: cancelling it is safe.
        let result = tokio::select! {
            result = backends.mine() => result,
            () = shutdown.cancelled() => return,
        };
        match result {
            Ok(Mined {
                units,
                coins,
                served_by,
            }) => {
                // One line per coin, as the original printed, while units come one at a time;
                // batched (turbo) mining finds thousands a second, so those lines are debug.
                for coin in &coins {
                    if backends.batch == 1 {
                        info!(digest = %coin.digest_hex(), "coin found");
                    } else {
                        debug!(digest = %coin.digest_hex(), "coin found");
                    }
                }
                tally.record(units, coins, served_by);
                retries = backoff();
            }
            Err(err) => {
                let pause = retries.next().unwrap_or(MAX_BACKOFF);
                warn!(%err, ?pause, "unit of work failed, retrying");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_call_is_counted_against_the_replica_that_answered() {
        let golden = Golden::default();
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert(mesh::headers::SERVED_BY, "rng-c".parse().unwrap());
        let failed: Result<tonic::Response<()>, _> = Err(tonic::Status::with_metadata(
            tonic::Code::Unavailable,
            "injected fault",
            metadata,
        ));
        record_call(&golden, "rng", Instant::now(), &failed);
        let nobody: Result<tonic::Response<()>, _> =
            Err(tonic::Status::deadline_exceeded("no answer"));
        record_call(&golden, "rng", Instant::now(), &nobody);
        let mut taken: Vec<(String, u64, u64)> = golden
            .take()
            .into_iter()
            .map(|second| (second.replica, second.calls, second.errors))
            .collect();
        taken.sort();
        assert_eq!(
            taken,
            [("rng-c".to_string(), 1, 1), ("unknown".to_string(), 1, 1)]
        );
    }

    #[test]
    fn a_coin_is_a_digest_starting_with_zero() {
        assert!(is_coin("0a1b", 1));
        assert!(!is_coin("a01b", 1));
        assert!(!is_coin("", 1));
    }

    #[test]
    fn each_step_of_difficulty_asks_one_more_leading_zero() {
        assert!(is_coin("000a", 3));
        assert!(!is_coin("00a0", 3));
        assert!(is_coin("00a0", 2));
        assert!(!is_coin("00", 3), "a digest shorter than the difficulty");
        // Among all two-digit prefixes, difficulty 2 keeps exactly one in 256.
        let coins = (0..=255u8)
            .filter(|n| is_coin(&format!("{n:02x}ff"), 2))
            .count();
        assert_eq!(coins, 1);
    }

    #[test]
    fn digests_are_64_hex_digits() {
        let hex = "0f".repeat(32);
        assert_eq!(parse_digest(&hex).unwrap(), [0x0f; 32]);
        for bad in ["0f", &"zz".repeat(32), &"0f".repeat(33)] {
            assert!(matches!(
                parse_digest(bad),
                Err(UnitError::BadDigest { .. })
            ));
        }
    }

    #[test]
    fn backoff_grows_and_is_capped_at_one_second() {
        let pauses: Vec<Duration> = backoff().take(20).collect();
        assert_eq!(pauses.len(), 20, "never gives up");
        assert!(pauses[0] <= Duration::from_millis(100), "{:?}", pauses[0]);
        assert!(
            pauses.iter().all(|pause| *pause <= MAX_BACKOFF),
            "{pauses:?}"
        );
        assert!(pauses[19] >= Duration::from_millis(500), "{:?}", pauses[19]);
    }
}
