//! Tracing set-up shared by every service: `RUST_LOG` sets the levels (info by default) and
//! `LOG_FORMAT=json` switches to one JSON object per line for log collectors. With an OTLP
//! exporter (see `crate::telemetry::otlp`), the spans of `crate::telemetry::trace` are exported too.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Installs the global subscriber, writing to stderr, and exporting the mesh's spans to
/// `exporter` when there is one.
///
/// Colours are used only when stderr is a terminal, so `docker-compose logs` and test captures
/// read as plain text.
pub fn init(exporter: Option<&crate::telemetry::otlp::Exporter>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|format| format.eq_ignore_ascii_case("json"));
    let ansi = std::io::stderr().is_terminal();
    // Under `--cfg mesh_no_otlp` (see `crate::binary::main`) no exporter exists, and the branch
    // that would take one goes with it.
    let Some(exporter) = exporter.filter(|_| !cfg!(mesh_no_otlp)) else {
        // Without export, the subscriber every service had before it: one global filter.
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(ansi);
        if json {
            builder.json().init();
        } else {
            builder.init();
        }
        return;
    };
    // With export, each layer has its own filter: RUST_LOG still decides what is logged, while
    // the mesh's spans reach OpenTelemetry whatever the log level.
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let logs = if json {
        logs.json().boxed()
    } else {
        logs.boxed()
    };
    let spans = tracing_opentelemetry::layer()
        .with_tracer(exporter.tracer())
        // Code locations and thread names are noise in a trace of three small services.
        .with_location(false)
        .with_threads(false)
        // Two clock reads per poll of every span, for attributes nobody asked for.
        .with_tracked_inactivity(false)
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target(crate::telemetry::trace::TARGET, tracing::Level::DEBUG),
        );
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .init();
}
