//! The gRPC APIs of rng and hasher, driven with the real grpcurl through server reflection, as a
//! workshop user would: no `.proto` file at hand.

mod support;

use base64::Engine;
use support::{Service, backends, grpcurl, grpcurl_output, sha256_hex};

const RNG: &str = "dockercoins.rng.v1.RngService";
const HASHER: &str = "dockercoins.hasher.v1.HasherService";

fn fast() -> Vec<(&'static str, String)> {
    vec![("RNG_DELAY", "0s".into()), ("HASHER_DELAY", "0s".into())]
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

#[test]
fn reflection_lists_and_describes_each_servers_own_services() {
    let (rng, hasher) = backends(&fast());
    for (service, own, other) in [(&rng, RNG, HASHER), (&hasher, HASHER, RNG)] {
        let listed = grpcurl(service.addr, &["list"]);
        let names: Vec<&str> = listed.lines().collect();
        assert!(names.contains(&own), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
        assert!(
            !names.contains(&other),
            "{other} is served elsewhere: {names:?}"
        );
        let described = grpcurl(service.addr, &["describe", own]);
        assert!(
            described.contains(&format!("{own} is a service")),
            "{described}"
        );
    }
    let message = grpcurl(
        rng.addr,
        &["describe", "dockercoins.rng.v1.GenerateRequest"],
    );
    assert!(message.contains("uint32 size = 1;"), "{message}");
    let message = grpcurl(
        hasher.addr,
        &["describe", "dockercoins.hasher.v1.HashResponse"],
    );
    assert!(message.contains("string digest = 1;"), "{message}");
}

#[test]
fn health_is_serving_for_the_server_and_for_each_service() {
    let (rng, hasher) = backends(&fast());
    for (service, name) in [(&rng, RNG), (&hasher, HASHER)] {
        for asked in ["", name] {
            let body = format!(r#"{{"service":"{asked}"}}"#);
            let answer = json(&grpcurl(
                service.addr,
                &["-d", &body, "grpc.health.v1.Health/Check"],
            ));
            assert_eq!(answer["status"], "SERVING", "{name} {asked:?}");
        }
    }
}

#[test]
fn generate_returns_exactly_the_size_asked() {
    let rng = Service::start("rng", &fast());
    let mut seen = Vec::new();
    for size in [32, 1, 1000] {
        let body = format!(r#"{{"size":{size}}}"#);
        let answer = json(&grpcurl(
            rng.addr,
            &["-d", &body, &format!("{RNG}/Generate")],
        ));
        let data = base64::engine::general_purpose::STANDARD
            .decode(answer["data"].as_str().expect("data is bytes"))
            .expect("base64");
        assert_eq!(data.len(), size);
        seen.push(data);
    }
    // Proto3 leaves an empty `bytes` field out of the JSON.
    let empty = json(&grpcurl(
        rng.addr,
        &["-d", r#"{"size":0}"#, &format!("{RNG}/Generate")],
    ));
    assert!(empty.get("data").is_none_or(|data| data == ""), "{empty}");
    let again = json(&grpcurl(
        rng.addr,
        &["-d", r#"{"size":32}"#, &format!("{RNG}/Generate")],
    ));
    let again = base64::engine::general_purpose::STANDARD
        .decode(again["data"].as_str().unwrap())
        .unwrap();
    assert_ne!(again, seen[0], "random bytes differ between calls");
}

#[test]
fn hash_returns_the_sha256_of_known_inputs() {
    let hasher = Service::start("hasher", &fast());
    for input in [&b"abc"[..], b"", &[0u8; 32], b"DockerCoins"] {
        let encoded = base64::engine::general_purpose::STANDARD.encode(input);
        let body = format!(r#"{{"data":"{encoded}"}}"#);
        let answer = json(&grpcurl(
            hasher.addr,
            &["-d", &body, &format!("{HASHER}/Hash")],
        ));
        assert_eq!(answer["digest"], sha256_hex(input), "{input:?}");
    }
    let answer = json(&grpcurl(
        hasher.addr,
        &["-d", r#"{"data":"YWJj"}"#, &format!("{HASHER}/Hash")],
    ));
    assert_eq!(
        answer["digest"],
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn hash_batch_returns_each_items_digest_in_order_and_enforces_the_cap() {
    let hasher = Service::start(
        "hasher",
        &[
            fast(),
            vec![
                ("HASHER_MAX_BODY", "200".to_string()),
                ("HASHER_MAX_ITEMS", "3".to_string()),
            ],
        ]
        .concat(),
    );
    let items = [&b"abc"[..], b"", &[7u8; 32]];
    let encoded: Vec<String> = items
        .iter()
        .map(|item| {
            format!(
                "\"{}\"",
                base64::engine::general_purpose::STANDARD.encode(item)
            )
        })
        .collect();
    let body = format!(r#"{{"data":[{}]}}"#, encoded.join(","));
    let answer = json(&grpcurl(
        hasher.addr,
        &["-d", &body, &format!("{HASHER}/HashBatch")],
    ));
    let expected: Vec<String> = items.iter().map(|item| sha256_hex(item)).collect();
    assert_eq!(answer["digests"], serde_json::json!(expected));

    // 3 x 40 bytes and 32 per item add up to more than the cap of 200, though each item is
    // under it (and the message, 126 bytes, is within what the server decodes: cap + 16).
    let item = base64::engine::general_purpose::STANDARD.encode([1u8; 40]);
    let body = format!(r#"{{"data":["{item}","{item}","{item}"]}}"#);
    let report = failing_call(&hasher, &body, &format!("{HASHER}/HashBatch"));
    assert!(report.contains("ResourceExhausted"), "{report}");
    assert!(report.contains("216 bytes"), "{report}");
    assert!(report.contains("HASHER_MAX_BODY"), "{report}");

    // Four empty items: almost no bytes, but over the cap of 3 items.
    let body = r#"{"data":["","","",""]}"#;
    let report = failing_call(&hasher, body, &format!("{HASHER}/HashBatch"));
    assert!(report.contains("ResourceExhausted"), "{report}");
    assert!(report.contains("HASHER_MAX_ITEMS"), "{report}");
}

/// Runs a call expected to fail and returns grpcurl's report (code and message).
fn failing_call(service: &Service, body: &str, method: &str) -> String {
    let output = grpcurl_output(service.addr, &["-d", body, method]);
    assert!(!output.status.success(), "{method} with {body} must fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn oversized_requests_get_the_right_codes_and_the_services_keep_serving() {
    let mut env = fast();
    env.push(("RNG_MAX_SIZE", "1000".into()));
    env.push(("HASHER_MAX_BODY", "100".into()));
    let (rng, hasher) = backends(&env);

    let report = failing_call(&rng, r#"{"size":1001}"#, &format!("{RNG}/Generate"));
    assert!(report.contains("Code: InvalidArgument"), "{report}");
    assert!(report.contains("cap of 1000 bytes"), "{report}");

    let just_over = base64::engine::general_purpose::STANDARD.encode([7u8; 101]);
    let report = failing_call(
        &hasher,
        &format!(r#"{{"data":"{just_over}"}}"#),
        &format!("{HASHER}/Hash"),
    );
    assert!(report.contains("Code: ResourceExhausted"), "{report}");
    assert!(report.contains("cap of 100 bytes"), "{report}");

    // Far over the cap: refused by the decoding limit, before the message is decoded.
    let far_over = base64::engine::general_purpose::STANDARD.encode([7u8; 5000]);
    let report = failing_call(
        &hasher,
        &format!(r#"{{"data":"{far_over}"}}"#),
        &format!("{HASHER}/Hash"),
    );
    assert!(report.contains("Code: OutOfRange"), "{report}");

    let report = failing_call(&rng, "{}", "dockercoins.rng.v1.RngService/Nothing");
    assert!(
        report.contains("Unimplemented") || report.contains("does not include a method"),
        "{report}"
    );

    // Both still serve.
    let answer = json(&grpcurl(
        rng.addr,
        &["-d", r#"{"size":1000}"#, &format!("{RNG}/Generate")],
    ));
    assert!(answer["data"].is_string());
    let answer = json(&grpcurl(
        hasher.addr,
        &["-d", r#"{"data":"YWJj"}"#, &format!("{HASHER}/Hash")],
    ));
    assert_eq!(answer["digest"], sha256_hex(b"abc"));
}

/// What a health Watch saw, each with its time since `opened`.
enum Seen {
    Status(std::time::Instant, String),
    /// The server ended the stream (`Ok`) or the connection broke (`Err`).
    End(std::time::Instant, Result<(), String>),
}

/// Opens `grpc.health.v1.Health/Watch` on `addr` from a thread of its own, as a worker does, and
/// sends what it sees; returns once the first status has come.
fn watch_health(addr: std::net::SocketAddr) -> std::sync::mpsc::Receiver<Seen> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let (seen, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut client = HealthClient::new(channel);
            let mut stream = client
                .watch(HealthCheckRequest::default())
                .await
                .unwrap()
                .into_inner();
            let end = loop {
                match stream.message().await {
                    Ok(Some(message)) => {
                        let status = message.status().as_str_name().to_string();
                        let _ = seen.send(Seen::Status(std::time::Instant::now(), status));
                    }
                    Ok(None) => break Ok(()),
                    Err(status) => break Err(status.to_string()),
                }
            };
            let _ = seen.send(Seen::End(std::time::Instant::now(), end));
        });
    });
    match receiver.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(Seen::Status(_, status)) => assert_eq!(status, "SERVING"),
        Ok(Seen::End(_, end)) => panic!("the watch ended at once: {end:?}"),
        Err(err) => panic!("no first status: {err}"),
    }
    receiver
}

#[test]
fn sigterm_tells_a_watch_not_serving_then_ends_it_after_the_grace_and_exits_at_once() {
    use std::time::{Duration, Instant};
    const GRACE: Duration = Duration::from_millis(200);
    // The drain deadline is 500 ms: a watch that held the drain would take rng past 700 ms.
    const AT_ONCE: Duration = Duration::from_millis(200 + 250);
    let settings = [
        ("LISTEN_SHUTDOWN_GRACE", "200ms".to_string()),
        ("RNG_DELAY", "0s".to_string()),
    ];

    let mut idle = Service::start("rng", &settings);
    let (idle_took, status) = idle.process.terminate();
    assert!(status.success(), "rng exit status {status}");
    eprintln!(
        "rng exited {} ms after SIGTERM with no watch",
        idle_took.as_millis()
    );
    // Nobody connected, nobody to tell: no grace.
    assert!(idle_took < GRACE, "rng with no client waited {idle_took:?}");

    let mut rng = Service::start("rng", &settings);
    let seen = watch_health(rng.addr);
    let signalled = Instant::now();
    let (took, status) = rng.process.terminate();
    assert!(status.success(), "rng exit status {status}");
    eprintln!(
        "rng exited {} ms after SIGTERM with a watch open",
        took.as_millis()
    );
    assert!(took >= GRACE, "rng served through the grace: {took:?}");
    assert!(took < AT_ONCE, "the watch held rng for {took:?}");

    let told = match seen.recv_timeout(Duration::from_secs(1)) {
        Ok(Seen::Status(at, status)) => {
            assert_eq!(status, "NOT_SERVING");
            at - signalled
        }
        Ok(Seen::End(_, end)) => panic!("the watch ended before NOT_SERVING: {end:?}"),
        Err(err) => panic!("the watch saw nothing more: {err}"),
    };
    let ended = match seen.recv_timeout(Duration::from_secs(1)) {
        Ok(Seen::End(at, end)) => {
            assert_eq!(end, Ok(()), "rng ended the watch, rather than dropping it");
            at - signalled
        }
        Ok(Seen::Status(_, status)) => panic!("a status after NOT_SERVING: {status}"),
        Err(err) => panic!("the watch did not end: {err}"),
    };
    eprintln!(
        "the watch saw NOT_SERVING {} ms and its end {} ms after SIGTERM",
        told.as_millis(),
        ended.as_millis()
    );
    assert!(told < GRACE, "NOT_SERVING within the grace: {told:?}");
    assert!(
        ended >= GRACE,
        "the watch stayed open through the grace: {ended:?}"
    );
}

#[test]
fn sigterm_reports_not_serving_then_finishes_the_call_in_flight() {
    let mut rng = Service::start("rng", &[("RNG_DELAY", "400ms".to_string())]);
    let addr = rng.addr.to_string();
    let grpcurl = support::tool("grpcurl");
    let watch = support::Process::spawn(
        "watch",
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            "{}",
            &addr,
            "grpc.health.v1.Health/Watch",
        ],
        &[],
    );
    watch.wait_for_log("\"SERVING\"", std::time::Duration::from_secs(10));
    let call = support::Process::spawn(
        "generate",
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            r#"{"size":32}"#,
            &addr,
            &format!("{RNG}/Generate"),
        ],
        &[],
    );
    // The call is in rng's hands once it has its turn in the queue (the queue's wait histogram
    // counts it then); its 400 ms of delay leave time to signal.
    support::eventually(
        std::time::Duration::from_secs(10),
        "the call to start",
        || {
            let metrics = support::scrape(&format!("{}/metrics", rng.admin_url()));
            (support::total(&metrics, "dockercoins_queue_wait_seconds_count", &[]) >= 1.0)
                .then_some(())
        },
    );
    let (took, status) = rng.process.terminate();
    assert!(status.success(), "rng exit status {status}");
    assert!(
        took < std::time::Duration::from_secs(1),
        "rng took {took:?} to exit"
    );
    watch.wait_for_log("NOT_SERVING", std::time::Duration::from_secs(5));
    call.wait_for_log("\"data\"", std::time::Duration::from_secs(5));
}
