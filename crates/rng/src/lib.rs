//! rng: serves random bytes, slowly and one request at a time, as the workshop's bottleneck.
//!
//! The gRPC API is `dockercoins.rng.v1.RngService/Generate`. On the same port, an HTTP shim keeps
//! the original's interface (`GET /` banner, `GET /{n}` for `n` bytes) so that `httping` and
//! `curl` work. Every Generate and every shim request waits in one queue (`RNG_CONCURRENCY`, 1 by
//! default) and takes `RNG_DELAY`: that is why ten workers only get about ten hashes a second.
//! The queue holds at most `RNG_MAX_QUEUE` waiting requests; past that a call is refused at once,
//! and a gRPC call leaves it when its deadline passes (see `mesh::server::queue`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dockercoins::rng::v1::rng_service_server::{RngService, RngServiceServer};
use dockercoins::rng::v1::{FILE_DESCRIPTOR_SET, GenerateRequest, GenerateResponse};
use mesh::Shutdown;
use rand::RngCore;

/// rng's configuration: every field is a flag and an environment variable.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "rng",
    version,
    about = "DockerCoins random-bytes service (gRPC + HTTP shim)"
)]
pub struct Config {
    /// Address the gRPC + HTTP listener binds.
    #[arg(long, env = "RNG_LISTEN", default_value = "0.0.0.0:8001")]
    pub listen: SocketAddr,
    /// Time each Generate (and each `GET /<n>`) takes: the workshop's sleep ("0s" = none).
    #[arg(long, env = "RNG_DELAY", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub delay: Duration,
    /// Requests served at once; the others wait in one queue (0 = unlimited).
    #[arg(long, env = "RNG_CONCURRENCY", default_value_t = 1, value_parser = mesh::config::parse_concurrency)]
    pub concurrency: usize,
    /// Requests that may wait in the queue; past it a call is refused at once
    /// (RESOURCE_EXHAUSTED, or 503 with Retry-After). 0: none wait.
    #[arg(long, env = "RNG_MAX_QUEUE", default_value_t = mesh::server::queue::DEFAULT_MAX_WAITING, value_parser = mesh::server::queue::parse_max_waiting)]
    pub max_queue: usize,
    /// Largest number of bytes one request may ask for.
    #[arg(long, env = "RNG_MAX_SIZE", default_value_t = 1_048_576)]
    pub max_size: u32,
    /// Address of the admin listener: `/metrics`, `/healthz`, `/readyz` and the fault switch.
    /// Never published: nothing on the service port can change the service.
    #[arg(long, env = "RNG_ADMIN_LISTEN", default_value = "0.0.0.0:9001")]
    pub admin_listen: SocketAddr,
    /// `off` removes the fault switch and refuses the start-up faults below.
    #[arg(long, env = "FAULT_INJECTION", default_value = "on", value_enum)]
    pub fault_injection: mesh::admin::fault::Injection,
    /// Injected delay added to every request, to make this replica slow (see `rng fault`).
    #[arg(long, env = "RNG_FAULT_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub fault_delay: Duration,
    /// Injected share of requests that fail with UNAVAILABLE (or 503), from 0 to 1.
    #[arg(long, env = "RNG_FAULT_ERROR_RATE", default_value_t = 0.0, value_parser = mesh::admin::fault::parse_rate)]
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
            ("RNG_FAULT_DELAY", !self.fault_delay.is_zero()),
            ("RNG_FAULT_ERROR_RATE", self.fault_error_rate > 0.0),
        ])?)
    }
}

/// Room for the protobuf framing around `data` (a tag and a length varint) in the encoding limit.
const PROTO_OVERHEAD: u32 = 16;

/// Why a request for random bytes is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GenerateError {
    #[error("size {asked} is over the cap of {max} bytes (RNG_MAX_SIZE)")]
    TooLarge { asked: u64, max: u32 },
    #[error("size {0:?} is not a non-negative integer")]
    NotASize(String),
}

impl From<GenerateError> for tonic::Status {
    fn from(err: GenerateError) -> Self {
        tonic::Status::invalid_argument(err.to_string())
    }
}

impl IntoResponse for GenerateError {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, format!("{self}\n")).into_response()
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct Rng {
    delay: Duration,
    max_size: u32,
    banner: String,
}

impl Rng {
    pub fn new(config: &Config) -> Self {
        Self {
            delay: config.delay,
            max_size: config.max_size,
            banner: format!("RNG running on {}\n", mesh::hostname()),
        }
    }

    /// Checks `size` against the cap, waits the configured delay, and returns that many bytes.
    async fn random(&self, size: u64) -> Result<Vec<u8>, GenerateError> {
        if size > u64::from(self.max_size) {
            return Err(GenerateError::TooLarge {
                asked: size,
                max: self.max_size,
            });
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(random_bytes(size as usize))
    }
}

/// `size` bytes from the thread-local CSPRNG (seeded from the operating system).
pub fn random_bytes(size: usize) -> Vec<u8> {
    let mut data = vec![0; size];
    rand::rng().fill_bytes(&mut data);
    data
}

/// Parses the `{n}` of `GET /{n}`.
pub fn parse_size(raw: &str) -> Result<u64, GenerateError> {
    // `u64::from_str` accepts a leading '+'; the original only took digits.
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(GenerateError::NotASize(raw.to_string()));
    }
    raw.parse()
        .map_err(|_| GenerateError::NotASize(raw.to_string()))
}

#[tonic::async_trait]
impl RngService for Rng {
    async fn generate(
        &self,
        request: tonic::Request<GenerateRequest>,
    ) -> Result<tonic::Response<GenerateResponse>, tonic::Status> {
        let size = request.into_inner().size;
        let data = self.random(u64::from(size)).await?;
        Ok(tonic::Response::new(GenerateResponse { data }))
    }
}

async fn banner(State(rng): State<Arc<Rng>>) -> String {
    rng.banner.clone()
}

async fn bytes(
    State(rng): State<Arc<Rng>>,
    Path(raw): Path<String>,
) -> Result<Response, GenerateError> {
    let size = parse_size(&raw)?;
    let data = rng.random(size).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        data,
    )
        .into_response())
}

async fn method_not_allowed() -> (StatusCode, &'static str) {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed: use GET / or GET /{n} (gRPC: dockercoins.rng.v1.RngService)\n",
    )
}

/// gRPC (with health and reflection) and the HTTP shim, on one router.
///
/// Returns the health reporter too, so that shutdown can report NOT_SERVING.
pub async fn app(
    config: &Config,
    fault: mesh::admin::fault::Fault,
) -> (mesh::server::grpc::Health, Router) {
    let rng = Arc::new(Rng::new(config));
    // Requests are a few bytes; anything large is not a GenerateRequest.
    // Answers are at most RNG_MAX_SIZE bytes of data.
    let generate = RngServiceServer::from_arc(rng.clone())
        .max_decoding_message_size(1024)
        .max_encoding_message_size(config.max_size.saturating_add(PROTO_OVERHEAD) as usize);
    let shim = Router::new()
        .route("/", get(banner))
        .route("/{n}", get(bytes))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(rng);
    // One queue for Generate and the shim alike, as in the single-threaded original.
    let queue = mesh::server::queue::Queue::new(config.concurrency, config.max_queue);
    mesh::server::grpc::router(generate, FILE_DESCRIPTOR_SET, shim, queue, fault).await
}

/// Serves rng on `listener` until `shutdown`, reporting NOT_SERVING first.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    tracing::info!(
        delay = ?config.delay,
        concurrency = config.concurrency,
        max_queue = config.max_queue,
        max_size = config.max_size,
        "rng starting"
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

    #[test]
    fn the_help_names_the_shims_path_on_one_line() {
        // clap's help turns `{n}` into a line break, so the path is written `/<n>`.
        let help = <Config as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        assert!(help.contains("(and each `GET /<n>`) takes"), "{help}");
    }

    #[test]
    fn sizes_are_plain_non_negative_integers() {
        assert_eq!(parse_size("32"), Ok(32));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "-1", "+3", "abc", "1.5", "99999999999999999999999"] {
            assert_eq!(
                parse_size(bad),
                Err(GenerateError::NotASize(bad.to_string())),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn generates_exactly_the_size_asked() {
        let rng = Rng {
            delay: Duration::ZERO,
            max_size: 64,
            banner: String::new(),
        };
        for size in [0, 1, 32, 64] {
            assert_eq!(rng.random(size).await.unwrap().len(), size as usize);
        }
    }

    #[tokio::test]
    async fn rejects_sizes_over_the_cap() {
        let rng = Rng {
            delay: Duration::ZERO,
            max_size: 64,
            banner: String::new(),
        };
        let err = rng.random(65).await.unwrap_err();
        assert_eq!(err, GenerateError::TooLarge { asked: 65, max: 64 });
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("cap of 64 bytes"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn random_bytes_differ_between_calls() {
        assert_ne!(random_bytes(32), random_bytes(32));
    }
}
