//! The `rng` binary: parse the configuration, bind, serve until SIGTERM/SIGINT.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: rng::Config = mesh::config::parse();
    mesh::telemetry::init();
    let shutdown = mesh::shutdown::on_signal();
    let listener = mesh::serve::bind(config.listen).await?;
    rng::run(config, listener, shutdown).await
}
