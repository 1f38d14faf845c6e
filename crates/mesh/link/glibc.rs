/// This machine's glibc as `(major, minor)`, from `getconf GNU_LIBC_VERSION` (`glibc 2.36`), or
/// `None` where there is none. One parser for the build script, which packs relocations from it,
/// and for tests/link.rs, which checks that choice: both `include!` this file.
fn glibc_version() -> Option<(u32, u32)> {
    let output = std::process::Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    let version = String::from_utf8(output.stdout).ok()?;
    let (major, rest) = version.trim().strip_prefix("glibc ")?.split_once('.')?;
    let minor = rest.split('.').next()?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}
