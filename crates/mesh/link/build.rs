//! The build script of every service binary (each one's Cargo.toml points `build` here): links
//! with `<package>.ld`, which places the functions that service runs before all other code, so
//! that start-up reads a few hundred pages of the binary instead of nearly all of them
//! (scripts/link-order writes them and says why), and packs the binary's relocations when the C
//! library it is built with can apply them packed.

use std::path::Path;

include!("glibc.rs");

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let package = std::env::var("CARGO_PKG_NAME").expect("cargo sets CARGO_PKG_NAME");
    let script = Path::new(&manifest_dir).join(format!("../mesh/link/{package}.ld"));
    println!("cargo::rerun-if-changed={}", script.display());
    // A linker script is an ELF linker's notion (GNU ld and LLD read this one); other targets
    // link as they always have.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo::rustc-link-arg-bins=-Wl,-T,{}", script.display());
    }
    if glibc_applies_relr() {
        // RELR: the relative relocations of a position-independent binary (one per pointer in
        // its vtables and constant tables) packed as bitmaps, about 1/60 of the usual 24-byte
        // records. Start-up reads the whole table to apply them, so its size is resident in
        // every process.
        println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the binary is built for this machine's glibc and that glibc is 2.36 or later, the
/// first to apply packed relocations (in its dynamic loader and in a static binary's start-up
/// alike). A binary built with them asks for that glibc (the linker adds the version
/// `GLIBC_ABI_DT_RELR`), as one built on a machine asks for that machine's glibc symbols; any
/// other target, or an older glibc, links as before. The linkers that come with glibc 2.36 know
/// the flag (GNU ld 2.38 and LLD 15 do).
fn glibc_applies_relr() -> bool {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ENV") != "gnu"
        || var("HOST") != var("TARGET")
    {
        return false;
    }
    glibc_version().is_some_and(|version| version >= (2, 36))
}
