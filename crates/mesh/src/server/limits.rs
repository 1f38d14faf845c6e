//! What one client may hold of a listener: how long it may take to send a request head, how big
//! the head may be, how many HTTP/2 streams and connections it may open, and how long a
//! connection may sit idle; and how long a listener keeps serving once shutdown starts. Every
//! listener of the mesh (service port, admin port, forwarder) takes the same [`Limits`], so that
//! the knobs are set in one place and documented once.
//!
//! The defaults are sized for the workshop and its turbo runs: up to 150 workers, each holding one
//! HTTP/2 connection per replica, and turbo load generators running 256 streams per connection.
//! None of them is reached by a well-behaved client; they bound what a hostile or broken one costs.

use std::time::Duration;

/// Server limits of one listener; flattened into every service's configuration.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time a client has to send a whole request head (HTTP/1) or, on a new connection, its first
    /// request (HTTP/2 preface and HEADERS, or any first byte); past it the connection is closed.
    /// hyper also times an HTTP/1 keep-alive connection's wait for its next head with it, so an
    /// HTTP/1 connection between requests is closed after this, before the idle timeout. A head
    /// is a few hundred bytes, which a live client sends in milliseconds; 10 s frees a slowloris
    /// connection's slot well within the 30 s the mesh promises at most.
    #[arg(long, env = "LISTEN_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = crate::config::parse_interval)]
    pub header_read_timeout: Duration,
    /// Largest request head, in bytes: HTTP/1's read buffer (431 beyond it) and HTTP/2's
    /// SETTINGS_MAX_HEADER_LIST_SIZE (the stream is refused beyond it). gRPC and shim requests
    /// carry well under 1 KiB of headers; 16 KiB leaves room for traces and cookies. At least
    /// 8192, hyper's smallest HTTP/1 buffer.
    #[arg(long, env = "LISTEN_MAX_HEADER_BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(MIN_HEADER_BYTES..=MAX_HEADER_BYTES))]
    pub max_header_bytes: u32,
    /// HTTP/2 streams one connection may have open at once; a client past it waits for a free
    /// one. A turbo load generator runs 256 per connection; a worker at most its
    /// `WORKER_CONCURRENCY`.
    #[arg(long, env = "LISTEN_MAX_STREAMS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams: u32,
    /// How long a connection may receive nothing before the kernel sends TCP keepalive probes,
    /// to find peers that are gone (a replica's host that died sends no FIN); whole seconds,
    /// rounded up. The kernel answers probes by itself, so they cost the process nothing.
    #[arg(long, env = "LISTEN_KEEPALIVE_INTERVAL", default_value = "20s", value_parser = crate::config::parse_interval)]
    pub keepalive_interval: Duration,
    /// How long probes, or data sent, may go unanswered before the connection is closed (with
    /// the interval, the connection's TCP_USER_TIMEOUT; see `crate::server::accept`).
    #[arg(long, env = "LISTEN_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = crate::config::parse_interval)]
    pub keepalive_timeout: Duration,
    /// A connection on which nothing was read for this long is closed, unless every request open
    /// on it has been read to its end and awaits only its answer (a gRPC health Watch may stay
    /// quiet for hours): a client that stops half-way through a request body holds nothing
    /// longer, nor does a connection with no request open. A minute is far longer than a client
    /// takes to send a request.
    #[arg(long, env = "LISTEN_IDLE_TIMEOUT", default_value = "60s", value_parser = crate::config::parse_interval)]
    pub idle_timeout: Duration,
    /// Connections open at once on this listener; beyond it a new connection is closed as soon as
    /// it is accepted, and the open ones keep working. 150 workers with a connection to each of a
    /// few replicas, plus probes and people, stay far below 1024; 1,000 held connections took the
    /// debug rng's peak RSS to under 30 MiB (tests/hostile_limits.rs).
    #[arg(long, env = "LISTEN_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// How long a listener goes on accepting and serving after its process reported NOT_SERVING
    /// on SIGTERM, before it stops accepting and drains (see `crate::server::shutdown`): the time
    /// a balancer watching gRPC health has to take the replica out, so that none of its calls is
    /// refused. The workers take a replica out within a few milliseconds of NOT_SERVING; 200 ms
    /// leaves a margin on a busy host and keeps the whole shutdown within a second. `0s` drains
    /// at once; at most 10 s, Docker's default wait before SIGKILL. The forwarder, which reports
    /// no health, stops at once.
    #[arg(long, env = "LISTEN_SHUTDOWN_GRACE", default_value = "200ms", value_parser = crate::server::shutdown::parse_grace)]
    pub shutdown_grace: Duration,
}

/// hyper refuses an HTTP/1 read buffer smaller than this.
const MIN_HEADER_BYTES: i64 = 8192;
/// HTTP/2 settings are 32-bit; a head of 16 MiB is already absurd.
const MAX_HEADER_BYTES: i64 = 16 * 1024 * 1024;

impl Default for Limits {
    /// The same values as the flags' defaults.
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_streams: 256,
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            shutdown_grace: Duration::from_millis(200),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Exit, try_parse_from};

    #[derive(clap::Parser, Debug)]
    #[command(name = "demo")]
    struct Demo {
        #[command(flatten)]
        limits: Limits,
    }

    fn rejected(args: &[&str]) -> String {
        match try_parse_from::<Demo, _, _>(args) {
            Err(Exit::Invalid(line)) => line,
            other => panic!("{args:?} must be rejected, got {other:?}"),
        }
    }

    #[test]
    fn the_default_is_what_the_flags_default_to() {
        let demo: Demo = try_parse_from(["demo"]).unwrap();
        assert_eq!(demo.limits, Limits::default());
    }

    #[test]
    fn flags_set_each_limit() {
        let demo: Demo = try_parse_from([
            "demo",
            "--header-read-timeout=2s",
            "--max-header-bytes=9000",
            "--max-streams=8",
            "--keepalive-interval=1s",
            "--keepalive-timeout=3s",
            "--idle-timeout=500ms",
            "--max-connections=5",
            "--shutdown-grace=50ms",
        ])
        .unwrap();
        assert_eq!(
            demo.limits,
            Limits {
                header_read_timeout: Duration::from_secs(2),
                max_header_bytes: 9000,
                max_streams: 8,
                keepalive_interval: Duration::from_secs(1),
                keepalive_timeout: Duration::from_secs(3),
                idle_timeout: Duration::from_millis(500),
                max_connections: 5,
                shutdown_grace: Duration::from_millis(50),
            }
        );
    }

    #[test]
    fn zero_durations_are_rejected_naming_the_variable() {
        for (flag, variable) in [
            ("--header-read-timeout=0s", "LISTEN_HEADER_READ_TIMEOUT"),
            ("--keepalive-interval=0s", "LISTEN_KEEPALIVE_INTERVAL"),
            ("--keepalive-timeout=0ms", "LISTEN_KEEPALIVE_TIMEOUT"),
            ("--idle-timeout=0s", "LISTEN_IDLE_TIMEOUT"),
        ] {
            let line = rejected(&["demo", flag]);
            assert!(line.contains(variable), "{line}");
            assert!(line.contains("more than 0s"), "{line}");
        }
    }

    #[test]
    fn the_shutdown_grace_may_be_zero_but_not_past_dockers_wait() {
        let demo: Demo = try_parse_from(["demo", "--shutdown-grace=0s"]).unwrap();
        assert_eq!(demo.limits.shutdown_grace, Duration::ZERO);
        for bad in ["--shutdown-grace=11s", "--shutdown-grace=soon"] {
            let line = rejected(&["demo", bad]);
            assert!(line.contains("LISTEN_SHUTDOWN_GRACE"), "{line}");
        }
    }

    #[test]
    fn zero_counts_and_tiny_heads_are_rejected_naming_the_variable() {
        for (flag, variable) in [
            ("--max-streams=0", "LISTEN_MAX_STREAMS"),
            ("--max-connections=0", "LISTEN_MAX_CONNECTIONS"),
            ("--max-header-bytes=0", "LISTEN_MAX_HEADER_BYTES"),
            ("--max-header-bytes=8191", "LISTEN_MAX_HEADER_BYTES"),
        ] {
            let line = rejected(&["demo", flag]);
            assert!(line.contains(variable), "{line}");
        }
    }
}
