//! Counts that survive: the worker against a real redis-server run as deployed (AOF
//! `appendfsync everysec`, `maxmemory`, `noeviction`), through every fault Redis can throw at it.
//!
//! Each test checks `hashes` against the units the worker logged ("N units of work done", read
//! from the `units` field of its JSON log): a batch is applied once or, where a fault makes that
//! impossible, the loss is what the README promises and no more. Redis stopped with SIGTERM and
//! restarted is in tests/pipeline.rs.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::{
    Process, REDIS_MAXMEMORY, Redis, Service, backends, eventually, failed_flushes, json_fields,
    json_log, logged_units, quick, units_done,
};

/// A worker that logs JSON, so that its counts are read from fields.
fn worker(rng: &Service, hasher: &Service, redis: &Redis, env: &[(&str, String)]) -> Process {
    support::worker(rng, hasher, redis, &[env, &[json_log()]].concat())
}

/// The units of each batch the worker logged, in order.
fn batches(worker: &Process) -> Vec<u64> {
    worker
        .log()
        .iter()
        .filter_map(|line| units_done(line))
        .collect()
}

/// The number in the field `field` of the JSON log line `line`.
fn field(line: &str, field: &str) -> u64 {
    json_fields(line)
        .and_then(|fields| fields.get(field)?.as_u64())
        .unwrap_or_else(|| panic!("no number {field} in {line:?}"))
}

/// The text of the field `field` of the JSON log line `line`, or "" without one.
fn text(line: &str, field: &str) -> String {
    json_fields(line)
        .and_then(|fields| Some(fields.get(field)?.as_str()?.to_string()))
        .unwrap_or_default()
}

/// Waits until the worker failed `count` more flushes of `kind` than `before`.
fn wait_for_failures(worker: &Process, kind: &str, count: u64) {
    let before = failed_flushes(worker, Some(kind));
    eventually(
        Duration::from_secs(15),
        &format!("{count} failed flushes ({kind})"),
        || (failed_flushes(worker, Some(kind)) >= before + count).then_some(()),
    );
}

/// How many times the worker said its flushes land again after failing.
fn recoveries(worker: &Process) -> usize {
    worker
        .log()
        .iter()
        .filter(|line| line.contains("Redis takes the counts again"))
        .count()
}

/// Waits until the worker's flushes land again after a failure.
fn wait_for_recovery(worker: &Process, recoveries_before: usize) {
    eventually(Duration::from_secs(15), "the worker to flush again", || {
        (recoveries(worker) > recoveries_before).then_some(())
    });
}

/// Waits until the webui no longer reports a write problem.
fn wait_until_no_write_problem(webui: &Service) {
    eventually(
        Duration::from_secs(5),
        "the problem to leave the page",
        || {
            webui.get_json("/json")?["write_problem"]
                .is_null()
                .then_some(())
        },
    );
}

/// Stops the worker, and checks that `hashes` holds every unit it logged, once.
fn assert_every_unit_counted_once(redis: &Redis, mut worker: Process) {
    let (_, status) = worker.terminate();
    assert!(status.success(), "worker exit status {status}");
    assert_eq!(redis.hashes(), logged_units(&worker));
}

/// Redis, rng, hasher, and a worker that flushed once before Redis was stopped and then failed
/// two flushes.
fn worker_with_redis_down() -> (Redis, Service, Service, Process) {
    let mut redis = Redis::start();
    let (rng, hasher) = backends(&quick());
    let worker = worker(&rng, &hasher, &redis, &quick());
    redis.next_flush(0);
    redis.stop();
    wait_for_failures(&worker, "unreachable", 2);
    (redis, rng, hasher, worker)
}

#[test]
fn redis_killed_loses_at_most_its_last_second_and_counts_nothing_twice() {
    let mut redis = Redis::start();
    let (rng, hasher) = backends(&quick());
    let mut worker = worker(&rng, &hasher, &redis, &quick());
    let mut after = 0;
    for _ in 0..3 {
        after = redis.next_flush(after).1;
    }

    redis.kill();
    let before_kill = batches(&worker);
    wait_for_failures(&worker, "unreachable", 2);
    let recovered = recoveries(&worker);
    redis.restart();
    wait_for_recovery(&worker, recovered);
    let (_, status) = worker.terminate();
    assert!(status.success(), "worker exit status {status}");

    // `everysec` syncs the file once a second, so the batches Redis acknowledged in the second
    // before SIGKILL may be gone, and a slow disk can stretch that to two. The file is a log: what
    // is left is a prefix, de-duplication marks included, so nothing is ever applied twice. The
    // bound: the last three batches before the kill (two acknowledged, one in flight).
    let logged = logged_units(&worker);
    let hashes = redis.hashes();
    let bound: u64 = before_kill.iter().rev().take(3).sum();
    assert!(
        hashes <= logged,
        "{hashes} hashes for {logged} units logged"
    );
    assert!(
        logged - hashes <= bound,
        "lost {} units, more than the last three batches before the kill ({bound})",
        logged - hashes
    );
}

/// A TCP proxy in front of Redis that, once armed, lets the next flush script call through and
/// swallows Redis's answer to it, then cuts the connection: what a network that fails after the
/// request went through looks like to the worker.
struct AnswerEater {
    addr: std::net::SocketAddr,
    armed: Arc<AtomicBool>,
    eaten: Arc<AtomicU64>,
}

impl AnswerEater {
    fn start(redis: &Redis) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = format!("127.0.0.1:{}", redis.port);
        let armed = Arc::new(AtomicBool::new(false));
        let eaten = Arc::new(AtomicU64::new(0));
        let (armed_, eaten_) = (armed.clone(), eaten.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                // Set before the script reaches Redis, so its answer is the one eaten.
                let eat_next = Arc::new(AtomicBool::new(false));
                let (mut from_client, mut to_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (armed, eat) = (armed_.clone(), eat_next.clone());
                std::thread::spawn(move || {
                    let mut buffer = [0; 64 * 1024];
                    while let Ok(read) = from_client.read(&mut buffer) {
                        let chunk = &buffer[..read];
                        if read == 0 {
                            break;
                        }
                        // The flush script only (it names `dockercoins:flushed`), not the
                        // golden metrics' best-effort one.
                        let is_script =
                            chunk.windows(7).any(|w| w.eq_ignore_ascii_case(b"EVALSHA"))
                                && chunk.windows(19).any(|w| w == b"dockercoins:flushed");
                        if is_script && armed.swap(false, Ordering::SeqCst) {
                            eat.store(true, Ordering::SeqCst);
                        }
                        if to_server.write_all(chunk).is_err() {
                            break;
                        }
                    }
                });
                let (mut from_server, to_client) = (server, client);
                let eaten = eaten_.clone();
                std::thread::spawn(move || {
                    let mut to_client = to_client;
                    let mut buffer = [0; 64 * 1024];
                    while let Ok(read) = from_server.read(&mut buffer) {
                        if read == 0 {
                            break;
                        }
                        if eat_next.load(Ordering::SeqCst) {
                            eaten.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        if to_client.write_all(&buffer[..read]).is_err() {
                            break;
                        }
                    }
                    let _ = to_client.shutdown(std::net::Shutdown::Both);
                    let _ = from_server.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Self { addr, armed, eaten }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

#[test]
fn a_flush_whose_answer_never_came_is_counted_once() {
    let redis = Redis::start();
    let eater = AnswerEater::start(&redis);
    let (rng, hasher) = backends(&quick());
    let worker = worker(
        &rng,
        &hasher,
        &redis,
        &[quick(), vec![("REDIS_URL", eater.url())]].concat(),
    );
    redis.next_flush(0);

    // Redis applies the next batch; its answer never reaches the worker, which sends the same
    // batch again on a new connection.
    eater.armed.store(true, Ordering::SeqCst);
    wait_for_failures(&worker, "unreachable", 1);
    assert_eq!(
        eater.eaten.load(Ordering::SeqCst),
        1,
        "one answer was eaten"
    );
    worker.wait_for_log(
        "batch was already applied before Redis went away",
        Duration::from_secs(15),
    );
    assert_every_unit_counted_once(&redis, worker);
}

#[test]
fn a_key_of_the_wrong_type_stops_the_flush_whole_and_its_units_land_once_fixed() {
    let redis = Redis::start();
    let (rng, hasher) = backends(&quick());
    let worker = worker(&rng, &hasher, &redis, &quick());
    let webui = Service::start("webui", &[("REDIS_URL", redis.url())]);
    let mut connection = redis.connection();
    eventually(Duration::from_secs(30), "a coin and a served count", || {
        let exists: u64 = redis::cmd("EXISTS")
            .arg("hashes")
            .arg("wallet")
            .arg("dockercoins:served:rng")
            .query(&mut connection)
            .ok()?;
        (exists == 3).then_some(())
    });

    for (key, wrong) in [
        ("hashes", "RPUSH"),
        ("wallet", "SET"),
        ("dockercoins:served:rng", "SET"),
    ] {
        // Swapped in one transaction, so that no flush lands in between.
        let _: () = redis::pipe()
            .atomic()
            .cmd("RENAME")
            .arg(key)
            .arg("saved")
            .ignore()
            .cmd(wrong)
            .arg(key)
            .arg("not what the worker expects")
            .ignore()
            .query(&mut connection)
            .unwrap();
        let recovered = recoveries(&worker);
        let line = worker.wait_for_log(
            &format!("WRONGTYPE key {key} holds a"),
            Duration::from_secs(10),
        );
        assert_eq!(text(&line, "kind"), "wrong_type", "{line}");
        assert!(text(&line, "error").contains("nothing written"), "{line}");
        let json = eventually(
            Duration::from_secs(5),
            "the dashboard to name the key",
            || {
                let json = webui.get_json("/json")?;
                let problem = json["write_problem"].as_str()?.to_string();
                problem
                    .contains(&format!("key {key} holds a"))
                    .then_some(json)
            },
        );
        assert!(json["hashes"].is_u64(), "{json}");
        wait_for_failures(&worker, "wrong_type", 1);

        let _: () = redis::pipe()
            .atomic()
            .del(key)
            .ignore()
            .cmd("RENAME")
            .arg("saved")
            .arg(key)
            .ignore()
            .query(&mut connection)
            .unwrap();
        wait_for_recovery(&worker, recovered);
        wait_until_no_write_problem(&webui);
    }
    // The line is logged once per outage, not once per refused flush.
    let warnings = worker
        .log()
        .iter()
        .filter(|line| line.contains("WRONGTYPE"))
        .count();
    assert_eq!(warnings, 3, "one line per corrupted key");
    assert_every_unit_counted_once(&redis, worker);
}

#[test]
fn at_maxmemory_writes_are_refused_and_nothing_is_lost_once_memory_is_freed() {
    let redis = Redis::start();
    let (rng, hasher) = backends(&quick());
    let worker = worker(&rng, &hasher, &redis, &quick());
    let webui = Service::start("webui", &[("REDIS_URL", redis.url())]);
    redis.next_flush(0);

    // Four megabytes of filler, then the limit lowered two under what counts against it: at
    // `maxmemory` with `noeviction`, as a long turbo run would leave it, with a margin far wider
    // than the client and file buffers that come and go. (Filling up to the limit itself is not
    // steady: a buffer shrinks a moment later and lets the next write in.)
    let mut connection = redis.connection();
    let fillers: Vec<String> = (0..64).map(|n| format!("filler:{n}")).collect();
    for filler in &fillers {
        let _: () = redis::cmd("SET")
            .arg(filler)
            .arg(vec![b'x'; 64 << 10])
            .query(&mut connection)
            .unwrap();
    }
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(&mut connection)
        .unwrap();
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in INFO"))
    };
    let counted = field("used_memory") - field("mem_not_counted_for_evict");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(counted - (2 << 20))
        .query(&mut connection)
        .unwrap();
    let recovered = recoveries(&worker);
    wait_for_failures(&worker, "oom", 2);
    let held = redis.hashes();
    let json = eventually(Duration::from_secs(5), "the dashboard to say why", || {
        let json = webui.get_json("/json")?;
        json["write_problem"]
            .as_str()?
            .starts_with("Redis is full")
            .then_some(json)
    });
    assert_eq!(json["hashes"].as_u64(), Some(held), "{json}");
    let line = worker.wait_for_log(r#""kind":"oom""#, Duration::from_secs(1));
    assert!(
        text(&line, "message").contains("cannot update Redis"),
        "{line}"
    );

    // Freeing four megabytes brings Redis well under its limit again.
    let _: () = redis::cmd("DEL")
        .arg(&fillers)
        .query(&mut connection)
        .unwrap();
    wait_for_recovery(&worker, recovered);
    wait_until_no_write_problem(&webui);
    assert_every_unit_counted_once(&redis, worker);
}

#[test]
fn the_deployments_memory_limit_is_what_the_tests_redis_runs_with() {
    let redis = Redis::start();
    let config: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory*")
        .query(&mut redis.connection())
        .unwrap();
    let value = |name: &str| {
        let at = config.iter().position(|item| item == name).unwrap();
        config[at + 1].clone()
    };
    let megabytes: u64 = REDIS_MAXMEMORY.trim_end_matches("mb").parse().unwrap();
    assert_eq!(value("maxmemory"), (megabytes << 20).to_string());
    assert_eq!(value("maxmemory-policy"), "noeviction");
}

#[test]
fn a_worker_stopped_while_redis_is_down_reports_exactly_what_it_loses() {
    let (mut redis, _rng, _hasher, mut worker) = worker_with_redis_down();
    let (took, status) = worker.terminate();
    assert!(status.success(), "worker exit status {status}");
    assert!(
        took < Duration::from_secs(1),
        "worker took {took:?} to exit"
    );
    let line = worker.wait_for_log(
        "shutting down with work that could not reach Redis",
        Duration::from_secs(1),
    );
    let (units, batched, waiting) = (
        field(&line, "units"),
        field(&line, "batched"),
        field(&line, "waiting"),
    );
    assert_eq!(units, batched + waiting, "{line}");
    assert!(batched > 0, "{line}");

    // Everything the worker logged as done is in Redis but the batch it said it could not flush;
    // the work not yet in a batch was never logged, and is the rest of what it said it lost.
    redis.restart();
    assert_eq!(redis.hashes() + batched, logged_units(&worker), "{line}");
}

#[test]
fn a_worker_killed_while_redis_is_down_loses_the_batch_it_held_and_no_more() {
    let (mut redis, _rng, _hasher, worker) = worker_with_redis_down();
    worker.signal(Signal::SIGKILL);

    // While Redis is down the worker retries one batch (its last line) and piles up the rest
    // unlogged; SIGKILL loses both. Every batch logged before is in Redis, once.
    let held = *batches(&worker).last().expect("a batch");
    redis.restart();
    assert_eq!(redis.hashes() + held, logged_units(&worker));
}

#[test]
fn replicas_and_workers_not_seen_for_a_while_leave_redis_and_no_mark_expires() {
    let redis = Redis::start();
    let mut connection = redis.connection();
    let now: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // A replica last seen an hour ago and a worker last seen two days ago, both gone; a replica
    // and a worker seen a minute ago, maybe not.
    let _: () = redis::pipe()
        .hset("dockercoins:served:rng", "gone", 5)
        .zadd("dockercoins:served:rng:seen", "gone", now - 3600)
        .hset("dockercoins:served:rng", "recent", 7)
        .zadd("dockercoins:served:rng:seen", "recent", now - 60)
        .hset("dockercoins:flushed", "gone-worker", 9)
        .zadd("dockercoins:flushed:seen", "gone-worker", now - 2 * 86_400)
        .hset("dockercoins:flushed", "recent-worker", 3)
        .zadd("dockercoins:flushed:seen", "recent-worker", now - 60)
        .query(&mut connection)
        .unwrap();
    let (rng, hasher) = backends(&quick());
    let worker = worker(&rng, &hasher, &redis, &quick());
    redis.next_flush(0);

    let served = redis.served("rng");
    assert!(!served.contains_key("gone"), "{served:?}");
    assert_eq!(served.get("recent"), Some(&7), "{served:?}");
    let flushed: std::collections::BTreeMap<String, u64> = redis::cmd("HGETALL")
        .arg("dockercoins:flushed")
        .query(&mut connection)
        .unwrap();
    assert!(!flushed.contains_key("gone-worker"), "{flushed:?}");
    assert_eq!(flushed.get("recent-worker"), Some(&3), "{flushed:?}");
    assert_eq!(flushed.len(), 2, "this worker's mark too: {flushed:?}");
    let seen: u64 = redis::cmd("ZCARD")
        .arg("dockercoins:flushed:seen")
        .query(&mut connection)
        .unwrap();
    assert_eq!(seen, 2);
    // Nothing the worker writes carries a TTL (-1; -2 is a key not written yet, such as a wallet
    // before the first coin): no mark can expire before its retry.
    for key in [
        "hashes",
        "wallet",
        "dockercoins:flushed",
        "dockercoins:flushed:seen",
        "dockercoins:served:rng",
        "dockercoins:served:rng:seen",
    ] {
        let ttl: i64 = redis::cmd("TTL").arg(key).query(&mut connection).unwrap();
        assert!(
            ttl == -1 || (key == "wallet" && ttl == -2),
            "{key}: TTL {ttl}"
        );
    }
    assert_every_unit_counted_once(&redis, worker);
}
