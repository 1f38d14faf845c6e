//! The `worker` binary: parse the configuration, mine until SIGTERM/SIGINT, flush, exit; or run a
//! subcommand (`healthcheck`, the container probe; `forward`, see `mesh::server::forward`).

use std::process::ExitCode;

// mimalloc: faster small allocations, and freed memory goes back (see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<ExitCode> {
    mesh::binary::main(worker::run)
}
