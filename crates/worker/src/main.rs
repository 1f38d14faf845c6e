//! The `worker` binary: parse the configuration, mine until SIGTERM/SIGINT, flush, exit; or run a
//! subcommand (`healthcheck`, the container probe; `forward`, see `mesh::forward`).

use std::process::ExitCode;

// mimalloc: faster small allocations, and freed memory goes back (see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<ExitCode> {
    mesh::runtime::build()?.block_on(serve())
}

async fn serve() -> anyhow::Result<ExitCode> {
    let config: worker::Config = mesh::config::parse();
    let command = mesh::command::run(
        config.command.as_ref(),
        config.admin_listen,
        mesh::command::Probe::Http("/healthz"),
    );
    if let Some(code) = command.await? {
        return Ok(code);
    }
    mesh::telemetry::init();
    let shutdown = mesh::shutdown::on_signal();
    let admin = mesh::serve::bind(config.admin_listen).await?;
    worker::run(config, admin, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
