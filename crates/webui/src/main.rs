//! The `webui` binary: parse the configuration, bind, serve until SIGTERM/SIGINT; or, as
//! `webui healthcheck`, GET the running webui's `/healthz`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let config: webui::Config = mesh::config::parse();
    if config.command == Some(mesh::probe::Command::Healthcheck) {
        return Ok(mesh::probe::exit(
            mesh::probe::http(config.listen, "/healthz").await,
        ));
    }
    mesh::telemetry::init();
    let shutdown = mesh::shutdown::on_signal();
    let listener = mesh::serve::bind(config.listen).await?;
    webui::run(config, listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
