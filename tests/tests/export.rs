//! Record Accounting end to end: real `acct serve` and `acct storage`
//! processes on 127.0.0.1, real Parquet read back by pyarrow and DuckDB, and
//! SIGKILL at the export path's dangerous moments.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use acct_tests::{
    AmProcess, TestPki, binary, cold_ids_once, cold_rows, free_udp_port, hot_records, now_ms, open_sessions, python,
    runtime, send_all, sent_ids, wait_until,
};
use peer::provider::ProviderSession;
use peer::quic::AmClient;
use wire::{AccountingKind, AckStatus, CounterName, CustomCounter, Role, Signed, Usage};

/// Upper bound on waiting for an export to land.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(60);

/// `per_session` messages for each session, the last one Final; varied
/// usage with a custom counter, so that totals mean something.
fn messages(sessions: &mut [ProviderSession], per_session: u64) -> Vec<Signed<wire::Accounting>> {
    let now = now_ms();
    let mut out = Vec::new();
    for (index, session) in sessions.iter_mut().enumerate() {
        for count in 1..=per_session {
            let kind = if count == per_session {
                AccountingKind::FINAL
            } else {
                AccountingKind::INTERIM
            };
            let usage = Usage {
                units: Some(count * 3 + index as u64),
                bytes_up: Some(1_000 + count),
                bytes_down: (count % 2 == 0).then_some(50_000 + count),
                duration_ms: Some(1_000),
                interval_ms: Some((now - 60_000, now)),
                custom: vec![CustomCounter {
                    name: CounterName::new("gpu_ms").unwrap(),
                    value: count,
                }],
            };
            out.push(session.account(kind, usage).unwrap());
        }
    }
    out
}

/// Open sessions and send every message; all must be acked STORED.
fn ingest(pki: &TestPki, am: &AmProcess, sessions_count: usize, per_session: u64) -> Vec<Signed<wire::Accounting>> {
    runtime().block_on(async {
        let admin = AmClient::connect(am.address, &pki.identity(Role::AccountingManager, "am-1"))
            .await
            .unwrap();
        let mut sessions = open_sessions(pki, &admin, "provider-0001", sessions_count).await;
        admin.close().await;
        let messages = messages(&mut sessions, per_session);
        let client = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0001"))
            .await
            .unwrap();
        let answers = send_all(&client, &messages).await;
        client.close().await;
        assert_eq!(answers.len(), messages.len());
        assert!(
            answers.values().all(|status| *status == AckStatus::STORED),
            "{:?}",
            answers
                .values()
                .filter(|status| **status != AckStatus::STORED)
                .take(3)
                .collect::<Vec<_>>()
        );
        messages
    })
}

/// Send `messages` again: every one must be answered DUPLICATE.
fn resend_expect_duplicates(pki: &TestPki, am: &AmProcess, messages: &[Signed<wire::Accounting>]) {
    let answers = runtime().block_on(async {
        let client = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0001"))
            .await
            .unwrap();
        let answers = send_all(&client, messages).await;
        client.close().await;
        answers
    });
    assert_eq!(answers.len(), messages.len());
    assert!(
        answers.values().all(|status| *status == AckStatus::DUPLICATE),
        "{answers:?}"
    );
}

/// `acct audit DIR --ca CA`: success and what it printed.
fn audit_with_ca(pki: &TestPki, folder: &Path) -> (bool, String) {
    acct_tests::audit(pki, folder, &["--show", "1000"])
}

/// `acct audit DIR --ca CA` passes and proves every node's chain complete.
fn audit_passes(pki: &TestPki, folder: &Path) {
    let (ok, output) = audit_with_ca(pki, folder);
    assert!(ok, "acct audit failed:\n{output}");
    assert!(output.contains(" 0 problems"), "{output}");
    assert!(output.contains(": complete"), "{output}");
}

/// pyarrow and DuckDB read the files on their own and compute per-user
/// totals; they must agree with each other and with `acct report`.
const PYTHON_TOTALS: &str = r#"
import json, sys
import duckdb, pyarrow.compute as pc, pyarrow.parquet as pq
folder = sys.argv[1]
table = pq.read_table(folder, partitioning="hive")
by_user = {}
for user, units, up, down, duration, custom in zip(
    table["user_id"].to_pylist(), table["units"].to_pylist(), table["bytes_up"].to_pylist(),
    table["bytes_down"].to_pylist(), table["duration_ms"].to_pylist(), table["custom_counters"].to_pylist()):
    t = by_user.setdefault(user, {"messages": 0, "units": 0, "bytes_up": 0, "bytes_down": 0, "duration_ms": 0, "gpu_ms": 0})
    t["messages"] += 1
    t["units"] += units or 0
    t["bytes_up"] += up or 0
    t["bytes_down"] += down or 0
    t["duration_ms"] += duration or 0
    t["gpu_ms"] += dict(custom).get("gpu_ms", 0)
rows = duckdb.sql(f"""
    select user_id, count(*), coalesce(sum(units), 0), coalesce(sum(bytes_up), 0),
           coalesce(sum(bytes_down), 0), coalesce(sum(duration_ms), 0),
           coalesce(sum(custom_counters['gpu_ms']), 0), count(distinct session_id), min(node), min(date)
    from read_parquet('{folder}/**/*.parquet', hive_partitioning = true)
    group by user_id order by user_id""").fetchall()
duck = {r[0]: {"messages": r[1], "units": int(r[2]), "bytes_up": int(r[3]), "bytes_down": int(r[4]),
               "duration_ms": int(r[5]), "gpu_ms": int(r[6])} for r in rows}
print(json.dumps({"pyarrow": by_user, "duckdb": duck, "rows": table.num_rows,
                  "node": rows[0][8] if rows else None}))
"#;

fn check_with_independent_readers(folder: &Path, expected_rows: usize) {
    let output = Command::new(python())
        .args(["-c", PYTHON_TOTALS])
        .arg(folder)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "running {} (pyarrow and DuckDB; scripts/install-deps.sh installs them): {error}",
                python().display()
            )
        });
    assert!(
        output.status.success(),
        "the pyarrow/DuckDB reader failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let readers: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(readers["rows"].as_u64(), Some(expected_rows as u64));
    assert_eq!(readers["node"].as_str(), Some("am-1"), "the node=am-1 partition");
    assert_eq!(readers["pyarrow"], readers["duckdb"], "pyarrow and DuckDB disagree");

    let output = Command::new(binary("acct"))
        .args(["report", "--by", "user", "--format", "json"])
        .arg(folder)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), readers["duckdb"].as_object().unwrap().len());
    for group in groups {
        let user = group["user_id"].as_str().unwrap();
        let theirs = &readers["duckdb"][user];
        for field in ["messages", "units", "bytes_up", "bytes_down", "duration_ms"] {
            assert_eq!(group[field], theirs[field], "user {user}, {field}");
        }
        assert_eq!(group["custom"]["gpu_ms"], theirs["gpu_ms"], "user {user}, gpu_ms");
    }
    assert_eq!(report["total"]["messages"].as_u64(), Some(expected_rows as u64));
}

#[test]
fn exported_records_leave_the_hot_store_once_and_readers_agree() {
    let pki = TestPki::new(1, 0);
    // Small batches, cut often: many files, and exports while ingest runs.
    let am = AmProcess::start(
        pki.data(),
        &["--export-interval-ms", "200", "--export-records-max", "700"],
    );
    let messages = ingest(&pki, &am, 12, 250);
    let cold = pki.data().join("cold");
    assert!(
        wait_until(EXPORT_TIMEOUT, || cold_rows(&cold).len() == messages.len()),
        "the exporter did not ship every record"
    );
    assert_eq!(cold_ids_once(&cold), sent_ids(&messages));
    assert!(
        wait_until(EXPORT_TIMEOUT, || hot_records(&pki, &am) == 0),
        "exported records are still in RocksDB"
    );
    let files = archive::parquet_files(&cold).unwrap();
    assert!(files.len() >= 4, "expected several batches, got {}", files.len());
    // A retransmission of an exported and deleted message is a duplicate.
    resend_expect_duplicates(&pki, &am, &messages[..300]);
    assert!(am.terminate(Duration::from_secs(60)), "acct serve did not stop cleanly");
    assert_eq!(
        cold_rows(&cold).len(),
        messages.len(),
        "the duplicates were stored again"
    );
    audit_passes(&pki, &cold);
    check_with_independent_readers(&cold, messages.len());
}

#[test]
fn sigterm_exports_what_is_committed() {
    let pki = TestPki::new(1, 0);
    // An interval far beyond the test: only the shutdown exports.
    let am = AmProcess::start(pki.data(), &["--export-interval-ms", "3600000"]);
    let messages = ingest(&pki, &am, 4, 100);
    let cold = pki.data().join("cold");
    assert!(cold_rows(&cold).is_empty());
    assert!(am.terminate(Duration::from_secs(60)));
    assert_eq!(cold_ids_once(&cold), sent_ids(&messages));
    assert!(acct_tests::stored_messages(pki.data()).len() == messages.len());
}

#[test]
fn storage_away_then_back_ingest_goes_on_and_exports_catch_up() {
    let pki = TestPki::new(1, 0);
    let storage_address: std::net::SocketAddr = ([127, 0, 0, 1], free_udp_port()).into();
    let cold = pki.data().join("external-cold");
    let metrics_port = acct_tests::free_tcp_port();
    let metrics_address = format!("127.0.0.1:{metrics_port}");
    let am = AmProcess::start(
        pki.data(),
        &[
            "--storage",
            &storage_address.to_string(),
            "--export-interval-ms",
            "200",
            "--metrics",
            &metrics_address,
        ],
    );
    // The storage is not running: ingest is acked all the same, and the
    // exporter's attempts fail (bounded wait on its failure counter).
    let messages = ingest(&pki, &am, 6, 200);
    assert!(
        wait_until(EXPORT_TIMEOUT, || acct_tests::http_get(metrics_port, "/metrics")
            .contains("acct_export_failures_total")),
        "the exporter never tried the absent storage"
    );
    assert_eq!(hot_records(&pki, &am), messages.len() as u64);
    // The backlog gauge counts every record waiting, also while the first
    // batch is being retried.
    let backlog_line = format!("acct_export_backlog_records {}", messages.len());
    assert!(
        wait_until(EXPORT_TIMEOUT, || acct_tests::http_get(metrics_port, "/metrics")
            .lines()
            .any(|line| line == backlog_line)),
        "the backlog gauge never showed {} records",
        messages.len()
    );
    // And its age grows: the oldest record waits as long as the storage is
    // away (AcctExportBacklogOld alerts on it).
    let age = || {
        acct_tests::http_get(metrics_port, "/metrics")
            .lines()
            .find_map(|line| line.strip_prefix("acct_export_backlog_age_seconds "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let first = age();
    assert!(
        wait_until(EXPORT_TIMEOUT, || age() >= first + 1.0),
        "the backlog's age did not grow from {first} s"
    );
    let storage = AmProcess::start_storage(&pki.pki(), &cold, storage_address, &[]);
    assert!(
        wait_until(EXPORT_TIMEOUT, || cold_rows(&cold).len() == messages.len()),
        "exports did not catch up"
    );
    assert_eq!(cold_ids_once(&cold), sent_ids(&messages));
    assert!(wait_until(EXPORT_TIMEOUT, || hot_records(&pki, &am) == 0));
    assert!(
        wait_until(EXPORT_TIMEOUT, || age() == 0.0),
        "the backlog's age stayed at {} s once everything was exported",
        age()
    );
    assert!(am.terminate(Duration::from_secs(60)));
    assert!(storage.terminate(Duration::from_secs(30)));
    audit_passes(&pki, &cold);
}

/// An external storage started with `env` (a fault to inject) in
/// DATA/external-cold, and an AM exporting to it every 200 ms.
fn with_external_storage(
    pki: &TestPki,
    env: &[(&str, &str)],
) -> (AmProcess, std::net::SocketAddr, std::path::PathBuf, AmProcess) {
    let storage_address: std::net::SocketAddr = ([127, 0, 0, 1], free_udp_port()).into();
    let cold = pki.data().join("external-cold");
    let storage = AmProcess::start_storage(&pki.pki(), &cold, storage_address, env);
    let am = AmProcess::start(
        pki.data(),
        &["--storage", &storage_address.to_string(), "--export-interval-ms", "200"],
    );
    (storage, storage_address, cold, am)
}

/// A storage that takes 2 s to answer each batch: ingest is acked as
/// usual (acks never wait for exports), exports complete one slow batch at
/// a time, and every record ends up in cold storage once.
#[test]
fn a_slow_storage_slows_exports_not_ingest() {
    let pki = TestPki::new(1, 0);
    let (storage, _, cold, am) = with_external_storage(&pki, &[("ACCT_STORAGE_ACK_DELAY_MS", "2000")]);
    // Three rounds of ingest while slow exports run; each is fully acked
    // (ingest() asserts every answer is STORED).
    let mut messages = Vec::new();
    for _ in 0..3 {
        messages.extend(ingest(&pki, &am, 4, 100));
    }
    assert!(
        wait_until(EXPORT_TIMEOUT, || cold_rows(&cold).len() == messages.len()),
        "the slow storage never caught up"
    );
    assert!(wait_until(EXPORT_TIMEOUT, || hot_records(&pki, &am) == 0));
    assert_eq!(cold_ids_once(&cold), sent_ids(&messages));
    assert!(am.terminate(Duration::from_secs(60)));
    assert!(storage.terminate(Duration::from_secs(30)));
    audit_passes(&pki, &cold);
}

/// SIGKILL the AM at `failpoint` of its first export, restart it: every
/// record ends up in cold storage exactly once, the hot store empties.
fn kill_am_at(failpoint: &str) {
    let pki = TestPki::new(1, 0);
    let am = AmProcess::start_with_env(
        pki.data(),
        &["--export-interval-ms", "200"],
        &[("ACCT_FAILPOINT", failpoint)],
    );
    let messages = ingest(&pki, &am, 5, 100);
    assert!(
        am.wait_for_line(&format!("failpoint {failpoint} reached"), EXPORT_TIMEOUT),
        "the AM never reached {failpoint}"
    );
    let cold = pki.data().join("cold");
    let files_at_kill = archive::parquet_files(&cold).map_or(0, |files| files.len());
    am.kill();
    if failpoint == "export-after-ack" {
        assert_eq!(files_at_kill, 1, "the storage acked: its file exists");
    } else {
        assert_eq!(files_at_kill, 0, "nothing was sent yet");
    }
    let am = AmProcess::start(pki.data(), &["--export-interval-ms", "200"]);
    assert!(
        wait_until(EXPORT_TIMEOUT, || cold_rows(&cold).len() >= messages.len()),
        "the restarted AM did not finish the export"
    );
    assert!(wait_until(EXPORT_TIMEOUT, || hot_records(&pki, &am) == 0));
    assert_eq!(cold_ids_once(&cold), sent_ids(&messages));
    // Retransmissions after the crash are still duplicates.
    resend_expect_duplicates(&pki, &am, &messages[..50]);
    assert!(am.terminate(Duration::from_secs(60)));
    assert_eq!(cold_rows(&cold).len(), messages.len());
    audit_passes(&pki, &cold);
}

#[test]
fn am_killed_between_storage_ack_and_delete_loses_and_doubles_nothing() {
    kill_am_at("export-after-ack");
}

#[test]
fn am_killed_between_manifest_and_send_loses_and_doubles_nothing() {
    kill_am_at("export-after-manifest");
}

#[test]
fn storage_killed_mid_write_leaves_no_partial_file() {
    let pki = TestPki::new(1, 0);
    let (storage, storage_address, cold, am) = with_external_storage(&pki, &[("ACCT_FAILPOINT", "storage-mid-write")]);
    let messages = ingest(&pki, &am, 4, 100);
    assert!(storage.wait_for_line("failpoint storage-mid-write reached", EXPORT_TIMEOUT));
    // Half a file is on disk, under a hidden temp name only.
    let partial: Vec<_> = walk(&cold).into_iter().filter(|name| name.ends_with(".tmp")).collect();
    assert_eq!(partial.len(), 1, "{:?}", walk(&cold));
    assert!(
        archive::parquet_files(&cold).unwrap().is_empty(),
        "a partial file is visible"
    );
    storage.kill();
    let storage = AmProcess::start_storage(&pki.pki(), &cold, storage_address, &[]);
    assert!(
        wait_until(EXPORT_TIMEOUT, || cold_rows(&cold).len() >= messages.len()),
        "exports did not resume after the storage restarted"
    );
    // The partial file was removed when the storage started again.
    assert!(!walk(&cold).contains(&partial[0]), "the temp file was not cleaned");
    assert_eq!(cold_ids_once(&cold), sent_ids(&messages));
    // Once every batch is acked (the chain's objects are written before
    // each ack, through temp files of their own), no temp file is left.
    assert!(wait_until(EXPORT_TIMEOUT, || hot_records(&pki, &am) == 0));
    assert!(
        walk(&cold).iter().all(|name| !name.ends_with(".tmp")),
        "{:?}",
        walk(&cold)
    );
    assert!(am.terminate(Duration::from_secs(60)));
    assert!(storage.terminate(Duration::from_secs(30)));
    audit_passes(&pki, &cold);
}

/// Every file name under `folder`, recursively.
fn walk(folder: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![folder.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                pending.push(entry.path());
            } else {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out
}

#[test]
fn acct_audit_finds_tampered_and_doubled_rows() {
    let pki = TestPki::new(1, 0);
    let am = AmProcess::start(pki.data(), &["--export-interval-ms", "3600000"]);
    let messages = ingest(&pki, &am, 2, 20);
    assert!(am.terminate(Duration::from_secs(60)));
    let cold = pki.data().join("cold");
    audit_passes(&pki, &cold);
    // Forge a second file: the same rows, one with its units changed.
    let mut rows = cold_rows(&cold);
    assert_eq!(rows.len(), messages.len());
    rows[3].units = Some(999_999);
    let forged = archive::encode(&rows, "forged", 1).unwrap();
    let path = cold.join("date=2000-01-01").join("node=am-1");
    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(path.join("batch-forged.parquet"), forged).unwrap();
    let output = Command::new(binary("acct")).arg("audit").arg(&cold).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("columns disagree with the signed bytes: units"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("stored twice").count(), messages.len(), "{stdout}");
}

#[test]
fn only_an_am_certificate_may_deliver_to_the_storage() {
    let pki = TestPki::new(1, 0);
    let cold = pki.data().join("external-cold");
    let storage = AmProcess::start_storage(&pki.pki(), &cold, "127.0.0.1:0".parse().unwrap(), &[]);
    let reason = runtime().block_on(async {
        // A client that expects the storage's role, with a provider's
        // certificate.
        let provider = pki.identity(Role::Provider, "provider-0001");
        let endpoint = peer::quic::shared_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let config = peer::quic::client_config_for(
            &provider.ca_der,
            Some((&provider.certificate_der, &provider.signing_key)),
            Role::AccountingStorage,
        )
        .unwrap();
        let client = AmClient::connect_with(&endpoint, config, storage.address)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), client.closed())
            .await
            .unwrap_or_else(|_| panic!("the storage kept a provider's connection open"))
    });
    assert!(reason.contains("only an AM certificate may deliver"), "{reason}");
    assert!(storage.terminate(Duration::from_secs(30)));
}

/// Delete every head in a node's chain folder.
fn remove_heads(folder: &Path) {
    for entry in std::fs::read_dir(folder).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("head-") {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
}

/// Copy the folder `from` to `to`, recursively.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A chained batch: its number, its header's path, its Parquet file's path.
type Chained = (u64, std::path::PathBuf, std::path::PathBuf);

/// The chain's objects of `node`, and its batch files by number, in chain
/// order.
fn chained_batches(cold: &Path, node: &str) -> Vec<Chained> {
    let folder = cold.join("_chain").join(format!("node={node}"));
    let files = archive::parquet_files(cold).unwrap();
    let mut out: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix("batch-")?.strip_suffix(".header")?;
            let mut parts = rest.split('-');
            let number: u64 = parts.next()?.parse().ok()?;
            let batch = parts.next()?.to_owned();
            let file = files
                .iter()
                .find(|path| path.ends_with(format!("batch-{batch}.parquet")))?
                .clone();
            Some((number, entry.path(), file))
        })
        .collect();
    out.sort();
    out
}

/// The auditor's proof: several batches chained, then the archive is
/// damaged in each way an operator, a bug or an attacker could, on a copy
/// each time; `acct audit --ca` names the batch and what is wrong with it.
#[test]
fn acct_audit_proves_the_chain_and_names_each_gap() {
    let pki = TestPki::new(1, 0);
    let am = AmProcess::start(
        pki.data(),
        &["--export-interval-ms", "100", "--export-records-max", "10"],
    );
    ingest(&pki, &am, 5, 10);
    assert!(am.terminate(Duration::from_secs(60)));
    let cold = pki.data().join("cold");
    audit_passes(&pki, &cold);
    let batches = chained_batches(&cold, "am-1");
    assert!(batches.len() >= 5, "{batches:?}");
    let numbers: Vec<u64> = batches.iter().map(|batch| batch.0).collect();
    assert_eq!(numbers, (1..=batches.len() as u64).collect::<Vec<_>>());
    let last = batches.len() as u64;
    let (_, output) = audit_with_ca(&pki, &cold);
    assert!(
        output.contains(&format!(
            "node am-1: batches #1..=#{last}, commit sequences 1..=50: complete"
        )),
        "{output}"
    );

    let case = |name: &str, damage: &dyn Fn(&Path, &[Chained]), expect: &[String]| {
        let copy = pki.data().join(format!("damaged-{name}"));
        copy_tree(&cold, &copy);
        let copied = chained_batches(&copy, "am-1");
        damage(&copy, &copied);
        let (ok, output) = audit_with_ca(&pki, &copy);
        assert!(!ok, "{name}: the audit passed:\n{output}");
        for wanted in expect {
            assert!(output.contains(wanted.as_str()), "{name}: {wanted:?} not in:\n{output}");
        }
    };
    let file_of = |batches: &[Chained], number: u64| batches.iter().find(|batch| batch.0 == number).unwrap().2.clone();
    let header_of =
        |batches: &[Chained], number: u64| batches.iter().find(|batch| batch.0 == number).unwrap().1.clone();
    // A file deleted from the middle.
    case(
        "deleted-file",
        &|_, batches| std::fs::remove_file(file_of(batches, 2)).unwrap(),
        &["batch #2 (".into(), "of am-1: missing (its file is gone)".into()],
    );
    // A file and its header deleted from the middle.
    case(
        "deleted-batch",
        &|_, batches| {
            std::fs::remove_file(file_of(batches, 3)).unwrap();
            std::fs::remove_file(header_of(batches, 3)).unwrap();
        },
        &["batch #3 of am-1: missing (no header)".into()],
    );
    // The last two batches deleted, headers and all: the head still names
    // the last.
    case(
        "deleted-tail",
        &|_, batches| {
            for number in [last - 1, last] {
                std::fs::remove_file(file_of(batches, number)).unwrap();
                std::fs::remove_file(header_of(batches, number)).unwrap();
            }
        },
        &[format!("batches #{}..=#{last} of am-1: missing (no headers)", last - 1)],
    );
    // The heads deleted.
    case(
        "deleted-heads",
        &|copy, _| remove_heads(&copy.join("_chain/node=am-1")),
        &["node am-1: no head".into()],
    );
    // The last batch and its head deleted: the head before it still names
    // a batch whose successor's header is stored, and the file is gone.
    case(
        "deleted-last-with-head",
        &|copy, batches| {
            std::fs::remove_file(file_of(batches, last)).unwrap();
            std::fs::remove_file(copy.join("_chain/node=am-1").join(archive::chain::head_name(last))).unwrap();
        },
        &[
            format!("batch #{last} ("),
            "missing (its file is gone)".into(),
            format!(
                "names batch #{} but batches up to #{last} are stored (a head deleted)",
                last - 1
            ),
        ],
    );
    // A file truncated.
    case(
        "truncated",
        &|_, batches| {
            let path = file_of(batches, 2);
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        },
        &[
            "is not the file its signed header describes".into(),
            "unreadable".into(),
        ],
    );
    // Two files' contents swapped.
    case(
        "swapped",
        &|_, batches| {
            let (one, two) = (file_of(batches, 1), file_of(batches, 2));
            let (a, b) = (std::fs::read(&one).unwrap(), std::fs::read(&two).unwrap());
            std::fs::write(&one, b).unwrap();
            std::fs::write(&two, a).unwrap();
        },
        &[
            "batch #1 (".into(),
            "batch #2 (".into(),
            "is not the file its signed header describes".into(),
        ],
    );
    // A file moved under another node.
    case(
        "out-of-place",
        &|copy, batches| {
            let file = file_of(batches, 2);
            let date = file.parent().unwrap().parent().unwrap().to_path_buf();
            let elsewhere = date.join("node=am-9");
            std::fs::create_dir_all(&elsewhere).unwrap();
            std::fs::rename(&file, elsewhere.join(file.file_name().unwrap())).unwrap();
            let _ = copy;
        },
        &["is under another node (out of place)".into()],
    );
    // A row changed, the file re-encoded and its header re-signed by an
    // impostor: an `am-1` certificate from another CA, left in the chain.
    let impostor = TestPki::new(0, 0);
    let rogue = impostor.identity(Role::AccountingManager, "am-1");
    case(
        "re-signed",
        &|copy, batches| {
            let path = file_of(batches, 2);
            let header_path = header_of(batches, 2);
            let header = Signed::<wire::BatchHeader>::decode_body(std::fs::read(&header_path).unwrap().into()).unwrap();
            let mut rows = Vec::new();
            archive::read_file(&path, |row| rows.push(row)).unwrap();
            rows[0].units = Some(1);
            let bytes = archive::encode(&rows, &header.value().batch_id.to_string(), 2).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            let forged = Signed::sign(
                wire::BatchHeader {
                    file_digest: wire::RecordAccounting::digest_of(&bytes),
                    ..header.value().clone()
                },
                &rogue.signing_key,
            )
            .unwrap();
            std::fs::remove_file(&header_path).unwrap();
            let folder = copy.join("_chain/node=am-1");
            std::fs::write(folder.join(archive::chain::header_name(&forged)), forged.body()).unwrap();
            std::fs::write(
                folder.join(archive::chain::certificate_name(&rogue.certificate_der)),
                &rogue.certificate_der,
            )
            .unwrap();
        },
        &[
            "batch #2 (".into(),
            "its header's signature does not verify under any AM certificate of am-1 from the CA".into(),
        ],
    );
}
