//! hasher: SHA-256 digests over gRPC, with the original's HTTP interface beside it.
//!
//! The gRPC API is `dockercoins.hasher.v1.HasherService/Hash`. On the same port, `POST /` with any
//! body answers the hex digest, as the original hasher did, and `GET /` a banner, so `httping`
//! and `curl` work. Each hash takes `HASHER_DELAY` (100 ms by default) but requests run
//! concurrently (`HASHER_CONCURRENCY` 0 = unlimited): hasher is fast next to rng, which is what
//! `httping` shows in the workshop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use dockercoins::hasher::v1::hasher_service_server::{HasherService, HasherServiceServer};
use dockercoins::hasher::v1::{HashBatchRequest, HashBatchResponse, HashRequest, HashResponse};
use mesh::Shutdown;
use sha2::{Digest, Sha256};

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
    /// Address of the admin listener: `/metrics`, `/healthz`, `/readyz` and the fault switch.
    /// Never published: nothing on the service port can change the service.
    #[arg(long, env = "HASHER_ADMIN_LISTEN", default_value = "0.0.0.0:9002")]
    pub admin_listen: SocketAddr,
    /// `off` removes the fault switch and refuses the start-up faults below.
    #[arg(long, env = "FAULT_INJECTION", default_value = "on", value_enum)]
    pub fault_injection: mesh::fault::Injection,
    /// Injected delay added to every request, to make this replica slow (see `hasher fault`).
    #[arg(long, env = "HASHER_FAULT_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub fault_delay: Duration,
    /// Injected share of requests that fail with UNAVAILABLE (or 503), from 0 to 1.
    #[arg(long, env = "HASHER_FAULT_ERROR_RATE", default_value_t = 0.0, value_parser = mesh::fault::parse_rate)]
    pub fault_error_rate: f64,
    /// Limits of every listener (`LISTEN_*`; see `mesh::limits`).
    #[command(flatten)]
    pub limits: mesh::Limits,
    /// `healthcheck`, `fault` or `forward`, instead of serving.
    #[command(subcommand)]
    pub command: Option<mesh::Command>,
}

impl mesh::binary::ServiceConfig for Config {
    const PROBE: mesh::command::Probe = mesh::command::Probe::Grpc;

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

    fn validate(&self) -> Result<(), String> {
        self.fault_injection.check([
            ("HASHER_FAULT_DELAY", !self.fault_delay.is_zero()),
            ("HASHER_FAULT_ERROR_RATE", self.fault_error_rate > 0.0),
        ])
    }
}

/// Room for the protobuf framing around `data` (a tag and a length varint) in the gRPC decoding
/// limit, so that `data` of exactly `max_body` bytes is accepted.
const PROTO_OVERHEAD: usize = 16;

/// Why a request to hash is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashError {
    #[error("data of {size} bytes is over the cap of {max} bytes (HASHER_MAX_BODY)")]
    TooLarge { size: usize, max: usize },
}

impl From<HashError> for tonic::Status {
    fn from(err: HashError) -> Self {
        match err {
            HashError::TooLarge { .. } => tonic::Status::resource_exhausted(err.to_string()),
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
    banner: String,
}

impl Hasher {
    pub fn new(config: &Config) -> Self {
        Self {
            delay: config.delay,
            max_body: config.max_body,
            banner: format!("HASHER running on {}\n", mesh::hostname()),
        }
    }

    /// Checks the size, waits the configured delay, and hashes.
    async fn hash(&self, data: &[u8]) -> Result<String, HashError> {
        let [digest] = self
            .hash_all(&[data])
            .await?
            .try_into()
            .expect("one digest");
        Ok(digest)
    }

    /// Checks that the items add up to no more than the cap, waits the delay once, and returns
    /// the digest of each.
    async fn hash_all(&self, items: &[impl AsRef<[u8]>]) -> Result<Vec<String>, HashError> {
        let size = items.iter().map(|item| item.as_ref().len()).sum();
        if size > self.max_body {
            return Err(HashError::TooLarge {
                size,
                max: self.max_body,
            });
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        // A megabyte at most: a few milliseconds, too short to be worth a blocking thread.
        Ok(items.iter().map(|item| digest(item.as_ref())).collect())
    }
}

#[tonic::async_trait]
impl HasherService for Hasher {
    async fn hash(
        &self,
        request: tonic::Request<HashRequest>,
    ) -> Result<tonic::Response<HashResponse>, tonic::Status> {
        let digest = Hasher::hash(self, &request.into_inner().data).await?;
        Ok(tonic::Response::new(HashResponse { digest }))
    }

    async fn hash_batch(
        &self,
        request: tonic::Request<HashBatchRequest>,
    ) -> Result<tonic::Response<HashBatchResponse>, tonic::Status> {
        let digests = self.hash_all(&request.into_inner().data).await?;
        Ok(tonic::Response::new(HashBatchResponse { digests }))
    }
}

async fn banner(State(hasher): State<Arc<Hasher>>) -> String {
    hasher.banner.clone()
}

/// `POST /`: the digest of the body, as plain text with no newline, as the original answered.
async fn hash_body(State(hasher): State<Arc<Hasher>>, body: Bytes) -> Result<String, StatusCode> {
    // The body limit layer already answered 413 for a larger body; this cannot fail.
    Hasher::hash(&hasher, &body)
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
pub async fn app(config: &Config, fault: mesh::fault::Fault) -> (mesh::grpc::Health, Router) {
    let hasher = Arc::new(Hasher::new(config));
    // tonic rejects a larger message before decoding it, with its standard OUT_OF_RANGE.
    let hash = HasherServiceServer::from_arc(hasher.clone())
        .max_decoding_message_size(config.max_body + PROTO_OVERHEAD);
    let shim = Router::new()
        .route("/", get(banner).post(hash_body))
        .method_not_allowed_fallback(method_not_allowed)
        // A larger body gets 413 before it is read into memory.
        .layer(DefaultBodyLimit::max(config.max_body))
        .with_state(hasher);
    mesh::grpc::router(hash, shim, config.concurrency, fault).await
}

/// Serves hasher on `listener` until `shutdown`, reporting NOT_SERVING first.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    tracing::info!(delay = ?config.delay, concurrency = config.concurrency, max_body = config.max_body, "hasher starting");
    let (fault, switch) = config
        .fault_injection
        .start(config.fault_delay, config.fault_error_rate);
    let (health, app) = app(&config, fault).await;
    let admin = mesh::admin::Admin::new(shutdown.clone()).fault(switch);
    mesh::grpc::serve_until(
        listener,
        app,
        health,
        (config.admin_listen, admin),
        &config.limits,
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256_OF_EMPTY: &str =
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

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
        let hasher = Hasher {
            delay: Duration::ZERO,
            max_body: 4,
            banner: String::new(),
        };
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
}
