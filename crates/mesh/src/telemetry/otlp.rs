//! Export of traces over OTLP/gRPC, when OpenTelemetry's standard variables ask for it.
//!
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns it on; unset, no
//! exporter, no thread and no OpenTelemetry layer exist, and the spans of `crate::telemetry::trace` stay the
//! debug-only spans they are without it. `OTEL_SERVICE_NAME` names the process (the binary's name
//! by default), `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` sample as the SDK reads them;
//! the other `OTEL_*` variables (`OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `_HEADERS`,
//! `OTEL_RESOURCE_ATTRIBUTES`, …) are the SDK's own.
//!
//! The SDK's batch processor exports from a thread of its own, where tonic's client would find no
//! Tokio reactor, and a service's runtime has a single thread that is blocked while the last
//! batch is flushed at shutdown. So the exporter lives on a small runtime of its own (one thread):
//! its connection is driven there, whatever the service's runtime is doing.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The variables that turn export on, the signal's own first, as the SDK reads them.
pub const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// How long shutdown waits for the last spans to leave: the process still ends within its second
/// after the grace and the drain (700 ms at most by default, see `crate::server::shutdown`), even
/// when the collector is gone.
pub const FLUSH_DEADLINE: Duration = Duration::from_millis(200);

/// The samplers the SDK knows; it would fall back to always-on for any other name, silently for
/// an operator who misspelled one.
const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// A variable whose value the exporter cannot take: the one line the process exits with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{name}: invalid value {value:?}: {why}")]
pub struct InvalidVariable {
    pub name: &'static str,
    pub value: String,
    /// What is wrong with it, or what is expected instead.
    pub why: String,
}

impl InvalidVariable {
    fn new(name: &'static str, value: &str, why: impl Into<String>) -> Self {
        Self {
            name,
            value: value.to_string(),
            why: why.into(),
        }
    }
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the OTLP exporter's runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Export settings, read from the environment and checked before anything starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The `service.name` of every span this process exports.
    pub service_name: String,
}

impl Settings {
    /// The settings the process's environment asks for: `None` when export is off, and one line
    /// naming the variable when a value is wrong.
    pub fn from_env(default_service_name: &str) -> Result<Option<Self>, InvalidVariable> {
        Self::from_lookup(default_service_name, |name| std::env::var(name).ok())
    }

    /// [`Settings::from_env`] over any source of variables, for tests.
    pub fn from_lookup(
        default_service_name: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, InvalidVariable> {
        let set = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|value| value.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match set("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(InvalidVariable::new(
                    "OTEL_TRACES_EXPORTER",
                    other,
                    "expected otlp or none",
                ));
            }
        }
        let endpoints: Vec<(&'static str, String)> = ENDPOINT_VARIABLES
            .iter()
            .filter_map(|name| set(name).map(|value| (*name, value)))
            .collect();
        if endpoints.is_empty() {
            return Ok(None);
        }
        for (name, value) in &endpoints {
            check_endpoint(value).map_err(|why| InvalidVariable::new(name, value, why))?;
        }
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = set(name).filter(|protocol| protocol.trim() != "grpc") {
                return Err(InvalidVariable::new(
                    name,
                    &protocol,
                    "only grpc is built in",
                ));
            }
        }
        let sampler = set("OTEL_TRACES_SAMPLER").map(|sampler| sampler.trim().to_string());
        if let Some(sampler) = &sampler
            && !SAMPLERS.contains(&sampler.as_str())
        {
            return Err(InvalidVariable::new(
                "OTEL_TRACES_SAMPLER",
                sampler,
                format!("expected one of {}", SAMPLERS.join(", ")),
            ));
        }
        if let Some(raw) = set("OTEL_TRACES_SAMPLER_ARG")
            && sampler
                .as_deref()
                .is_some_and(|s| s.ends_with("traceidratio"))
            && !raw
                .trim()
                .parse::<f64>()
                .is_ok_and(|ratio| (0.0..=1.0).contains(&ratio))
        {
            return Err(InvalidVariable::new(
                "OTEL_TRACES_SAMPLER_ARG",
                &raw,
                "expected a ratio from 0 to 1",
            ));
        }
        let service_name = set("OTEL_SERVICE_NAME")
            .map(|name| name.trim().to_string())
            .unwrap_or_else(|| default_service_name.to_string());
        Ok(Some(Self { service_name }))
    }

    /// Starts the exporter: its runtime, its (lazy) connection, and the SDK's batch processor.
    ///
    /// Fails with one line when the SDK refuses one of its own variables.
    pub fn start(&self) -> Result<Exporter, StartError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()?;
        let exporter = {
            // The channel's connection task is spawned on the runtime entered here.
            let _entered = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()?
        };
        let resource = Resource::builder()
            .with_service_name(self.service_name.clone())
            .with_attribute(KeyValue::new("host.name", crate::hostname()))
            .build();
        // The sampler comes from OTEL_TRACES_SAMPLER/_ARG, which the builder reads itself.
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(exporter)
            .build();
        Ok(Exporter {
            provider,
            runtime: Some(runtime),
        })
    }
}

/// Whether `raw` is an endpoint the built-in exporter can reach: `http://host:port` (no TLS is
/// built in, and gRPC has no path). The error is what is wrong with it.
fn check_endpoint(raw: &str) -> Result<(), std::borrow::Cow<'static, str>> {
    let uri: http::Uri = raw
        .trim()
        .parse()
        .map_err(|err| format!("not a URL ({err})"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http"), Some(_)) => Ok(()),
        (Some("https"), _) => Err("https is not built in: use an http:// endpoint".into()),
        _ => Err("expected an http:// URL with a host, such as http://collector:4317".into()),
    }
}

/// A running exporter. Dropping it flushes the spans still queued, for at most
/// [`FLUSH_DEADLINE`].
pub struct Exporter {
    provider: SdkTracerProvider,
    /// Always `Some` until dropped: a runtime must be let go without blocking when the drop
    /// happens inside the service's runtime.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Exporter {
    /// The tracer for the `tracing` layer.
    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer("dockercoins")
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        // Blocks this thread up to the deadline, while the export runs on the exporter's own.
        if let Err(err) = self.provider.shutdown_with_timeout(FLUSH_DEADLINE) {
            tracing::warn!(%err, "the last spans may not have reached the OTLP collector");
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<Settings>, InvalidVariable> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        Settings::from_lookup("rng", |name| vars.get(name).cloned())
    }

    #[test]
    fn off_unless_an_endpoint_is_set() {
        assert_eq!(settings(&[]), Ok(None));
        assert_eq!(
            settings(&[
                ("OTEL_SERVICE_NAME", "rng-1"),
                ("OTEL_TRACES_SAMPLER", "always_on"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
            ]),
            Ok(None),
            "the other variables alone turn nothing on"
        );
        for disabled in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert_eq!(
                settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), disabled]),
                Ok(None),
                "{disabled:?}"
            );
        }
    }

    #[test]
    fn either_endpoint_turns_it_on_named_after_the_binary_by_default() {
        for name in ENDPOINT_VARIABLES {
            assert_eq!(
                settings(&[(name, "http://127.0.0.1:4317")]),
                Ok(Some(Settings {
                    service_name: "rng".to_string()
                })),
                "{name}"
            );
        }
        assert_eq!(
            settings(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
                ("OTEL_SERVICE_NAME", "rng-blue"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ]),
            Ok(Some(Settings {
                service_name: "rng-blue".to_string()
            }))
        );
    }

    #[test]
    fn bad_values_are_refused_naming_the_variable() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        for (bad, variable) in [
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec![(
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "https://collector:4317",
                )],
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            ),
            (
                vec![endpoint, ("OTEL_TRACES_SAMPLER", "sometimes")],
                "OTEL_TRACES_SAMPLER",
            ),
            (
                vec![
                    endpoint,
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
                ],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                vec![endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                vec![endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")],
                "OTEL_TRACES_EXPORTER",
            ),
        ] {
            let err = settings(&bad).unwrap_err();
            assert_eq!(err.name, variable, "{err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("{variable}: invalid value")),
                "{err}"
            );
        }
    }
}
