//! The `webui` binary: parse the configuration, bind, serve until SIGTERM/SIGINT; or run a
//! subcommand (`healthcheck`, the container probe; `forward`, see `mesh::forward`).

use std::process::ExitCode;

// mimalloc: faster small allocations, and freed memory goes back (see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<ExitCode> {
    mesh::runtime::build()?.block_on(serve())
}

async fn serve() -> anyhow::Result<ExitCode> {
    let config: webui::Config = mesh::config::parse();
    let command = mesh::command::run(
        config.command.as_ref(),
        config.listen,
        mesh::command::Probe::Http("/healthz"),
    );
    if let Some(code) = command.await? {
        return Ok(code);
    }
    mesh::telemetry::init();
    let shutdown = mesh::shutdown::on_signal();
    let listener = mesh::serve::bind(config.listen).await?;
    webui::run(config, listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
