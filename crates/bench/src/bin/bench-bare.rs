//! `bench-bare tonic|axum --listen ADDR`: the floor the bench measures rng against (see
//! `bench::bare`). A binary of its own, not a subcommand of `bench`, so that it runs on rng's
//! allocator and runtime (mimalloc, one current-thread Tokio runtime) while the bench's load
//! generator keeps its own.

use std::net::SocketAddr;

use clap::Parser;

// As rng's main: the floor differs from rng by the layers only.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "bench-bare",
    about = "rng's Generate or GET /<n>, served by tonic or axum alone"
)]
struct Args {
    #[arg(value_enum)]
    server: bench::bare::Server,
    /// Address to bind; the one bound is logged as `listening addr=…`.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(bench::bare::run(args.server, args.listen))
}
