//! The `worker` binary refuses bad settings with exit status 2 and one line naming the variable,
//! before anything starts, without a panic, and without printing a password.

use mesh::config::{assert_rejected, assert_rejected_with};

#[test]
fn bad_settings_exit_2_naming_the_variable() {
    let worker = env!("CARGO_BIN_EXE_worker");
    assert_rejected(worker, "RNG_ENDPOINT", "rng:8001");
    assert_rejected(worker, "HASHER_ENDPOINT", "ftp://hasher");
    assert_rejected(worker, "REDIS_URL", "localhost");
    assert_rejected(worker, "WORKER_CONCURRENCY", "0");
    assert_rejected(worker, "WORKER_RPC_TIMEOUT", "5 parsecs");
    assert_rejected(worker, "WORKER_RPC_TIMEOUT", "0s");
    assert_rejected(worker, "WORKER_DELAY", "-1s");
    assert_rejected(worker, "RNG_RESOLVE_INTERVAL", "0s");
    assert_rejected(worker, "HASHER_RESOLVE_INTERVAL", "0ms");
    assert_rejected(worker, "TOKIO_WORKER_THREADS", "0");
}

#[test]
fn a_malformed_redis_url_is_refused_without_its_password() {
    let worker = env!("CARGO_BIN_EXE_worker");
    let env = [("REDIS_URL", "redis://:hunter2@redis:notaport/0")];
    let line = assert_rejected_with(worker, &env, "REDIS_URL");
    assert!(!line.contains("hunter2"), "{line}");
}
