//! The `healthcheck` subcommand every binary has, for container HEALTHCHECKs.
//!
//! The runtime images hold one static binary and nothing else (no shell, no curl, no
//! grpc_health_probe), so each binary checks itself: `rng healthcheck` asks the running rng's gRPC
//! health service, `webui healthcheck` and `worker healthcheck` GET `/healthz`. The probe reads the
//! same configuration as the server, so it finds the port the server listens on. Exit status 0
//! means healthy, 1 unhealthy, as Docker expects.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Deadline of the whole check, well inside Docker's healthcheck timeout.
const PROBE_DEADLINE: Duration = Duration::from_secs(2);

/// Why a probe failed, as the one line `healthcheck` and `fault` print.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: tonic::transport::Error,
    },
    #[error("health check failed: {}", .0.message())]
    Check(tonic::Status),
    #[error("{service:?} is {status}")]
    NotServing {
        service: String,
        status: &'static str,
    },
    #[error("cannot {method} {path} on {addr}: {reason}")]
    Request {
        method: http::Method,
        path: String,
        addr: SocketAddr,
        reason: String,
    },
    #[error("{method} {path} answered {status}: {body}")]
    Answer {
        method: http::Method,
        path: String,
        status: http::StatusCode,
        body: String,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Where to reach a server that listens on `listen` from the same host: a wildcard address
/// (`0.0.0.0`, `::`) is reached on loopback.
pub fn local_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Asks the gRPC health service at `listen` whether `service` is SERVING.
pub async fn grpc(listen: SocketAddr, service: &str) -> Result<(), ProbeError> {
    let addr = local_addr(listen);
    let check = async {
        let channel = tonic::transport::Endpoint::from(
            http::Uri::try_from(format!("http://{addr}")).expect("a socket address makes a URI"),
        )
        .connect()
        .await
        .map_err(|source| ProbeError::Connect { addr, source })?;
        let request = HealthCheckRequest {
            service: service.to_string(),
        };
        let response = HealthClient::new(channel)
            .check(request)
            .await
            .map_err(ProbeError::Check)?;
        match response.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(ProbeError::NotServing {
                service: service.to_string(),
                status: other.as_str_name(),
            }),
        }
    };
    within_deadline(check).await
}

/// GETs `path` at `listen` and expects 200.
pub async fn http(listen: SocketAddr, path: &str) -> Result<(), ProbeError> {
    within_deadline(request(listen, http::Method::GET, path, None))
        .await
        .map(drop)
}

/// Shows (`change` = `None`) or changes the fault switch on the admin port at `admin`, and returns
/// its answer: the setting in force.
pub async fn fault(
    admin: SocketAddr,
    change: Option<serde_json::Value>,
) -> Result<String, ProbeError> {
    let method = match change {
        Some(_) => http::Method::POST,
        None => http::Method::GET,
    };
    within_deadline(request(admin, method, "/admin/fault", change)).await
}

/// One HTTP/1 request to the server at `listen` (reached on loopback when it listens on a
/// wildcard address), with `json` as its body if given; returns the body of a 200 answer.
async fn request(
    listen: SocketAddr,
    method: http::Method,
    path: &str,
    json: Option<serde_json::Value>,
) -> Result<String, ProbeError> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let addr = local_addr(listen);
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::builder()
        .method(method.clone())
        .uri(format!("http://{addr}{path}"));
    let body = match json {
        Some(json) => {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
            Full::from(json.to_string())
        }
        None => Full::default(),
    };
    let failed = |reason: String| ProbeError::Request {
        method: method.clone(),
        path: path.to_string(),
        addr,
        reason,
    };
    let request = request.body(body).map_err(|err| failed(err.to_string()))?;
    let response = client
        .request(request)
        .await
        .map_err(|err| failed(err.to_string()))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|err| failed(err.to_string()))?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).trim_end().to_string();
    match status {
        http::StatusCode::OK => Ok(body),
        status => Err(ProbeError::Answer {
            method,
            path: path.to_string(),
            status,
            body,
        }),
    }
}

async fn within_deadline<T>(
    check: impl std::future::Future<Output = Result<T, ProbeError>>,
) -> Result<T, ProbeError> {
    tokio::time::timeout(PROBE_DEADLINE, check)
        .await
        .unwrap_or(Err(ProbeError::Timeout(PROBE_DEADLINE)))
}

/// Prints the outcome of a check and turns it into the exit status Docker reads.
pub fn exit(outcome: Result<(), ProbeError>) -> std::process::ExitCode {
    match outcome {
        Ok(()) => {
            println!("healthy");
            std::process::ExitCode::SUCCESS
        }
        Err(reason) => {
            println!("unhealthy: {reason}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_probed_on_loopback() {
        let probe = |listen: &str| local_addr(listen.parse().unwrap()).to_string();
        assert_eq!(probe("0.0.0.0:8001"), "127.0.0.1:8001");
        assert_eq!(probe("[::]:8002"), "[::1]:8002");
        assert_eq!(probe("10.0.0.7:8000"), "10.0.0.7:8000");
    }

    #[tokio::test]
    async fn a_closed_port_is_unhealthy() {
        let closed = "127.0.0.1:1".parse().unwrap();
        assert!(grpc(closed, "").await.is_err());
        assert!(http(closed, "/healthz").await.is_err());
    }
}
