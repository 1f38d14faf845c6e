//! Request tracing across the mesh with W3C `traceparent`.
//!
//! The worker starts a trace per unit of work and sends `traceparent` in the metadata of both of
//! its calls; rng and hasher open a span per request carrying the trace id, so that
//! `RUST_LOG=debug` on all three shows one unit's path through the mesh under one id. No tracing
//! backend is needed to follow it.
//!
//! The same spans are what OpenTelemetry exports when `crate::telemetry::otlp` is on: the worker's `unit`
//! span, a client span per call ([`call`]), rng's and hasher's server spans ([`request_span`],
//! children of the caller's client span through `traceparent`) and rng's wait in its queue. They
//! all have the target [`TARGET`] at debug level, so that without export and below debug they
//! are disabled at their call sites: nothing is built, nothing allocated.

use std::future::Future;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use tracing::{Instrument as _, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The `traceparent` header (gRPC metadata key).
pub const TRACEPARENT: &str = "traceparent";

/// The target of every span of the mesh's traces, which the OTLP export takes whatever
/// `RUST_LOG` says (`RUST_LOG=mesh::trace=debug` logs them).
pub const TARGET: &str = "mesh::trace";

/// Whether the mesh's spans are on: exported (see `crate::telemetry::otlp`), or logged because
/// `RUST_LOG` asks for [`TARGET`] at debug. The filter is set once at start-up, so a server asks
/// once, when it builds its layers, and leaves the request span's layer out when they are off.
pub fn spans_enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::DEBUG)
}

/// A W3C trace context: `00-<32 hex trace id>-<16 hex span id>-<flags>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
    /// Whether the trace is recorded: a sampler upstream decided (always, without export).
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace with a random id.
    pub fn new() -> Self {
        Self {
            trace_id: rand::random::<u128>().max(1),
            span_id: rand::random::<u64>().max(1),
            sampled: true,
        }
    }

    /// The same trace, seen from a new span (one per call).
    pub fn child(&self) -> Self {
        Self {
            span_id: rand::random::<u64>().max(1),
            ..*self
        }
    }

    /// The context of `span` as OpenTelemetry exports it; `None` when the span is not exported
    /// (export off, or the span disabled).
    pub fn of(span: &Span) -> Option<Self> {
        if span.is_disabled() {
            return None;
        }
        let context = span.context();
        let span_context = context.span().span_context().clone();
        span_context.is_valid().then(|| Self {
            trace_id: u128::from_be_bytes(span_context.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(span_context.span_id().to_bytes()),
            sampled: span_context.is_sampled(),
        })
    }

    /// Makes this context, received from another process, the parent of `span` when it is
    /// exported (a no-op otherwise).
    pub fn adopt_as_parent_of(&self, span: &Span) {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let remote = SpanContext::new(
            TraceId::from(self.trace_id),
            SpanId::from(self.span_id),
            flags,
            true,
            TraceState::default(),
        );
        // Fails only when the span is not exported, which leaves nothing to link.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }

    /// The trace id as the logs show it.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The header value.
    pub fn header(&self) -> String {
        let flags = u8::from(self.sampled);
        format!(
            "00-{:032x}-{:016x}-{flags:02x}",
            self.trace_id, self.span_id
        )
    }

    /// Parses a `traceparent` header; `None` when it is not a valid version-00 context.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00"
            || trace.len() != 32
            || span.len() != 16
            || flags.len() != 2
            || parts.next().is_some()
        {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|id| *id != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|id| *id != 0)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }
}

impl Default for TraceContext {
    fn default() -> Self {
        Self::new()
    }
}

/// The worker's span of one unit of work (or one batch of them), the root of its trace.
pub fn unit_span(units: u32) -> Span {
    tracing::debug_span!(target: TARGET, parent: None, "unit", units)
}

/// Makes one gRPC call of `service`'s `method` (names as in the proto: `dockercoins.rng.v1.RngService`,
/// `Generate`) in a client span, sending the span's context, or a child of `trace` when spans are
/// not exported, as `traceparent`. The span records which replica answered (`x-served-by`) or
/// the error.
pub async fn call<M, R, F>(
    service: &'static str,
    method: &'static str,
    trace: &TraceContext,
    message: M,
    send: impl FnOnce(tonic::Request<M>) -> F,
) -> Result<tonic::Response<R>, tonic::Status>
where
    F: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    let span = tracing::debug_span!(
        target: TARGET,
        "call",
        otel.name = format!("{service}/{method}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        // The balancer hides which address it dialled; the replica names itself.
        server.address = tracing::field::Empty,
    );
    let mut request = tonic::Request::new(message);
    let context = TraceContext::of(&span).unwrap_or_else(|| trace.child());
    if let Ok(value) = context.header().parse() {
        request.metadata_mut().insert(TRACEPARENT, value);
    }
    if span.is_disabled() {
        return send(request).await;
    }
    let result = send(request).instrument(span.clone()).await;
    match &result {
        Ok(response) => {
            if let Some(replica) = response
                .metadata()
                .get(crate::headers::SERVED_BY)
                .and_then(|value| value.to_str().ok())
            {
                span.record("server.address", replica);
            }
            span.record("rpc.grpc.status_code", 0);
        }
        Err(status) => {
            span.record("otel.status_code", "error");
            span.record("rpc.grpc.status_code", status.code() as i32);
        }
    }
    result
}

/// The span of one served request (for tower-http's `TraceLayer::make_span_with`): the gRPC
/// method or the HTTP path and, when the caller sent one, the caller's trace, whose child it is.
pub fn request_span<B>(request: &http::Request<B>) -> Span {
    // Below debug and without export the span is off: skip reading the header for it.
    if !spans_enabled() {
        return Span::none();
    }
    let parent = request
        .headers()
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok())
        .and_then(TraceContext::parse);
    let trace_id = parent.map(|context| context.trace_id());
    let trace_id = trace_id.as_deref().unwrap_or("-");
    let path = request.uri().path();
    let span = match crate::headers::is_grpc(request.headers())
        .then(|| path.trim_start_matches('/').split_once('/'))
        .flatten()
    {
        Some((service, method)) => tracing::debug_span!(
            target: TARGET,
            "request",
            otel.name = path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            trace_id,
        ),
        None => tracing::debug_span!(
            target: TARGET,
            "request",
            otel.name = request.method().as_str(),
            otel.kind = "server",
            http.request.method = request.method().as_str(),
            url.path = path,
            trace_id,
        ),
    };
    if let Some(parent) = parent {
        parent.adopt_as_parent_of(&span);
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{SpanKind, TracerProvider as _};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Keeps what it is sent, in place of an OTLP collector.
    #[derive(Clone, Debug, Default)]
    struct Kept(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Kept {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    /// A served gRPC request, with `traceparent` when given.
    fn grpc_request(path: &str, traceparent: Option<&str>) -> axum::extract::Request {
        let mut request = http::Request::builder()
            .uri(path)
            .header(http::header::CONTENT_TYPE, "application/grpc");
        if let Some(traceparent) = traceparent {
            request = request.header(TRACEPARENT, traceparent);
        }
        request.body(axum::body::Body::empty()).unwrap()
    }

    /// Calls `service/method` with `call`, playing the server's side in the callee: the span
    /// rng or hasher would open for the request the worker sent.
    async fn call_and_serve(trace: &TraceContext) -> String {
        let sent = Arc::new(Mutex::new(String::new()));
        let seen = sent.clone();
        call(
            "dockercoins.rng.v1.RngService",
            "Generate",
            trace,
            (),
            |request: tonic::Request<()>| async move {
                let traceparent = request.metadata().get(TRACEPARENT).unwrap();
                let traceparent = traceparent.to_str().unwrap().to_string();
                let server = request_span(&grpc_request(
                    "/dockercoins.rng.v1.RngService/Generate",
                    Some(&traceparent),
                ));
                server.in_scope(|| {});
                *seen.lock().unwrap() = traceparent;
                let mut response = tonic::Response::new(());
                response
                    .metadata_mut()
                    .insert(crate::headers::SERVED_BY, "rng-7".parse().unwrap());
                Ok(response)
            },
        )
        .await
        .unwrap();
        sent.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn without_export_no_span_is_built_and_calls_carry_the_unit_trace() {
        // The subscriber `crate::telemetry` installs when no exporter is configured.
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(std::io::sink)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);

        let unit = unit_span(1);
        assert!(unit.is_disabled());
        assert_eq!(TraceContext::of(&unit), None);
        assert!(request_span(&grpc_request("/a.B/C", None)).is_disabled());
        let trace = TraceContext::new();
        let sent = TraceContext::parse(&call_and_serve(&trace).await).unwrap();
        assert_eq!(sent.trace_id, trace.trace_id);
        assert_ne!(sent.span_id, trace.span_id, "a span of its own per call");
    }

    #[tokio::test]
    async fn exported_the_server_span_is_a_child_of_the_client_span_under_the_unit() {
        let (provider, kept, _default) = exporting();

        let unit = unit_span(1);
        let trace = TraceContext::of(&unit).expect("an exported span has a context");
        let sent = call_and_serve(&trace).instrument(unit.clone()).await;
        drop(unit);
        provider.force_flush().unwrap();

        let spans = kept.0.lock().unwrap().clone();
        let find = |kind: SpanKind| {
            spans
                .iter()
                .find(|span| span.span_kind == kind)
                .unwrap_or_else(|| panic!("no {kind:?} span in {spans:?}"))
        };
        let (unit, client, server) = (
            find(SpanKind::Internal),
            find(SpanKind::Client),
            find(SpanKind::Server),
        );
        assert_eq!(unit.name, "unit");
        assert_eq!(client.name, "dockercoins.rng.v1.RngService/Generate");
        assert_eq!(server.name, "dockercoins.rng.v1.RngService/Generate");
        assert_eq!(client.parent_span_id, unit.span_context.span_id());
        assert_eq!(server.parent_span_id, client.span_context.span_id());
        assert!(server.parent_span_is_remote);
        let trace_id = unit.span_context.trace_id();
        assert_eq!(client.span_context.trace_id(), trace_id);
        assert_eq!(server.span_context.trace_id(), trace_id);
        let sent = TraceContext::parse(&sent).unwrap();
        assert_eq!(
            SpanId::from(sent.span_id),
            client.span_context.span_id(),
            "traceparent names the client span"
        );
    }

    /// A tracer provider whose spans end up in the returned [`Kept`], installed for this thread
    /// as `crate::telemetry` installs it with export on.
    fn exporting() -> (SdkTracerProvider, Kept, tracing::subscriber::DefaultGuard) {
        let kept = Kept::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(kept.clone())
            .build();
        let subscriber = tracing_subscriber::registry().with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_target(TARGET, tracing::Level::DEBUG),
                ),
        );
        let guard = tracing::subscriber::set_default(subscriber);
        (provider, kept, guard)
    }

    #[tokio::test]
    async fn client_spans_record_the_replica_or_the_error() {
        let (provider, kept, _default) = exporting();
        let trace = TraceContext::new();
        call_and_serve(&trace).await;
        let failed = call(
            "a.B",
            "C",
            &trace,
            (),
            |_request: tonic::Request<()>| async {
                Err::<tonic::Response<()>, _>(tonic::Status::unavailable("gone"))
            },
        )
        .await;
        assert!(failed.is_err());
        provider.force_flush().unwrap();

        let spans = kept.0.lock().unwrap().clone();
        let client = |name: &str| {
            let span = spans
                .iter()
                .find(|span| span.span_kind == SpanKind::Client && span.name == name)
                .unwrap_or_else(|| panic!("no client span {name} in {spans:?}"));
            let attributes: std::collections::HashMap<String, String> = span
                .attributes
                .iter()
                .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                .collect();
            (span.status.clone(), attributes)
        };
        let (status, served) = client("dockercoins.rng.v1.RngService/Generate");
        assert_eq!(status, opentelemetry::trace::Status::Unset);
        assert_eq!(served["server.address"], "rng-7");
        assert_eq!(served["rpc.grpc.status_code"], "0");
        let (status, failed) = client("a.B/C");
        assert!(
            matches!(status, opentelemetry::trace::Status::Error { .. }),
            "{status:?}"
        );
        assert_eq!(failed["rpc.grpc.status_code"], "14");
        assert!(!failed.contains_key("server.address"));
    }

    #[test]
    fn the_sampled_flag_travels() {
        let unsampled = TraceContext {
            sampled: false,
            ..TraceContext::new()
        };
        assert!(unsampled.header().ends_with("-00"));
        assert_eq!(TraceContext::parse(&unsampled.header()), Some(unsampled));
        assert!(TraceContext::new().header().ends_with("-01"));
    }

    #[test]
    fn a_context_round_trips_through_its_header() {
        let context = TraceContext::new();
        assert_eq!(TraceContext::parse(&context.header()), Some(context));
        let child = context.child();
        assert_eq!(child.trace_id, context.trace_id);
        assert_eq!(child.header().len(), 55);
    }

    #[test]
    fn invalid_headers_are_ignored() {
        for bad in [
            "",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-xyz-b7ad6b7169203331-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        assert!(
            TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
                .is_some()
        );
    }
}
