//! Connection floods against the real rng binary and its forwarder (`rng forward`): slowloris
//! heads that never finish, connections that never send a byte, and the same flood through the
//! forwarder. For each, gRPC health keeps answering within 100 ms on a connection opened before
//! the attack, peak RSS stays under 64 MiB, the attacking connections are closed by the listener
//! limits, and a normal call succeeds afterwards.
//!
//! The limits are set small through the environment, as an operator would, so that the
//! connections are closed within seconds; every loop is bounded in count and time.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use dockercoins::rng::v1::GenerateRequest;
use dockercoins::rng::v1::rng_service_client::RngServiceClient;
use support::{Health, Process, Service, eventually, workspace_binary};

/// Connections in each flood.
const FLOOD: usize = 1000;
/// How long health may take to answer during an attack.
const HEALTH_DEADLINE: Duration = Duration::from_millis(100);
/// Peak resident memory allowed for each process.
const MAX_RSS_MIB: f64 = 64.0;
/// rng's header-read timeout in these tests (`LISTEN_HEADER_READ_TIMEOUT`).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The forwarder's connection cap (`LISTEN_MAX_CONNECTIONS`), half the flood.
const FORWARD_CAP: usize = 500;
/// How long after the flood is open every attacking connection must be closed: the timeout,
/// and room for a loaded machine.
const CLOSE_DEADLINE: Duration = Duration::from_secs(8);

/// A gRPC connection opened before an attack, used to ask for health between the attack's steps.
/// Unlike [`support::HealthProbe`], which asks from a thread of its own every 20 ms, it asks at
/// chosen points (every hundred connections opened, every poll while they close), so that the
/// checks take turns with the flood's steps instead of competing with them for the two cores.
struct Probe {
    check: support::HealthCheck,
    slowest: Duration,
    checks: usize,
}

impl Probe {
    /// Connects to `addr` and checks health once, so that the connection is open and in use.
    fn connect(addr: SocketAddr) -> Self {
        let mut check = support::health_check(Health::Grpc(addr))
            .unwrap_or_else(|err| panic!("connect to {addr}: {err}"));
        check().unwrap_or_else(|err| panic!("health of {addr} before the attack: {err}"));
        Self {
            check,
            slowest: Duration::ZERO,
            checks: 0,
        }
    }

    /// Asks for health and asserts that it is SERVING; keeps the slowest answer.
    fn check(&mut self) {
        let started = Instant::now();
        (self.check)().unwrap_or_else(|err| {
            panic!("health on the connection opened before the attack: {err}")
        });
        self.slowest = self.slowest.max(started.elapsed());
        self.checks += 1;
    }

    /// Asserts that every check so far answered within [`HEALTH_DEADLINE`].
    fn assert_fast(&self, attack: &str) {
        eprintln!(
            "{attack}: slowest of {} health checks {:?}",
            self.checks, self.slowest
        );
        assert!(self.checks > 0, "{attack}: health was checked");
        assert!(
            self.slowest < HEALTH_DEADLINE,
            "{attack}: the slowest of {} health checks took {:?}",
            self.checks,
            self.slowest
        );
    }
}

/// Attacking connections, each `None` once the server closed it.
struct Flood {
    streams: Vec<Option<TcpStream>>,
}

impl Flood {
    /// Opens [`FLOOD`] connections to `addr`, writing `first` on each, and checks health after
    /// every hundred.
    fn open(addr: SocketAddr, first: &[u8], probe: &mut Probe) -> Self {
        let mut streams = Vec::with_capacity(FLOOD);
        for i in 0..FLOOD {
            let stream = TcpStream::connect(addr).ok().and_then(|mut stream| {
                stream.set_nonblocking(true).ok()?;
                if !first.is_empty() {
                    stream.write_all(first).ok()?;
                }
                Some(stream)
            });
            streams.push(stream);
            if i % 100 == 99 {
                probe.check();
            }
        }
        Self { streams }
    }

    /// Writes `bytes` on every open connection (a slowloris trickling header lines).
    fn trickle(&mut self, bytes: &[u8]) {
        for slot in &mut self.streams {
            if let Some(stream) = slot
                && stream.write(bytes).is_err()
            {
                *slot = None;
            }
        }
    }

    /// The connections the server has not closed yet.
    fn open_count(&mut self) -> usize {
        let mut buf = [0; 512];
        for slot in &mut self.streams {
            if let Some(stream) = slot {
                match stream.read(&mut buf) {
                    Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                    // Whatever the server answered, the connection is closed once it says EOF.
                    Ok(n) if n > 0 => {}
                    _ => *slot = None,
                }
            }
        }
        self.streams.iter().flatten().count()
    }

    /// Waits until the server closed every connection, checking health meanwhile; trickles
    /// `trickle` bytes on the open ones if given. Returns how long it took.
    fn wait_closed(&mut self, trickle: Option<&[u8]>, probe: &mut Probe, attack: &str) -> Duration {
        let started = Instant::now();
        let mut trickled = started;
        loop {
            // A line a second per connection, as a slowloris does: the head grows, and never ends.
            if let Some(bytes) = trickle
                && trickled.elapsed() >= Duration::from_secs(1)
            {
                self.trickle(bytes);
                trickled = Instant::now();
            }
            probe.check();
            let open = self.open_count();
            if open == 0 {
                let took = started.elapsed();
                eprintln!("{attack}: all closed {took:?} after the last was opened");
                return took;
            }
            assert!(
                started.elapsed() < CLOSE_DEADLINE,
                "{attack}: {open} connections still open after {CLOSE_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// What every attack must leave behind: health answered fast throughout, each of `processes`
/// stayed under the memory bound, and a normal call to `addr` succeeds.
fn assert_survived(attack: &str, probe: &Probe, processes: &[&Process], addr: SocketAddr) {
    probe.assert_fast(attack);
    for process in processes {
        let (now, peak) = process.rss_mib();
        eprintln!(
            "{attack}: {} RSS {now:.1} MiB, peak {peak:.1}",
            process.name
        );
        assert!(
            peak < MAX_RSS_MIB,
            "{attack}: {} peaked at {peak:.1} MiB (now {now:.1})",
            process.name
        );
    }
    assert_eq!(generate(addr), 32, "{attack}: a normal call afterwards");
}

/// A normal Generate on a new connection.
fn generate(addr: SocketAddr) -> usize {
    try_generate(addr).unwrap_or_else(|err| panic!("{err}"))
}

/// A normal Generate on a new connection, or why it failed.
fn try_generate(addr: SocketAddr) -> Result<usize, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = RngServiceClient::connect(format!("http://{addr}"))
            .await
            .map_err(|err| format!("connect to {addr}: {err}"))?;
        let answer = client
            .generate(GenerateRequest { size: 32 })
            .await
            .map_err(|err| format!("Generate through {addr}: {err}"))?;
        Ok(answer.into_inner().data.len())
    })
}

/// rng with small limits: heads must arrive within two seconds.
fn rng() -> Service {
    Service::start(
        "rng",
        &[
            ("RNG_DELAY", "0s".to_string()),
            (
                "LISTEN_HEADER_READ_TIMEOUT",
                format!("{}s", HEADER_READ_TIMEOUT.as_secs()),
            ),
        ],
    )
}

/// Starts `program args` (which runs `rng forward`) on an ephemeral port with `env`, and waits
/// until it listens.
fn forwarder(
    program: &std::path::Path,
    args: &[&str],
    env: &[(&str, String)],
) -> (Process, SocketAddr) {
    let mut env = env.to_vec();
    env.push(("RNG_LISTEN", "127.0.0.1:0".to_string()));
    let process = Process::spawn("forward", program, args, &env);
    let addr = eventually(Duration::from_secs(20), "the forwarder to listen", || {
        process
            .log()
            .iter()
            .filter(|line| line.contains("listening, forwarding"))
            .filter_map(|line| line.split("addr=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .find_map(|addr| addr.parse().ok())
    });
    (process, addr)
}

#[test]
fn slowloris_heads_are_closed_at_the_header_read_timeout_while_health_answers() {
    let rng = rng();
    let mut probe = Probe::connect(rng.addr);
    let attack = "1,000 slowloris connections";
    let mut flood = Flood::open(rng.addr, b"GET / HTTP/1.1\r\nHost: rng\r\n", &mut probe);
    // Each trickled line would keep a server without a head deadline waiting forever.
    flood.wait_closed(Some(b"X-Slow: 1\r\n"), &mut probe, attack);
    assert_survived(attack, &probe, &[&rng.process], rng.addr);
}

#[test]
fn connections_that_send_nothing_are_closed_while_health_answers() {
    let rng = rng();
    let mut probe = Probe::connect(rng.addr);
    let attack = "1,000 idle connections";
    let mut flood = Flood::open(rng.addr, b"", &mut probe);
    let open = flood.open_count();
    assert!(
        open > FLOOD / 2,
        "{attack}: the listener holds them until the timeout ({open} open)"
    );
    flood.wait_closed(None, &mut probe, attack);
    assert_survived(attack, &probe, &[&rng.process], rng.addr);
}

#[test]
fn the_forwarder_holds_its_cap_under_a_connection_flood_while_health_answers() {
    let rng = rng();
    let (forwarder, front) = forwarder(
        &workspace_binary("rng"),
        &["forward", "--to", &rng.addr.to_string()],
        &[
            ("LISTEN_MAX_CONNECTIONS", FORWARD_CAP.to_string()),
            ("LISTEN_IDLE_TIMEOUT", "3s".to_string()),
        ],
    );
    // Through the forwarder: the probe holds one of its slots from before the attack.
    let mut probe = Probe::connect(front);
    let attack = "1,000 connections through the forwarder";
    let mut flood = Flood::open(front, b"", &mut probe);
    // Over the cap, connections are closed as soon as they are accepted.
    let open = eventually(
        Duration::from_secs(2),
        "the connections over the cap to be closed",
        || {
            let open = flood.open_count();
            (open < FORWARD_CAP).then_some(open)
        },
    );
    eprintln!("{attack}: {open} open once the cap closed the rest");
    flood.wait_closed(None, &mut probe, attack);
    assert_survived(attack, &probe, &[&forwarder, &rng.process], front);
    let log = forwarder.log();
    let refused = log
        .iter()
        .filter(|line| line.contains("connection cap reached"))
        .count();
    assert!(
        (1..=10).contains(&refused),
        "{attack}: the cap is logged, at most once a second: {refused} lines"
    );
}

/// CPU time (user and system) the process has used so far.
fn cpu_time(process: &Process) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", process.pid()))
        .expect("read /proc/<pid>/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a stat line")
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let output = support::run(std::path::Path::new("getconf"), &["CLK_TCK"]);
    let per_second: u64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    Duration::from_millis(ticks * 1000 / per_second)
}

#[test]
fn the_forwarder_out_of_file_descriptors_pauses_instead_of_spinning() {
    let rng = rng();
    // 64 descriptors: the runtime and a few dozen forwarded connections (two each) use them up,
    // and every accept after that fails with EMFILE until connections close.
    let (forwarder, front) = forwarder(
        std::path::Path::new("/bin/sh"),
        &[
            "-c",
            r#"ulimit -n 64 && exec "$0" forward --to "$1""#,
            &workspace_binary("rng").to_string_lossy(),
            &rng.addr.to_string(),
        ],
        &[],
    );
    // rng holds each forwarded connection for its header-read timeout, so the descriptors stay
    // used while the flood is open.
    let flood: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(front).ok())
        .collect();
    assert!(flood.len() > 40, "the backlog takes the connections");
    eventually(Duration::from_secs(5), "the forwarder to run out", || {
        let log = forwarder.log();
        log.iter()
            .any(|line| line.contains("accept failed"))
            .then_some(())
    });
    let cpu_before = cpu_time(&forwarder);
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let cpu = cpu_time(&forwarder).saturating_sub(cpu_before);
    let elapsed = watched.elapsed();
    let failures = forwarder
        .log()
        .iter()
        .filter(|line| line.contains("accept failed"))
        .count();
    eprintln!("out of descriptors: {cpu:?} of CPU in {elapsed:?}, {failures} log lines");
    // A busy loop would use the whole 1.5 s of a core and log thousands of lines.
    assert!(
        cpu < Duration::from_millis(300),
        "{cpu:?} of CPU in {elapsed:?}"
    );
    assert!(failures <= 5, "{failures} 'accept failed' lines");

    drop(flood);
    // Once the flood's connections close, descriptors free up and the forwarder accepts again:
    // after its pause (a second at most), and once rng has closed the forwarded connections the
    // flood left behind (its header-read timeout), so that the forwarder can connect onwards.
    let data = eventually(
        Duration::from_secs(10),
        "a normal call once descriptors are free",
        || try_generate(front).ok(),
    );
    assert_eq!(data, 32);
}
