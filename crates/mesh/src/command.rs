//! Subcommands every service binary has besides serving, so that one static binary per image is
//! all a container needs.

/// What a binary does instead of serving, when asked.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Checks that the server configured like this one is healthy, then exits 0 (healthy) or 1.
    Healthcheck,
    /// Forwards TCP connections from the listen address to every replica behind a DNS name.
    ///
    /// Publishes a scaled service on one host port (see `crate::forward`).
    Forward {
        /// `host:port` of the replicas, re-resolved for every connection.
        #[arg(long)]
        to: String,
    },
}

/// How `healthcheck` checks a service.
#[derive(Debug, Clone, Copy)]
pub enum Probe {
    /// gRPC health, for the whole server.
    Grpc,
    /// An HTTP GET of this path that must answer 200.
    Http(&'static str),
}

/// Runs `command`, if there is one, against the server configured to listen on `listen`; returns
/// the exit code, or `None` when the binary should serve as usual.
pub async fn run(
    command: Option<&Command>,
    listen: std::net::SocketAddr,
    limits: &crate::Limits,
    probe: Probe,
) -> anyhow::Result<Option<std::process::ExitCode>> {
    match command {
        None => Ok(None),
        Some(Command::Healthcheck) => {
            let outcome = match probe {
                Probe::Grpc => crate::probe::grpc(listen, "").await,
                Probe::Http(path) => crate::probe::http(listen, path).await,
            };
            Ok(Some(crate::probe::exit(outcome)))
        }
        Some(Command::Forward { to }) => {
            crate::telemetry::init();
            let shutdown = crate::shutdown::on_signal();
            let listener = crate::serve::bind(listen).await?;
            crate::forward::run(listener, to.clone(), limits, shutdown).await?;
            Ok(Some(std::process::ExitCode::SUCCESS))
        }
    }
}
