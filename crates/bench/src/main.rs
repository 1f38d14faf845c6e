//! The `bench` binary: `bench run [--quick]` (what `scripts/bench` runs after building); for
//! profiling by hand, `bench up` (the stack alone, for a while) and `bench grpc` (one gRPC load
//! on a running rng or hasher); `bench compare` (two builds' runs side by side).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bench::grpc_load::{self, Load, Rpc};
use bench::{compare, report};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "DockerCoins benchmark harness (see scripts/bench)"
)]
enum Command {
    /// Start the stack flat out on loopback, measure it, write target/bench/results.json.
    Run(bench::run::Options),
    /// Call rng Generate or hasher Hash from N streams; print what was measured as JSON.
    Grpc(GrpcArgs),
    /// Start the stack as `run` does, print pids and addresses, keep it up for a while (to
    /// profile it, or load it by hand).
    Up(UpArgs),
    /// Print the runs of two builds side by side (see scripts/bench-compare).
    Compare(CompareArgs),
}

#[derive(clap::Args, Debug)]
struct CompareArgs {
    /// Names of the two builds, for the table's header.
    #[arg(long, num_args = 2, default_values = ["before", "after"])]
    labels: Vec<String>,
    /// Output directories (each with a results.json) of the first build's runs.
    #[arg(long, num_args = 1.., required = true)]
    before: Vec<std::path::PathBuf>,
    /// Output directories of the second build's runs.
    #[arg(long, num_args = 1.., required = true)]
    after: Vec<std::path::PathBuf>,
    /// The change allowed in the bad direction, as a fraction.
    #[arg(long, default_value_t = 0.05)]
    tolerance: f64,
}

#[derive(clap::Args, Debug)]
struct UpArgs {
    #[command(flatten)]
    options: bench::run::Options,
    /// Also start a worker, flat out, with this many units in flight.
    #[arg(long)]
    worker: Option<u32>,
    /// How long to keep the stack up.
    #[arg(long = "for", default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

#[derive(clap::Args, Debug)]
struct GrpcArgs {
    /// `http://127.0.0.1:8001`
    #[arg(long)]
    url: String,
    #[arg(long, value_enum)]
    rpc: Rpc,
    #[arg(long, default_value_t = 64)]
    streams: usize,
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Threads, each a current-thread runtime with its share of the connections.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    window: Duration,
}

fn main() -> anyhow::Result<()> {
    match Command::parse() {
        Command::Run(options) => {
            let results = bench::run::run(&options)?;
            let json = serde_json::to_string_pretty(&results.to_json())?;
            let markdown = results.markdown();
            let out = &options.out_dir;
            std::fs::write(out.join("results.json"), json + "\n")?;
            std::fs::write(out.join("results.md"), &markdown)?;
            println!("{markdown}");
            eprintln!("bench: wrote {}", out.join("results.json").display());
            if !options.quick {
                report::update_docs(&options.docs, &markdown)
                    .with_context(|| format!("update {}", options.docs.display()))?;
                eprintln!("bench: updated {}", options.docs.display());
            }
        }
        Command::Up(args) => bench::run::up(&args.options, args.worker, args.duration)?,
        Command::Compare(args) => {
            let before = compare::load(&args.before)?;
            let after = compare::load(&args.after)?;
            let labels = (args.labels[0].as_str(), args.labels[1].as_str());
            print!(
                "{}",
                compare::table(labels, &before, &after, args.tolerance)
            );
        }
        Command::Grpc(args) => {
            let load = Load {
                rpc: args.rpc,
                url: args.url,
                streams: args.streams,
                connections: args.connections.min(args.streams),
                threads: args.threads,
                warmup: args.warmup,
                window: args.window,
            };
            let report = grpc_load::measure(&load, Arc::default())?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(())
}
