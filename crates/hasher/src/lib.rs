//! hasher: SHA-256 digests over gRPC, with the original's HTTP interface beside it.
//!
//! The gRPC API is `dockercoins.hasher.v1.HasherService/Hash`. On the same port, `POST /` with any
//! body answers the hex digest, as the original hasher did, and `GET /` a banner, so `httping`
//! and `curl` work. Each hash takes `HASHER_DELAY` (100 ms by default) but requests run
//! concurrently (`HASHER_CONCURRENCY` 0 = unlimited): hasher is fast next to rng, which is what
//! `httping` shows in the workshop.
//!
//! The work one request can ask for is bounded: `data` by `HASHER_MAX_BODY`, a HashBatch by
//! `HASHER_MAX_ITEMS` and by its bytes plus [`ITEM_OVERHEAD`] per item against the same cap, and
//! large bodies are read only a few at a time (see `mesh::server::admit`). Hashing more than
//! [`BLOCKING_THRESHOLD`] bytes runs on a blocking thread, so that the runtime thread keeps
//! answering health checks meanwhile.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use dockercoins::hasher::v1::hasher_service_server::{HasherService, HasherServiceServer};
use dockercoins::hasher::v1::{
    FILE_DESCRIPTOR_SET, HashBatchRequest, HashBatchResponse, HashRequest, HashResponse,
};
use mesh::Shutdown;
use sha2::{Digest, Sha256};
use tower::Layer;

/// hasher's configuration: every field is a flag and an environment variable.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "hasher",
    version,
    about = "DockerCoins SHA-256 service (gRPC + HTTP shim)"
)]
pub struct Config {
    /// Address the gRPC + HTTP listener binds.
    #[arg(long, env = "HASHER_LISTEN", default_value = "0.0.0.0:8002")]
    pub listen: SocketAddr,
    /// Time each hash takes: the workshop's sleep ("0s" = none).
    #[arg(long, env = "HASHER_DELAY", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub delay: Duration,
    /// Requests served at once; the others wait in one queue (0 = unlimited).
    #[arg(long, env = "HASHER_CONCURRENCY", default_value_t = 0, value_parser = mesh::config::parse_concurrency)]
    pub concurrency: usize,
    /// Largest body (HTTP) or `data` (gRPC) accepted, in bytes.
    #[arg(long, env = "HASHER_MAX_BODY", default_value_t = 1_048_576)]
    pub max_body: usize,
    /// Requests that may wait in the queue when HASHER_CONCURRENCY is set; past it a request is
    /// refused at once (RESOURCE_EXHAUSTED, or 503). 0: none wait.
    #[arg(long, env = "HASHER_MAX_QUEUE", default_value_t = mesh::server::queue::DEFAULT_MAX_WAITING, value_parser = mesh::server::queue::parse_max_waiting)]
    pub max_queue: usize,
    /// Most items in one HashBatch (the worker sends at most 1024).
    #[arg(long, env = "HASHER_MAX_ITEMS", default_value_t = 4096, value_parser = parse_max_items)]
    pub max_items: usize,
    /// Address of the admin listener: `/metrics`, `/healthz`, `/readyz` and the fault switch.
    /// Never published: nothing on the service port can change the service.
    #[arg(long, env = "HASHER_ADMIN_LISTEN", default_value = "0.0.0.0:9002")]
    pub admin_listen: SocketAddr,
    /// `off` removes the fault switch and refuses the start-up faults below.
    #[arg(long, env = "FAULT_INJECTION", default_value = "on", value_enum)]
    pub fault_injection: mesh::admin::fault::Injection,
    /// Injected delay added to every request, to make this replica slow (see `hasher fault`).
    #[arg(long, env = "HASHER_FAULT_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub fault_delay: Duration,
    /// Injected share of requests that fail with UNAVAILABLE (or 503), from 0 to 1.
    #[arg(long, env = "HASHER_FAULT_ERROR_RATE", default_value_t = 0.0, value_parser = mesh::admin::fault::parse_rate)]
    pub fault_error_rate: f64,
    /// Limits of every listener (`LISTEN_*`; see `mesh::server::limits`).
    #[command(flatten)]
    pub limits: mesh::Limits,
    /// `healthcheck`, `fault` or `forward`, instead of serving.
    #[command(subcommand)]
    pub command: Option<mesh::Command>,
}

impl mesh::binary::ServiceConfig for Config {
    const PROBE: mesh::admin::command::Probe = mesh::admin::command::Probe::Grpc;

    fn listen(&self) -> SocketAddr {
        self.listen
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

    fn validate(&self) -> Result<(), Box<dyn std::error::Error>> {
        Ok(self.fault_injection.check([
            ("HASHER_FAULT_DELAY", !self.fault_delay.is_zero()),
            ("HASHER_FAULT_ERROR_RATE", self.fault_error_rate > 0.0),
        ])?)
    }
}

/// `HASHER_MAX_ITEMS`: at least one item, and no more than a 1 MiB batch of empty items could
/// hold at [`ITEM_OVERHEAD`] each.
fn parse_max_items(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(value) if (1..=32_768).contains(&value) => Ok(value),
        _ => Err("expected an integer from 1 to 32768".to_string()),
    }
}

/// Room for the protobuf framing around `data` (a tag and a length varint) in the gRPC decoding
/// limit, so that `data` of exactly `max_body` bytes is accepted.
const PROTO_OVERHEAD: usize = 16;

/// What each HashBatch item costs against `HASHER_MAX_BODY` beyond its bytes.
///
/// An empty item is two bytes on the wire but not free to serve: decoded it is a 24-byte `Vec`,
/// and its answer a 64-character digest. Charging 32 bytes (rounded up from the `Vec` and the
/// framing) makes a batch of many tiny items cost what it costs, while the worker's batch of
/// 1024 items of 32 bytes is charged 64 KiB, far under the 1 MiB default. It also covers each
/// item's framing (at most 6 bytes), so an accepted batch always fits the decoding limit.
pub const ITEM_OVERHEAD: usize = 32;

/// Data larger than this (in total) is hashed on a blocking thread: SHA-256 of a MiB takes a few
/// milliseconds, long enough to delay every health check on hasher's one runtime thread, while
/// the worker's 32 bytes or 32 KiB batch hash in less time than a hand-off to another thread.
pub const BLOCKING_THRESHOLD: usize = 64 * 1024;

/// Bodies of at most this many bytes (the worker's Hash and HashBatch) are never held back;
/// larger ones are read [`LARGE_AT_ONCE`] at a time (see `mesh::server::admit`).
pub const LARGE_BODY: usize = 64 * 1024;

/// Large bodies read and served at once. A replica is one core's worth of work (see
/// `mesh::runtime`): two keep that core busy (one read while the other hashes) and hold a few MiB.
/// More only compete with the runtime thread for the CPU: under 200 streams of 1 MiB on one
/// connection (tests/hostile_bounds.rs, debug build, two cores at a load average of 9), the
/// runtime thread waited 1.0 to 2.0 s for a CPU with four (4 runs, `/proc/…/schedstat`), 0.4 to
/// 1.6 s with two (5 runs).
pub const LARGE_AT_ONCE: usize = 2;

/// Largest answer the gRPC service encodes: a batch of `max_items` digests, each 64 characters
/// plus 2 bytes of framing.
fn max_answer(max_items: usize) -> usize {
    max_items * 66 + PROTO_OVERHEAD
}

/// Why a request to hash is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashError {
    #[error("data of {size} bytes is over the cap of {max} bytes (HASHER_MAX_BODY)")]
    TooLarge { size: usize, max: usize },
    #[error("{count} items is over the cap of {max} items (HASHER_MAX_ITEMS)")]
    TooManyItems { count: usize, max: usize },
}

impl From<HashError> for tonic::Status {
    fn from(err: HashError) -> Self {
        match err {
            HashError::TooLarge { .. } | HashError::TooManyItems { .. } => {
                tonic::Status::resource_exhausted(err.to_string())
            }
        }
    }
}

/// The lowercase hex SHA-256 of `data`.
pub fn digest(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// What the handlers share.
#[derive(Debug)]
pub struct Hasher {
    delay: Duration,
    max_body: usize,
    max_items: usize,
    banner: String,
}

impl Hasher {
    pub fn new(config: &Config) -> Self {
        Self {
            delay: config.delay,
            max_body: config.max_body,
            max_items: config.max_items,
            banner: format!("HASHER running on {}\n", mesh::hostname()),
        }
    }

    /// Checks the size, waits the configured delay, and hashes.
    async fn hash<T: AsRef<[u8]> + Send + 'static>(&self, data: T) -> Result<String, HashError> {
        let size = data.as_ref().len();
        if size > self.max_body {
            return Err(HashError::TooLarge {
                size,
                max: self.max_body,
            });
        }
        let [digest] = self
            .delayed_digests(vec![data], size)
            .await
            .try_into()
            .expect("one digest");
        Ok(digest)
    }

    /// Checks the number of items, then their bytes plus [`ITEM_OVERHEAD`] each against the cap,
    /// waits the delay once, and returns the digest of each.
    async fn hash_batch<T: AsRef<[u8]> + Send + 'static>(
        &self,
        items: Vec<T>,
    ) -> Result<Vec<String>, HashError> {
        if items.len() > self.max_items {
            return Err(HashError::TooManyItems {
                count: items.len(),
                max: self.max_items,
            });
        }
        let data: usize = items.iter().map(|item| item.as_ref().len()).sum();
        let size = data + items.len() * ITEM_OVERHEAD;
        if size > self.max_body {
            return Err(HashError::TooLarge {
                size,
                max: self.max_body,
            });
        }
        Ok(self.delayed_digests(items, data).await)
    }

    /// Waits the delay, then hashes `items` (`data` bytes in all).
    async fn delayed_digests<T: AsRef<[u8]> + Send + 'static>(
        &self,
        items: Vec<T>,
        data: usize,
    ) -> Vec<String> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let digests = move || items.iter().map(|item| digest(item.as_ref())).collect();
        if data <= BLOCKING_THRESHOLD {
            return digests();
        }
        tokio::task::spawn_blocking(digests)
            .await
            .unwrap_or_else(|panicked| std::panic::resume_unwind(panicked.into_panic()))
    }
}

#[tonic::async_trait]
impl HasherService for Hasher {
    async fn hash(
        &self,
        request: tonic::Request<HashRequest>,
    ) -> Result<tonic::Response<HashResponse>, tonic::Status> {
        let digest = Hasher::hash(self, request.into_inner().data).await?;
        Ok(tonic::Response::new(HashResponse { digest }))
    }

    async fn hash_batch(
        &self,
        request: tonic::Request<HashBatchRequest>,
    ) -> Result<tonic::Response<HashBatchResponse>, tonic::Status> {
        let digests = Hasher::hash_batch(self, request.into_inner().data).await?;
        Ok(tonic::Response::new(HashBatchResponse { digests }))
    }
}

async fn banner(State(hasher): State<Arc<Hasher>>) -> String {
    hasher.banner.clone()
}

/// `POST /`: the digest of the body, as plain text with no newline, as the original answered.
async fn hash_body(State(hasher): State<Arc<Hasher>>, body: Bytes) -> Result<String, StatusCode> {
    // The body limit layer already answered 413 for a larger body; this cannot fail.
    Hasher::hash(&hasher, body)
        .await
        .map_err(|_| StatusCode::PAYLOAD_TOO_LARGE)
}

async fn method_not_allowed() -> (StatusCode, &'static str) {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed: use GET / or POST / (gRPC: dockercoins.hasher.v1.HasherService)\n",
    )
}

/// gRPC (with health and reflection) and the HTTP shim, on one router.
///
/// Returns the health reporter too, so that shutdown can report NOT_SERVING.
pub async fn app(
    config: &Config,
    fault: mesh::admin::fault::Fault,
) -> (mesh::server::grpc::Health, Router) {
    let hasher = Arc::new(Hasher::new(config));
    // Shared by gRPC and the shim: the bound is on the memory of large bodies, whoever sends them.
    let admission = mesh::server::admit::Admission::new(LARGE_AT_ONCE, LARGE_BODY);
    // tonic rejects a larger message before decoding it, with its standard OUT_OF_RANGE (an
    // accepted batch is never larger on the wire: see `ITEM_OVERHEAD`).
    let hash = HasherServiceServer::from_arc(hasher.clone())
        .max_decoding_message_size(config.max_body + PROTO_OVERHEAD)
        .max_encoding_message_size(max_answer(config.max_items));
    let hash = admission.layer(hash);
    let shim = Router::new()
        .route("/", get(banner).post(hash_body))
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(
            tower::ServiceBuilder::new()
                // Outside the body limit: a large body waits for nothing, it is refused or let
                // through.
                .layer(admission)
                // A larger body gets 413 before it is read into memory.
                .layer(DefaultBodyLimit::max(config.max_body)),
        )
        .with_state(hasher);
    let queue = mesh::server::queue::Queue::new(config.concurrency, config.max_queue);
    mesh::server::grpc::router(hash, FILE_DESCRIPTOR_SET, shim, queue, fault).await
}

/// Serves hasher on `listener` until `shutdown`, reporting NOT_SERVING first.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    tracing::info!(
        delay = ?config.delay,
        concurrency = config.concurrency,
        max_queue = config.max_queue,
        max_body = config.max_body,
        max_items = config.max_items,
        "hasher starting"
    );
    let serving = mesh::server::grpc::Serving {
        admin_listen: config.admin_listen,
        limits: &config.limits,
        faults: (
            config.fault_injection,
            config.fault_delay,
            config.fault_error_rate,
        ),
    };
    mesh::server::grpc::serve_until(listener, serving, shutdown, |fault| app(&config, fault))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256_OF_EMPTY: &str =
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn hasher(max_body: usize, max_items: usize) -> Hasher {
        Hasher {
            delay: Duration::ZERO,
            max_body,
            max_items,
            banner: String::new(),
        }
    }

    #[test]
    fn digest_is_lowercase_hex_sha256() {
        assert_eq!(digest(b""), SHA256_OF_EMPTY);
        assert_eq!(
            digest(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[tokio::test]
    async fn rejects_data_over_the_cap() {
        let hasher = hasher(4, 10);
        assert_eq!(hasher.hash(b"1234").await.unwrap(), digest(b"1234"));
        let err = hasher.hash(b"12345").await.unwrap_err();
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("cap of 4 bytes"),
            "{}",
            status.message()
        );
    }

    #[tokio::test]
    async fn a_batch_is_charged_its_bytes_and_an_overhead_per_item() {
        let hasher = hasher(2 * ITEM_OVERHEAD + 8, 10);
        let fits = vec![b"1234".to_vec(), b"5678".to_vec()];
        assert_eq!(
            hasher.hash_batch(fits).await.unwrap(),
            [digest(b"1234"), digest(b"5678")]
        );
        let over = vec![b"1234".to_vec(), b"56789".to_vec()];
        assert_eq!(
            hasher.hash_batch(over).await.unwrap_err(),
            HashError::TooLarge {
                size: 2 * ITEM_OVERHEAD + 9,
                max: 2 * ITEM_OVERHEAD + 8
            }
        );
        let empties = vec![Vec::new(); 3];
        let status = tonic::Status::from(hasher.hash_batch(empties).await.unwrap_err());
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn a_batch_over_the_item_cap_is_refused() {
        let hasher = hasher(1 << 20, 3);
        assert_eq!(
            hasher.hash_batch(vec![Vec::new(); 3]).await.unwrap().len(),
            3
        );
        let err = hasher.hash_batch(vec![Vec::new(); 4]).await.unwrap_err();
        assert_eq!(err, HashError::TooManyItems { count: 4, max: 3 });
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("HASHER_MAX_ITEMS"),
            "{}",
            status.message()
        );
    }

    #[tokio::test]
    async fn large_data_is_hashed_off_the_runtime_thread_with_the_same_digest() {
        let hasher = hasher(1 << 20, 10);
        let large = vec![7u8; BLOCKING_THRESHOLD + 1];
        assert_eq!(hasher.hash(large.clone()).await.unwrap(), digest(&large));
        let batch = vec![large.clone(), b"abc".to_vec()];
        assert_eq!(
            hasher.hash_batch(batch).await.unwrap(),
            [digest(&large), digest(b"abc")]
        );
    }

    #[test]
    fn the_item_cap_is_validated() {
        assert!(parse_max_items("0").is_err());
        assert_eq!(parse_max_items("4096"), Ok(4096));
        assert!(parse_max_items("32769").is_err());
    }

    #[test]
    fn the_largest_batch_answer_fits_the_encoding_limit() {
        use prost::Message;
        let answer = HashBatchResponse {
            digests: vec![digest(b""); 4096],
        };
        assert!(answer.encoded_len() <= max_answer(4096));
    }
}
