//! The `worker` binary: parse the configuration, mine until SIGTERM/SIGINT, flush, exit.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: worker::Config = mesh::config::parse();
    mesh::telemetry::init();
    let shutdown = mesh::shutdown::on_signal();
    worker::run(config, shutdown).await
}
