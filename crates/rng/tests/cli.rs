//! The `rng` binary refuses bad settings with exit status 2 and one line naming the variable,
//! before anything starts and without a panic.

use mesh::config::{assert_rejected, assert_rejected_with};

#[test]
fn bad_settings_exit_2_naming_the_variable() {
    let rng = env!("CARGO_BIN_EXE_rng");
    assert_rejected(rng, "RNG_DELAY", "soon");
    // The listener limits every service flattens into its configuration.
    assert_rejected(rng, "LISTEN_IDLE_TIMEOUT", "0s");
    assert_rejected(rng, "RNG_CONCURRENCY", "-1");
    assert_rejected(rng, "RNG_CONCURRENCY", "18446744073709551615");
    assert_rejected(rng, "RNG_MAX_SIZE", "5000000000");
    assert_rejected(rng, "RNG_LISTEN", "nowhere");
    assert_rejected(rng, "RNG_ADMIN_LISTEN", "nowhere");
    assert_rejected(rng, "RNG_MAX_QUEUE", "-1");
    assert_rejected(rng, "FAULT_INJECTION", "maybe");
    for threads in ["0", "many", "100000"] {
        assert_rejected(rng, "TOKIO_WORKER_THREADS", threads);
    }
}

#[test]
fn start_up_faults_are_refused_when_injection_is_off() {
    let rng = env!("CARGO_BIN_EXE_rng");
    let env = [("FAULT_INJECTION", "off"), ("RNG_FAULT_DELAY", "500ms")];
    assert_rejected_with(rng, &env, "RNG_FAULT_DELAY");
}
