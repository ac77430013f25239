//! The Prometheus alerting rules shipped in deploy/prometheus: well formed,
//! and each fires on a synthetic series of its trouble and stays silent on
//! a healthy one (`promtool test rules`, Debian's `prometheus` package;
//! scripts/install-deps.sh installs it).

use std::path::PathBuf;
use std::process::Command;

fn rules_folder() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn promtool(args: &[&str]) -> (bool, String) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(rules_folder())
        .output()
        .unwrap_or_else(|error| panic!("promtool (Debian package prometheus; scripts/install-deps.sh): {error}"));
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn the_alerting_rules_are_valid_and_their_unit_tests_pass() {
    let (ok, output) = promtool(&["check", "rules", "acct-alerts.yml"]);
    assert!(ok, "{output}");
    let (ok, output) = promtool(&["test", "rules", "acct-alerts.test.yml"]);
    assert!(ok, "{output}");
    assert!(output.contains("SUCCESS"), "{output}");
}

/// The unit tests can fail: a rule whose threshold no longer matches its
/// test is caught (a copy of the rules with the overload threshold raised
/// ten-fold no longer fires where the test expects it).
#[test]
fn a_changed_threshold_fails_the_rule_tests() {
    let folder = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(rules_folder().join("acct-alerts.yml")).unwrap();
    let changed = rules.replacen("> 0.01", "> 0.10", 1);
    assert_ne!(rules, changed, "the overload threshold moved; update this test");
    std::fs::write(folder.path().join("acct-alerts.yml"), changed).unwrap();
    std::fs::copy(
        rules_folder().join("acct-alerts.test.yml"),
        folder.path().join("acct-alerts.test.yml"),
    )
    .unwrap();
    let output = Command::new("promtool")
        .args(["test", "rules", "acct-alerts.test.yml"])
        .current_dir(folder.path())
        .output()
        .unwrap();
    assert!(!output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
}
