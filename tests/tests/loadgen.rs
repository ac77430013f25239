//! `loadgen` against a real `acct serve`: a few hundred providers on their
//! own QUIC connections for a few seconds, with retransmitted duplicates,
//! then the JSON report and the audit against the AM's hot store and the
//! cold storage.

use std::process::Command;
use std::time::Duration;

use acct_tests::{AmProcess, TestPki, binary};

/// Run loadgen to its end, insist that it succeeded, and return its JSON
/// report (written to `report_path`) and its standard output.
fn run_loadgen(loadgen: &mut Command, report_path: &std::path::Path) -> (serde_json::Value, String) {
    let output = loadgen
        .output()
        .unwrap_or_else(|error| panic!("running loadgen: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "loadgen failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report = serde_json::from_str(
        &std::fs::read_to_string(report_path).unwrap_or_else(|error| panic!("reading the report: {error}")),
    )
    .unwrap_or_else(|error| panic!("the report is not JSON: {error}"));
    (report, stdout)
}

#[test]
fn loadgen_run_is_acked_exactly_once_and_audited() {
    // Only the AM's identity comes from the PKI folder: loadgen mints the
    // 300 provider and 50 user certificates with the CA key.
    let pki = TestPki::new(0, 0);
    // Exports run during the load and during the audit: the audit joins
    // the hot store and the cold storage.
    let am = AmProcess::start(pki.data(), &["--export-interval-ms", "500"]);
    let report_path = pki.data().join("report.json");
    let html_path = pki.data().join("report.html");
    let mut loadgen = Command::new(binary("loadgen"));
    loadgen
        .args(["--am", &am.address.to_string()])
        .arg("--pki")
        .arg(pki.pki())
        .args(["--providers", "300", "--sessions", "600", "--users", "50"])
        .args(["--rate", "2000", "--duration", "3", "--drain", "30"])
        .args(["--duplicates", "0.05", "--seed", "7", "--audit", "--quiet"])
        .arg("--cold")
        .arg(pki.data().join("cold"))
        .arg("--json")
        .arg(&report_path)
        .arg("--html")
        .arg(&html_path);
    let (report, stdout) = run_loadgen(&mut loadgen, &report_path);
    let number = |field: &str| {
        report[field]
            .as_u64()
            .unwrap_or_else(|| panic!("report field {field} missing:\n{report:#}"))
    };
    // 2,000/s for 3 s, plus one Final Accounting per session.
    assert_eq!(number("sent_accounting"), 6000 + 600, "{stdout}");
    assert_eq!(number("acked_stored"), 6600, "{stdout}");
    assert_eq!(number("unanswered"), 0, "{stdout}");
    assert_eq!(number("credentials_issued"), 600);
    // Through the patent's flow: users' requests, pushes to the providers.
    assert_eq!(report["sessions_via"].as_str(), Some("credentials"));
    assert!(report["credentials_per_s"].as_f64().is_some_and(|rate| rate > 0.0));
    assert_eq!(number("lost"), 0, "{stdout}");
    assert_eq!(number("double_stored"), 0, "{stdout}");
    assert_eq!(report["audit"]["stored_once"].as_u64(), Some(6600), "{stdout}");
    assert!(
        report["rejected"].as_object().is_some_and(|map| map.is_empty()),
        "{stdout}"
    );
    // Every retransmission was answered as a duplicate, none stored again.
    let duplicates = &report["faults"]["duplicate"];
    let sent = duplicates["sent"].as_u64().unwrap_or(0);
    assert!(sent > 100, "expected about 5% of 6,600 retransmissions:\n{stdout}");
    assert_eq!(duplicates["answers"]["duplicate"].as_u64(), Some(sent), "{stdout}");
    assert_eq!(number("acked_duplicate"), sent, "{stdout}");
    for field in ["p50", "p90", "p99", "p99_9", "max"] {
        assert!(
            report["latency_ms"][field].as_f64().is_some(),
            "latency {field} missing"
        );
    }
    // The connections' QUIC traffic: something went each way, and a send
    // system call never moved less than one datagram.
    let quic = |field: &str| {
        report["quic"][field]
            .as_u64()
            .unwrap_or_else(|| panic!("quic.{field} missing:\n{report:#}"))
    };
    assert!(
        quic("stream_frames_sent") > 0 && quic("stream_frames_received") > 0,
        "{report:#}"
    );
    assert!(quic("ack_frames_received") > 0, "{report:#}");
    assert!(
        quic("send_calls") > 0 && quic("send_calls") <= quic("datagrams_sent"),
        "{report:#}"
    );
    assert!(
        quic("receive_calls") > 0 && quic("datagrams_received") > 0,
        "{report:#}"
    );
    assert!(stdout.contains("QUIC per stored message:"), "{stdout}");
    let html = std::fs::read_to_string(&html_path).unwrap_or_else(|error| panic!("reading the HTML: {error}"));
    assert!(html.matches("<svg").count() >= 3, "the HTML report has no plots");
    assert!(am.terminate(Duration::from_secs(30)), "acct serve did not stop cleanly");
}

#[test]
fn loadgen_linger_holds_each_message_and_loses_none() {
    // 20 providers at 5 messages a second each (200 ms apart), each
    // message held 80 ms before it is written: every message travels after
    // its linger, and the latency, counted from its scheduled time, shows it.
    let pki = TestPki::new(0, 0);
    let am = AmProcess::start(pki.data(), &["--no-export"]);
    let report_path = pki.data().join("report.json");
    let mut loadgen = Command::new(binary("loadgen"));
    loadgen
        .args(["--am", &am.address.to_string()])
        .arg("--pki")
        .arg(pki.pki())
        .args(["--providers", "20", "--sessions", "20", "--users", "5"])
        .args(["--rate", "100", "--duration", "3", "--drain", "30", "--linger-ms", "80"])
        .args(["--seed", "3", "--quiet", "--json"])
        .arg(&report_path);
    let (report, stdout) = run_loadgen(&mut loadgen, &report_path);
    // 100/s for 3 s and one Final Accounting per session, all stored once.
    assert_eq!(report["acked_stored"].as_u64(), Some(300 + 20), "{stdout}");
    assert_eq!(report["unanswered"].as_u64(), Some(0), "{stdout}");
    assert_eq!(report["settings"]["linger_ms"].as_u64(), Some(80), "{stdout}");
    // Nothing was written before its linger: the smallest lateness is at
    // least the linger, and so is the ack latency of most messages.
    let lateness = &report["send_lateness_ms"];
    assert!(
        lateness["p50"].as_f64().is_some_and(|ms| ms >= 80.0),
        "a message went out before its linger:\n{report:#}"
    );
    assert!(
        report["latency_ms"]["p50"].as_f64().is_some_and(|ms| ms >= 80.0),
        "the ack latency does not count the linger:\n{report:#}"
    );
    assert!(am.terminate(Duration::from_secs(30)), "acct serve did not stop cleanly");
}

#[test]
fn loadgen_holding_while_a_write_is_unanswered_loses_nothing() {
    // 20 providers at 50 messages a second each, 2% retransmitted, each
    // provider writing nothing new while a write is unanswered: every
    // message still goes (in the next write) and is stored once.
    let pki = TestPki::new(0, 0);
    let am = AmProcess::start(pki.data(), &["--no-export"]);
    let report_path = pki.data().join("report.json");
    let mut loadgen = Command::new(binary("loadgen"));
    loadgen
        .args(["--am", &am.address.to_string()])
        .arg("--pki")
        .arg(pki.pki())
        .args(["--providers", "20", "--sessions", "40", "--users", "5"])
        .args([
            "--rate",
            "1000",
            "--duration",
            "3",
            "--drain",
            "30",
            "--hold-unanswered",
        ])
        .args(["--duplicates", "0.02", "--seed", "4", "--audit", "--quiet", "--json"])
        .arg(&report_path);
    let (report, stdout) = run_loadgen(&mut loadgen, &report_path);
    assert_eq!(report["settings"]["hold_unanswered"].as_bool(), Some(true), "{stdout}");
    assert_eq!(report["acked_stored"].as_u64(), Some(3000 + 40), "{stdout}");
    assert_eq!(report["unanswered"].as_u64(), Some(0), "{stdout}");
    assert_eq!(report["lost"].as_u64(), Some(0), "{stdout}");
    assert_eq!(report["double_stored"].as_u64(), Some(0), "{stdout}");
    assert!(am.terminate(Duration::from_secs(30)), "acct serve did not stop cleanly");
}

/// Records exported during the run are not "lost": without `--cold` the
/// AM's audit answers them from the dedup markers it keeps.
#[test]
fn loadgen_audit_without_the_cold_folder_counts_exported_records_as_stored() {
    let pki = TestPki::new(0, 0);
    let am = AmProcess::start(pki.data(), &["--export-interval-ms", "200"]);
    let report_path = pki.data().join("report.json");
    let mut loadgen = Command::new(binary("loadgen"));
    loadgen
        .args(["--am", &am.address.to_string()])
        .arg("--pki")
        .arg(pki.pki())
        .args(["--providers", "50", "--sessions", "100", "--users", "10"])
        .args(["--rate", "1000", "--duration", "2", "--drain", "30"])
        .args(["--duplicates", "0.02", "--seed", "5", "--audit", "--quiet", "--json"])
        .arg(&report_path);
    let (report, stdout) = run_loadgen(&mut loadgen, &report_path);
    let acked = report["acked_stored"].as_u64().unwrap_or(0);
    assert_eq!(acked, 2000 + 100, "{stdout}");
    assert_eq!(report["lost"].as_u64(), Some(0), "{stdout}");
    assert_eq!(report["double_stored"].as_u64(), Some(0), "{stdout}");
    assert_eq!(report["audit"]["stored_once"].as_u64(), Some(acked), "{stdout}");
    // Batches left every 200 ms: most records were exported by the audit.
    let exported = report["audit"]["exported"].as_u64().unwrap_or(0);
    assert!(exported > 0, "no exported record was reported:\n{stdout}");
    assert!(am.terminate(Duration::from_secs(30)), "acct serve did not stop cleanly");
}

#[test]
fn an_overloaded_am_answers_busy_early_and_stores_every_shed_message_once() {
    // An AM made to overload at once: one verifier, small batches, a queue
    // of 256 and a 1 ms delay target, so that overload control sheds reads
    // (a debug build verifies slowly). loadgen's providers back off on every
    // BUSY and send again; the audit must find every message stored once.
    let pki = TestPki::new(0, 0);
    let folder = tempfile::tempdir().unwrap_or_else(|error| panic!("tempdir: {error}"));
    let config = pki.node_config(
        "am-1",
        "127.0.0.1:0",
        folder.path(),
        "[ingest]\nverify_threads = 1\nverify_batch_messages_max = 64\nverify_queue_messages_max = 256\n\
         queue_delay_target_ms = 1\nadmission_wait_ms = 1\n",
    );
    let metrics_port = acct_tests::free_tcp_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let args: Vec<std::ffi::OsString> = ["serve", "--config"]
        .iter()
        .map(Into::into)
        .chain([config.into_os_string()])
        .chain(["--no-export", "--metrics", &metrics].iter().map(Into::into))
        .collect();
    let am = AmProcess::spawn(&args, &[], "acct serve: listening on ");
    let report_path = folder.path().join("report.json");
    let mut loadgen = Command::new(binary("loadgen"));
    loadgen
        .args(["--am", &am.address.to_string()])
        .arg("--pki")
        .arg(pki.pki())
        .args(["--providers", "40", "--sessions", "80", "--users", "10"])
        .args([
            "--max",
            "--window",
            "256",
            "--messages-max",
            "20000",
            "--duration",
            "4",
            "--drain",
            "60",
        ])
        .args(["--seed", "3", "--audit", "--quiet", "--json"])
        .arg(&report_path);
    let (report, stdout) = run_loadgen(&mut loadgen, &report_path);
    let number = |field: &str| {
        report[field]
            .as_u64()
            .unwrap_or_else(|| panic!("report field {field} missing:\n{report:#}"))
    };
    // Shed: BUSY answers came, and quickly (each attempt from its send).
    let busy = report["attempt_latency_ms"]["busy"]["count"].as_u64().unwrap_or(0);
    assert!(busy > 0, "no BUSY answer: the AM was not overloaded\n{stdout}");
    assert!(number("retried") >= busy, "{stdout}");
    let text = acct_tests::http_get(metrics_port, "/metrics");
    let shed: f64 = text
        .lines()
        .filter(|line| line.starts_with("acct_shed_messages_total{reason=\"queue_delay\"}"))
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .sum();
    assert!(shed > 0.0, "no read shed for its queue delay:\n{text}");
    // Everything shed was sent again and stored once.
    assert_eq!(number("unanswered"), 0, "{stdout}");
    assert_eq!(number("acked_stored"), number("sent_accounting"), "{stdout}");
    assert_eq!(number("lost"), 0, "{stdout}");
    assert_eq!(number("double_stored"), 0, "{stdout}");
    assert!(am.terminate(Duration::from_secs(30)), "acct serve did not stop cleanly");
}
