//! Request tracing across the mesh with W3C `traceparent`.
//!
//! The worker starts a trace per unit of work and sends `traceparent` in the metadata of both of
//! its calls; rng and hasher open a span per request carrying the trace id, so that
//! `RUST_LOG=debug` on all three shows one unit's path through the mesh under one id. No tracing
//! backend is needed to follow it; an OpenTelemetry collector could take the same header.

use axum::extract::Request;
use tracing::Span;

/// The `traceparent` header (gRPC metadata key).
pub const TRACEPARENT: &str = "traceparent";

/// A new W3C trace context: `00-<32 hex trace id>-<16 hex span id>-01` (sampled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
}

impl TraceContext {
    /// A new trace with a random id.
    pub fn new() -> Self {
        Self {
            trace_id: rand::random::<u128>().max(1),
            span_id: rand::random::<u64>().max(1),
        }
    }

    /// The same trace, seen from a new span (one per call).
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: rand::random::<u64>().max(1),
        }
    }

    /// The trace id as the logs show it.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The header value.
    pub fn header(&self) -> String {
        format!("00-{:032x}-{:016x}-01", self.trace_id, self.span_id)
    }

    /// Parses a `traceparent` header; `None` when it is not a valid version-00 context.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.split('-');
        let (version, trace, span, _flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || trace.len() != 32 || span.len() != 16 || parts.next().is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|id| *id != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|id| *id != 0)?;
        Some(Self { trace_id, span_id })
    }
}

impl Default for TraceContext {
    fn default() -> Self {
        Self::new()
    }
}

/// The span of one served request (for tower-http's `TraceLayer::make_span_with`): method, path
/// and, when the caller sent one, the trace id.
pub fn request_span(request: &Request) -> Span {
    // At the default level the span is off: skip reading the header for it.
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return Span::none();
    }
    let trace_id = request
        .headers()
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok())
        .and_then(TraceContext::parse)
        .map(|context| context.trace_id());
    tracing::debug_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        trace_id = trace_id.as_deref().unwrap_or("-"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
