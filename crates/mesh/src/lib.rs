//! What every DockerCoins service shares, so that rng, hasher, worker and webui stay small and
//! behave alike: one listener for gRPC and HTTP, an admin listener beside it, gRPC health and
//! reflection, the request queue, configuration errors that name the variable, tracing set-up, and
//! shutdown on SIGTERM/SIGINT.
//!
//! `mesh` knows no service: services depend on it, never the other way round.

pub mod accept;
pub mod admin;
pub mod admit;
pub mod balance;
pub mod binary;
pub mod command;
pub mod config;
pub mod deadline;
pub mod discovery;
pub mod fault;
pub mod forward;
pub mod grpc;
pub mod idle;
pub mod limits;
pub mod load;
pub mod metrics;
pub mod otlp;
pub mod probe;
pub mod queue;
pub mod redis;
pub mod runtime;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

pub use command::Command;
pub use limits::Limits;
pub use serve::serve;
pub use shutdown::Shutdown;

/// This host's name, as the original banners showed it (the container id under Docker).
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|name| name.trim().to_string())
        })
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
