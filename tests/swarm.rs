//! The workshop's Swarm chapter on the real Docker engine, in its own order: a single-node swarm
//! on loopback, the images built from the Dockerfile at two tags (v0.1, v0.2), then services
//! created by hand with `docker service create` and nothing but a network and a name (the
//! images find rng, hasher and redis by name), then deploy/swarm/stack.yml with `docker stack
//! deploy`: every service healthy, hashes growing, a rolling update to TAG=v0.2 and
//! `docker service rollback`, ten workers held to ~10 hashes/s by one rng, then
//! `docker service scale rng=3`: the workers find the new tasks through Swarm's DNS (rng is
//! `endpoint_mode: dnsrr`) and reach 25 hashes/s or more, with every rng task serving. Then the
//! stack is removed and the swarm left.
//!
//! The test joins a swarm only when the engine is in none, and leaves only the swarm it made; the
//! stack and the swarm are removed when the test ends, also when it fails (drop guards). Its
//! published ports are free ones picked at start, not the compose stack's 8000-8002.
//!
//! Where the kernel has no IPVS (CONFIG_IP_VS unset, as on our CI's VMs), Swarm's virtual IPs
//! and routing mesh cannot work; the test then lays deploy/swarm/without-ipvs.yml over the stack
//! (dnsrr everywhere, ports published in host mode), as the README tells users of such kernels.
//!
//! From the host the test talks only to the published ports on 127.0.0.1. To see each rng task's
//! own metrics it starts a short-lived container on the stack's (attachable) overlay network:
//! the Redis image, whose bash fetches `/metrics` from each task's address; ours have no shell.

mod support_deploy;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support_deploy::poll::eventually_every;
use support_deploy::{ROOT, checked, output};

/// The images the stack runs, built from the Dockerfile's targets as docker-compose.yml names them.
const IMAGES: [&str; 4] = ["rng", "hasher", "worker", "webui"];
/// The tag the stack runs by default, and the one the rolling update goes to.
const TAGS: [&str; 2] = ["v0.1", "v0.2"];
/// The Redis image scripts/offline-images provides; also the helper on the overlay network.
const REDIS_IMAGE: &str = "redis:7.0-bookworm";
const SERVICES: [&str; 7] = [
    "redis",
    "rng",
    "rng-edge",
    "hasher",
    "hasher-edge",
    "worker",
    "webui",
];
/// The least rate ten workers must reach over three rng tasks (each serves at most 10 a second).
const TARGET_RATE: f64 = 25.0;
/// How long a rate is measured over.
const WINDOW: Duration = Duration::from_secs(15);

fn docker(args: &[&str]) -> String {
    checked("docker", args)
}

/// The engine in a swarm for the test's duration: joined here if it was in none, and then left
/// when dropped.
struct Swarm {
    joined: bool,
}

impl Swarm {
    fn join() -> Self {
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        match state.trim() {
            "inactive" => {
                // Loopback only: a single-node swarm that nothing outside this machine can join.
                docker(&[
                    "swarm",
                    "init",
                    "--advertise-addr",
                    "127.0.0.1",
                    "--listen-addr",
                    "127.0.0.1:2377",
                ]);
                Self { joined: true }
            }
            "active" => {
                let manager = docker(&["info", "--format", "{{.Swarm.ControlAvailable}}"]);
                assert_eq!(manager.trim(), "true", "this engine is a swarm worker");
                Self { joined: false }
            }
            other => panic!("the engine's swarm is {other:?}"),
        }
    }

    fn leave(&mut self) {
        if std::mem::take(&mut self.joined) {
            docker(&["swarm", "leave", "--force"]);
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if self.joined {
            let _ = output("docker", &["swarm", "leave", "--force"]);
        }
    }
}

/// The host ports the stack publishes.
struct Ports {
    webui: u16,
    rng: u16,
    hasher: u16,
}

impl Ports {
    /// Three ports that were free a moment ago.
    fn free() -> Self {
        let listeners: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("0.0.0.0:0").expect("bind an ephemeral port"))
            .collect();
        let port = |i: usize| listeners[i].local_addr().expect("local address").port();
        Self {
            webui: port(0),
            rng: port(1),
            hasher: port(2),
        }
    }
}

/// One task of a service, as `docker inspect` shows it.
struct Task {
    id: String,
    state: String,
    container: Option<String>,
    /// Its address on the stack's network.
    address: Option<String>,
}

/// A deployed stack, removed (and waited for) when dropped.
struct Stack {
    name: String,
    ports: Ports,
    removed: bool,
}

impl Stack {
    fn deploy(ports: Ports) -> Self {
        let stack = Self {
            name: format!("dcswarm{}", std::process::id()),
            ports,
            removed: false,
        };
        stack.apply(TAGS[0]);
        stack
    }

    /// `TAG=<tag> docker stack deploy …`: the first time it creates the stack, then it updates
    /// every service whose image changed, as the chapter's rolling update does.
    fn apply(&self, tag: &str) {
        let stack = self;
        let mut files = vec!["--compose-file", "deploy/swarm/stack.yml"];
        if !kernel_has_ipvs() {
            eprintln!("no IPVS in this kernel: deploying with deploy/swarm/without-ipvs.yml");
            files.extend(["--compose-file", "deploy/swarm/without-ipvs.yml"]);
        }
        let result = Command::new("docker")
            .current_dir(ROOT)
            .args(["stack", "deploy", "--resolve-image", "never"])
            .args(&files)
            .arg(&stack.name)
            .env("TAG", tag)
            .env_remove("REGISTRY")
            .env("DOCKERCOINS_WEBUI_PORT", stack.ports.webui.to_string())
            .env("DOCKERCOINS_RNG_PORT", stack.ports.rng.to_string())
            .env("DOCKERCOINS_HASHER_PORT", stack.ports.hasher.to_string())
            .output()
            .expect("docker stack deploy runs");
        assert!(
            result.status.success(),
            "docker stack deploy: {}",
            String::from_utf8_lossy(&result.stderr)
        );
    }

    fn service(&self, service: &str) -> String {
        format!("{}_{service}", self.name)
    }

    fn network(&self) -> String {
        format!("{}_dockercoins", self.name)
    }

    fn scale(&self, service: &str, replicas: usize) {
        let spec = format!("{}={replicas}", self.service(service));
        docker(&["service", "scale", "--detach", &spec]);
    }

    /// The tasks of `service` that Swarm wants running.
    fn tasks(&self, service: &str) -> Vec<Task> {
        let ids = docker(&[
            "service",
            "ps",
            "--quiet",
            "--no-trunc",
            "--filter",
            "desired-state=running",
            &self.service(service),
        ]);
        let ids: Vec<&str> = ids.lines().filter(|id| !id.is_empty()).collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let mut args = vec!["inspect", "--type", "task"];
        args.extend(&ids);
        let tasks: Vec<Value> = serde_json::from_str(&docker(&args)).expect("task JSON");
        let network = self.network();
        tasks
            .iter()
            .map(|task| Task {
                id: task["ID"].as_str().unwrap_or_default().to_string(),
                state: task["Status"]["State"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                container: task["Status"]["ContainerStatus"]["ContainerID"]
                    .as_str()
                    .map(str::to_string),
                address: task["NetworksAttachments"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|attachment| attachment["Network"]["Spec"]["Name"] == network.as_str())
                    .and_then(|attachment| attachment["Addresses"][0].as_str())
                    .and_then(|cidr| cidr.split('/').next())
                    .map(str::to_string),
            })
            .collect()
    }

    /// Waits until `count` tasks of `service` run and their containers report healthy.
    fn wait_healthy(&self, service: &str, count: usize, deadline: Duration) -> Vec<Task> {
        eventually_every(
            deadline,
            Duration::from_millis(500),
            &format!("{count} healthy {service} tasks"),
            || {
                let tasks = self.tasks(service);
                let healthy = tasks
                    .iter()
                    .filter(|task| task.state == "running")
                    .filter_map(|task| task.container.as_deref())
                    .filter(|container| {
                        let health = output(
                            "docker",
                            &["inspect", "--format", "{{.State.Health.Status}}", container],
                        );
                        String::from_utf8_lossy(&health.stdout).trim() == "healthy"
                    })
                    .count();
                (tasks.len() == count && healthy == count).then_some(tasks)
            },
        )
    }

    /// Waits until `service` runs one task, healthy, of the image labelled `version`, and the
    /// service's own spec names that tag.
    fn wait_version(&self, service: &str, version: &str, deadline: Duration) {
        eventually_every(
            deadline,
            Duration::from_secs(1),
            &format!("{service} on {version}"),
            || {
                let spec = docker(&[
                    "service",
                    "inspect",
                    "--format",
                    "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
                    &self.service(service),
                ]);
                if !spec
                    .trim()
                    .starts_with(&format!("dockercoins-mesh/{service}:{version}"))
                {
                    return None;
                }
                let tasks = self.wait_healthy(service, 1, deadline);
                tasks
                    .iter()
                    .all(|task| task_version(task) == version)
                    .then_some(())
            },
        );
    }

    /// `docker stack rm`, then waits until every container and network of the stack is gone.
    fn remove(&mut self) {
        self.removed = true;
        docker(&["stack", "rm", &self.name]);
        let label = format!("label=com.docker.stack.namespace={}", self.name);
        eventually_every(
            Duration::from_secs(60),
            Duration::from_millis(500),
            "the stack's containers and network to go",
            || {
                let containers = docker(&["ps", "--all", "--quiet", "--filter", &label]);
                let networks = docker(&["network", "ls", "--quiet", "--filter", &label]);
                (containers.trim().is_empty() && networks.trim().is_empty()).then_some(())
            },
        );
        self.remove_volume();
    }

    /// Redis's named volume outlives `docker stack rm` by design; a test's goes with its stack.
    fn remove_volume(&self) {
        let volume = format!("{}_redis-data", self.name);
        let _ = output("docker", &["volume", "rm", "--force", &volume]);
    }

    /// `GET /json` on the webui's published port: `hashes`, straight from Redis.
    fn hashes(&self) -> Option<u64> {
        let url = format!("http://127.0.0.1:{}/json", self.ports.webui);
        let json: Value = http().get(url).send().ok()?.json().ok()?;
        json["hashes"].as_u64()
    }

    /// Waits for `hashes` to go past `after`, and returns when and to what.
    fn next_change(&self, after: u64) -> (Instant, u64) {
        eventually_every(
            Duration::from_secs(20),
            Duration::from_millis(20),
            "hashes to grow",
            || {
                self.hashes()
                    .filter(|hashes| *hashes > after)
                    .map(|hashes| (Instant::now(), hashes))
            },
        )
    }

    /// Hashes per second between two changes of `hashes` at least [`WINDOW`] apart: measured
    /// from change to change, the workers' one-second batching mostly cancels out.
    fn rate(&self) -> f64 {
        let (start, first) = self.next_change(self.hashes().unwrap_or(0));
        let mut end = self.next_change(first);
        while end.0 - start < WINDOW {
            end = self.next_change(end.1);
        }
        (end.1 - first) as f64 / (end.0 - start).as_secs_f64()
    }

    /// For each worker task, the rng addresses it has logged as serving, read from its
    /// container's log (`docker service logs` can hang where `docker logs` does not; on one node
    /// every task's container is local).
    fn rng_replicas_per_worker(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut seen = BTreeMap::new();
        for task in self.tasks("worker") {
            let Some(container) = task.container else {
                continue;
            };
            // The binaries log to stderr.
            let logs = output("docker", &["logs", &container]);
            let rng: BTreeSet<String> = String::from_utf8_lossy(&logs.stderr)
                .lines()
                .filter_map(|line| line.split_once("replica serving"))
                .filter_map(|(_, fields)| {
                    // `… replica serving addr=10.0.1.5:8001`
                    fields
                        .split_whitespace()
                        .find_map(|field| field.strip_prefix("addr="))
                        .and_then(|addr| addr.strip_suffix(":8001"))
                        .map(str::to_string)
                })
                .collect();
            seen.insert(task.id, rng);
        }
        seen
    }

    /// Generate calls each rng task has served so far, by task address, read from each task's own
    /// `/metrics` (on its admin port, 9001) by a helper container on the stack's network.
    fn generate_calls(&self, addresses: &[String]) -> BTreeMap<String, f64> {
        // bash's /dev/tcp: the Redis image has no curl. One HTTP/1.0 GET per task.
        let script = r#"for ip in "$@"; do
            echo "== $ip"
            exec 3<>"/dev/tcp/$ip/9001" || exit 1
            printf 'GET /metrics HTTP/1.0\r\nHost: rng\r\n\r\n' >&3
            timeout 10 cat <&3 || exit 1
            exec 3<&-
        done"#;
        let network = self.network();
        let mut args = vec![
            "run",
            "--rm",
            "--network",
            &network,
            "--entrypoint",
            "bash",
            REDIS_IMAGE,
            "-c",
            script,
            "metrics",
        ];
        args.extend(addresses.iter().map(String::as_str));
        let text = docker(&args);
        let mut calls = BTreeMap::new();
        let mut current = None;
        for line in text.lines() {
            if let Some(ip) = line.strip_prefix("== ") {
                current = Some(ip.trim().to_string());
                calls.insert(ip.trim().to_string(), 0.0);
            } else if line.starts_with("dockercoins_requests_total{")
                && line.contains("Generate")
                && line.contains("protocol=\"grpc\"")
            {
                let value: f64 = line
                    .rsplit(' ')
                    .next()
                    .and_then(|value| value.parse().ok())
                    .unwrap_or_else(|| panic!("not a sample: {line}"));
                *calls
                    .get_mut(current.as_ref().expect("a task's metrics"))
                    .expect("a task") += value;
            }
        }
        assert_eq!(
            calls.len(),
            addresses.len(),
            "metrics from every task: {text}"
        );
        calls
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.removed {
            let _ = output("docker", &["stack", "rm", &self.name]);
            // The network goes only once its tasks have stopped; leaving the swarm (next) takes
            // whatever is left.
            let label = format!("label=com.docker.stack.namespace={}", self.name);
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let left = output("docker", &["ps", "--all", "--quiet", "--filter", &label]);
                if left.stdout.iter().all(u8::is_ascii_whitespace) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            self.remove_volume();
        }
    }
}

/// Whether Swarm's virtual IPs and routing mesh can work here: the kernel has IPVS, loaded
/// (`/proc/net/ip_vs`), as a module the engine can load, or built in (its configuration says so).
fn kernel_has_ipvs() -> bool {
    if std::path::Path::new("/proc/net/ip_vs").exists() {
        return true;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let modules = std::path::Path::new("/lib/modules").join(release.trim());
    if modules.is_dir() {
        let found = output(
            "find",
            &[
                modules.to_str().unwrap_or("/"),
                "-name",
                "ip_vs.ko*",
                "-print",
                "-quit",
            ],
        );
        if !found.stdout.is_empty() {
            return true;
        }
    }
    let boot_config = std::fs::read_to_string(format!("/boot/config-{}", release.trim()));
    let config = boot_config.ok().or_else(|| {
        let zcat = output("zcat", &["/proc/config.gz"]);
        zcat.status
            .success()
            .then(|| String::from_utf8_lossy(&zcat.stdout).into_owned())
    });
    match config {
        Some(config) => config
            .lines()
            .any(|line| line == "CONFIG_IP_VS=y" || line == "CONFIG_IP_VS=m"),
        // No configuration to read, no module to load and none loaded: a kernel built without
        // modules and without IPVS (as in some micro-VMs).
        None => false,
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

/// The base images (scripts/offline-images), then the four service images at each of [`TAGS`],
/// all from one copy of the sources taken now: the tree may change while they build (an editor,
/// another session), and builds of different trees would each compile everything again. The
/// second tag differs from the first by its version label only (one layer, seconds), which is
/// enough for Swarm to roll from one image to the other.
fn build_images() {
    checked(format!("{ROOT}/scripts/offline-images"), &[] as &[&str]);
    let context = tempfile::tempdir().expect("a directory for the build context");
    let sources = [
        "Dockerfile",
        ".dockerignore",
        "Cargo.toml",
        "Cargo.lock",
        ".cargo",
        "build.rs",
        "proto",
        "src",
        "crates",
    ];
    let copy = format!(
        "tar -C {ROOT} --exclude=target -cf - {} | tar -C {} -xf -",
        sources.join(" "),
        context.path().display()
    );
    checked("bash", &["-o", "pipefail", "-c", &copy]);
    let context = context.path().to_str().expect("a UTF-8 path");
    for tag in TAGS {
        for image in IMAGES {
            let name = format!("dockercoins-mesh/{image}:{tag}");
            let version = format!("VERSION={tag}");
            docker(&[
                "build",
                "--quiet",
                "--target",
                image,
                "--build-arg",
                &version,
                "--tag",
                &name,
                context,
            ]);
        }
    }
}

/// The version label of the image a task runs.
fn task_version(task: &Task) -> String {
    let container = task.container.as_deref().expect("a container");
    docker(&[
        "inspect",
        "--format",
        r#"{{index .Config.Labels "org.opencontainers.image.version"}}"#,
        container,
    ])
    .trim()
    .to_string()
}

/// Services made by hand, as the chapter starts: `docker network create --driver overlay`, then
/// `docker service create --network … --name …` for Redis and each image, with no variable set.
/// Removed (and their network) when dropped.
struct ByHand {
    prefix: String,
    services: Vec<String>,
    network: String,
}

impl ByHand {
    fn create() -> Self {
        let prefix = format!("dchand{}", std::process::id());
        let network = format!("{prefix}_net");
        docker(&[
            "network",
            "create",
            "--driver",
            "overlay",
            "--attachable",
            &network,
        ]);
        Self {
            prefix,
            services: Vec::new(),
            network,
        }
    }

    /// `docker service create --network <net> --name <name> <image> <args…>`. The service's name
    /// is made unique on this engine; `name` is its alias on the network, which is what the
    /// other services call it. Without IPVS, every name resolves to its tasks (dnsrr).
    fn service(&mut self, name: &str, image: &str, args: &[&str]) {
        let service = format!("{}_{name}", self.prefix);
        let network = format!("name={},alias={name}", self.network);
        let mut all = vec![
            "service",
            "create",
            "--detach",
            "--network",
            &network,
            "--name",
            &service,
        ];
        if !kernel_has_ipvs() {
            all.extend(["--endpoint-mode", "dnsrr"]);
        }
        all.push(image);
        all.extend(args);
        docker(&all);
        self.services.push(service);
    }

    /// `redis-cli get hashes` from a throwaway container on the network.
    fn hashes(&self) -> Option<u64> {
        let result = output(
            "docker",
            &[
                "run",
                "--rm",
                "--network",
                &self.network,
                REDIS_IMAGE,
                "redis-cli",
                "-h",
                "redis",
                "get",
                "hashes",
            ],
        );
        String::from_utf8_lossy(&result.stdout).trim().parse().ok()
    }
}

impl Drop for ByHand {
    fn drop(&mut self) {
        for service in &self.services {
            let _ = output("docker", &["service", "rm", service]);
        }
        // The network goes once the services' tasks have stopped.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !output("docker", &["network", "rm", &self.network])
            .status
            .success()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[test]
fn the_stack_on_a_single_node_swarm_scales_rng_past_one_replicas_limit() {
    let started = Instant::now();
    build_images();
    eprintln!("images built in {:?}", started.elapsed());

    // Guards in this order: the stack is dropped (removed) before the swarm is left.
    let mut swarm = Swarm::join();

    // By hand first, as the chapter starts: an overlay network, Redis, and a service per image
    // with nothing but its name: the worker finds rng, hasher and redis by their names. (The
    // chapter's `redis` image turns protected mode off itself; Debian's needs the flag.)
    {
        let creating = Instant::now();
        let mut by_hand = ByHand::create();
        by_hand.service(
            "redis",
            REDIS_IMAGE,
            &["redis-server", "--protected-mode", "no"],
        );
        for image in IMAGES {
            by_hand.service(image, &format!("dockercoins-mesh/{image}:{}", TAGS[0]), &[]);
        }
        let first = eventually_every(
            Duration::from_secs(180),
            Duration::from_secs(1),
            "hashes from the services made by hand",
            || by_hand.hashes().filter(|hashes| *hashes > 0),
        );
        eventually_every(
            Duration::from_secs(30),
            Duration::from_secs(1),
            "hashes to grow",
            || by_hand.hashes().filter(|hashes| *hashes > first),
        );
        eprintln!(
            "services made by hand mining {:?} after create",
            creating.elapsed()
        );
    }

    let mut stack = Stack::deploy(Ports::free());
    let deployed = Instant::now();
    for service in SERVICES {
        stack.wait_healthy(
            service,
            1,
            Duration::from_secs(120).saturating_sub(deployed.elapsed()),
        );
    }
    eprintln!(
        "every service healthy {:?} after deploy",
        deployed.elapsed()
    );

    // Hashes grow, as the webui reports them through the routing mesh.
    let (_, first) = stack.next_change(0);
    stack.next_change(first);

    // The edges answer on the published ports, each from a task of the service behind it.
    let rng_tasks = stack.wait_healthy("rng", 1, Duration::from_secs(10));
    let rng_hosts: Vec<String> = rng_tasks
        .iter()
        .filter_map(|task| task.container.as_deref())
        .map(|container| container[..12].to_string())
        .collect();
    let banner = http()
        .get(format!("http://127.0.0.1:{}/", stack.ports.rng))
        .send()
        .and_then(|response| response.text())
        .expect("rng's shim through rng-edge");
    assert!(
        rng_hosts.iter().any(|host| banner.contains(host.as_str())),
        "{banner:?} names an rng task ({rng_hosts:?})"
    );
    let digest = http()
        .post(format!("http://127.0.0.1:{}/", stack.ports.hasher))
        .body("abc")
        .send()
        .and_then(|response| response.text())
        .expect("hasher's shim through hasher-edge");
    assert!(
        digest.contains("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        "{digest:?}"
    );

    // A rolling update as the chapter makes one: the next TAG, deployed again. Each service of
    // ours moves to it, the new task healthy before the old one stops; hashes keep growing.
    // Then `docker service rollback` takes the worker back to the previous tag.
    let updating = Instant::now();
    stack.apply(TAGS[1]);
    for service in ["worker", "rng"] {
        stack.wait_version(service, TAGS[1], Duration::from_secs(180));
    }
    eprintln!("rolled to {} in {:?}", TAGS[1], updating.elapsed());
    let (_, now) = stack.next_change(0);
    stack.next_change(now);
    let rolling_back = Instant::now();
    docker(&["service", "rollback", "--detach", &stack.service("worker")]);
    stack.wait_version("worker", TAGS[0], Duration::from_secs(180));
    eprintln!("worker rolled back in {:?}", rolling_back.elapsed());
    let (_, now) = stack.next_change(0);
    stack.next_change(now);

    // Ten workers on one rng: rng's queue holds them to about 10 hashes/s.
    stack.scale("worker", 10);
    stack.wait_healthy("worker", 10, Duration::from_secs(90));
    let one = stack.rate();
    eprintln!("10 workers, 1 rng task: {one:.2} hashes/s");
    assert!(
        (5.0..12.0).contains(&one),
        "one rng task caps ten workers near 10 hashes/s: {one:.2}"
    );

    // Three rng tasks; every worker finds all three through DNS (re-resolved every 5 s).
    stack.scale("rng", 3);
    let rng_tasks = stack.wait_healthy("rng", 3, Duration::from_secs(90));
    let addresses: Vec<String> = rng_tasks
        .iter()
        .map(|task| task.address.clone().expect("an rng task address"))
        .collect();
    let workers: Vec<String> = stack
        .tasks("worker")
        .into_iter()
        .map(|task| task.id)
        .collect();
    assert_eq!(workers.len(), 10);
    eventually_every(
        Duration::from_secs(60),
        Duration::from_secs(1),
        "every worker serving from the three rng tasks",
        || {
            let seen = stack.rng_replicas_per_worker();
            workers
                .iter()
                .all(|worker| {
                    seen.get(worker)
                        .is_some_and(|ips| addresses.iter().all(|ip| ips.contains(ip)))
                })
                .then_some(())
        },
    );
    let before = stack.generate_calls(&addresses);
    let three = stack.rate();
    let after = stack.generate_calls(&addresses);
    let served: BTreeMap<&String, f64> = addresses
        .iter()
        .map(|ip| (ip, after[ip] - before[ip]))
        .collect();
    eprintln!("10 workers, 3 rng tasks: {three:.2} hashes/s; Generate calls per task {served:?}");
    for (ip, calls) in &served {
        assert!(*calls > 0.0, "rng task {ip} served no call: {served:?}");
    }
    assert!(
        three >= TARGET_RATE,
        "10 workers on 3 rng tasks: {three:.2} hashes/s, under {TARGET_RATE}"
    );

    // Remove the stack and leave the swarm, and both must succeed.
    let removing = Instant::now();
    stack.remove();
    eprintln!("stack removed in {:?}", removing.elapsed());
    swarm.leave();
    eprintln!("whole test: {:?}", started.elapsed());
}
