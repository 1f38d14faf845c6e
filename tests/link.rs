//! The services' link layout: every binary places the functions its service runs (the list
//! scripts/link-order wrote into crates/mesh/link/<service>.ld) before all its other code, so that
//! start-up reads a few hundred of the binary's pages rather than nearly all of them.

mod support;

use object::{Object, ObjectSection};

#[test]
fn the_functions_start_up_runs_come_first() {
    for name in ["rng", "hasher", "worker", "webui"] {
        // The test profile's build: the list was taken from a release build, and its names hold
        // nothing that differs between the two (v0 symbols, hashes left out).
        let path = support::workspace_binary(name);
        let data = std::fs::read(&path).expect("read the binary");
        let file = object::File::parse(&*data).expect("an ELF binary");
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
