//! Hostile clients against the bounds on work: rng's queue flooded past its bound, a call whose
//! deadline passes in the queue, HashBatch with half a million empty items or too much data, and
//! 200 streams of 1 MiB on one connection to hasher.
//!
//! Each attack runs against the real binary on loopback and asserts what every attack must leave
//! intact: gRPC health on the service port and `/healthz` on the admin port, through connections
//! opened before the attack, answer within 100 ms all along; the peak RSS (VmHWM) stays under
//! 64 MiB; and a normal call succeeds afterwards.

mod support;

use std::time::{Duration, Instant};

use dockercoins::hasher::v1::hasher_service_client::HasherServiceClient;
use dockercoins::hasher::v1::{HashBatchRequest, HashRequest};
use dockercoins::rng::v1::GenerateRequest;
use dockercoins::rng::v1::rng_service_client::RngServiceClient;
use support::{Health, HealthProbe, Service, sha256_hex};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The slowest a health answer may be during an attack.
const HEALTH_BOUND: Duration = Duration::from_millis(100);
/// The most memory a service may use at its peak, attack included.
const RSS_BOUND_MIB: f64 = 64.0;
/// `HASHER_MAX_BODY`'s default.
const MIB: usize = 1 << 20;

/// One HTTP/2 connection to `service`.
async fn connect(service: &Service) -> Channel {
    Channel::from_shared(service.url())
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|err| panic!("connect to {}: {err}", service.url()))
}

/// gRPC health on the service port and `/healthz` on the admin port, each asked every 20 ms over
/// a connection opened before the attack, from threads of their own (so that the test's own
/// attack tasks, which build and check megabytes, do not delay them).
struct Probes {
    grpc: HealthProbe,
    admin: HealthProbe,
}

impl Probes {
    fn start(service: &Service) -> Self {
        Self {
            grpc: HealthProbe::start(Health::Grpc(service.addr)),
            admin: HealthProbe::start(Health::Admin(service.admin)),
        }
    }

    /// Stops probing and asserts that every answer came within [`HEALTH_BOUND`].
    async fn assert_answered_in_time(self, attack: &str) {
        let Self { grpc, admin } = self;
        let (grpc, admin) = tokio::task::spawn_blocking(move || (grpc.finish(), admin.finish()))
            .await
            .unwrap();
        eprintln!("{attack}: slowest health answer {grpc:?} (gRPC), {admin:?} (/healthz)");
        assert!(grpc < HEALTH_BOUND, "{attack}: gRPC health took {grpc:?}");
        assert!(admin < HEALTH_BOUND, "{attack}: /healthz took {admin:?}");
    }
}

fn assert_peak_rss_bounded(service: &Service, attack: &str) {
    let (now, peak) = service.process.rss_mib();
    eprintln!("{attack}: peak RSS {peak:.1} MiB");
    assert!(
        peak < RSS_BOUND_MIB,
        "{attack}: peak RSS {peak:.1} MiB (now {now:.1} MiB)"
    );
}

async fn assert_hashes(channel: Channel, data: &[u8]) {
    let answer = HasherServiceClient::new(channel)
        .hash(HashRequest {
            data: data.to_vec(),
        })
        .await
        .expect("a normal Hash after the attack");
    assert_eq!(answer.into_inner().digest, sha256_hex(data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_batches_too_large_in_items_or_bytes_are_refused_fast() {
    let hasher = Service::start("hasher", &[]);
    let probe = Probes::start(&hasher);
    let mut client = HasherServiceClient::new(connect(&hasher).await);

    for (attack, data) in [
        ("500,000 empty items", vec![Vec::new(); 500_000]),
        ("1 MiB + 1 of data", vec![vec![b'x'; MIB + 1]]),
    ] {
        let sent = Instant::now();
        let status = client
            .hash_batch(HashBatchRequest { data })
            .await
            .expect_err(attack);
        assert_eq!(status.code(), Code::ResourceExhausted, "{attack}: {status}");
        assert!(
            status.message().contains("HASHER_MAX"),
            "{attack}: the answer names the cap: {status}"
        );
        // Hashing would take HASHER_DELAY (100 ms) and more; refusing takes the decoding only.
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "{attack}: refused after {:?}",
            sent.elapsed()
        );
    }
    let status = client
        .hash(HashRequest {
            data: vec![b'x'; MIB + 1],
        })
        .await
        .expect_err("1 MiB + 1 in Hash");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");

    probe.assert_answered_in_time("large HashBatch").await;
    assert_peak_rss_bounded(&hasher, "large HashBatch");
    assert_hashes(connect(&hasher).await, b"after the batches").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_streams_of_a_mebibyte_on_one_connection_stay_bounded() {
    let hasher = Service::start("hasher", &[]);
    let probe = Probes::start(&hasher);
    let attack = connect(&hasher).await;
    let calls: Vec<_> = (0..200u8)
        .map(|n| {
            let mut client = HasherServiceClient::new(attack.clone());
            tokio::spawn(async move {
                client
                    .hash(HashRequest { data: vec![n; MIB] })
                    .await
                    .map(|answer| (n, answer.into_inner().digest))
            })
        })
        .collect();
    let (mut digests, mut refused) = (Vec::new(), 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(digest) => digests.push(digest),
            Err(status) if status.code() == Code::ResourceExhausted => refused += 1,
            Err(status) => panic!("neither hashed nor refused: {status}"),
        }
    }
    eprintln!("200 x 1 MiB: {} hashed, {refused} refused", digests.len());
    probe.assert_answered_in_time("200 x 1 MiB").await;
    assert!(
        !digests.is_empty(),
        "some large calls are served ({refused} refused)"
    );
    for (n, digest) in digests {
        assert_eq!(digest, sha256_hex(&vec![n; MIB]));
    }
    assert_peak_rss_bounded(&hasher, "200 x 1 MiB");
    assert_hashes(attack, b"after the streams").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rngs_queue_flooded_past_its_bound_refuses_fast_and_the_bound_holds() {
    const BOUND: usize = 8;
    const DELAY: Duration = Duration::from_millis(500);
    let rng = Service::start(
        "rng",
        &[
            ("RNG_DELAY", "500ms".into()),
            ("RNG_MAX_QUEUE", BOUND.to_string()),
        ],
    );
    let probe = Probes::start(&rng);
    let flood = connect(&rng).await;

    let grpc: Vec<_> = (0..60)
        .map(|_| {
            let mut client = RngServiceClient::new(flood.clone());
            tokio::spawn(async move {
                let sent = Instant::now();
                let answer = client.generate(GenerateRequest { size: 32 }).await;
                (sent.elapsed(), answer)
            })
        })
        .collect();
    let url = format!("{}/32", rng.url());
    let http: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::task::spawn_blocking(move || {
                let sent = Instant::now();
                let answer = support::http().get(&url).send().unwrap();
                let status = answer.status();
                let retry_after = answer
                    .headers()
                    .get("retry-after")
                    .map(|value| value.to_str().unwrap().to_string());
                (sent.elapsed(), status, retry_after, answer.text().unwrap())
            })
        })
        .collect();

    // Served calls wait behind at most BOUND others: the whole queue drains in (BOUND + 1) turns.
    let (mut served, mut refused) = (0, 0);
    for call in grpc {
        let (took, answer) = call.await.unwrap();
        match answer {
            Ok(answer) => {
                let depth: usize = answer
                    .metadata()
                    .get("x-queue-depth")
                    .expect("x-queue-depth")
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(depth <= BOUND, "{depth} waiting behind a call");
                served += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
                assert!(took < 2 * DELAY, "refused after {took:?}, not at once");
                refused += 1;
            }
        }
    }
    let mut http_refused = 0;
    for call in http {
        let (took, status, retry_after, text) = call.await.unwrap();
        match status.as_u16() {
            200 => served += 1,
            503 => {
                assert_eq!(retry_after.as_deref(), Some("1"));
                assert_eq!(text.lines().count(), 1, "one line: {text:?}");
                assert!(took < 2 * DELAY, "refused after {took:?}, not at once");
                http_refused += 1;
            }
            other => panic!("HTTP {other}: {text}"),
        }
    }
    // 80 requests, one turn of 500 ms: the first 9 to arrive are served, later ones refused.
    assert!(served >= 1, "the queue still serves");
    assert!(
        refused + http_refused >= 80 - 4 * (BOUND + 1),
        "{refused} gRPC and {http_refused} HTTP refused, {served} served"
    );
    assert!(http_refused > 0, "20 HTTP requests, at most 9 turns");

    probe.assert_answered_in_time("rng flood").await;
    assert_peak_rss_bounded(&rng, "rng flood");
    let answer = RngServiceClient::new(flood)
        .generate(GenerateRequest { size: 32 })
        .await
        .expect("a normal Generate after the flood");
    assert_eq!(answer.into_inner().data.len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_deadline_passes_in_the_queue_leaves_it() {
    const DELAY: Duration = Duration::from_secs(3);
    let rng = Service::start("rng", &[("RNG_DELAY", "3s".into())]);
    let channel = connect(&rng).await;
    let ahead = tokio::spawn({
        let mut client = RngServiceClient::new(channel.clone());
        async move { client.generate(GenerateRequest { size: 32 }).await }
    });
    // One round trip on the same connection: the call ahead has reached the server.
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();

    // Through plain hyper, not tonic's Channel: the Channel applies a `grpc-timeout` header
    // itself, and would answer DEADLINE_EXCEEDED (as CANCELLED) without asking the server.
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let mut request = tonic::Request::new(GenerateRequest { size: 32 });
    request
        .metadata_mut()
        .insert("grpc-timeout", "300m".parse().unwrap());
    let sent = Instant::now();
    let status = RngServiceClient::with_origin(hyper, rng.url().parse().unwrap())
        .generate(request)
        .await
        .expect_err("the deadline passes while the call ahead is served");
    let took = sent.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
    assert!(
        status.message().contains("grpc-timeout"),
        "the server's answer, not the client's: {status}"
    );
    assert!(
        took < DELAY / 2,
        "answered after {took:?}, not at its deadline"
    );

    let ahead = ahead.await.unwrap().expect("the call ahead is served");
    assert_eq!(ahead.into_inner().data.len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_health_check_is_refused_unread() {
    let hasher = Service::start("hasher", &[]);
    let status = HealthClient::new(connect(&hasher).await)
        .check(HealthCheckRequest {
            service: "x".repeat(MIB),
        })
        .await
        .expect_err("a 1 MiB service name");
    assert_eq!(status.code(), Code::OutOfRange, "{status}");
    assert_peak_rss_bounded(&hasher, "1 MiB health check");
    assert_hashes(connect(&hasher).await, b"after the health check").await;
}
