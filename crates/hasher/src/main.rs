//! The `hasher` binary: parse the configuration, bind, serve until SIGTERM/SIGINT; or, as
//! `hasher healthcheck`, probe the running hasher's gRPC health.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let config: hasher::Config = mesh::config::parse();
    if config.command == Some(mesh::probe::Command::Healthcheck) {
        return Ok(mesh::probe::exit(
            mesh::probe::grpc(config.listen, "").await,
        ));
    }
    mesh::telemetry::init();
    let shutdown = mesh::shutdown::on_signal();
    let listener = mesh::serve::bind(config.listen).await?;
    hasher::run(config, listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
