//! webui: shows how fast DockerCoins mines, from the counters the worker keeps in Redis.
//!
//! What workshop attendees look at: a dashboard (`GET /`) with a live chart of the hashing speed,
//! the hashes and coins counters, the calls per second of each rng and hasher replica, and a table
//! of golden metrics per service (rate, success rate, latency percentiles per replica). The
//! page polls `GET /json` every second, which keeps the original's shape (`coins`, `hashes`, `now`)
//! and adds the speed (`rate`, see [`rate`]), the replicas (`replicas`, see [`replicas`]) and their
//! golden metrics (`golden`, see [`golden`]), all
//! worked out here from readings taken four times a second rather than in the browser from two
//! polls. `/json` answers from the latest reading, at most 250 ms old, never waiting for Redis
//! (see [`board`]). The webui starts and serves its page without Redis; `/json` then answers 503,
//! and works again as soon as Redis is back. When Redis answers but refuses the workers' writes
//! (full, read-only, a key of the wrong type), `/json`'s `write_problem` says why in one line and
//! the page shows it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::routing::get;
use axum::{Json, Router};
use deadpool_redis::Pool;
use mesh::Shutdown;
use tower::ServiceBuilder;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

mod assets;
pub mod board;
mod counters;
pub mod golden;
pub mod rate;
pub mod replicas;
mod sampler;

use board::{Board, Report};
use counters::Unavailable;

/// webui's configuration: every field is a flag and an environment variable.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "webui",
    version,
    about = "DockerCoins dashboard: the hashing speed, from Redis"
)]
pub struct Config {
    /// Address the HTTP listener binds.
    #[arg(long, env = "WEBUI_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,
    /// Redis holding the `hashes` counter and the `wallet`.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", value_parser = mesh::redis::parse_url)]
    pub redis_url: String,
    /// Address of the admin listener: `/metrics`, `/healthz` and `/readyz`. Never published.
    #[arg(long, env = "WEBUI_ADMIN_LISTEN", default_value = "0.0.0.0:9003")]
    pub admin_listen: SocketAddr,
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
}

/// Connections to Redis: the sampler is the only reader (`/json` answers from its readings); a
/// second lets a new connection open while a broken one is dropped.
const POOL_SIZE: usize = 2;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pool: Pool,
    board: Arc<Mutex<Board>>,
}

impl AppState {
    /// Connects lazily: this never fails because Redis is down, only on a malformed URL.
    pub fn new(config: &Config) -> Result<Self, deadpool_redis::CreatePoolError> {
        Ok(Self {
            pool: mesh::redis::pool(&config.redis_url, POOL_SIZE)?,
            board: Arc::default(),
        })
    }
}

async fn json(State(state): State<AppState>) -> Result<Json<Report>, Unavailable> {
    let board = state.board.lock().unwrap_or_else(PoisonError::into_inner);
    board.report(Instant::now()).map(Json)
}

async fn not_found(uri: Uri) -> (StatusCode, String) {
    (
        StatusCode::NOT_FOUND,
        format!("no such path: {}\n", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> (StatusCode, String) {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed: {method} {} (use GET)\n", uri.path()),
    )
}

/// The dashboard and `/json`, on one router (`/metrics` and `/healthz` are on the admin port; the
/// webui is alive even when Redis is not, and restarting it would not help).
pub fn app(state: AppState) -> Router {
    let layers = ServiceBuilder::new()
        // Outermost, so that it sees every answer, fallbacks included. At debug level: one line
        // per request would drown the log at info, and a 503 while Redis is down is expected, not
        // an error (the sampler logs the outage once).
        .layer(
            TraceLayer::new_for_http()
                .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        // Everything here changes with every second or every build: caches must ask again.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        ));
    Router::new()
        .merge(assets::routes())
        .route("/json", get(json))
        .route_layer(mesh::telemetry::metrics::RecordLayer::default())
        // After the routes: it applies to those already added.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state)
        .layer(layers)
}

/// Serves the webui on `listener` and samples Redis in the background, until `shutdown`.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let state = AppState::new(&config)?;
    tracing::info!(redis = %redis_address(&config.redis_url), "webui starting");
    // Its own token, so that the sampler also stops if serving ends with an error.
    let sampling = shutdown.child_token();
    let sampler = tokio::spawn(sampler::run(
        state.pool.clone(),
        state.board.clone(),
        sampling.clone(),
    ));
    let admin_listener = mesh::server::serve::bind(config.admin_listen).await?;
    let admin = mesh::admin::Admin::new(shutdown.clone()).router();
    let served = tokio::try_join!(
        mesh::serve(listener, app(state), &config.limits, shutdown.clone()),
        mesh::admin::serve(admin_listener, admin, &config.limits, shutdown),
    );
    sampling.cancel();
    sampler.await?;
    served?;
    Ok(())
}

/// `host:port` of a Redis URL, for the log: the URL itself may hold a password.
fn redis_address(url: &str) -> String {
    use deadpool_redis::redis::IntoConnectionInfo;
    url.into_connection_info()
        .map(|info| info.addr().to_string())
        .unwrap_or_else(|_| "?".to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    /// A webui whose Redis is a closed port.
    fn without_redis() -> Router {
        let config: Config =
            mesh::config::try_parse_from(["webui", "--redis-url", "redis://127.0.0.1:1"]).unwrap();
        app(AppState::new(&config).unwrap())
    }

    async fn call(method: Method, path: &str) -> (StatusCode, Option<String>, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let response = without_redis().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|value| value.to_str().unwrap().to_string());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn serves_the_dashboard_at_root_and_index_html_without_redis() {
        for path in ["/", "/index.html"] {
            let (status, content_type, body) = call(Method::GET, path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(content_type.as_deref(), Some("text/html; charset=utf-8"));
            for id in ["speed", "hashes", "coins", "write-problem"] {
                assert!(
                    body.contains(&format!("id=\"{id}\"")),
                    "{path} has no #{id}"
                );
            }
        }
    }

    #[tokio::test]
    async fn serves_every_file_the_page_links_to() {
        let (_, _, page) = call(Method::GET, "/").await;
        for (path, kind) in [
            ("assets/dashboard.css", "text/css"),
            ("assets/dashboard.js", "text/javascript"),
            ("assets/favicon.svg", "image/svg+xml"),
        ] {
            assert!(
                page.contains(&format!("\"{path}\"")),
                "the page links {path}"
            );
            let (status, content_type, body) = call(Method::GET, &format!("/{path}")).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(content_type.unwrap().starts_with(kind), "{path}");
            assert!(!body.is_empty());
        }
    }

    #[tokio::test]
    async fn the_page_fetches_nothing_from_elsewhere() {
        for path in ["/", "/assets/dashboard.css", "/assets/dashboard.js"] {
            let (_, _, body) = call(Method::GET, path).await;
            for remote in [
                "src=\"http",
                "href=\"http",
                "=\"//",
                "url(",
                "@import",
                "fetch(\"http",
            ] {
                assert!(!body.contains(remote), "{path} refers to {remote}");
            }
        }
    }

    #[tokio::test]
    async fn nothing_of_the_admin_port_is_on_the_service_port() {
        for path in ["/healthz", "/metrics", "/admin/fault"] {
            let (status, _, _) = call(Method::GET, path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[tokio::test]
    async fn unknown_paths_are_404_with_a_one_line_reason() {
        let (status, _, body) = call(Method::GET, "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, "no such path: /nope\n");
    }

    #[tokio::test]
    async fn wrong_methods_are_405_with_a_one_line_reason() {
        for path in ["/json", "/"] {
            let (status, _, body) = call(Method::POST, path).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
            assert_eq!(body, format!("method not allowed: POST {path} (use GET)\n"));
        }
    }

    #[tokio::test]
    async fn json_answers_503_within_a_second_without_redis() {
        let started = Instant::now();
        let (status, content_type, body) = call(Method::GET, "/json").await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(content_type.as_deref(), Some("application/json"));
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(!error.is_empty() && !error.contains('\n'), "{error:?}");
    }

    #[test]
    fn the_log_shows_where_redis_is_but_not_its_password() {
        assert_eq!(redis_address("redis://:secret@redis:6380/2"), "redis:6380");
    }

    #[tokio::test]
    async fn run_returns_promptly_on_shutdown() {
        let config: Config = mesh::config::try_parse_from([
            "webui",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--redis-url",
            "redis://127.0.0.1:1",
        ])
        .unwrap();
        let listener = mesh::server::serve::bind(config.listen).await.unwrap();
        let shutdown = Shutdown::new();
        let running = tokio::spawn(run(config, listener, shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_millis(500), running)
            .await
            .expect("run returns within 500 ms of shutdown")
            .unwrap()
            .unwrap();
    }
}
