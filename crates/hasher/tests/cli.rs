//! The `hasher` binary refuses bad settings with exit status 2 and one line naming the variable.

#[test]
fn bad_settings_exit_2_naming_the_variable() {
    let hasher = env!("CARGO_BIN_EXE_hasher");
    mesh::config::assert_rejected(hasher, "HASHER_DELAY", "1 fortnight");
    // The listener limits every service flattens into its configuration.
    mesh::config::assert_rejected(hasher, "LISTEN_MAX_CONNECTIONS", "0");
    mesh::config::assert_rejected(hasher, "HASHER_MAX_BODY", "big");
    mesh::config::assert_rejected(hasher, "HASHER_LISTEN", "0.0.0.0");
    mesh::config::assert_rejected(hasher, "HASHER_MAX_QUEUE", "100001");
    mesh::config::assert_rejected(hasher, "HASHER_MAX_ITEMS", "0");
    mesh::config::assert_rejected(hasher, "HASHER_CONCURRENCY", "99999999999");
    mesh::config::assert_rejected(hasher, "HASHER_ADMIN_LISTEN", "0.0.0.0");
}

#[test]
fn start_up_faults_are_refused_when_injection_is_off() {
    let hasher = env!("CARGO_BIN_EXE_hasher");
    let env = [
        ("FAULT_INJECTION", "off"),
        ("HASHER_FAULT_ERROR_RATE", "0.5"),
    ];
    mesh::config::assert_rejected_with(hasher, &env, "HASHER_FAULT_ERROR_RATE");
}
