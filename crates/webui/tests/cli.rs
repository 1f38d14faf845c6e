//! The `webui` binary refuses bad settings with exit status 2 and one line naming the variable.
//!
//! Running the real binary here also makes `cargo test` build it, for the end-to-end tests.

#[test]
fn bad_settings_exit_2_naming_the_variable() {
    let webui = env!("CARGO_BIN_EXE_webui");
    mesh::config::assert_rejected(webui, "WEBUI_LISTEN", "nonsense");
    mesh::config::assert_rejected(webui, "REDIS_URL", "localhost:6379");
    mesh::config::assert_rejected(webui, "WEBUI_ADMIN_LISTEN", "nonsense");
    let env = [("REDIS_URL", "redis://user:hunter2@redis:6379:7")];
    let line = mesh::config::assert_rejected_with(webui, &env, "REDIS_URL");
    assert!(!line.contains("hunter2"), "{line}");
}
