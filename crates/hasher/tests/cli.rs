//! The `hasher` binary refuses bad settings with exit status 2 and one line naming the variable.

#[test]
fn bad_settings_exit_2_naming_the_variable() {
    let hasher = env!("CARGO_BIN_EXE_hasher");
    mesh::config::assert_rejected(hasher, "HASHER_DELAY", "1 fortnight");
    mesh::config::assert_rejected(hasher, "HASHER_MAX_BODY", "big");
    mesh::config::assert_rejected(hasher, "HASHER_LISTEN", "0.0.0.0");
    mesh::config::assert_rejected(hasher, "HASHER_MAX_QUEUE", "100001");
    mesh::config::assert_rejected(hasher, "HASHER_MAX_ITEMS", "0");
}
