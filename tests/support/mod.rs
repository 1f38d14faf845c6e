//! What the end-to-end tests share: real processes started on ephemeral loopback ports, a real
//! redis-server, the real tools (grpcurl, httping, Chromium), and polling with a deadline.
//!
//! Services bind `127.0.0.1:0` and log `listening addr=…`; the harness reads that line, so tests
//! never guess a port and never sleep to wait for readiness. A missing tool fails the test with
//! the command that installs it: a test never passes because a tool is absent.

#![allow(dead_code)] // Each test file uses part of the harness.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

mod poll;
pub use poll::eventually_every;

/// How long a service may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// Polls `probe` every 20 ms until it returns `Some`, or panics after `deadline` naming `what`.
pub fn eventually<T>(deadline: Duration, what: &str, probe: impl FnMut() -> Option<T>) -> T {
    eventually_every(deadline, Duration::from_millis(20), what, probe)
}

/// The path of a binary of this workspace, built beside the test executable.
pub fn workspace_binary(name: &str) -> PathBuf {
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` (cargo test and scripts/test build it)",
        path.display()
    );
    path
}

/// The path of an external tool, or a panic that says how to install it.
pub fn tool(name: &str) -> PathBuf {
    if name == "grpcurl" {
        if let Ok(path) = std::env::var("GRPCURL") {
            return PathBuf::from(path);
        }
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/grpcurl");
        if venv.exists() {
            return venv;
        }
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| panic!("{name} is not installed: run scripts/install-prereqs"))
}

/// A running process whose log lines are kept (and echoed, prefixed, for failed tests).
pub struct Process {
    pub name: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    exited: Option<std::process::ExitStatus>,
    /// Whether the process leads a process group, killed whole on drop.
    group: bool,
}

impl Process {
    /// Starts `program` with `env` (and a quiet, plain log format).
    pub fn spawn(name: &str, program: &Path, args: &[&str], env: &[(&str, String)]) -> Self {
        Self::spawn_with(name, program, args, env, false)
    }

    /// Like [`Process::spawn`], in a process group of its own that is killed whole when the
    /// process is dropped: for chromedriver, whose Chromium would otherwise outlive a test that
    /// failed before closing its session, and keep a core busy polling a dead page.
    pub fn spawn_group(name: &str, program: &Path, args: &[&str], env: &[(&str, String)]) -> Self {
        Self::spawn_with(name, program, args, env, true)
    }

    fn spawn_with(
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, String)],
        group: bool,
    ) -> Self {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(program);
        if group {
            command.process_group(0);
        }
        command
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", program.display()));
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let (log, name) = (log.clone(), name.to_string());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("[{name}] {line}");
                    log.lock().unwrap().push(line);
                }
            });
        }
        Self {
            name: name.to_string(),
            child,
            log,
            exited: None,
            group,
        }
    }

    /// The log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`, and returns it.
    pub fn wait_for_log(&self, needle: &str, deadline: Duration) -> String {
        eventually(
            deadline,
            &format!("{} to log {needle:?}", self.name),
            || {
                self.log
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|line| line.contains(needle))
                    .cloned()
            },
        )
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal the process");
    }

    /// Sends SIGTERM and returns how long the process took to exit, and its status.
    pub fn terminate(&mut self) -> (Duration, std::process::ExitStatus) {
        let started = Instant::now();
        self.signal(Signal::SIGTERM);
        let status = eventually(
            Duration::from_secs(10),
            &format!("{} to exit", self.name),
            || self.child.try_wait().expect("wait for the process"),
        );
        self.exited = Some(status);
        (started.elapsed(), status)
    }

    /// The process's resident memory now and at its peak (VmRSS and VmHWM), in MiB.
    pub fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/<pid>/status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
                .unwrap_or_else(|| panic!("no {name} in /proc/<pid>/status"))
                / 1024.0
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("wait for the process")
            .is_none()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.group {
            let _ = nix::sys::signal::killpg(self.pid(), Signal::SIGKILL);
        }
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One of the four DockerCoins binaries, listening on an ephemeral loopback port, with its admin
/// listener (`/metrics`, `/healthz`, the fault switch) on another.
pub struct Service {
    pub process: Process,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Service {
    /// Starts `rng`, `hasher` or `webui` on 127.0.0.1:0 with `env`, and waits until it listens.
    pub fn start(name: &str, env: &[(&str, String)]) -> Self {
        let upper = name.to_uppercase();
        // The admin port is chosen here, so that the two "listening" lines can be told apart.
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut env = env.to_vec();
        env.push((leak(format!("{upper}_LISTEN")), "127.0.0.1:0".to_string()));
        env.push((leak(format!("{upper}_ADMIN_LISTEN")), admin.to_string()));
        let process = Process::spawn(name, &workspace_binary(name), &[], &env);
        let addr = eventually(START_DEADLINE, &format!("{name} to listen"), || {
            process
                .log()
                .iter()
                .filter_map(|line| line.split("listening addr=").nth(1))
                .filter_map(|rest| rest.split_whitespace().next())
                .filter_map(|addr| addr.parse::<SocketAddr>().ok())
                .find(|addr| *addr != admin)
        });
        Self {
            process,
            addr,
            admin,
        }
    }

    /// `http://127.0.0.1:port` of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// `http://127.0.0.1:port`, as the worker and HTTP clients want it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET path` parsed as JSON, or `None` while the service cannot answer it.
    pub fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        http()
            .get(format!("{}{path}", self.url()))
            .send()
            .ok()?
            .json()
            .ok()
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

pub use ledger::REDIS_MAXMEMORY;

/// A real redis-server on a free loopback port, with its data in a temporary directory, run as
/// deployed: append-only file synced once a second (`appendfsync everysec`), `maxmemory` with
/// `noeviction`. A Redis stopped with SIGTERM keeps every write it acknowledged; one killed with
/// SIGKILL may lose the last second of them, and keeps a prefix of its writes (the file is a log).
pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    maxmemory: String,
    process: Option<Process>,
}

impl Redis {
    pub fn start() -> Self {
        Self::with_maxmemory(REDIS_MAXMEMORY)
    }

    /// A Redis with its own `maxmemory` (e.g. "2mb", to fill it quickly).
    pub fn with_maxmemory(maxmemory: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory for Redis");
        let mut redis = Self {
            port: free_port(),
            dir,
            maxmemory: maxmemory.to_string(),
            process: None,
        };
        redis.restart();
        redis
    }

    /// Starts (again) on the same port with the same data.
    pub fn restart(&mut self) {
        let port = self.port.to_string();
        let dir = self.dir.path().display().to_string();
        let mut args = vec!["--bind", "127.0.0.1", "--port", &port, "--dir", &dir];
        args.extend(
            ledger::REDIS_DURABILITY
                .iter()
                .flat_map(|&(flag, value)| [flag, value]),
        );
        args.extend(["--maxmemory", &self.maxmemory]);
        let process = Process::spawn("redis", &tool("redis-server"), &args, &[]);
        process.wait_for_log("Ready to accept connections", START_DEADLINE);
        self.process = Some(process);
    }

    /// Stops Redis with SIGTERM, as `docker stop` does: it syncs its file and exits.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let (_, status) = process.terminate();
            assert!(status.success(), "redis-server exit status {status}");
        }
    }

    /// Kills Redis with SIGKILL: no shutdown, no final save.
    pub fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.signal(Signal::SIGKILL);
            drop(process);
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn connection(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).expect("Redis URL");
        eventually(Duration::from_secs(5), "a Redis connection", || {
            client.get_connection().ok()
        })
    }

    /// Waits for `hashes` to go past `after` (the worker flushes once a second), and returns
    /// when and to what.
    pub fn next_flush(&self, after: u64) -> (Instant, u64) {
        let mut connection = self.connection();
        eventually(Duration::from_secs(10), "the next flush", || {
            let hashes: Option<u64> = redis::cmd("GET")
                .arg("hashes")
                .query(&mut connection)
                .ok()?;
            let hashes = hashes.unwrap_or(0);
            (hashes > after).then(|| (Instant::now(), hashes))
        })
    }

    /// Hashes per second, between two flushes at least `span` apart, after one flush of warm-up:
    /// measured from flush to flush, the one-second batching cancels out.
    pub fn rate(&self, span: Duration) -> f64 {
        let (_, warm) = self.next_flush(self.hashes());
        let (start, first) = self.next_flush(warm);
        let mut end = self.next_flush(first);
        while end.0 - start < span {
            end = self.next_flush(end.1);
        }
        (end.1 - first) as f64 / (end.0 - start).as_secs_f64()
    }

    /// The calls each replica of `service` served, as the workers count them in
    /// `dockercoins:served:<service>`.
    pub fn served(&self, service: &str) -> std::collections::BTreeMap<String, u64> {
        redis::cmd("HGETALL")
            .arg(format!("dockercoins:served:{service}"))
            .query(&mut self.connection())
            .expect("HGETALL dockercoins:served")
    }

    /// `GET hashes` as a number, 0 when missing.
    pub fn hashes(&self) -> u64 {
        let value: Option<u64> = redis::cmd("GET")
            .arg("hashes")
            .query(&mut self.connection())
            .expect("GET hashes");
        value.unwrap_or(0)
    }
}

/// A port that was free a moment ago (for redis-server, which cannot report an ephemeral port,
/// and for a service started after its clients). Taken below the kernel's ephemeral range when
/// there is room: a port from that range can be handed, before the caller binds it, to another
/// test's bind to port 0 or outgoing connection (a worker once connected to such a stranger where
/// rng was to listen).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    const FLOOR: u16 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if let Some(span) = ephemeral.checked_sub(FLOOR).filter(|&span| span >= 1_000) {
        // A random start, so that tests running at once try different ports.
        let span = u64::from(span);
        let start = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            % span;
        for attempt in 0..100 {
            let port = FLOOR + ((start + attempt * 7_919) % span) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// Delays small enough for quick tests, large enough that the worker is not flat out.
pub fn quick() -> Vec<(&'static str, String)> {
    vec![
        ("RNG_DELAY", "5ms".into()),
        ("HASHER_DELAY", "5ms".into()),
        ("WORKER_DELAY", "5ms".into()),
    ]
}

/// rng and hasher with the given extra settings, e.g. `("RNG_DELAY", "0s")`.
pub fn backends(env: &[(&str, String)]) -> (Service, Service) {
    (Service::start("rng", env), Service::start("hasher", env))
}

/// A worker pointed at `rng`, `hasher` and `redis`, with extra settings.
pub fn worker(rng: &Service, hasher: &Service, redis: &Redis, env: &[(&str, String)]) -> Process {
    let mut all = vec![
        ("RNG_ENDPOINT", rng.url()),
        ("HASHER_ENDPOINT", hasher.url()),
        ("REDIS_URL", redis.url()),
        ("WORKER_ADMIN_LISTEN", "127.0.0.1:0".to_string()),
    ];
    all.extend_from_slice(env);
    let process = Process::spawn("worker", &workspace_binary("worker"), &[], &all);
    process.wait_for_log("worker starting", START_DEADLINE);
    process
}

/// Runs a command to completion; panics if it cannot start.
pub fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", program.display()))
}

/// `grpcurl -plaintext <addr> <args…>`, returning stdout, or panicking with stderr.
pub fn grpcurl(addr: SocketAddr, args: &[&str]) -> String {
    let output = grpcurl_output(addr, args);
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("grpcurl prints UTF-8")
}

/// `grpcurl -plaintext` with a data argument or not, returning the whole output.
pub fn grpcurl_output(addr: SocketAddr, args: &[&str]) -> Output {
    let addr = addr.to_string();
    let mut all = vec!["-plaintext", "-max-time", "10"];
    let (flags, rest): (Vec<&str>, Vec<&str>) = split_flags(args);
    all.extend(flags);
    all.push(&addr);
    all.extend(rest);
    run(&tool("grpcurl"), &all)
}

/// grpcurl wants its flags before the address: `-d '{…}'` pairs and `-flag`s go first.
fn split_flags<'a>(args: &[&'a str]) -> (Vec<&'a str>, Vec<&'a str>) {
    let (mut flags, mut rest) = (Vec::new(), Vec::new());
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if *arg == "-d" {
            flags.push(*arg);
            flags.extend(iter.next());
        } else if arg.starts_with('-') {
            flags.push(*arg);
        } else {
            rest.push(*arg);
        }
    }
    (flags, rest)
}

/// A blocking HTTP client with a deadline, for the shims and the webui.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

/// Asks a service's gRPC health (rng, hasher) or its admin `/healthz` every 20 ms from a thread of
/// its own, over a connection opened when the probe starts, so that an attack that fills the
/// listener's connection slots afterwards does not shut the probe out; keeps the slowest answer.
pub struct HealthProbe {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(Duration, u32), String>>>,
}

/// Where a [`HealthProbe`] asks.
#[derive(Clone, Copy, Debug)]
pub enum Health {
    /// `grpc.health.v1.Health/Check` for the whole server.
    Grpc(SocketAddr),
    /// `GET /healthz` on an admin port.
    Admin(SocketAddr),
}

impl HealthProbe {
    /// Connects, checks once, and keeps checking until [`HealthProbe::finish`].
    pub fn start(target: Health) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut check = health_check(target)?;
                check()?;
                ready_tx.send(()).ok();
                let (mut slowest, mut checks) = (Duration::ZERO, 0);
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    check().map_err(|err| format!("{target:?} after {checks} checks: {err}"))?;
                    slowest = slowest.max(started.elapsed());
                    checks += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok((slowest, checks))
            })
        };
        ready_rx
            .recv_timeout(START_DEADLINE)
            .unwrap_or_else(|_| panic!("{target:?} never answered a health check"));
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops probing; returns the slowest answer, or panics if any check failed or none ran.
    pub fn finish(mut self) -> Duration {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (slowest, checks) = self
            .thread
            .take()
            .expect("finished once")
            .join()
            .expect("the probe thread does not panic")
            .unwrap_or_else(|err| panic!("a health check failed: {err}"));
        assert!(checks > 0, "no health check ran during the attack");
        slowest
    }
}

/// One health check, asked again on each call over the same connection: `Ok` when SERVING (gRPC)
/// or 200 (`/healthz`), else why not.
pub type HealthCheck = Box<dyn FnMut() -> Result<(), String>>;

/// A reusable health check of `target` over one connection, opened now.
pub fn health_check(target: Health) -> Result<HealthCheck, String> {
    match target {
        Health::Grpc(addr) => {
            use tonic_health::pb::HealthCheckRequest;
            use tonic_health::pb::health_check_response::ServingStatus;
            use tonic_health::pb::health_client::HealthClient;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| err.to_string())?;
            let channel = runtime
                .block_on(
                    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                        .map_err(|err| err.to_string())?
                        .timeout(Duration::from_secs(2))
                        .connect(),
                )
                .map_err(|err| format!("connect to {addr}: {err}"))?;
            let mut client = HealthClient::new(channel);
            Ok(Box::new(move || {
                let answer = runtime
                    .block_on(client.check(HealthCheckRequest::default()))
                    .map_err(|status| status.to_string())?;
                match answer.into_inner().status() {
                    ServingStatus::Serving => Ok(()),
                    other => Err(other.as_str_name().to_string()),
                }
            }))
        }
        Health::Admin(addr) => {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(2))
                .pool_max_idle_per_host(1)
                .build()
                .map_err(|err| err.to_string())?;
            let url = format!("http://{addr}/healthz");
            Ok(Box::new(move || {
                let response = client.get(&url).send().map_err(|err| err.to_string())?;
                match response.status().as_u16() {
                    200 => Ok(()),
                    status => Err(format!("GET /healthz answered {status}")),
                }
            }))
        }
    }
}

/// The SHA-256 of `data` as lowercase hex, computed here independently of the hasher.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// The structured fields of a log line written with `LOG_FORMAT=json` (the message is the field
/// `message`), or `None` for a line in any other format.
pub fn json_fields(line: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str::<serde_json::Value>(line)
        .ok()?
        .get("fields")?
    {
        serde_json::Value::Object(fields) => Some(fields.clone()),
        _ => None,
    }
}

/// The units of work one JSON log line of a worker says were done: the `units` field of its
/// "N units of work done, updating hash counter" line.
pub fn units_done(line: &str) -> Option<u64> {
    let fields = json_fields(line)?;
    let message = fields.get("message")?.as_str()?;
    message
        .ends_with("units of work done, updating hash counter")
        .then_some(())?;
    fields.get("units")?.as_u64()
}

/// The units of work a worker logged, summed. The worker must log JSON (`LOG_FORMAT=json`): the
/// count is read from its `units` field, not parsed from the sentence.
pub fn logged_units(worker: &Process) -> u64 {
    worker
        .log()
        .iter()
        .filter_map(|line| units_done(line))
        .sum()
}

/// The address of a worker's admin listener (`/metrics`, `/healthz`), from its log, in either
/// format.
pub fn worker_admin(worker: &Process) -> String {
    let addr = eventually(START_DEADLINE, "the worker to listen", || {
        worker
            .log()
            .iter()
            .find_map(|line| match json_fields(line) {
                Some(fields) if fields.get("message")? == "listening" => {
                    Some(fields.get("addr")?.as_str()?.to_string())
                }
                Some(_) => None,
                None => {
                    let rest = line.split("listening addr=").nth(1)?;
                    Some(rest.split_whitespace().next()?.to_string())
                }
            })
    });
    format!("http://{addr}")
}

/// A worker's settings for a log of one JSON object per line, from which [`logged_units`] reads.
pub fn json_log() -> (&'static str, String) {
    ("LOG_FORMAT", "json".to_string())
}

/// The flushes a worker failed so far, by kind (`dockercoins_redis_errors_total{kind}`), or all
/// of them with `None`.
pub fn failed_flushes(worker: &Process, kind: Option<&str>) -> u64 {
    let samples = scrape(&format!("{}/metrics", worker_admin(worker)));
    let with: Vec<(&str, &str)> = kind.map(|kind| ("kind", kind)).into_iter().collect();
    total(&samples, "dockercoins_redis_errors_total", &with) as u64
}

/// One sample of a Prometheus text exposition: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// GETs `url` and parses it as Prometheus text, panicking on any line that is not a comment, a
/// blank or a `name{label="value",…} number` sample.
pub fn scrape(url: &str) -> Vec<Sample> {
    let response = http().get(url).send().expect("GET /metrics");
    assert_eq!(response.status(), 200, "{url}");
    let text = response.text().expect("metrics text");
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            parse_sample(line).unwrap_or_else(|| panic!("not a Prometheus sample: {line:?}"))
        })
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => {
            let body = rest.strip_suffix('}')?;
            let labels = body
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once("=\"")?;
                    Some((key.to_string(), value.trim_end_matches('"').to_string()))
                })
                .collect::<Option<Vec<_>>>()?;
            (name, labels)
        }
        None => (series, Vec::new()),
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    (!name.is_empty() && name.chars().all(valid)).then(|| Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// The sum of the samples named `name` whose labels include every pair of `with`.
pub fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|sample| sample.name == name)
        .filter(|sample| {
            with.iter()
                .all(|(key, value)| sample.labels.iter().any(|(k, v)| k == key && v == value))
        })
        .map(|sample| sample.value)
        .sum()
}

/// Headless Chromium driven through chromedriver (WebDriver), as a person's browser.
pub struct Browser {
    pub client: fantoccini::Client,
    _driver: Process,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a Chromium session, 1280x900.
    pub async fn start() -> Self {
        let port = free_port();
        let driver = Process::spawn_group(
            "chromedriver",
            &tool("chromedriver"),
            &[&format!("--port={port}")],
            &[],
        );
        driver.wait_for_log("started successfully", Duration::from_secs(20));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_string(),
            serde_json::json!({
                "binary": tool("chromium"),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"],
            }),
        );
        let client = fantoccini::ClientBuilder::new(
            hyper_util::client::legacy::connect::HttpConnector::new(),
        )
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");
        Self {
            client,
            _driver: driver,
        }
    }

    /// The text of every element that matches the CSS `selector`, in page order.
    pub async fn texts(&self, selector: &str) -> Vec<String> {
        let mut texts = Vec::new();
        for element in self
            .client
            .find_all(fantoccini::Locator::Css(selector))
            .await
            .expect("a valid selector")
        {
            // An element replaced since it was found (the page redraws every second) is skipped.
            if let Ok(text) = element.text().await {
                texts.push(text);
            }
        }
        texts
    }

    /// Polls the texts of `selector` until `done` accepts them, for up to `deadline`.
    pub async fn wait_for<T>(
        &self,
        selector: &str,
        deadline: Duration,
        mut done: impl FnMut(&[String]) -> Option<T>,
    ) -> Result<T, Vec<String>> {
        let until = Instant::now() + deadline;
        loop {
            let texts = self.texts(selector).await;
            if let Some(value) = done(&texts) {
                return Ok(value);
            }
            if Instant::now() >= until {
                return Err(texts);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The rate a dashboard bar shows ("<replica> <calls/s>"), 0 when it shows none.
pub fn bar_rate(bar: &str) -> f64 {
    let mut words = bar.split_whitespace();
    let (Some(_name), Some(rate)) = (words.next(), words.next_back()) else {
        return 0.0;
    };
    rate.parse().unwrap_or(0.0)
}
