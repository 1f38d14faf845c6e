//! The `webui` binary: parse the configuration, bind, serve until SIGTERM/SIGINT.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: webui::Config = mesh::config::parse();
    mesh::telemetry::init();
    let shutdown = mesh::shutdown::on_signal();
    let listener = mesh::serve::bind(config.listen).await?;
    webui::run(config, listener, shutdown).await
}
