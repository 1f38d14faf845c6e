//! The `hasher` binary refuses bad settings with exit status 2 and one line naming the variable.

#[test]
fn bad_settings_exit_2_naming_the_variable() {
    let hasher = env!("CARGO_BIN_EXE_hasher");
    mesh::config::assert_rejected(hasher, "HASHER_DELAY", "1 fortnight");
    // The listener limits every service flattens into its configuration.
    mesh::config::assert_rejected(hasher, "LISTEN_MAX_CONNECTIONS", "0");
    mesh::config::assert_rejected(hasher, "HASHER_MAX_BODY", "big");
    mesh::config::assert_rejected(hasher, "HASHER_LISTEN", "0.0.0.0");
}
