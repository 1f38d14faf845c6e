//! Subcommands every service binary has besides serving, so that one static binary per image is
//! all a container needs: a probe for HEALTHCHECKs, the fault switch of the lesson, a forwarder.

use std::net::SocketAddr;
use std::process::ExitCode;

/// What a binary does instead of serving, when asked.
#[derive(clap::Subcommand, Debug, Clone, PartialEq)]
pub enum Command {
    /// Checks that the server configured like this one is healthy, then exits 0 (healthy) or 1.
    Healthcheck,
    /// Shows or changes the fault injected into the server configured like this one, through its
    /// admin port: `rng fault --delay 500ms`, `rng fault --error-rate 0.2`, `rng fault --clear`.
    Fault {
        /// Delay added to every request, such as 500ms ("0s" = none).
        #[arg(long)]
        delay: Option<String>,
        /// Share of requests that fail, from 0 to 1.
        #[arg(long, value_parser = crate::admin::fault::parse_rate)]
        error_rate: Option<f64>,
        /// Removes every fault (the same as `--delay 0s --error-rate 0`).
        #[arg(long, conflicts_with_all = ["delay", "error_rate"])]
        clear: bool,
    },
    /// Forwards TCP connections from the listen address to every replica behind a DNS name.
    ///
    /// Publishes a scaled service on one host port (see `crate::server::forward`).
    Forward {
        /// `host:port` of the replicas, re-resolved for every connection.
        #[arg(long)]
        to: String,
    },
}

/// How `healthcheck` checks a service.
#[derive(Debug, Clone, Copy)]
pub enum Probe {
    /// gRPC health on the service port, for the whole server.
    Grpc,
    /// An HTTP GET of this path on the admin port that must answer 200.
    Http(&'static str),
}

/// Where the server configured like this process listens.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    /// The service port.
    pub listen: SocketAddr,
    /// The admin port.
    pub admin: SocketAddr,
}

/// Runs `command`, if there is one, against the server configured at `addresses`; returns the
/// exit code, or `None` when the binary should serve as usual.
pub async fn run(
    command: Option<&Command>,
    addresses: Addresses,
    limits: &crate::Limits,
    probe: Probe,
) -> std::io::Result<Option<ExitCode>> {
    match command {
        None => Ok(None),
        Some(Command::Healthcheck) => {
            let outcome = match probe {
                Probe::Grpc => crate::admin::probe::grpc(addresses.listen, "").await,
                Probe::Http(path) => crate::admin::probe::http(addresses.admin, path).await,
            };
            Ok(Some(crate::admin::probe::exit(outcome)))
        }
        Some(Command::Fault {
            delay,
            error_rate,
            clear,
        }) => {
            let change = if *clear {
                Some(serde_json::json!({"delay": "0s", "error_rate": 0.0}))
            } else if delay.is_some() || error_rate.is_some() {
                let mut change = serde_json::Map::new();
                if let Some(delay) = delay {
                    change.insert("delay".into(), delay.clone().into());
                }
                if let Some(rate) = error_rate {
                    change.insert("error_rate".into(), (*rate).into());
                }
                Some(change.into())
            } else {
                None
            };
            let outcome = crate::admin::probe::fault(addresses.admin, change).await;
            Ok(Some(match outcome {
                Ok(answer) => {
                    println!("{answer}");
                    ExitCode::SUCCESS
                }
                Err(reason) => {
                    eprintln!("{reason}");
                    ExitCode::FAILURE
                }
            }))
        }
        Some(Command::Forward { to }) => {
            crate::telemetry::init(None);
            // No grace: nothing watches a forwarder's health, so nothing is to be told first.
            let shutdown = crate::server::shutdown::on_signal(std::time::Duration::ZERO);
            let listener = crate::server::serve::bind(addresses.listen).await?;
            crate::server::forward::run(listener, to.clone(), limits, shutdown).await?;
            Ok(Some(ExitCode::SUCCESS))
        }
    }
}
