//! Keeps the benchmark working: `scripts/bench --quick` must run the whole harness and write every
//! target key into `target/bench/results.json`, each with a real value.
//!
//! It never checks a speed: a shared CI machine says nothing about the code's. It checks that each
//! number was measured (a rate above zero, answers without errors), so a broken measurement
//! cannot hide behind a well-formed file.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

/// The keys `results.json` must hold (the targets' keys), each a number.
const NUMBERS: [&str; 16] = [
    "turbo_hashes_per_s",
    "rng_http_rps",
    "rng_http_p99_ms",
    "hasher_http_rps",
    "hasher_http_p99_ms",
    "rng_grpc_rps",
    "rng_grpc_p99_ms",
    "webui_json_rps",
    "webui_json_p99_ms",
    "sigterm_exit_ms",
    // Not a target, but measured beside them: hasher over gRPC.
    "hasher_grpc_rps",
    // The floor: rng and the bare servers under the same tools, and the ratios between them.
    "rng_grpc_h2load_rps",
    "bare_tonic_grpc_rps",
    "bare_axum_http_rps",
    "rng_grpc_vs_bare_tonic",
    "rng_http_vs_bare_axum",
];

const SERVICES: [&str; 4] = ["rng", "hasher", "worker", "webui"];

fn number(results: &Value, key: &str) -> f64 {
    let value = results
        .get(key)
        .unwrap_or_else(|| panic!("results.json has no {key}"));
    let number = value
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number: {value}"));
    assert!(number.is_finite(), "{key} is {number}");
    number
}

#[test]
fn quick_bench_writes_every_key_with_a_measured_value() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = root.join("docs/BENCHMARKS.md");
    let docs_before = std::fs::read_to_string(&docs).ok();
    let results_path = root.join("target/bench/results.json");
    let _ = std::fs::remove_file(&results_path);

    let output = Command::new(root.join("scripts/bench"))
        .arg("--quick")
        .current_dir(root)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "scripts/bench --quick failed ({}):\n{stdout}",
        output.status
    );
    assert!(
        stdout.contains("| measure | result | target | met |"),
        "no markdown table printed:\n{stdout}"
    );

    let text = std::fs::read_to_string(&results_path).expect("target/bench/results.json");
    let results: Value = serde_json::from_str(&text).expect("results.json is JSON");
    assert_eq!(results["mode"], "quick");
    for key in NUMBERS {
        let value = number(&results, key);
        let measured = if key.starts_with("sigterm") {
            value >= 0.0
        } else {
            value > 0.0
        };
        assert!(measured, "{key} = {value}: nothing was measured");
    }
    for key in [
        "rss_mib",
        "rss_idle_mib",
        "binary_mib",
        "sigterm_exit_ms_by_service",
    ] {
        for service in SERVICES {
            let value = number(&results[key], service);
            assert!(value > 0.0, "{key}.{service} = {value}");
        }
    }
    for service in SERVICES {
        let image = &results["image_mb"][service];
        assert!(
            image.is_null() || image.as_f64().is_some_and(|mb| mb > 0.0),
            "image_mb.{service} = {image}: a size or null (not built)"
        );
    }
    assert_eq!(
        number(&results, "errors"),
        0.0,
        "every call under load must succeed: a measurement of errors measures nothing"
    );
    let steps = results["turbo_steps"].as_array().expect("turbo_steps");
    assert!(steps.len() >= 2, "a sweep of worker concurrency: {steps:?}");

    assert_eq!(
        std::fs::read_to_string(&docs).ok(),
        docs_before,
        "a quick run must leave docs/BENCHMARKS.md alone"
    );
}
