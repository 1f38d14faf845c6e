//! The admin listener: what operators, probes and Prometheus use, on a port of its own.
//!
//! A service port (8001, 8002, 8000) is what clients reach, and compose, Swarm and Kubernetes
//! publish it. Nothing a client sends there may change how the service behaves, so everything that
//! observes or steers a process lives here instead: `GET /metrics`, `GET /healthz` (liveness),
//! `GET /readyz` (readiness), and on rng and hasher the fault switch (`GET` and `POST
//! /admin/fault`). No deployment publishes this port; `docker-compose exec rng rng fault …` reaches
//! it from inside the container (see `crate::admin::command`).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use tokio::net::TcpListener;
use tracing::Instrument;

use crate::Shutdown;
use fault::Fault;

pub mod command;
pub mod fault;
pub mod probe;

/// Whether the process can do its work; `Err` holds the reason it cannot, shown in one line.
pub type Liveness = Arc<dyn Fn() -> Result<(), tower::BoxError> + Send + Sync>;

/// What the admin routes answer from.
#[derive(Clone)]
pub struct Admin {
    /// The fault switch, or `None` where there is none (webui, worker) or it is off
    /// (`FAULT_INJECTION=off`).
    fault: Option<Fault>,
    /// Why the switch is missing, for the answer to a request for it.
    no_fault: &'static str,
    liveness: Liveness,
    /// Readiness ends when shutdown starts: balancers and Kubernetes stop sending work first.
    shutdown: Shutdown,
}

impl Admin {
    /// Admin routes for a process that is alive while it answers, and ready until `shutdown`.
    pub fn new(shutdown: Shutdown) -> Self {
        Self {
            fault: None,
            no_fault: "this service has no fault switch",
            liveness: Arc::new(|| Ok(())),
            shutdown,
        }
    }

    /// Serves the fault switch for `fault`, or, with `None`, says that injection is off.
    pub fn fault(mut self, fault: Option<Fault>) -> Self {
        self.no_fault = "fault injection is off (FAULT_INJECTION=off)";
        self.fault = fault;
        self
    }

    /// Reports the process dead (`/healthz` 503) whenever `check` fails.
    pub fn liveness<E: Into<tower::BoxError>>(
        mut self,
        check: impl Fn() -> Result<(), E> + Send + Sync + 'static,
    ) -> Self {
        self.liveness = Arc::new(move || check().map_err(Into::into));
        self
    }

    /// `/metrics`, `/healthz`, `/readyz` and `/admin/fault`, with one-line answers for anything
    /// else.
    pub fn router(self) -> Router {
        let fault: Router<Admin> = match &self.fault {
            Some(fault) => fault.routes(),
            None => Router::new().route("/admin/fault", get(no_fault).post(no_fault)),
        };
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .merge(fault)
            .with_state(self)
            .merge(crate::telemetry::metrics::routes())
            .fallback(not_found)
    }
}

async fn healthz(State(admin): State<Admin>) -> Response {
    match (admin.liveness)() {
        Ok(()) => "ok".into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

async fn readyz(State(admin): State<Admin>) -> Response {
    if admin.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match (admin.liveness)() {
        Ok(()) => "ready".into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

async fn no_fault(State(admin): State<Admin>) -> (StatusCode, String) {
    (StatusCode::NOT_FOUND, format!("{}\n", admin.no_fault))
}

async fn not_found(request: Request) -> (StatusCode, String) {
    (
        StatusCode::NOT_FOUND,
        format!(
            "no such path: {} (the admin port serves /metrics, /healthz, /readyz and /admin/fault)\n",
            request.uri().path()
        ),
    )
}

/// Serves the admin `router` on `listener` until `shutdown`. Its log lines carry the span `admin`,
/// so that its "listening" line is told from the service port's.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &crate::Limits,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    crate::serve(listener, router, limits, shutdown)
        .instrument(tracing::info_span!("admin"))
        .await
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn call(router: Router, request: http::Request<Body>) -> (StatusCode, String) {
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn get(path: &str) -> http::Request<Body> {
        http::Request::get(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn ready_until_shutdown_and_alive_throughout() {
        let shutdown = Shutdown::new();
        let router = Admin::new(shutdown.clone()).router();
        assert_eq!(call(router.clone(), get("/readyz")).await.0, StatusCode::OK);
        shutdown.cancel();
        let (status, body) = call(router.clone(), get("/readyz")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
        );
        assert_eq!(call(router, get("/healthz")).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_failed_liveness_check_is_503_with_its_reason() {
        let router = Admin::new(Shutdown::new())
            .liveness(|| Err("rng discovery stopped"))
            .router();
        let (status, body) = call(router, get("/healthz")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "rng discovery stopped\n");
    }

    #[tokio::test]
    async fn the_switch_says_when_injection_is_off() {
        let router = Admin::new(Shutdown::new()).fault(None).router();
        let (status, body) = call(router, get("/admin/fault")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("FAULT_INJECTION=off"), "{body}");
    }

    #[tokio::test]
    async fn unknown_paths_are_404_naming_what_is_served() {
        let (status, body) = call(Admin::new(Shutdown::new()).router(), get("/nope")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.starts_with("no such path: /nope"), "{body}");
    }
}
