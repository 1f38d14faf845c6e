//! The `worker` binary: parse the configuration, mine until SIGTERM/SIGINT, flush, exit; or, as
//! `worker healthcheck`, GET the running worker's `/healthz` on its admin listener.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let config: worker::Config = mesh::config::parse();
    if config.command == Some(mesh::probe::Command::Healthcheck) {
        return Ok(mesh::probe::exit(
            mesh::probe::http(config.admin_listen, "/healthz").await,
        ));
    }
    mesh::telemetry::init();
    let shutdown = mesh::shutdown::on_signal();
    let admin = mesh::serve::bind(config.admin_listen).await?;
    worker::run(config, admin, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
