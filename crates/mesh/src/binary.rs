//! The `main` every service binary shares: parse and check the configuration, then run a
//! subcommand, or bind the listener and serve until SIGTERM/SIGINT.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::net::TcpListener;

use crate::admin::command::{self, Command, Probe};
use crate::server::{serve, shutdown};
use crate::telemetry::{self, otlp};
use crate::{Shutdown, config, runtime};

/// What [`main`] needs from a service's configuration besides its own settings.
pub trait ServiceConfig: clap::Parser {
    /// How `healthcheck` checks this service.
    const PROBE: Probe;

    /// The address the service listens on (the worker's is its admin port).
    fn listen(&self) -> SocketAddr;

    /// The address of the admin listener (`/metrics`, `/healthz`, the fault switch).
    fn admin_listen(&self) -> SocketAddr;

    /// The limits of every listener the service (or its forwarder) opens.
    fn limits(&self) -> &crate::Limits;

    /// The subcommand asked for, if any.
    fn command(&self) -> Option<&Command>;

    /// Checks what clap cannot check one setting at a time; the error is one line naming the
    /// variables.
    fn validate(&self) -> Result<(), Box<dyn std::error::Error>> {
        Ok(())
    }
}

/// Runs a service binary: parses and checks `C` (or exits with status 2 and one line), runs its
/// subcommand if one was given, else binds [`ServiceConfig::listen`] and hands the listener to
/// `serve`. Errors are the service's own type (the binaries use `anyhow`), which must take in the
/// I/O errors of binding and of the subcommands.
pub fn main<C, F, Fut, E>(serve: F) -> Result<ExitCode, E>
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: From<std::io::Error>,
{
    let config: C = config::parse();
    let checked = || -> Result<_, Box<dyn std::error::Error>> {
        config.validate()?;
        let name = <C as clap::CommandFactory>::command()
            .get_name()
            .to_string();
        // `--cfg mesh_no_otlp` builds the services with the exporter left out (it is then never
        // started, and the linker drops its code), to measure what it costs linked in but unset:
        // `scripts/bench-compare --cfg mesh_no_otlp`. Not a configuration the images use.
        let traces = if cfg!(mesh_no_otlp) {
            None
        } else {
            otlp::Settings::from_env(&name)?
        };
        Ok((traces, runtime::build()?))
    };
    let (traces, runtime) =
        checked().unwrap_or_else(|err| config::exit_invalid::<C>(&err.to_string()));
    runtime.block_on(async move {
        let addresses = command::Addresses {
            listen: config.listen(),
            admin: config.admin_listen(),
        };
        if let Some(code) =
            command::run(config.command(), addresses, config.limits(), C::PROBE).await?
        {
            return Ok(code);
        }
        // Started only to serve: a `healthcheck` exports nothing.
        let exporter = traces.map(|traces| {
            traces
                .start()
                .unwrap_or_else(|err| config::exit_invalid::<C>(&err.to_string()))
        });
        telemetry::init(exporter.as_ref());
        // Before the service is built: the handles it takes then record into this recorder.
        telemetry::metrics::install();
        let shutdown = shutdown::on_signal(config.limits().shutdown_grace);
        let listener = serve::bind(config.listen()).await?;
        serve(config, listener, shutdown).await?;
        // The last spans leave before the process does (also on an error above, when dropped).
        drop(exporter);
        Ok(ExitCode::SUCCESS)
    })
}
