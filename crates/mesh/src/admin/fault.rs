//! Fault injection, for the lesson and the tests: make one replica slow or failing at run time.
//!
//! Set at start-up (`RNG_FAULT_DELAY`, `RNG_FAULT_ERROR_RATE`, and the same for hasher) or live on
//! the admin port (see `crate::admin`), never on the service port: `GET /admin/fault` shows the
//! setting, `POST /admin/fault` with `Content-Type: application/json` and `{"delay": "500ms",
//! "error_rate": 0.1}` changes it (either field may be left out). The content type is required so
//! that a plain HTML form, which a browser sends anywhere without asking, cannot flip the switch.
//! `FAULT_INJECTION=off` removes the switch and the layer altogether. A fault applies to the
//! service's calls and shim requests, never to health or reflection, so probes keep telling the
//! truth about the process.

use std::convert::Infallible;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::{BoxFuture, Either};
use tower::{Layer, Service};

use crate::answer::{Answers, TextBody};

/// Whether faults can be injected at all (`FAULT_INJECTION`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Injection {
    /// The admin port's switch and the start-up settings apply.
    #[default]
    On,
    /// No switch, and start-up faults refused: the replica always behaves.
    Off,
}

impl Injection {
    /// The fault a service starts with (`delay`, `error_rate` from its settings, the rate already
    /// checked by [`parse_rate`]), and the same fault as the admin port's switch, unless injection
    /// is off.
    pub fn start(self, delay: Duration, error_rate: f64) -> (Fault, Option<Fault>) {
        let fault = Fault::at_start(delay, error_rate);
        let switch = (self == Injection::On).then(|| fault.clone());
        (fault, switch)
    }

    /// Refuses start-up faults while injection is off: `settings` are the variables' names and
    /// whether each is set to something other than "no fault".
    pub fn check(self, settings: [(&'static str, bool); 2]) -> Result<(), Invalid> {
        match settings.iter().find(|(_, set)| *set) {
            Some((name, _)) if self == Injection::Off => Err(Invalid::SetWhileOff(name)),
            _ => Ok(()),
        }
    }
}

/// Why a fault setting is refused, as one line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Invalid {
    #[error("{0:?} is not a number")]
    NotANumber(String),
    #[error("error rate {0} is not between 0 and 1")]
    RateOutOfRange(f64),
    #[error("{0} is set but FAULT_INJECTION=off")]
    SetWhileOff(&'static str),
}

/// The fault in force.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Setting {
    /// Added to every request before it is served.
    pub delay: Duration,
    /// Share of requests that fail (UNAVAILABLE, or 503 over HTTP), from 0 to 1.
    pub error_rate: f64,
}

/// The shared, changeable fault of one server. As a layer, it applies the fault to each request
/// of the service (a gRPC service, or a shim's routes) it is put in front of; a server puts it in
/// front of nothing else, so that health, reflection and metrics are exempt.
///
/// A server makes one as it starts and keeps it until it exits, so its state lives as long as the
/// process: leaked, so that the clone of the layer axum makes for every request is a copy, not a
/// shared count taken and given back (a measurable part of a call; docs/BENCHMARKS.md).
#[derive(Clone, Debug)]
pub struct Fault {
    shared: &'static Shared,
}

impl Default for Fault {
    /// No fault.
    fn default() -> Self {
        Self {
            shared: Box::leak(Box::default()),
        }
    }
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
    pub fn new(setting: Setting) -> Result<Self, Invalid> {
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
pub fn parse_rate(raw: &str) -> Result<f64, Invalid> {
    let rate: f64 = raw
        .parse()
        .map_err(|_| Invalid::NotANumber(raw.to_string()))?;
    check_rate(rate)?;
    Ok(rate)
}

fn check_rate(rate: f64) -> Result<(), Invalid> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(Invalid::RateOutOfRange(rate))
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

async fn change(
    State(fault): State<Fault>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !crate::headers::is_json(&headers) {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json\n",
        )
            .into_response();
    }
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
            return refuse(reason.to_string());
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

impl<S: tonic::server::NamedService> tonic::server::NamedService for Faulty<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, RB, B> Service<http::Request<RB>> for Faulty<S>
where
    S: Answers<RB, Body = B>,
    RB: Send + 'static,
    B: TextBody + 'static,
{
    type Response = http::Response<B>;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Self::Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RB>) -> Self::Future {
        let Some(setting) = self.fault.active() else {
            return Either::Left(self.inner.call(request));
        };
        // The service that was made ready goes into the future; this one keeps a clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            if !setting.delay.is_zero() {
                tokio::time::sleep(setting.delay).await;
            }
            if setting.error_rate > 0.0 && rand::random::<f64>() < setting.error_rate {
                return Ok(injected_failure(crate::headers::is_grpc(request.headers())));
            }
            inner.call(request).await
        }))
    }
}

/// UNAVAILABLE for a gRPC call, 503 for an HTTP request.
fn injected_failure<B: TextBody>(grpc: bool) -> http::Response<B> {
    if grpc {
        return tonic::Status::unavailable("injected fault").into_http();
    }
    let mut response = http::Response::new(B::text("injected fault\n".to_string()));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn post(fault: &Fault, content_type: &str, body: &str) -> (StatusCode, String) {
        let request = http::Request::post("/admin/fault")
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = fault.routes::<()>().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_json_post_changes_the_setting() {
        let fault = Fault::default();
        let (status, body) = post(&fault, "application/json", r#"{"delay": "500ms"}"#).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(fault.get().delay, Duration::from_millis(500));
        assert!(fault.active().is_some());
    }

    #[tokio::test]
    async fn a_form_or_text_post_is_415_and_changes_nothing() {
        let fault = Fault::default();
        for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
            let (status, body) = post(&fault, content_type, r#"{"delay": "1s"}"#).await;
            assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type}");
            assert_eq!(body, "expected Content-Type: application/json\n");
        }
        assert_eq!(fault.get(), Setting::default());
    }

    #[tokio::test]
    async fn bad_json_is_400_with_a_one_line_reason() {
        let fault = Fault::default();
        for bad in [
            r#"{"delay": "#,
            r#"{"delay": "soon"}"#,
            r#"{"error_rate": 2}"#,
            r#"{"x": 1}"#,
        ] {
            let (status, body) = post(&fault, "application/json", bad).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(body.trim_end().lines().count(), 1, "{body}");
        }
        assert_eq!(fault.get(), Setting::default());
    }

    #[test]
    fn faults_set_at_start_are_refused_when_injection_is_off() {
        let settings = [("RNG_FAULT_DELAY", true), ("RNG_FAULT_ERROR_RATE", false)];
        let refused = Injection::Off.check(settings).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "RNG_FAULT_DELAY is set but FAULT_INJECTION=off"
        );
        assert_eq!(Injection::On.check(settings), Ok(()));
        assert_eq!(Injection::Off.check([("A", false), ("B", false)]), Ok(()));
        assert!(Injection::Off.start(Duration::ZERO, 0.0).1.is_none());
    }

    #[test]
    fn error_rates_are_between_0_and_1() {
        assert_eq!(parse_rate("0.25"), Ok(0.25));
        for bad in ["-0.1", "1.5", "often"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
