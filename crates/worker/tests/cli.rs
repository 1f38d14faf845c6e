//! The `worker` binary refuses bad settings with exit status 2 and one line naming the variable.

#[test]
fn bad_settings_exit_2_naming_the_variable() {
    let worker = env!("CARGO_BIN_EXE_worker");
    mesh::config::assert_rejected(worker, "RNG_ENDPOINT", "rng:8001");
    // The listener limits every service flattens into its configuration.
    mesh::config::assert_rejected(worker, "LISTEN_HEADER_READ_TIMEOUT", "0s");
    mesh::config::assert_rejected(worker, "HASHER_ENDPOINT", "ftp://hasher");
    mesh::config::assert_rejected(worker, "REDIS_URL", "localhost");
    mesh::config::assert_rejected(worker, "WORKER_CONCURRENCY", "0");
    mesh::config::assert_rejected(worker, "WORKER_RPC_TIMEOUT", "5 parsecs");
    mesh::config::assert_rejected(worker, "WORKER_DELAY", "-1s");
}
