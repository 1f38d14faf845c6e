//! One benchmark run, start to end: the stack flat out on loopback, each measurement after a
//! warm-up, then memory, sizes and SIGTERM times.
//!
//! The order matters on two shared cores: every measurement runs alone (nothing else loads the
//! stack meanwhile), idle memory is read before any load, and the SIGTERM times come last since
//! they end the services. Quick mode runs the same steps with short windows and a shorter sweep,
//! so CI keeps the whole harness working in well under a minute.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;

use crate::grpc_load::{self, Load, Progress, Rpc};
use crate::machine::Machine;
use crate::process::{self, Running};
use crate::report::{Measurement, Results, SERVICES, ServiceFacts, TurboStep};
use crate::turbo::{self, Counter};
use crate::{h2load, wrk};

/// What to run, from the command line.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Short windows and a short sweep: a few seconds per measurement (what CI runs).
    #[arg(long)]
    pub quick: bool,
    /// Where the four release binaries are.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Where results.json, results.md and the processes' logs go.
    #[arg(long, default_value = "target/bench")]
    pub out_dir: PathBuf,
    /// The document whose generated block a full run rewrites (quick runs never do).
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    pub docs: PathBuf,
    /// Fail when an image `dockercoins-mesh/<service>:v0.1` is missing (full runs build them first).
    #[arg(long)]
    pub require_images: bool,
    /// HTTP/2 connections the 64 gRPC streams share.
    #[arg(long, default_value_t = 2)]
    pub grpc_connections: usize,
    /// Threads of the gRPC load generator, each a current-thread runtime with its share of the
    /// connections. One: with two, they and the server's one thread are three busy threads on two
    /// cores, and the server is set aside while it has calls to answer (rng's `Generate`: 84,000
    /// calls/s with two client threads, 121,000 with one; a slower server, whose own CPU is the
    /// limit, measured the same with either).
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Before measuring, wait up to this long for the machine to be quiet (default: 0s with
    /// --quick, 5m otherwise); the run goes ahead anyway, and the report says how busy it was.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wait_quiet: Option<Duration>,
}

/// How long each part runs.
struct Plan {
    warmup: Duration,
    window: Duration,
    /// Turbo steps: units in flight (`WORKER_CONCURRENCY`) and units per call pair
    /// (`WORKER_BATCH`).
    sweep: Vec<(u32, u32)>,
    /// Measured runs per `wrk` or `h2load` load; the one with the median p99 (h2load: the median
    /// rate) is reported. A saturated
    /// closed loop on two shared cores puts its p99 at the scheduler's mercy: single runs of the
    /// same binary ranged from 0.4 to 4 ms.
    wrk_runs: usize,
    turbo_warmup: Duration,
    turbo_window: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                warmup: Duration::from_secs(1),
                window: Duration::from_secs(2),
                sweep: vec![(1, 1), (64, 1), (8, 100)],
                wrk_runs: 1,
                turbo_warmup: Duration::from_millis(1500),
                turbo_window: Duration::from_secs(2),
            }
        } else {
            Self {
                warmup: Duration::from_secs(3),
                window: Duration::from_secs(10),
                sweep: vec![(1, 1), (8, 1), (64, 1), (256, 1), (8, 100), (4, 256)],
                wrk_runs: 3,
                turbo_warmup: Duration::from_secs(3),
                turbo_window: Duration::from_secs(8),
            }
        }
    }
}

/// The gRPC stream counts the targets are stated for.
const STREAMS: [usize; 2] = [1, 64];
/// How long a service has been idle when its idle memory is read.
const IDLE_SETTLE: Duration = Duration::from_millis(300);
/// How long a load runs before the SIGTERM it is there to resist.
const LOAD_BEFORE_SIGTERM: Duration = Duration::from_millis(500);
/// Busy below this (% of one core, every core summed) counts as quiet.
const QUIET_PERCENT: f64 = 20.0;
/// The 32-byte body the hasher shim is sent (what the worker sends over gRPC).
const BODY: &str = "0123456789abcdef0123456789abcdef";

/// `WORKER_DIFFICULTY` of every worker the bench starts, as in the turbo overlay: at ~930k
/// hashes/s, difficulty 1 would put ~58,000 coins a second into the wallet and fill Redis within
/// minutes; at 5 it is about one a second.
pub const DIFFICULTY: u8 = 5;

/// redis-server and the three servers of the stack, flat out, on loopback.
pub struct Stack {
    redis: Running,
    pub redis_url: String,
    rng: Running,
    rng_addr: SocketAddr,
    hasher: Running,
    hasher_addr: SocketAddr,
    webui: Running,
    webui_addr: SocketAddr,
}

impl Stack {
    pub fn start(options: &Options, logs: &Path) -> anyhow::Result<Self> {
        let port = process::free_port()?;
        // As deployed (the ledger's flags: an append-only file synced once a second, memory
        // capped, nothing evicted). Its own directory, emptied first: each run starts from zero.
        let dir = options.out_dir.join("redis");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let (port, dir) = (port.to_string(), dir.display().to_string());
        let mut args = vec!["--bind", "127.0.0.1", "--port", &port, "--dir", &dir];
        args.extend(
            ledger::REDIS_DURABILITY
                .iter()
                .flat_map(|&(flag, value)| [flag, value]),
        );
        args.extend(["--maxmemory", ledger::REDIS_MAXMEMORY]);
        let mut redis = Running::spawn("redis", Path::new("redis-server"), &args, &[], logs)
            .context("start redis-server (scripts/install-prereqs installs it)")?;
        redis.wait_for_log("Ready to accept connections")?;
        let redis_url = format!("redis://127.0.0.1:{port}");

        let service =
            |name: &str, env: &[(&str, String)]| -> anyhow::Result<(Running, SocketAddr)> {
                let listen = format!("{}_LISTEN", name.to_uppercase());
                let admin = format!("{}_ADMIN_LISTEN", name.to_uppercase());
                let mut env = env.to_vec();
                env.push((&listen, "127.0.0.1:0".into()));
                env.push((&admin, "127.0.0.1:0".into()));
                let mut running = Running::spawn(name, &binary(options, name), &[], &env, logs)?;
                let addr = running.listening_addr()?;
                Ok((running, addr))
            };
        let (rng, rng_addr) = service(
            "rng",
            &[("RNG_DELAY", "0s".into()), ("RNG_CONCURRENCY", "0".into())],
        )?;
        let (hasher, hasher_addr) = service(
            "hasher",
            &[
                ("HASHER_DELAY", "0s".into()),
                ("HASHER_CONCURRENCY", "0".into()),
            ],
        )?;
        let (webui, webui_addr) = service("webui", &[("REDIS_URL", redis_url.clone())])?;
        Ok(Self {
            redis,
            redis_url,
            rng,
            rng_addr,
            hasher,
            hasher_addr,
            webui,
            webui_addr,
        })
    }

    /// The processes whose CPU time each measurement accounts for.
    fn processes(&self) -> Vec<&Running> {
        vec![&self.rng, &self.hasher, &self.webui, &self.redis]
    }

    /// A worker, flat out, with `concurrency` call pairs in flight of `batch` units each (`delay`
    /// between them).
    pub fn worker(
        &self,
        options: &Options,
        logs: &Path,
        (concurrency, batch): (u32, u32),
        delay: &str,
    ) -> anyhow::Result<Running> {
        let env = [
            ("RNG_ENDPOINT", format!("http://{}", self.rng_addr)),
            ("HASHER_ENDPOINT", format!("http://{}", self.hasher_addr)),
            ("REDIS_URL", self.redis_url.clone()),
            ("WORKER_DELAY", delay.to_string()),
            ("WORKER_CONCURRENCY", concurrency.to_string()),
            ("WORKER_BATCH", batch.to_string()),
            ("WORKER_DIFFICULTY", DIFFICULTY.to_string()),
            ("WORKER_ADMIN_LISTEN", "127.0.0.1:0".to_string()),
        ];
        let name = format!("worker-{concurrency}x{batch}");
        let mut worker = Running::spawn(&name, &binary(options, "worker"), &[], &env, logs)?;
        worker.wait_for_log("worker starting")?;
        worker.listening_addr()?;
        Ok(worker)
    }
}

fn binary(options: &Options, name: &str) -> PathBuf {
    options.bin_dir.join(name)
}

/// The floor: `bench-bare tonic` and `bench-bare axum` (see [`crate::bare`]), loaded beside rng
/// with the same tools.
struct Bare {
    tonic: Running,
    tonic_addr: SocketAddr,
    axum: Running,
    axum_addr: SocketAddr,
}

impl Bare {
    fn start(options: &Options, logs: &Path) -> anyhow::Result<Self> {
        let start = |server: &str| -> anyhow::Result<(Running, SocketAddr)> {
            let name = format!("bare_{server}");
            let args = [server, "--listen", "127.0.0.1:0"];
            let mut running =
                Running::spawn(&name, &binary(options, "bench-bare"), &args, &[], logs)?;
            let addr = running.listening_addr()?;
            Ok((running, addr))
        };
        let (tonic, tonic_addr) = start("tonic")?;
        let (axum, axum_addr) = start("axum")?;
        Ok(Self {
            tonic,
            tonic_addr,
            axum,
            axum_addr,
        })
    }

    fn processes(&self) -> Vec<&Running> {
        vec![&self.tonic, &self.axum]
    }

    /// Stops both; each must exit cleanly on SIGTERM.
    fn terminate(&mut self) -> anyhow::Result<()> {
        self.tonic.terminate()?;
        self.axum.terminate()?;
        Ok(())
    }
}

/// Each process's share of one core over a run (100 = one core), by name, and `other`.
type CpuShares = BTreeMap<String, f64>;

/// CPU time of a set of processes and of the whole machine, from one instant to another.
struct CpuWatch {
    processes: Vec<(String, Duration)>,
    machine: Duration,
    at: Instant,
}

impl CpuWatch {
    fn start(processes: &[&Running]) -> anyhow::Result<Self> {
        Ok(Self {
            processes: processes
                .iter()
                .map(|p| Ok((short_name(&p.name), p.cpu()?)))
                .collect::<anyhow::Result<_>>()?,
            machine: process::machine_busy()?,
            at: Instant::now(),
        })
    }

    /// Each process's share of one core since the start (100 = one core), and `other`: what the
    /// machine spent besides them (the load tool, and anything else running).
    fn stop(self, processes: &[&Running]) -> anyhow::Result<CpuShares> {
        let elapsed = self.at.elapsed().as_secs_f64();
        let machine = (process::machine_busy()? - self.machine).as_secs_f64();
        let mut shares = BTreeMap::new();
        let mut accounted = 0.0;
        for (process, (name, before)) in processes.iter().zip(&self.processes) {
            let used = (process.cpu()?.saturating_sub(*before)).as_secs_f64();
            accounted += used;
            shares.insert(name.clone(), (used / elapsed * 100.0).round());
        }
        shares.insert(
            "other".into(),
            ((machine - accounted).max(0.0) / elapsed * 100.0).round(),
        );
        Ok(shares)
    }
}

/// `worker-64` → `worker`.
fn short_name(name: &str) -> String {
    name.split('-').next().unwrap_or(name).to_string()
}

/// One endpoint a load tool runs against, and the row it makes.
struct Target<'a> {
    key: &'a str,
    what: &'a str,
    url: String,
}

/// Runs every measurement and returns the results.
pub fn run(options: &Options) -> anyhow::Result<Results> {
    let plan = Plan::new(options.quick);
    let logs = options.out_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    let mut machine = Machine::describe();
    let wait = options.wait_quiet.unwrap_or(if options.quick {
        Duration::ZERO
    } else {
        Duration::from_secs(300)
    });
    machine.busy_at_start_percent = wait_for_quiet(wait)?;
    let started = Instant::now();
    let mut services: BTreeMap<String, ServiceFacts> = SERVICES
        .iter()
        .map(|name| (name.to_string(), ServiceFacts::default()))
        .collect();
    for (name, facts) in &mut services {
        let path = binary(options, name);
        let bytes = std::fs::metadata(&path)
            .with_context(|| format!("{} is not built", path.display()))?
            .len();
        facts.binary_mib = bytes as f64 / 1024.0 / 1024.0;
        // Both builds of a comparison start cold, however each binary was written.
        process::evict_from_page_cache(&path)?;
        facts.image_mb = image_mb(name);
        if options.require_images && facts.image_mb.is_none() {
            bail!("image dockercoins-mesh/{name}:v0.1 is not built");
        }
    }

    let mut stack = Stack::start(options, &logs)?;
    let mut bare = Bare::start(options, &logs)?;
    eprintln!(
        "bench: stack up (rng {}, hasher {}, webui {}, {}; bare tonic {}, bare axum {})",
        stack.rng_addr,
        stack.hasher_addr,
        stack.webui_addr,
        stack.redis_url,
        bare.tonic_addr,
        bare.axum_addr
    );

    // Idle memory, before any load.
    std::thread::sleep(IDLE_SETTLE);
    for (name, process) in [
        ("rng", &stack.rng),
        ("hasher", &stack.hasher),
        ("webui", &stack.webui),
    ] {
        services.get_mut(name).expect("a service").rss_idle_mib = process.memory()?.rss_mib();
    }
    {
        // A worker connected to everything but pausing an hour before its first unit.
        let mut worker = stack.worker(options, &logs, (1, 1), "1h")?;
        std::thread::sleep(IDLE_SETTLE);
        services.get_mut("worker").expect("a service").rss_idle_mib = worker.memory()?.rss_mib();
        worker.terminate()?;
    }

    let mut measurements = Vec::new();
    let script = options.out_dir.join("post32.lua");
    std::fs::write(&script, wrk::post_script(BODY))?;
    let rng_url = format!("http://{}", stack.rng_addr);
    let hasher_url = format!("http://{}", stack.hasher_addr);
    // rng's shim and the bare axum server in turn, run for run, so that a drift of the machine
    // moves both alike.
    measurements.extend(wrk_measure(
        &[stack.processes(), bare.processes()].concat(),
        &plan,
        &[
            Target {
                key: "rng_http",
                what: "rng HTTP shim, GET /32",
                url: format!("{rng_url}/32"),
            },
            Target {
                key: "bare_axum_http",
                what: "bare axum, GET /32",
                url: format!("http://{}/32", bare.axum_addr),
            },
        ],
        None,
    )?);
    measurements.extend(wrk_measure(
        &stack.processes(),
        &plan,
        &[Target {
            key: "hasher_http",
            what: "hasher HTTP shim, POST 32 bytes",
            url: format!("{hasher_url}/"),
        }],
        Some(&script),
    )?);
    for (rpc, url, service) in [
        (Rpc::Rng, &rng_url, "rng gRPC Generate(32)"),
        (Rpc::Hasher, &hasher_url, "hasher gRPC Hash(32 bytes)"),
    ] {
        for streams in STREAMS {
            let name = format!("{rpc:?}").to_lowercase();
            let key = match streams {
                1 => format!("{name}_grpc_1_stream"),
                _ => format!("{name}_grpc"),
            };
            let load = Load {
                rpc,
                url: url.clone(),
                streams,
                connections: options.grpc_connections.min(streams),
                threads: options.client_threads,
                warmup: plan.warmup,
                window: plan.window,
            };
            measurements.push(grpc_measure(&stack, &key, service, &load)?);
        }
    }

    // The same pairing over gRPC, with h2load: unlike the generator above (a tonic client, as
    // the worker calls), it spends little CPU per call, so the servers set the rate.
    let body = options.out_dir.join("generate.grpc");
    std::fs::write(&body, h2load::generate_body())?;
    measurements.extend(h2load_measure(
        &[stack.processes(), bare.processes()].concat(),
        &plan,
        &[
            Target {
                key: "rng_grpc_h2load",
                what: "rng gRPC Generate(32)",
                url: rng_url.clone(),
            },
            Target {
                key: "bare_tonic_grpc",
                what: "bare tonic, Generate(32)",
                url: format!("http://{}", bare.tonic_addr),
            },
        ],
        &body,
    )?);
    bare.terminate()?;

    let mut turbo = Vec::new();
    for &(concurrency, batch) in &plan.sweep {
        let step = turbo_step(&stack, options, &logs, &plan, (concurrency, batch))?;
        eprintln!(
            "bench: turbo, {concurrency} in flight x {batch} per call: {:.0} hashes/s",
            step.hashes_per_s
        );
        turbo.push(step);
    }
    {
        let worker = services.get_mut("worker").expect("a service");
        worker.rss_load_mib = turbo
            .iter()
            .map(|s| s.worker_peak_rss_mib)
            .fold(0.0, f64::max);
        worker.sigterm_exit_ms = turbo.iter().map(|s| s.sigterm_exit_ms).fold(0.0, f64::max);
    }

    measurements.extend(wrk_measure(
        &stack.processes(),
        &plan,
        &[Target {
            key: "webui_json",
            what: "webui GET /json",
            url: format!("http://{}/json", stack.webui_addr),
        }],
        None,
    )?);

    for (name, process) in [
        ("rng", &stack.rng),
        ("hasher", &stack.hasher),
        ("webui", &stack.webui),
    ] {
        services.get_mut(name).expect("a service").rss_load_mib = process.memory()?.peak_mib();
    }

    // Last, since it ends them: each service's exit on SIGTERM, under load.
    let webui_url = format!("http://{}/json", stack.webui_addr);
    services
        .get_mut("webui")
        .expect("a service")
        .sigterm_exit_ms = terminate_under_wrk(&mut stack.webui, &webui_url, &logs)?;
    for (rpc, url, process, name) in [
        (Rpc::Rng, &rng_url, &mut stack.rng, "rng"),
        (Rpc::Hasher, &hasher_url, &mut stack.hasher, "hasher"),
    ] {
        services.get_mut(name).expect("a service").sigterm_exit_ms =
            terminate_under_grpc(process, rpc, url, options)?;
    }
    stack.redis.terminate()?;

    Ok(Results {
        quick: options.quick,
        machine,
        measurements,
        turbo,
        services,
        duration_s: started.elapsed().as_secs_f64(),
    })
}

/// Waits until the machine spent less than [`QUIET_PERCENT`] of a core busy over one second, or
/// `patience` passed; returns the last second's busy percentage.
fn wait_for_quiet(patience: Duration) -> anyhow::Result<f64> {
    let give_up = Instant::now() + patience;
    loop {
        let before = process::machine_busy()?;
        let at = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        let busy = (process::machine_busy()? - before).as_secs_f64() / at.elapsed().as_secs_f64();
        let percent = (busy * 100.0).round();
        if percent < QUIET_PERCENT || Instant::now() >= give_up {
            if percent >= QUIET_PERCENT && !patience.is_zero() {
                eprintln!("bench: the machine is still {percent}% busy; measuring anyway");
            }
            return Ok(percent);
        }
        eprintln!("bench: the machine is {percent}% busy; waiting for it to be quiet");
    }
}

/// Starts the stack as a run does (and a worker with `worker` units in flight, if given), prints
/// each process's pid and address as shell assignments, keeps it up for `duration`, then stops it:
/// a stack to point a profiler or a load tool at by hand.
pub fn up(options: &Options, worker: Option<u32>, duration: Duration) -> anyhow::Result<()> {
    let logs = options.out_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    let stack = Stack::start(options, &logs)?;
    let worker = match worker {
        Some(concurrency) => Some(stack.worker(options, &logs, (concurrency, 1), "0s")?),
        None => None,
    };
    println!("REDIS_URL={}", stack.redis_url);
    for (name, process, addr) in [
        ("RNG", &stack.rng, stack.rng_addr),
        ("HASHER", &stack.hasher, stack.hasher_addr),
        ("WEBUI", &stack.webui, stack.webui_addr),
    ] {
        println!("{name}_PID={}\n{name}_ADDR={addr}", process.pid());
    }
    if let Some(worker) = &worker {
        println!("WORKER_PID={}", worker.pid());
    }
    std::thread::sleep(duration);
    Ok(())
}

/// `wrk -t2 -c16 --latency` on each target (with `script`, if given): a warm-up run each, then
/// the measured runs, the targets in turn; reports each target's run with the median p99, and
/// every run's p99 in the tool column. `processes` are those whose CPU time is accounted.
fn wrk_measure(
    processes: &[&Running],
    plan: &Plan,
    targets: &[Target],
    script: Option<&Path>,
) -> anyhow::Result<Vec<Measurement>> {
    for target in targets {
        wrk::run(&target.url, plan.warmup, script)?;
    }
    let runs = in_turn(processes, plan.wrk_runs, targets, |target| {
        let report = wrk::run(&target.url, plan.window, script)?;
        eprintln!(
            "bench: {}: {:.0} req/s, p99 {:.3} ms",
            target.what, report.rps, report.p99_ms
        );
        Ok(report)
    })?;
    let mut measurements = Vec::new();
    for (target, runs) in targets.iter().zip(runs) {
        let mut tool = format!("wrk -t{} -c{}", wrk::THREADS, wrk::CONNECTIONS);
        if runs.len() > 1 {
            let p99s: Vec<String> = runs
                .iter()
                .map(|(report, _)| format!("{:.2}", report.p99_ms))
                .collect();
            tool += &format!(
                ", median of {} runs by p99 (p99s {} ms)",
                runs.len(),
                p99s.join(", ")
            );
        }
        let (r, cpu_percent) = median_by(runs, |r| r.p99_ms);
        measurements.push(measurement(
            target,
            tool,
            (r.rps, [r.p50_ms, r.p90_ms, r.p99_ms]),
            (r.requests, r.errors),
            cpu_percent,
        ));
    }
    Ok(measurements)
}

/// `h2load -t2 -c2 -m32` on each target, POSTing the gRPC message in `body`: the targets in
/// turn, run for run (each run with its own warm-up, since each opens new connections); reports
/// each target's run with the median rate. h2load gives no percentiles: those are left out.
fn h2load_measure(
    processes: &[&Running],
    plan: &Plan,
    targets: &[Target],
    body: &Path,
) -> anyhow::Result<Vec<Measurement>> {
    // h2load cannot see a gRPC status (it comes in trailers): one call through tonic first
    // proves that the server answers Generate at all.
    for target in targets {
        grpc_load::generate_once(&target.url)
            .with_context(|| format!("{} does not answer Generate", target.what))?;
    }
    let runs = in_turn(processes, plan.wrk_runs, targets, |target| {
        let report = h2load::run(&target.url, body, plan.warmup, plan.window)?;
        eprintln!(
            "bench: {} (h2load): {:.0} req/s, mean {:.3} ms",
            target.what, report.rps, report.mean_ms
        );
        Ok(report)
    })?;
    let mut measurements = Vec::new();
    for (target, runs) in targets.iter().zip(runs) {
        let mut tool = format!(
            "h2load -t{} -c{} -m{}",
            h2load::THREADS,
            h2load::CONNECTIONS,
            h2load::STREAMS
        );
        if runs.len() > 1 {
            let rates: Vec<String> = runs.iter().map(|(r, _)| format!("{:.0}", r.rps)).collect();
            tool += &format!(
                ", median of {} runs (req/s {})",
                runs.len(),
                rates.join(", ")
            );
        }
        let (r, cpu_percent) = median_by(runs, |r| r.rps);
        measurements.push(measurement(
            target,
            tool,
            (r.rps, [f64::NAN; 3]),
            (r.requests, r.errors),
            cpu_percent,
        ));
    }
    Ok(measurements)
}

/// Each target's `runs` runs of `load`, the targets in turn, run for run (a drift of the machine
/// then moves every target alike), each with the CPU shares of `processes` over it.
fn in_turn<R>(
    processes: &[&Running],
    runs: usize,
    targets: &[Target],
    mut load: impl FnMut(&Target) -> anyhow::Result<R>,
) -> anyhow::Result<Vec<Vec<(R, CpuShares)>>> {
    let mut measured: Vec<Vec<_>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..runs {
        for (target, measured) in targets.iter().zip(&mut measured) {
            let watch = CpuWatch::start(processes)?;
            let report = load(target)?;
            measured.push((report, watch.stop(processes)?));
        }
    }
    Ok(measured)
}

/// The run whose `by` is the median of `runs` (the upper one of an even count).
fn median_by<R>(mut runs: Vec<(R, CpuShares)>, by: impl Fn(&R) -> f64) -> (R, CpuShares) {
    runs.sort_by(|a, b| by(&a.0).total_cmp(&by(&b.0)));
    runs.swap_remove(runs.len() / 2)
}

/// The row of `target`: `tool`, the rate and p50/p90/p99 (NaN where the tool gives none), the
/// calls and errors, and the CPU shares.
fn measurement(
    target: &Target,
    tool: String,
    (rps, [p50_ms, p90_ms, p99_ms]): (f64, [f64; 3]),
    (requests, errors): (u64, u64),
    cpu_percent: CpuShares,
) -> Measurement {
    Measurement {
        key: target.key.into(),
        what: target.what.into(),
        tool,
        rps,
        p50_ms,
        p90_ms,
        p99_ms,
        requests,
        errors,
        cpu_percent,
    }
}

/// The gRPC load generator on one RPC; the warm-up is part of the load's own schedule.
fn grpc_measure(stack: &Stack, key: &str, what: &str, load: &Load) -> anyhow::Result<Measurement> {
    let processes = stack.processes();
    // CPU is accounted over warm-up and window alike: the load does not change between them.
    let watch = CpuWatch::start(&processes)?;
    let report = grpc_load::measure(load, Arc::default())?;
    let cpu_percent = watch.stop(&processes)?;
    eprintln!(
        "bench: {what}, {} in flight: {:.0} req/s, p99 {:.3} ms",
        load.streams, report.rps, report.p99_ms
    );
    let tool = format!(
        "tonic, {} stream{} / {} conn",
        load.streams,
        if load.streams == 1 { "" } else { "s" },
        load.connections
    );
    let target = Target {
        key,
        what,
        url: load.url.clone(),
    };
    let r = report;
    Ok(measurement(
        &target,
        tool,
        (r.rps, [r.p50_ms, r.p90_ms, r.p99_ms]),
        (r.requests, r.errors),
        cpu_percent,
    ))
}

/// One step of the turbo sweep: a fresh worker with `concurrency` call pairs in flight of `batch`
/// units each, its rate in Redis, its memory at the end, and its exit on SIGTERM while mining
/// flat out.
fn turbo_step(
    stack: &Stack,
    options: &Options,
    logs: &Path,
    plan: &Plan,
    (concurrency, batch): (u32, u32),
) -> anyhow::Result<TurboStep> {
    let mut counter = Counter::connect(&stack.redis_url)?;
    let mut worker = stack.worker(options, logs, (concurrency, batch), "0s")?;
    let mut processes = stack.processes();
    processes.insert(0, &worker);
    let mut watch = None;
    let (first, last) = counter.window(plan.turbo_warmup, plan.turbo_window, || {
        watch = Some(CpuWatch::start(&processes)?);
        Ok(())
    })?;
    let cpu_percent = watch
        .expect("started at the first flush")
        .stop(&processes)?;
    drop(processes);
    let peak = worker.memory()?.peak_mib();
    let exit = worker.terminate()?;
    Ok(TurboStep {
        concurrency,
        batch,
        hashes_per_s: turbo::rate(first, last),
        window_s: (last.at - first.at).as_secs_f64(),
        worker_peak_rss_mib: peak,
        sigterm_exit_ms: exit.as_secs_f64() * 1000.0,
        cpu_percent,
    })
}

/// SIGTERM to the webui while wrk loads `/json`; returns the time to exit in ms.
fn terminate_under_wrk(webui: &mut Running, url: &str, logs: &Path) -> anyhow::Result<f64> {
    let command = wrk::command(url, Duration::from_secs(30), None);
    let args: Vec<String> = command
        .get_args()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut load = Running::spawn("wrk-sigterm", Path::new("wrk"), &args, &[], logs)?;
    std::thread::sleep(LOAD_BEFORE_SIGTERM);
    let exit = webui.terminate()?;
    // SIGINT makes wrk stop and print what it did, which proves the load was running.
    load.signal(Signal::SIGINT)?;
    load.wait_until(Instant::now() + Duration::from_secs(5))?;
    let report = wrk::parse(&load.output())?;
    if report.requests == 0 {
        bail!("wrk sent nothing to the webui before SIGTERM: no load to exit under");
    }
    Ok(exit.as_secs_f64() * 1000.0)
}

/// SIGTERM to rng or hasher while 64 gRPC streams call it; returns the time to exit in ms.
fn terminate_under_grpc(
    service: &mut Running,
    rpc: Rpc,
    url: &str,
    options: &Options,
) -> anyhow::Result<f64> {
    let load = Load {
        rpc,
        url: url.to_string(),
        streams: 64,
        connections: options.grpc_connections,
        threads: options.client_threads,
        warmup: Duration::ZERO,
        window: Duration::from_secs(30),
    };
    let progress = Arc::new(Progress::default());
    let running = {
        let progress = progress.clone();
        std::thread::spawn(move || grpc_load::measure(&load, progress))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while progress.completed.load(Ordering::Relaxed) == 0 {
        if Instant::now() > deadline {
            progress.stop.store(true, Ordering::Relaxed);
            bail!("the gRPC load on {} never got an answer", service.name);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(LOAD_BEFORE_SIGTERM);
    let exit = service.terminate();
    progress.stop.store(true, Ordering::Relaxed);
    let _ = running.join();
    Ok(exit?.as_secs_f64() * 1000.0)
}

/// The size of `dockercoins-mesh/<name>:v0.1` in MB (10^6 bytes, as `docker images` shows), if
/// Docker has it.
fn image_mb(name: &str) -> Option<f64> {
    let output = std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Size}}"])
        .arg(format!("dockercoins-mesh/{name}:v0.1"))
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let bytes: f64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .ok()?;
    Some(bytes / 1e6)
}
