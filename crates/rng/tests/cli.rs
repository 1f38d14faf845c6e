//! The `rng` binary refuses bad settings with exit status 2 and one line naming the variable.

#[test]
fn bad_settings_exit_2_naming_the_variable() {
    let rng = env!("CARGO_BIN_EXE_rng");
    mesh::config::assert_rejected(rng, "RNG_DELAY", "soon");
    mesh::config::assert_rejected(rng, "RNG_CONCURRENCY", "-1");
    mesh::config::assert_rejected(rng, "RNG_MAX_SIZE", "5000000000");
    mesh::config::assert_rejected(rng, "RNG_LISTEN", "nowhere");
    mesh::config::assert_rejected(rng, "RNG_MAX_QUEUE", "-1");
}
