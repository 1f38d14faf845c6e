//! Fault injection, for the lesson and the tests: make one replica slow or failing at run time.
//!
//! Set at start-up (`RNG_FAULT_DELAY`, `RNG_FAULT_ERROR_RATE`, and the same for hasher) or live on
//! the service's own port: `GET /admin/fault` shows the setting, `POST /admin/fault` with
//! `{"delay": "500ms", "error_rate": 0.1}` changes it (either field may be left out). A fault
//! applies to the service's calls and shim requests, never to health, reflection, metrics or this
//! endpoint, so probes keep telling the truth about the process.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::{BoxFuture, Either};
use tower::{Layer, Service};

/// The fault in force.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Setting {
    /// Added to every request before it is served.
    pub delay: Duration,
    /// Share of requests that fail (UNAVAILABLE, or 503 over HTTP), from 0 to 1.
    pub error_rate: f64,
}

/// The shared, changeable fault of one server. As a layer (for `Router::route_layer`), it applies
/// the fault to each request (health, reflection and metrics are exempt).
#[derive(Clone, Debug, Default)]
pub struct Fault {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    setting: RwLock<Setting>,
    /// Whether the setting is not the default, so that requests read one atomic, not the lock,
    /// when there is no fault: every request of every service passes here.
    active: AtomicBool,
}

/// `POST /admin/fault` body: fields left out keep their value.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    delay: Option<String>,
    error_rate: Option<f64>,
}

#[derive(Debug, serde::Serialize)]
struct Shown {
    delay: String,
    error_rate: f64,
}

impl Fault {
    pub fn new(setting: Setting) -> Result<Self, String> {
        check_rate(setting.error_rate)?;
        let fault = Self::default();
        fault.set(setting);
        Ok(fault)
    }

    /// The fault a service's configuration sets, its error rate already checked by
    /// [`parse_rate`].
    pub fn at_start(delay: Duration, error_rate: f64) -> Self {
        Self::new(Setting { delay, error_rate }).expect("the error rate was checked when parsing")
    }

    pub fn get(&self) -> Setting {
        *self
            .shared
            .setting
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, setting: Setting) {
        let mut current = self
            .shared
            .setting
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = setting;
        self.shared
            .active
            .store(setting != Setting::default(), Ordering::Release);
    }

    /// The setting, unless there is no fault.
    fn active(&self) -> Option<Setting> {
        self.shared
            .active
            .load(Ordering::Acquire)
            .then(|| self.get())
    }

    /// `GET` and `POST /admin/fault`.
    pub fn routes<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        axum::Router::new()
            .route("/admin/fault", get(show).post(change))
            .with_state(self.clone())
    }
}

/// A clap value parser for error rates.
pub fn parse_rate(raw: &str) -> Result<f64, String> {
    let rate: f64 = raw
        .parse()
        .map_err(|_| format!("{raw:?} is not a number"))?;
    check_rate(rate)?;
    Ok(rate)
}

fn check_rate(rate: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(format!("error rate {rate} is not between 0 and 1"))
    }
}

fn shown(setting: Setting) -> Json<Shown> {
    Json(Shown {
        delay: humantime::format_duration(setting.delay).to_string(),
        error_rate: setting.error_rate,
    })
}

async fn show(State(fault): State<Fault>) -> Json<Shown> {
    shown(fault.get())
}

async fn change(State(fault): State<Fault>, body: axum::body::Bytes) -> Response {
    let change: Change = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(err) => {
            return refuse(format!(
                "expected {{\"delay\": \"500ms\", \"error_rate\": 0.1}}: {err}"
            ));
        }
    };
    let mut setting = fault.get();
    if let Some(delay) = change.delay {
        match humantime::parse_duration(&delay) {
            Ok(delay) => setting.delay = delay,
            Err(err) => return refuse(format!("delay {delay:?}: {err}")),
        }
    }
    if let Some(rate) = change.error_rate {
        if let Err(reason) = check_rate(rate) {
            return refuse(reason);
        }
        setting.error_rate = rate;
    }
    fault.set(setting);
    tracing::info!(delay = ?setting.delay, error_rate = setting.error_rate, "fault injection changed");
    shown(setting).into_response()
}

fn refuse(reason: String) -> Response {
    (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response()
}

impl<S> Layer<S> for Fault {
    type Service = Faulty<S>;

    fn layer(&self, inner: S) -> Faulty<S> {
        Faulty {
            inner,
            fault: self.clone(),
        }
    }
}

/// A service whose requests get the [`Fault`] in force.
#[derive(Clone, Debug)]
pub struct Faulty<S> {
    inner: S,
    fault: Fault,
}

impl<S> Service<Request> for Faulty<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let setting = match self.fault.active() {
            Some(setting) if !request.uri().path().starts_with("/grpc.") => setting,
            _ => return Either::Left(self.inner.call(request)),
        };
        // The service that was made ready goes into the future; this one keeps a clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            if !setting.delay.is_zero() {
                tokio::time::sleep(setting.delay).await;
            }
            if setting.error_rate > 0.0 && rand::random::<f64>() < setting.error_rate {
                return Ok(injected_failure(&request));
            }
            inner.call(request).await
        }))
    }
}

/// UNAVAILABLE for a gRPC call, 503 for an HTTP request.
fn injected_failure(request: &Request) -> Response {
    if crate::grpc::is_grpc(request.headers()) {
        return tonic::Status::unavailable("injected fault").into_http::<axum::body::Body>();
    }
    (StatusCode::SERVICE_UNAVAILABLE, "injected fault\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_rates_are_between_0_and_1() {
        assert_eq!(parse_rate("0.25"), Ok(0.25));
        for bad in ["-0.1", "1.5", "often"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
