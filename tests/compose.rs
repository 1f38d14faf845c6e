//! The workshop's walkthrough on the real Docker engine: `docker-compose up -d --build`, `ps`,
//! `logs`, scaling the workers (x2, then x10 only gives ~x3), finding the bottleneck with
//! `httping`, grpcurl through the published ports, `--scale rng=3`, `restart redis` (the counts
//! stay), and `down`, with the workshop's numbers checked at each step.
//!
//! Host-side checks talk only to the published ports on 127.0.0.1 (8000, 8001, 8002), never to
//! container addresses. The stack runs in a compose project of its own and is removed at the end,
//! also when the test fails.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::{eventually, grpcurl, http, run, tool};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const OUR_IMAGES: [&str; 4] = [
    "dockercoins/rng:latest",
    "dockercoins/hasher:latest",
    "dockercoins/worker:latest",
    "dockercoins/webui:latest",
];

/// A compose project that is taken down, volumes and all, when dropped.
struct Project {
    name: String,
}

impl Project {
    fn new() -> Self {
        Self {
            name: format!("dockercoins-test-{}", std::process::id()),
        }
    }

    /// `docker-compose -p <name> <args…>`, which must succeed.
    fn compose(&self, args: &[&str]) -> String {
        let output = self.compose_output(args);
        assert!(
            output.status.success(),
            "docker-compose {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn compose_output(&self, args: &[&str]) -> Output {
        Command::new("docker-compose")
            .current_dir(ROOT)
            .args(["-p", &self.name])
            .args(args)
            .output()
            .expect("docker-compose runs")
    }

    /// The ids of the containers of `service`, or of every service.
    fn containers(&self, service: Option<&str>) -> Vec<String> {
        let mut args = vec!["ps", "-q"];
        args.extend(service);
        self.compose(&args).lines().map(str::to_string).collect()
    }

    /// Waits until `count` containers of `service` are running and healthy.
    fn wait_healthy(&self, service: &str, count: usize, deadline: Duration) {
        eventually(deadline, &format!("{count} healthy {service}"), || {
            let ids = self.containers(Some(service));
            let healthy = ids
                .iter()
                .filter(|id| inspect(id, "{{.State.Health.Status}}") == "healthy")
                .count();
            (ids.len() == count && healthy == count).then_some(())
        });
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.compose_output(&["down", "--volumes", "--remove-orphans", "--timeout", "3"]);
    }
}

/// `docker inspect --format <format> <id>`, trimmed.
fn inspect(id: &str, format: &str) -> String {
    let output = run(Path::new("docker"), &["inspect", "--format", format, id]);
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// `hashes` as the webui's `/json` reports it.
fn hashes() -> Option<u64> {
    counts().map(|(hashes, _)| hashes)
}

/// `hashes` and `coins` as the webui's `/json` reports them.
fn counts() -> Option<(u64, u64)> {
    let json: serde_json::Value = http()
        .get("http://127.0.0.1:8000/json")
        .send()
        .ok()?
        .json()
        .ok()?;
    Some((json["hashes"].as_u64()?, json["coins"].as_u64()?))
}

/// Waits for `hashes` to go past `after`, and returns when and to what.
fn next_change(after: u64) -> (Instant, u64) {
    eventually(Duration::from_secs(20), "hashes to grow", || {
        hashes().filter(|h| *h > after).map(|h| (Instant::now(), h))
    })
}

/// The hashing speed, measured between two changes of `hashes` at least 10 s apart, after letting
/// two changes go by (new workers settling in).
fn measure_speed() -> f64 {
    let mut last = next_change(hashes().unwrap_or(0));
    last = next_change(last.1);
    let (start, first) = next_change(last.1);
    let mut end = next_change(first);
    while end.0 - start < Duration::from_secs(10) {
        end = next_change(end.1);
    }
    (end.1 - first) as f64 / (end.0 - start).as_secs_f64()
}

fn assert_speed(workers: usize, expected: f64) {
    let speed = measure_speed();
    eprintln!("{workers} worker(s): {speed:.2} hashes/s (expected {expected:.2})");
    assert!(
        (speed - expected).abs() <= expected * 0.10,
        "{workers} worker(s): {speed:.2} hashes/s is not {expected:.2} ± 10%"
    );
}

/// The average round trip `httping -c 5` reports for `addr`, in ms.
fn httping_average(addr: &str) -> f64 {
    let output = run(&tool("httping"), &["-c", "5", addr]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "httping {addr}: {stdout}");
    let summary = stdout
        .lines()
        .find_map(|line| line.split_once("min/avg/max = "))
        .map(|(_, values)| values.to_string())
        .unwrap_or_else(|| panic!("no round-trip summary: {stdout}"));
    summary
        .split('/')
        .nth(1)
        .and_then(|avg| avg.trim().parse().ok())
        .expect("an average")
}

#[test]
fn the_workshop_walkthrough_on_docker_compose() {
    let offline = run(&Path::new(ROOT).join("scripts/offline-images"), &[]);
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    let project = Project::new();

    // up -d --build; every service healthy within 60 s; ps shows the ports.
    project.compose(&["up", "-d", "--build"]);
    let started = Instant::now();
    for service in ["redis", "rng", "rng-edge", "hasher", "worker", "webui"] {
        project.wait_healthy(
            service,
            1,
            Duration::from_secs(60).saturating_sub(started.elapsed()),
        );
    }
    let ps = project.compose(&["ps"]);
    for port in ["8000->8000", "8001->8001", "8002->8002"] {
        assert!(ps.contains(port), "ps shows {port}: {ps}");
    }
    assert!(!ps.contains("6379->"), "Redis is not published: {ps}");

    // The logs show the worker at work; one worker mines 3.33 hashes/s.
    eventually(
        Duration::from_secs(20),
        "units of work done in the logs",
        || {
            project
                .compose(&["logs", "--tail", "10", "worker"])
                .contains("units of work done")
                .then_some(())
        },
    );
    assert_speed(1, 10.0 / 3.0);

    // x2 with two workers; ten workers are rng-bound at ~10/s, not x10.
    // The slides' own command; compose 1.29 (Debian's) still has it.
    project.compose(&["scale", "worker=2"]);
    project.wait_healthy("worker", 2, Duration::from_secs(60));
    assert_speed(2, 20.0 / 3.0);
    project.compose(&["up", "-d", "--scale", "worker=10"]);
    project.wait_healthy("worker", 10, Duration::from_secs(60));
    assert_speed(10, 10.0);

    // The bottleneck, as httping shows it: rng answers far slower than hasher.
    let rng = httping_average("127.0.0.1:8001");
    let hasher = httping_average("127.0.0.1:8002");
    eprintln!("httping with 10 workers: rng {rng:.1} ms, hasher {hasher:.1} ms");
    assert!(
        rng >= 10.0 * hasher,
        "rng {rng:.1} ms is not 10x hasher {hasher:.1} ms"
    );

    // grpcurl through the published ports.
    for (port, service) in [
        (8001, "dockercoins.rng.v1.RngService"),
        (8002, "dockercoins.hasher.v1.HasherService"),
    ] {
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(grpcurl(addr, &["list"]).lines().any(|line| line == service));
    }
    let generated = grpcurl(
        "127.0.0.1:8001".parse().unwrap(),
        &[
            "-d",
            r#"{"size":32}"#,
            "dockercoins.rng.v1.RngService/Generate",
        ],
    );
    assert!(generated.contains("\"data\""), "{generated}");
    let hashed = grpcurl(
        "127.0.0.1:8002".parse().unwrap(),
        &[
            "-d",
            r#"{"data":"YWJj"}"#,
            "dockercoins.hasher.v1.HasherService/Hash",
        ],
    );
    assert!(
        hashed.contains("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        "{hashed}"
    );

    // Three rng replicas start without a port clash, and 8001 still answers.
    project.compose(&["up", "-d", "--scale", "rng=3", "--scale", "worker=10"]);
    project.wait_healthy("rng", 3, Duration::from_secs(60));
    assert!(httping_average("127.0.0.1:8001") > 0.0);
    // The workers find the new replicas through Docker's DNS (re-resolved every 5 s) and spread
    // their calls. Each worker logs "replica serving" once per replica it balances over (three
    // rng, one hasher). Three rng replicas serve 30 a second at most.
    eventually(
        Duration::from_secs(30),
        "every worker balancing over 3 rng replicas",
        || {
            let logs = project.compose(&["logs", "--no-color", "worker"]);
            (logs.matches("replica serving").count() >= 10 * 4).then_some(())
        },
    );
    let speed = measure_speed();
    eprintln!("10 workers, 3 rng replicas: {speed:.2} hashes/s");
    assert!(
        speed >= 25.0,
        "10 workers on 3 rng replicas: {speed:.2} hashes/s"
    );
    // The dashboard, in Chromium, shows three rng replicas, each serving about a third.
    let bars = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async {
            let browser = support::Browser::start().await;
            browser
                .client
                .goto("http://127.0.0.1:8000/")
                .await
                .expect("load the dashboard");
            let bars = browser
                .wait_for("#replicas-rng .bar", Duration::from_secs(20), |bars| {
                    let serving = bars.iter().all(|bar| support::bar_rate(bar) >= 5.0);
                    (bars.len() == 3 && serving).then(|| bars.to_vec())
                })
                .await;
            browser.client.close().await.expect("close the session");
            bars
        })
        .unwrap_or_else(|shown| panic!("the dashboard shows rng replicas {shown:?}"));
    eprintln!("rng replicas on the dashboard: {bars:?}");

    // `restart redis` keeps the counts: Redis syncs its append-only file on SIGTERM, and reads it
    // back from the named volume.
    let (hashes_before, coins_before) = eventually(Duration::from_secs(10), "the counts", counts);
    assert!(coins_before > 0, "{coins_before} coins before the restart");
    project.compose(&["restart", "redis"]);
    project.wait_healthy("redis", 1, Duration::from_secs(30));
    let (hashes_after, coins_after) = eventually(
        Duration::from_secs(20),
        "the counts after restarting Redis",
        || counts().filter(|(hashes, _)| *hashes > 0),
    );
    eprintln!(
        "restart redis: {hashes_before} hashes and {coins_before} coins before, {hashes_after} and {coins_after} after"
    );
    assert!(
        hashes_after >= hashes_before,
        "{hashes_after} < {hashes_before}"
    );
    assert!(
        coins_after >= coins_before,
        "{coins_after} < {coins_before}"
    );

    // Every container of ours runs as non-root; redis as the redis user.
    for id in project.containers(None) {
        let user = inspect(&id, "{{.Config.User}}");
        assert!(
            !user.is_empty() && user != "root" && !user.starts_with("0"),
            "{id} runs as {user:?}"
        );
    }
    // Small images.
    for image in OUR_IMAGES {
        let size: u64 = inspect(image, "{{.Size}}").parse().expect("image size");
        eprintln!("{image}: {:.1} MB", size as f64 / 1e6);
        assert!(size <= 20_000_000, "{image} is {size} bytes");
    }

    // down within 5 s in all, and no container needed SIGKILL: Docker's own record of each
    // container's death gives its exit status (137 would be SIGKILL).
    let containers = project.containers(None).len();
    let since = unix_now();
    let stopping = Instant::now();
    project.compose(&["down", "--volumes", "--remove-orphans"]);
    let took = stopping.elapsed();
    eprintln!("down took {took:?}");
    let deaths = run(
        Path::new("docker"),
        &[
            "events",
            "--since",
            &since.to_string(),
            "--until",
            &(unix_now() + 1).to_string(),
            "--filter",
            &format!("label=com.docker.compose.project={}", project.name),
            "--filter",
            "event=die",
            "--format",
            "{{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}",
        ],
    );
    let deaths = String::from_utf8_lossy(&deaths.stdout).into_owned();
    assert_eq!(
        deaths.lines().count(),
        containers,
        "every container stopped: {deaths}"
    );
    for death in deaths.lines() {
        assert!(death.ends_with(" 0"), "not a clean exit: {death}");
    }
    assert!(took < Duration::from_secs(5), "down took {took:?}");
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
