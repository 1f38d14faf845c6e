//! The mesh on loopback: three rng replicas listed in RNG_ENDPOINT, ten units in flight, and the
//! worker's balancer spreading (round_robin) or pinning (pick_first) the calls; a replica stopped with
//! SIGTERM costs no call; every answer names its replica.

mod support;

use std::time::{Duration, Instant};

use support::{Redis, Service, eventually, grpcurl_output, http, worker};

/// Three rng replicas with the default delays, each with a name of its own.
fn three_rngs() -> Vec<Service> {
    ["rng-a", "rng-b", "rng-c"]
        .into_iter()
        .map(|name| Service::start("rng", &[("HOSTNAME", name.to_string())]))
        .collect()
}

fn endpoints(replicas: &[Service]) -> String {
    replicas
        .iter()
        .map(Service::url)
        .collect::<Vec<_>>()
        .join(",")
}

/// Redis, three rng replicas, a hasher (default delays) and one worker with ten units in flight
/// balancing over the replicas, once work flows.
struct ThreeReplicas {
    redis: Redis,
    rngs: Vec<Service>,
    _hasher: Service,
    worker: support::Process,
}

impl ThreeReplicas {
    fn start(extra: &[(&'static str, String)]) -> Self {
        let redis = Redis::start();
        let rngs = three_rngs();
        let hasher = Service::start("hasher", &[]);
        let mut env = vec![
            ("RNG_ENDPOINT", endpoints(&rngs)),
            ("WORKER_CONCURRENCY", "10".to_string()),
        ];
        env.extend_from_slice(extra);
        let worker = worker(&rngs[0], &hasher, &redis, &env);
        eventually(Duration::from_secs(10), "work flowing", || {
            (redis.hashes() > 20).then_some(())
        });
        Self {
            redis,
            rngs,
            _hasher: hasher,
            worker,
        }
    }
}

/// Runs `workers` until work flows, then measures the hashing rate over `window` and each rng
/// replica's share of the Generate calls meanwhile. Stops the workers.
fn spread(
    redis: &Redis,
    rngs: &[Service],
    mut workers: Vec<support::Process>,
    window: Duration,
) -> (f64, Vec<f64>) {
    let start = redis.hashes();
    eventually(Duration::from_secs(10), "work flowing", || {
        (redis.hashes() > start + 20).then_some(())
    });
    let before = generates(rngs);
    let rate = redis.rate(window);
    let served: Vec<f64> = generates(rngs)
        .iter()
        .zip(&before)
        .map(|(after, before)| after - before)
        .collect();
    let all: f64 = served.iter().sum();
    for worker in &mut workers {
        worker.terminate();
    }
    (rate, served.iter().map(|served| served / all).collect())
}

/// Whether each share is within 20% of an even share.
fn even(shares: &[f64]) -> bool {
    let fair = 1.0 / shares.len() as f64;
    shares
        .iter()
        .all(|share| (share - fair).abs() <= 0.2 * fair)
}

#[test]
fn round_robin_spreads_ten_units_over_three_rng_replicas_and_pick_first_does_not() {
    let redis = Redis::start();
    let rngs = three_rngs();
    let hasher = Service::start("hasher", &[]);
    let window = Duration::from_secs(10);
    let start = |lb: &str, processes: usize, units: usize| {
        let env = [
            ("RNG_ENDPOINT", endpoints(&rngs)),
            ("WORKER_CONCURRENCY", units.to_string()),
            ("WORKER_LB", lb.to_string()),
        ];
        (0..processes)
            .map(|_| worker(&rngs[0], &hasher, &redis, &env))
            .collect::<Vec<_>>()
    };

    // One worker with ten units in flight, then ten workers with one each (compose's shape, the
    // harder one: each worker sees only its own call).
    let (one, one_shares) = spread(&redis, &rngs, start("round_robin", 1, 10), window);
    let (ten, ten_shares) = spread(&redis, &rngs, start("round_robin", 10, 1), window);
    let (pinned, pinned_shares) = spread(&redis, &rngs, start("pick_first", 1, 10), window);
    eprintln!(
        "3 rng replicas, hashes/s and shares: round_robin one worker x10 {one:.2} {one_shares:.3?}, \
         round_robin ten workers {ten:.2} {ten_shares:.3?}, pick_first {pinned:.2} {pinned_shares:.3?}"
    );

    // One rng serves 10 a second: 25 or more means all three work; pinned, one does.
    assert!(
        one >= 25.0 && even(&one_shares),
        "round_robin, one worker: {one:.2} {one_shares:?}"
    );
    assert!(
        ten >= 25.0 && even(&ten_shares),
        "round_robin, ten workers: {ten:.2} {ten_shares:?}"
    );
    assert!(pinned <= 11.0, "pick_first: {pinned:.2} hashes/s");
    assert!(
        pinned_shares.iter().any(|share| *share > 0.9),
        "pick_first sends (nearly) everything to one replica: {pinned_shares:?}"
    );
}

#[test]
fn redis_counts_the_calls_each_replica_served_and_the_webui_shows_their_rates() {
    let mut mesh = ThreeReplicas::start(&[]);
    let webui = Service::start("webui", &[("REDIS_URL", mesh.redis.url())]);
    // The webui reports each replica's calls per second once it has seen its count move.
    let shown = eventually(
        Duration::from_secs(10),
        "three rng replicas in /json",
        || {
            let json = webui.get_json("/json")?;
            let rng = json["replicas"]["rng"].as_array()?.clone();
            let serving = rng
                .iter()
                .all(|replica| replica["rate"].as_f64() > Some(0.0));
            (rng.len() == 3 && serving && json["replicas"]["hasher"].as_array()?.len() == 1)
                .then_some(rng)
        },
    );
    let names: Vec<&str> = shown.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["rng-a", "rng-b", "rng-c"]);

    // Every unit's two calls are counted with the unit, exactly once.
    let (_, status) = mesh.worker.terminate();
    assert!(status.success());
    let hashes = mesh.redis.hashes();
    for service in ["rng", "hasher"] {
        let served = mesh.redis.served(service);
        eprintln!("{service}: {served:?} for {hashes} hashes");
        assert_eq!(
            served.values().sum::<u64>(),
            hashes,
            "{service}: {served:?}"
        );
        if service == "rng" {
            assert_eq!(
                served.keys().collect::<Vec<_>>(),
                ["rng-a", "rng-b", "rng-c"]
            );
        }
    }
}

#[test]
fn sigterm_to_one_replica_fails_no_call_at_the_worker() {
    // Bound whole: a destructuring with `..` would drop (and kill) the fields it leaves out.
    let mut mesh = ThreeReplicas::start(&[]);
    let (redis, worker) = (&mesh.redis, &mesh.worker);
    eventually(Duration::from_secs(10), "three replicas serving", || {
        let serving = worker
            .log()
            .iter()
            .filter(|line| line.contains("replica serving"))
            .count();
        (serving >= 4).then_some(())
    });
    let before = redis.hashes();
    eventually(Duration::from_secs(10), "work flowing", || {
        (redis.hashes() > before + 20).then_some(())
    });

    let (took, status) = mesh.rngs[1].process.terminate();
    assert!(
        status.success() && took < Duration::from_secs(1),
        "{status} after {took:?}"
    );
    worker.wait_for_log("replica not serving", Duration::from_secs(5));
    let after = redis.hashes();
    eventually(
        Duration::from_secs(10),
        "work flowing on two replicas",
        || (redis.hashes() > after + 20).then_some(()),
    );
    let failures: Vec<String> = worker
        .log()
        .into_iter()
        .filter(|line| line.contains("unit of work failed"))
        .collect();
    assert!(failures.is_empty(), "calls failed: {failures:?}");
}

#[test]
fn every_answer_names_the_replica_that_gave_it() {
    let rng = Service::start(
        "rng",
        &[
            ("HOSTNAME", "rng-x".to_string()),
            ("RNG_DELAY", "0s".to_string()),
        ],
    );
    let output = grpcurl_output(
        rng.addr,
        &[
            "-v",
            "-d",
            r#"{"size":4}"#,
            "dockercoins.rng.v1.RngService/Generate",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("x-served-by: rng-x"), "{stdout}");
    let response = http().get(format!("{}/4", rng.url())).send().unwrap();
    assert_eq!(response.headers()["x-served-by"], "rng-x");
}

#[test]
fn metrics_parse_as_prometheus_text_and_agree_with_redis() {
    use support::{scrape, total};
    let quick: Vec<(&str, String)> = ["RNG_DELAY", "HASHER_DELAY", "WORKER_DELAY"]
        .into_iter()
        .map(|name| (name, "5ms".to_string()))
        .collect();
    let redis = Redis::start();
    let rng = Service::start("rng", &quick);
    let hasher = Service::start("hasher", &quick);
    let worker = worker(&rng, &hasher, &redis, &quick);
    let webui = Service::start("webui", &[("REDIS_URL", redis.url())]);
    let admin = worker.wait_for_log("listening addr=", Duration::from_secs(10));
    let admin = admin.split("addr=").nth(1).unwrap().trim().to_string();
    eventually(Duration::from_secs(10), "some work", || {
        (redis.hashes() > 30).then_some(())
    });

    // Whatever the worker counted had reached Redis by the next flush, and nothing more.
    let before = redis.hashes();
    let units = total(
        &scrape(&format!("http://{admin}/metrics")),
        "dockercoins_units_total",
        &[],
    );
    let flushed = eventually(Duration::from_secs(5), "the next flush", || {
        let now = redis.hashes();
        (now as f64 >= units).then_some(now)
    });
    assert!(
        before as f64 <= units && units <= flushed as f64,
        "{before} <= {units} <= {flushed}"
    );

    // Every unit asked rng once and hasher once; the picks name the replicas that answered.
    let worker_metrics = scrape(&format!("http://{admin}/metrics"));
    let rng_picks = total(
        &worker_metrics,
        "dockercoins_picks_total",
        &[("service", "rng")],
    );
    let rng_metrics = scrape(&format!("{}/metrics", rng.admin_url()));
    let generates = total(
        &rng_metrics,
        "dockercoins_requests_total",
        &[
            ("route", "/dockercoins.rng.v1.RngService/Generate"),
            ("code", "0"),
        ],
    );
    assert!(
        rng_picks >= units && generates >= rng_picks,
        "{units} <= {rng_picks} <= {generates}"
    );
    let hashes = total(
        &scrape(&format!("{}/metrics", hasher.admin_url())),
        "dockercoins_requests_total",
        &[("route", "/dockercoins.hasher.v1.HasherService/Hash")],
    );
    assert!(hashes >= units, "{hashes} hashes served for {units} units");
    assert!(
        rng_metrics
            .iter()
            .any(|s| s.name == "dockercoins_request_duration_seconds_bucket"),
        "latency histogram"
    );

    http().get(format!("{}/json", webui.url())).send().unwrap();
    let served = total(
        &scrape(&format!("{}/metrics", webui.admin_url())),
        "dockercoins_requests_total",
        &[("route", "/json"), ("code", "200")],
    );
    assert!(served >= 1.0, "webui counted its /json");
}

/// Generate calls each replica has served so far, from its own /metrics.
fn generates(replicas: &[Service]) -> Vec<f64> {
    replicas
        .iter()
        .map(|replica| {
            support::total(
                &support::scrape(&format!("{}/metrics", replica.admin_url())),
                "dockercoins_requests_total",
                &[("route", "/dockercoins.rng.v1.RngService/Generate")],
            )
        })
        .collect()
}

/// Waits until, over a sliding window of 3 s, the first replica has served under a sixth of the
/// Generate calls (half an even share), for up to 10 s. Returns that share and how long it took.
fn first_replicas_share_drops(rngs: &[Service]) -> (f64, Duration) {
    let started = Instant::now();
    let mut window = std::collections::VecDeque::from([(Instant::now(), generates(rngs))]);
    let share = eventually(
        Duration::from_secs(10),
        "the first replica's share to drop",
        || {
            std::thread::sleep(Duration::from_millis(500));
            let now = generates(rngs);
            window.push_back((Instant::now(), now.clone()));
            while window
                .front()
                .is_some_and(|(at, _)| at.elapsed() > Duration::from_secs(3))
            {
                window.pop_front();
            }
            let (_, old) = window.front()?;
            let served: Vec<f64> = now.iter().zip(old).map(|(now, old)| now - old).collect();
            let all: f64 = served.iter().sum();
            let share = served[0] / all;
            (all > 20.0 && share < 1.0 / 6.0).then_some(share)
        },
    );
    (share, started.elapsed())
}

#[test]
fn a_replica_that_fails_while_serving_is_skipped_and_no_unit_fails() {
    let mesh = ThreeReplicas::start(&[]);
    // As a learner would: the binary's own subcommand, talking to its admin port.
    let rng = support::workspace_binary("rng");
    let answer = std::process::Command::new(&rng)
        .args(["fault", "--error-rate", "1"])
        .env("RNG_ADMIN_LISTEN", mesh.rngs[0].admin.to_string())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&answer.stdout);
    assert!(answer.status.success(), "{answer:?}");
    assert_eq!(shown.trim(), r#"{"delay":"0s","error_rate":1.0}"#);
    // It still reports SERVING: only the failures themselves can tell the worker.
    let (share, took) = first_replicas_share_drops(&mesh.rngs);
    eprintln!("failing replica's share {share:.3} after {took:?}");
    let failures: Vec<String> = mesh
        .worker
        .log()
        .into_iter()
        .filter(|line| line.contains("unit of work failed"))
        .collect();
    assert!(
        failures.is_empty(),
        "the retries covered every failed call: {failures:?}"
    );
}

#[test]
fn a_replica_made_slow_soon_gets_less_than_half_an_even_share() {
    let mesh = ThreeReplicas::start(&[]);
    let rngs = &mesh.rngs;

    let answer = http()
        .post(format!("{}/admin/fault", rngs[0].admin_url()))
        .header("content-type", "application/json")
        .body(r#"{"delay": "500ms"}"#)
        .send()
        .unwrap();
    assert_eq!(answer.status(), 200);
    let shown: serde_json::Value = http()
        .get(format!("{}/admin/fault", rngs[0].admin_url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(shown["delay"], "500ms");

    let (share, took) = first_replicas_share_drops(rngs);
    eprintln!("slow replica's share {share:.3} after {took:?}");

    let refused = http()
        .post(format!("{}/admin/fault", rngs[0].admin_url()))
        .header("content-type", "application/json")
        .body(r#"{"error_rate": 2}"#)
        .send()
        .unwrap();
    assert_eq!(refused.status(), 400);
}

#[test]
fn a_replica_killed_mid_run_costs_nothing_and_the_rate_recovers() {
    let mut mesh = ThreeReplicas::start(&[
        ("WORKER_RPC_TIMEOUT", "1s".to_string()),
        support::json_log(),
    ]);

    // SIGKILL: no NOT_SERVING, no drain; connections just break.
    mesh.rngs[2]
        .process
        .signal(nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    let at_kill = mesh.redis.hashes();
    // Two replicas still serve 20 a second: the rate is back when a second's flushes show it.
    eventually(Duration::from_secs(10), "the rate to recover", || {
        let before = mesh.redis.hashes();
        std::thread::sleep(Duration::from_secs(1));
        let per_second = mesh.redis.hashes() - before;
        (per_second >= 15).then_some(())
    });
    let recovered = killed.elapsed();
    eprintln!(
        "rate recovered {recovered:?} after the kill ({} hashes since)",
        mesh.redis.hashes() - at_kill
    );
    // Measured in one-second windows: the second window ends at 2 s (plus polling).
    assert!(
        recovered < Duration::from_millis(2200),
        "recovered after {recovered:?}"
    );

    let (_, status) = mesh.worker.terminate();
    assert!(status.success());
    assert_eq!(
        mesh.redis.hashes(),
        support::logged_units(&mesh.worker),
        "nothing lost"
    );
}

#[test]
fn a_units_trace_id_shows_in_the_logs_of_rng_and_hasher() {
    let debug = ("RUST_LOG", "debug,h2=info,hyper=info".to_string());
    let redis = Redis::start();
    let rng = Service::start("rng", &[debug.clone(), ("RNG_DELAY", "5ms".to_string())]);
    let hasher = Service::start(
        "hasher",
        &[debug.clone(), ("HASHER_DELAY", "5ms".to_string())],
    );
    let worker = worker(&rng, &hasher, &redis, &[debug]);
    let line = worker.wait_for_log("unit of work trace_id=", Duration::from_secs(10));
    let trace_id = line
        .split("trace_id=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert_eq!(trace_id.len(), 32, "{line}");
    for service in [&rng, &hasher] {
        service
            .process
            .wait_for_log(&format!("trace_id=\"{trace_id}\""), Duration::from_secs(10));
    }
}
