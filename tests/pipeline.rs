//! The whole pipeline against a real redis-server: worker → rng → hasher → Redis → webui, with the
//! workshop's numbers, Redis outages, frozen or missing backends, and shutdown on SIGTERM.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use support::{
    Process, Redis, Service, backends, eventually, free_port, http, json_log, logged_units, quick,
    sha256_hex, worker,
};

#[test]
fn mines_coins_into_redis_and_the_webui_reports_them() {
    let redis = Redis::start();
    let (rng, hasher) = backends(&quick());
    let _worker = worker(&rng, &hasher, &redis, &quick());
    let webui = Service::start("webui", &[("REDIS_URL", redis.url())]);

    let mut connection = redis.connection();
    let coins: u64 = eventually(Duration::from_secs(30), "a coin in the wallet", || {
        let coins: u64 = redis::cmd("HLEN")
            .arg("wallet")
            .query(&mut connection)
            .ok()?;
        (coins >= 2).then_some(coins)
    });
    assert!(redis.hashes() > 0);
    assert!(redis.hashes() >= coins, "every coin is a unit of work");

    let wallet: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg("wallet")
        .query(&mut connection)
        .unwrap();
    for (digest, data) in &wallet {
        assert_eq!(
            data.len(),
            32,
            "a coin keeps the 32 random bytes it came from"
        );
        assert_eq!(
            digest,
            &sha256_hex(data),
            "the field is the SHA-256 of the value"
        );
        assert!(digest.starts_with('0'), "{digest}");
    }

    // /json answers from the webui's latest reading, at most 250 ms old.
    let json = eventually(Duration::from_secs(2), "/json to catch up", || {
        let json = webui.get_json("/json")?;
        (json["coins"].as_u64()? >= coins).then_some(json)
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(json["coins"].as_u64().unwrap() >= coins, "{json}");
    assert!(json["hashes"].as_u64().unwrap() > 0, "{json}");
    assert!((json["now"].as_f64().unwrap() - now).abs() < 5.0, "{json}");
}

#[test]
fn turbo_batches_count_every_unit_and_keep_every_coin() {
    let redis = Redis::start();
    let turbo: Vec<(&str, String)> = ["RNG_DELAY", "HASHER_DELAY", "WORKER_DELAY"]
        .into_iter()
        .map(|name| (name, "0s".to_string()))
        .collect();
    let (rng, hasher) = backends(&turbo);
    let env = [
        turbo.clone(),
        vec![("WORKER_BATCH", "64".to_string()), json_log()],
    ]
    .concat();
    let mut worker = worker(&rng, &hasher, &redis, &env);
    eventually(Duration::from_secs(10), "a few batches", || {
        (redis.hashes() >= 64 * 50).then_some(())
    });
    let (_, status) = worker.terminate();
    assert!(status.success());

    // Every unit counted once, in whole batches; every coin is a real one.
    let hashes = redis.hashes();
    assert_eq!(hashes, support::logged_units(&worker));
    assert_eq!(hashes % 64, 0, "{hashes} units in batches of 64");
    let mut connection = redis.connection();
    let wallet: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg("wallet")
        .query(&mut connection)
        .unwrap();
    for (digest, data) in &wallet {
        assert_eq!(data.len(), 32);
        assert_eq!(digest, &sha256_hex(data));
        assert!(digest.starts_with('0'), "{digest}");
    }
    // One in sixteen digests starts with 0.
    let expected = hashes as f64 / 16.0;
    let coins = wallet.len() as f64;
    assert!(
        (coins - expected).abs() < 5.0 * expected.sqrt() + 5.0,
        "{coins} coins for {hashes} units"
    );
    // rng and hasher served one call per batch.
    let calls = redis.served("hasher");
    assert_eq!(calls.values().sum::<u64>() * 64, hashes, "{calls:?}");
}

#[test]
fn one_worker_with_the_defaults_makes_3_33_hashes_per_second() {
    let redis = Redis::start();
    let (rng, hasher) = backends(&[]);
    let _worker = worker(&rng, &hasher, &redis, &[]);

    // Measured from flush to flush over at least 10 s, so that the one-second batching cancels.
    let rate = redis.rate(Duration::from_secs(10));
    eprintln!("one worker, default delays: {rate:.3} hashes/s");
    assert!(
        (rate - 10.0 / 3.0).abs() <= 10.0 / 3.0 * 0.10,
        "{rate:.3} hashes/s is not 3.33 ± 10%"
    );
}

#[test]
fn no_unit_is_lost_or_doubled_when_redis_is_stopped_and_restarted() {
    let mut redis = Redis::start();
    let (rng, hasher) = backends(&quick());
    let mut worker = worker(&rng, &hasher, &redis, &[quick(), vec![json_log()]].concat());

    let before = redis.next_flush(0).1;
    // SIGTERM, as `docker stop`: Redis syncs its file first. (SIGKILL, which may lose the last
    // second, is in tests/redis_faults.rs.)
    redis.stop();
    // Three failed flushes: three seconds of work done while Redis is away.
    eventually(Duration::from_secs(10), "three failed flushes", || {
        (support::failed_flushes(&worker, Some("unreachable")) >= 3).then_some(())
    });
    // One line for the outage, not one per failed flush.
    let warnings = worker
        .log()
        .iter()
        .filter(|line| line.contains("cannot update Redis"))
        .count();
    assert_eq!(warnings, 1, "the outage is logged once");
    redis.restart();
    redis.next_flush(before);
    let (took, status) = worker.terminate();
    assert!(status.success(), "worker exit status {status}");
    assert!(
        took < Duration::from_secs(1),
        "worker took {took:?} to exit"
    );

    let logged = logged_units(&worker);
    assert!(logged > 0);
    assert_eq!(
        redis.hashes(),
        logged,
        "hashes in Redis = units the worker logged as done"
    );
}

#[test]
fn the_worker_survives_a_missing_and_a_frozen_backend() {
    let redis = Redis::start();
    let rng_port = free_port();
    let hasher = Service::start("hasher", &quick());
    let mut env = quick();
    env.extend([
        ("RNG_ENDPOINT", format!("http://127.0.0.1:{rng_port}")),
        ("HASHER_ENDPOINT", hasher.url()),
        ("REDIS_URL", redis.url()),
        ("WORKER_RPC_TIMEOUT", "300ms".into()),
        ("WORKER_ADMIN_LISTEN", "127.0.0.1:0".into()),
    ]);
    let mut worker = Process::spawn("worker", &support::workspace_binary("worker"), &[], &env);

    // rng is not there: the worker logs, retries, and does not exit.
    worker.wait_for_log("unit of work failed", Duration::from_secs(10));
    assert!(worker.is_running());
    let mut rng_env = quick();
    rng_env.push(("RNG_LISTEN", format!("127.0.0.1:{rng_port}")));
    let rng = Process::spawn("rng", &support::workspace_binary("rng"), &[], &rng_env);
    rng.wait_for_log("listening", Duration::from_secs(10));
    let resumed = redis.next_flush(0).1;

    // hasher frozen: calls hit their deadline, the worker waits it out and resumes.
    hasher.process.signal(Signal::SIGSTOP);
    let failures = worker
        .log()
        .iter()
        .filter(|line| line.contains("unit of work failed"))
        .count();
    eventually(
        Duration::from_secs(10),
        "a deadline error while hasher is frozen",
        || {
            let now = worker
                .log()
                .iter()
                .filter(|line| line.contains("unit of work failed"))
                .count();
            (now > failures).then_some(())
        },
    );
    assert!(worker.is_running());
    hasher.process.signal(Signal::SIGCONT);
    let frozen_at = redis.hashes();
    redis.next_flush(frozen_at.max(resumed));
    let (took, _) = worker.terminate();
    assert!(
        took < Duration::from_secs(1),
        "worker took {took:?} to exit"
    );
}

#[test]
fn every_service_exits_within_a_second_of_sigterm() {
    let redis = Redis::start();
    // Default delays: rng and hasher are mid-request when the signal comes.
    let (mut rng, mut hasher) = backends(&[]);
    let env = [("WORKER_CONCURRENCY", "4".into()), json_log()];
    let mut worker = worker(&rng, &hasher, &redis, &env);
    let mut webui = Service::start("webui", &[("REDIS_URL", redis.url())]);
    redis.next_flush(0);

    let (took, status) = worker.terminate();
    assert!(took < Duration::from_secs(1), "worker took {took:?}");
    assert!(status.success(), "worker: {status}");
    assert_eq!(
        redis.hashes(),
        logged_units(&worker),
        "the last count was flushed"
    );
    for service in [&mut rng, &mut hasher, &mut webui] {
        let (took, status) = service.process.terminate();
        assert!(
            took < Duration::from_secs(1),
            "{} took {took:?}",
            service.process.name
        );
        assert!(status.success(), "{}: {status}", service.process.name);
    }
}

#[test]
fn webui_serves_without_redis_and_answers_503_quickly() {
    let port = free_port();
    let webui = Service::start(
        "webui",
        &[("REDIS_URL", format!("redis://127.0.0.1:{port}"))],
    );
    let client = http();
    let page = client.get(webui.url()).send().unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().unwrap().contains("id=\"speed\""));
    let started = Instant::now();
    let response = client.get(format!("{}/json", webui.url())).send().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "503 took {:?}",
        started.elapsed()
    );
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().unwrap();
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
}

/// Runs `<binary> healthcheck` with `env` and returns whether it reported healthy.
fn healthcheck(binary: &str, env: &[(&str, String)]) -> bool {
    let output = std::process::Command::new(support::workspace_binary(binary))
        .arg("healthcheck")
        .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
        .output()
        .expect("run the healthcheck");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.success(),
        stdout.starts_with("healthy"),
        "{stdout}"
    );
    output.status.success()
}

#[test]
fn each_binarys_healthcheck_probes_the_running_service() {
    let redis = Redis::start();
    let (rng, hasher) = backends(&quick());
    let worker = worker(&rng, &hasher, &redis, &quick());
    let webui = Service::start("webui", &[("REDIS_URL", redis.url())]);
    let admin = worker.wait_for_log("listening addr=", Duration::from_secs(10));
    let admin = admin.split("addr=").nth(1).unwrap().trim().to_string();

    assert!(healthcheck("rng", &[("RNG_LISTEN", rng.addr.to_string())]));
    assert!(healthcheck(
        "hasher",
        &[("HASHER_LISTEN", hasher.addr.to_string())]
    ));
    // The webui is probed on its admin port, where /healthz is.
    assert!(healthcheck(
        "webui",
        &[("WEBUI_ADMIN_LISTEN", webui.admin.to_string())]
    ));
    assert!(healthcheck("worker", &[("WORKER_ADMIN_LISTEN", admin)]));

    let nobody = format!("127.0.0.1:{}", free_port());
    assert!(!healthcheck("rng", &[("RNG_LISTEN", nobody.clone())]));
    assert!(!healthcheck("hasher", &[("HASHER_LISTEN", nobody.clone())]));
    assert!(!healthcheck(
        "webui",
        &[("WEBUI_ADMIN_LISTEN", nobody.clone())]
    ));
    assert!(!healthcheck("worker", &[("WORKER_ADMIN_LISTEN", nobody)]));
}
