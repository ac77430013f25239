//! The short version of the crash campaign (bench/scripts/soak.sh): the AM
//! killed with SIGKILL 5 times and the storage twice, at random moments,
//! under loadgen; then nothing acked is lost, nothing is stored twice, and
//! `acct audit` passes. The full campaign (100 and 20 kills) is not run in
//! CI; docs/reliability.md has its figures.

use std::path::Path;
use std::process::Command;

use acct_tests::binary;

#[test]
fn short_crash_campaign_loses_and_doubles_nothing() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/scripts/soak.sh");
    let bin = binary("acct").parent().expect("binary folder").to_owned();
    // Make sure loadgen is there too (binary() checks it exists).
    binary("loadgen");
    let output = Command::new("bash")
        .arg(&script)
        .env("AM_KILLS", "5")
        .env("STORAGE_KILLS", "2")
        .env("RATE", "1000")
        .env("BIN", &bin)
        .output()
        .unwrap_or_else(|error| panic!("running {}: {error}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("soak: PASS"),
        "the crash campaign failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
