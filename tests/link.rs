//! The services' link layout: every binary places the functions its service runs (the list
//! scripts/link-order wrote into crates/mesh/link/<service>.ld) before all its other code, so that
//! start-up reads a few hundred of the binary's pages rather than nearly all of them; and packs
//! its relocations where the build's glibc applies them packed.

mod support;

use object::{Object, ObjectSection};

include!("../crates/mesh/link/glibc.rs");

const SERVICES: [&str; 4] = ["rng", "hasher", "worker", "webui"];

fn parse(data: &[u8]) -> object::File<'_> {
    object::File::parse(data).expect("an ELF binary")
}

#[test]
fn the_functions_start_up_runs_come_first() {
    for name in SERVICES {
        // The test profile's build: the list was taken from a release build, and its names hold
        // nothing that differs between the two (v0 symbols, hashes left out).
        let path = support::workspace_binary(name);
        let data = std::fs::read(&path).expect("read the binary");
        let file = parse(&data);
        let text = file.section_by_name(".text").expect("a .text section");
        let first = file
            .section_by_name(".text.first")
            .unwrap_or_else(|| panic!("{name}: no .text.first section"));
        assert!(
            first.address() + first.size() <= text.address(),
            "{name}: .text.first at {:#x}, not before .text at {:#x}",
            first.address(),
            text.address()
        );
        // Hundreds of functions, not a few: the list's names still match this build's.
        assert!(
            first.size() >= 256 * 1024,
            "{name}: .text.first holds {} bytes",
            first.size()
        );
    }
}

#[test]
fn relocations_are_packed_where_glibc_applies_them() {
    let packed = glibc_version().expect("getconf names this machine's glibc") >= (2, 36);
    for name in SERVICES {
        let data = std::fs::read(support::workspace_binary(name)).expect("read the binary");
        let file = parse(&data);
        let size = |section: &str| file.section_by_name(section).map(|s| s.size());
        if packed {
            // What is left unpacked is the few relocations that are not relative (a page).
            let relr = size(".relr.dyn").unwrap_or_else(|| panic!("{name}: no .relr.dyn"));
            let rela = size(".rela.dyn").unwrap_or(0);
            assert!(
                rela <= 4096 && relr > 0,
                "{name}: .rela.dyn {rela} bytes, .relr.dyn {relr}"
            );
        } else {
            assert_eq!(
                size(".relr.dyn"),
                None,
                "{name}: packed for a glibc before 2.36"
            );
        }
    }
}
