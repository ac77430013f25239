//! Helpers for acct's integration tests: find the built binaries and run
//! them as real processes.
//!
//! The binaries come from `cargo build --workspace --bins`, which the test
//! command in the README runs before `cargo test` (cargo does not build
//! another package's binaries for a test crate).

use std::path::PathBuf;
use std::process::{Command, Output};

/// Path of a workspace binary built in the same profile as this test.
pub fn binary(name: &str) -> PathBuf {
    // current_exe: target/<profile>/deps/<test>-<hash>; binaries live in
    // target/<profile>/.
    let executable = std::env::current_exe().unwrap_or_else(|error| panic!("current_exe: {error}"));
    let profile_folder = executable
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap_or_else(|| panic!("unexpected test binary location {}", executable.display()));
    let path = profile_folder.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Run `acct` with `args` to completion (bounded by the command itself).
pub fn run_acct(args: &[&str]) -> Output {
    Command::new(binary("acct"))
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("running acct: {error}"))
}
