//! What every DockerCoins service shares, so that rng, hasher, worker and webui stay small and
//! behave alike: one listener for gRPC and HTTP, an admin listener beside it, gRPC health and
//! reflection, the request queue, configuration errors that name the variable, Redis pools with
//! deadlines, tracing set-up, and shutdown on SIGTERM/SIGINT.
//!
//! `mesh` knows no service: services depend on it, never the other way round. They hand it what
//! is theirs (a gRPC service, its descriptor set), and what worker and webui keep in Redis is in
//! the `ledger` crate, not here.

pub mod admin;
pub mod answer;
pub mod binary;
pub mod client;
pub mod config;
pub mod headers;
pub mod redis;
pub mod runtime;
pub mod server;
pub mod telemetry;

pub use admin::command::Command;
pub use server::limits::Limits;
pub use server::serve::serve;
pub use server::shutdown::Shutdown;

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
