//! The build script of every service binary (each one's Cargo.toml points `build` here): links
//! with `<package>.ld`, which places the functions that service runs before all other code, so
//! that start-up reads a few hundred pages of the binary instead of nearly all of them
//! (scripts/link-order writes them and says why).

use std::path::Path;

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
}
