//! The floor the services are measured against: rng's two answers served by the libraries alone.
//!
//! [`tonic`] is `tonic::transport::Server` with nothing but `RngService/Generate`; [`axum`] is an
//! axum router with nothing but `GET /{n}`. Both answer as rng does with `RNG_DELAY=0s
//! RNG_CONCURRENCY=0` (fresh random bytes, the shim's content type), without rng's layers: no
//! metrics, no `served-by`, no queue, no tracing, no limits, no health or reflection. The bench
//! loads them and rng with the same tool in the same run, so the ratio between the two is what
//! the layers cost. They run in the `bench-bare` binary, on the runtime and allocator rng ships
//! with, so that the ratio holds the layers' cost and not those choices'.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;
use dockercoins::rng::v1::rng_service_server::{RngService, RngServiceServer};
use dockercoins::rng::v1::{GenerateRequest, GenerateResponse};
use rand::RngCore;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// Largest answer either server gives, as rng's default `RNG_MAX_SIZE`.
const MAX_SIZE: u64 = 1_048_576;

/// Which floor to serve.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// `dockercoins.rng.v1.RngService/Generate` on `tonic::transport::Server`.
    Tonic,
    // `<n>`, not `{n}`: clap's help prints `{n}` as a line break.
    /// `GET /<n>` on an axum router.
    Axum,
}

fn random_bytes(size: u64) -> Vec<u8> {
    let mut data = vec![0; size as usize];
    rand::rng().fill_bytes(&mut data);
    data
}

/// Generate, and nothing around it.
#[derive(Debug, Default)]
struct Bare;

#[tonic::async_trait]
impl RngService for Bare {
    async fn generate(
        &self,
        request: tonic::Request<GenerateRequest>,
    ) -> Result<tonic::Response<GenerateResponse>, tonic::Status> {
        let size = u64::from(request.into_inner().size);
        if size > MAX_SIZE {
            return Err(tonic::Status::invalid_argument("size over the cap"));
        }
        Ok(tonic::Response::new(GenerateResponse {
            data: random_bytes(size),
        }))
    }
}

/// `GET /{n}`: `n` random bytes as `application/octet-stream`, as rng's shim answers.
async fn bytes(Path(raw): Path<String>) -> axum::response::Response {
    match raw.parse::<u64>() {
        Ok(size) if size <= MAX_SIZE => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            random_bytes(size),
        )
            .into_response(),
        _ => (StatusCode::BAD_REQUEST, "not a size\n").into_response(),
    }
}

/// The bare axum router.
pub fn axum_app() -> Router {
    Router::new().route("/{n}", get(bytes))
}

/// Serves `server` on `listener` until `shutdown` resolves.
pub async fn serve(
    server: Server,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // TCP_NODELAY on every connection, as rng sets it (and as tonic does when it binds itself).
    match server {
        Server::Tonic => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            tonic::transport::Server::builder()
                .add_service(RngServiceServer::new(Bare))
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
                .map_err(std::io::Error::other)
        }
        Server::Axum => {
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, axum_app())
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// Binds `listen`, logs `listening addr=…` (the line the harness reads its port from), and
/// serves until SIGTERM or SIGINT.
pub async fn run(server: Server, listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!(
        "bench-bare {server:?} listening addr={}",
        listener.local_addr()?
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    serve(server, listener, shutdown).await
}

#[cfg(test)]
mod tests {
    use dockercoins::rng::v1::rng_service_client::RngServiceClient;

    use super::*;

    async fn start(server: Server) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(server, listener, async {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    #[tokio::test]
    async fn bare_tonic_generates_the_size_asked() {
        let (addr, _stop) = start(Server::Tonic).await;
        let mut client = RngServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let answer = client.generate(GenerateRequest { size: 32 }).await.unwrap();
        assert_eq!(answer.into_inner().data.len(), 32);
    }

    #[tokio::test]
    async fn bare_axum_answers_like_the_rng_shim() {
        let (addr, _stop) = start(Server::Axum).await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /32 HTTP/1.1\r\nHost: bare\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&answer[..split]).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(
            head.contains("content-type: application/octet-stream"),
            "{head}"
        );
        assert_eq!(answer.len() - split - 4, 32, "{head}");
    }
}
