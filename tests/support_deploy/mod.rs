//! What the deployment tests (`kubernetes.rs`, `swarm.rs`) share: running the real tools, found
//! where scripts/install-prereqs puts them, and polling with a deadline.
//!
//! A missing tool fails the test with the command that installs it: a test never passes because
//! a tool is absent.

#![allow(dead_code)] // Each test file uses part of this.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

#[path = "../support/poll.rs"]
pub mod poll;

/// The repository's root.
pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A tool that scripts/install-prereqs installs into the repository's `.venv/` (kubectl,
/// kubernetes-validate): that one, not another of the same name on PATH.
pub fn venv_tool(name: &str) -> PathBuf {
    let path = Path::new(ROOT).join(".venv/bin").join(name);
    assert!(
        path.is_file(),
        "{} is not installed: run scripts/install-prereqs",
        path.display()
    );
    path
}

/// Runs `program` with `args` in the repository's root, to completion.
pub fn output<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S]) -> Output {
    let program = program.as_ref();
    Command::new(program)
        .args(args)
        .current_dir(ROOT)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", program.to_string_lossy()))
}

/// Like [`output`], but the command must succeed; returns its standard output.
pub fn checked<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S]) -> String {
    let result = output(&program, args);
    assert!(
        result.status.success(),
        "{} {:?} failed ({}): {}{}",
        program.as_ref().to_string_lossy(),
        args.iter()
            .map(|arg| arg.as_ref().to_string_lossy())
            .collect::<Vec<_>>(),
        result.status,
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    String::from_utf8_lossy(&result.stdout).into_owned()
}
