//! Hostile clients, part one: nothing a client sends to a service port changes the service, and
//! what it sends cannot grow the service's metrics. (Connection floods and oversized work are in
//! `hostile_limits.rs` and `hostile_bounds.rs`.)
//!
//! Each attack runs against the real binary with its default settings, while a probe asks its
//! health over a connection opened before the attack: the health must keep answering within
//! 100 ms, the peak memory must stay under [`RSS_BOUND_MIB`], and a normal call must succeed
//! afterwards.

mod support;

use std::time::{Duration, Instant};

use support::{Health, HealthProbe, Service, http};

/// What a service may reach under any of these attacks. They idle at 7-8 MiB and serve the
/// workshop's load in about 10 (docs/BENCHMARKS.md).
const RSS_BOUND_MIB: f64 = 64.0;
/// How slow a health answer may be during an attack.
const HEALTH_BOUND: Duration = Duration::from_millis(100);

/// POSTs `body` with `content_type` to `url`; returns the status and the body.
fn post(url: &str, content_type: &str, body: &str) -> (u16, String) {
    let response = http()
        .post(url)
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .expect("POST");
    (
        response.status().as_u16(),
        response.text().unwrap_or_default(),
    )
}

#[test]
fn the_fault_switch_is_only_on_the_admin_port_and_only_takes_json() {
    for name in ["rng", "hasher"] {
        let service = Service::start(name, &[]);
        let on_service_port = format!("{}/admin/fault", service.url());
        let on_admin_port = format!("{}/admin/fault", service.admin_url());

        // What a web page could send with a plain form, or curl with -d, to a published port.
        for content_type in ["text/plain", "application/json"] {
            let (status, _) = post(&on_service_port, content_type, r#"{"delay": "1s"}"#);
            assert_eq!(
                status, 404,
                "{name}: POST {content_type} on the service port"
            );
        }
        let status = http().get(&on_service_port).send().unwrap().status();
        assert_eq!(status, 404, "{name}: GET on the service port");
        // rng reads `/metrics` as a size it cannot serve (400), hasher has no such route (404).
        let metrics = http()
            .get(format!("{}/metrics", service.url()))
            .send()
            .unwrap();
        assert!(
            metrics.status().is_client_error(),
            "{name}: /metrics is on the admin port"
        );
        assert!(!metrics.text().unwrap().contains("dockercoins_"), "{name}");

        // On the admin port: JSON only, and a one-line reason for anything else.
        let (status, body) = post(&on_admin_port, "text/plain", r#"{"delay": "1s"}"#);
        assert_eq!(
            (status, body.as_str()),
            (415, "expected Content-Type: application/json\n")
        );
        let (status, _) = post(
            &on_admin_port,
            "application/x-www-form-urlencoded",
            "delay=1s",
        );
        assert_eq!(status, 415, "{name}: a form");
        for bad in [
            r#"{"delay": "#,
            r#"{"delay": "soon"}"#,
            r#"{"error_rate": 2}"#,
        ] {
            let (status, body) = post(&on_admin_port, "application/json", bad);
            assert_eq!(status, 400, "{name}: {bad}");
            assert_eq!(body.trim_end().lines().count(), 1, "{body}");
        }
        let shown: serde_json::Value = http().get(&on_admin_port).send().unwrap().json().unwrap();
        assert_eq!(shown["delay"], "0s", "{name}: nothing changed the fault");
        assert_eq!(shown["error_rate"], 0.0);

        let (status, body) = post(&on_admin_port, "application/json", r#"{"error_rate": 0.5}"#);
        assert_eq!(status, 200, "{name}: {body}");
        let ready = http()
            .get(format!("{}/readyz", service.admin_url()))
            .send()
            .unwrap();
        assert_eq!(ready.status(), 200, "{name}: a fault is not unreadiness");
    }
}

#[test]
fn with_injection_off_there_is_no_switch_and_the_service_behaves() {
    let rng = Service::start("rng", &[("FAULT_INJECTION", "off".to_string())]);
    let (status, body) = post(
        &format!("{}/admin/fault", rng.admin_url()),
        "application/json",
        r#"{"error_rate": 1}"#,
    );
    assert_eq!(status, 404);
    assert!(body.contains("FAULT_INJECTION=off"), "{body}");
    let bytes = http()
        .get(format!("{}/32", rng.url()))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(bytes.len(), 32);
}

/// The `dockercoins_` series an admin port's `/metrics` lists now.
fn series(service: &Service) -> Vec<String> {
    let text = http()
        .get(format!("{}/metrics", service.admin_url()))
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with("dockercoins_"))
        .filter_map(|line| line.rsplit_once(' ').map(|(series, _)| series.to_string()))
        .collect()
}

#[test]
fn ten_thousand_distinct_paths_with_a_grpc_content_type_make_no_new_series() {
    let rng = Service::start("rng", &[]);
    // One request of each kind first, so that their series (one each) exist before counting.
    let kinds = [
        "/{n}",
        "/no/such/{n}",
        "/dockercoins.rng.v1.RngService/Bogus{n}",
        "/grpc.health.v1.Health/Bogus{n}",
    ];
    let client = http();
    let send = |n: usize| {
        let path = kinds[n % kinds.len()].replace("{n}", &n.to_string());
        client
            .post(format!("{}{path}", rng.url()))
            .header("content-type", "application/grpc")
            .body(vec![0, 0, 0, 0, 0])
            .send()
            .expect("the service answers")
            .status()
    };
    let health = HealthProbe::start(Health::Grpc(rng.addr));
    let admin = HealthProbe::start(Health::Admin(rng.admin));
    for n in 0..kinds.len() {
        send(n);
    }
    let before = series(&rng);

    let started = Instant::now();
    for n in kinds.len()..10_000 + kinds.len() {
        send(n);
    }
    let took = started.elapsed();
    let slowest = (health.finish(), admin.finish());

    let after = series(&rng);
    let new: Vec<&String> = after.iter().filter(|s| !before.contains(s)).collect();
    assert!(new.is_empty(), "new series: {new:?}");
    let (_, peak) = rng.process.rss_mib();
    eprintln!("10,000 requests in {took:?}; slowest health {slowest:?}; peak RSS {peak:.1} MiB");
    assert!(peak < RSS_BOUND_MIB, "peak RSS {peak:.1} MiB");
    assert!(
        slowest.0 < HEALTH_BOUND && slowest.1 < HEALTH_BOUND,
        "{slowest:?}"
    );

    let bytes = http().get(format!("{}/32", rng.url())).send().unwrap();
    assert_eq!(bytes.bytes().unwrap().len(), 32, "a normal call afterwards");
}
