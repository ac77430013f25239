//! A WAL sync that fails with "no space" after the group's bytes reached the
//! WAL file, then a crash at each step of RocksDB's automatic recovery: after
//! a restart every message is stored exactly once, no dedup marker is
//! without its record, and commit sequences have no gap.
//!
//! The fault is real: `tests/faults/wal_sync_enospc.c`, compiled here and
//! loaded into a real `acct serve` with LD_PRELOAD, fails one sync of a WAL
//! file with ENOSPC (what a delayed-allocation file system or a thin volume
//! answers when it fills) and kills the process with SIGKILL after the Nth
//! MANIFEST sync that follows: the recovery records each flush there. The
//! AM answers the failed group OUT_OF_SPACE and RocksDB resumes by itself;
//! a crash between two column families' recovery flushes would replay the
//! failed group's WAL bytes into some families and not others (markers
//! without records: a retransmission answered DUPLICATE but never stored),
//! unless the store flushes its families atomically (engine/src/am/store.rs).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use acct_tests::{AmProcess, TestPki, open_sessions, runtime, stored_messages};
use peer::provider::{AckOutcome, ProviderSession};
use peer::quic::{AmClient, Received};
use wire::{AccountingKind, AckStatus, MessageId, Role, Usage};

const SESSIONS: usize = 16;
/// Crash points: 0 at the failing WAL sync itself, then after the 1st, 2nd,
/// ... MANIFEST sync of the recovery (one per column family that could be
/// flushed one by one, and one more). A point the recovery never reaches
/// crashes the AM after it resumed instead.
const KILL_POINTS: u32 = 9;
/// How long a scenario waits for the fault, the recovery or the crash.
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a round waits for answers while the AM may have been killed.
const ROUND_TIMEOUT: Duration = Duration::from_secs(3);

/// The fault injector, compiled with the system's C compiler.
fn build_shim(folder: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("faults/wal_sync_enospc.c");
    let output = folder.join("libwal_sync_enospc.so");
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&output)
        .arg(&source)
        .arg("-ldl")
        .status()
        .unwrap_or_else(|error| panic!("running the C compiler (scripts/install-deps.sh installs it): {error}"));
    assert!(status.success(), "compiling {}", source.display());
    output
}

/// Send every unacked message and `new` new ones per session on one stream;
/// feed the answers back. A dead connection ends the round early (the AM may
/// be killed mid-round): what was not answered stays unacked.
async fn round(
    client: &AmClient,
    sessions: &mut [ProviderSession],
    new: usize,
    created: &mut HashSet<MessageId>,
) -> Vec<AckStatus> {
    let now = acct_tests::now_ms();
    let mut outgoing: Vec<_> = sessions.iter().flat_map(|session| session.unacked().cloned()).collect();
    for session in sessions.iter_mut() {
        for _ in 0..new {
            let usage = Usage {
                units: Some(1),
                interval_ms: Some((now - 1000, now)),
                ..Usage::default()
            };
            let message = session.account(AccountingKind::INTERIM, usage).unwrap();
            created.insert(message.value().message_id());
            outgoing.push(message);
        }
    }
    let Ok(stream) = client.open_accounting().await else {
        return Vec::new();
    };
    let (mut sender, mut receiver) = (stream.sender, stream.receiver);
    if sender.send(&outgoing).await.is_err() {
        return Vec::new();
    }
    let mut statuses = Vec::new();
    while statuses.len() < outgoing.len() {
        match tokio::time::timeout(PHASE_TIMEOUT, receiver.next()).await {
            Ok(Ok(Some(Received::Acks(entries)))) => {
                for entry in entries {
                    let session = sessions
                        .iter_mut()
                        .find(|session| session.session_id() == entry.message_id.session_id)
                        .expect("an ack for one of our sessions");
                    let _: AckOutcome = session.on_ack(&entry);
                    statuses.push(entry.status);
                }
            }
            Ok(Ok(Some(Received::Error(error)))) => panic!("the AM closed the stream: {error:?}"),
            // The AM died or closed the connection.
            Ok(Ok(None) | Err(_)) => break,
            Err(_) => panic!("no ack within {PHASE_TIMEOUT:?}"),
        }
    }
    let _ = sender.finish();
    statuses
}

fn scenario(shim: &Path, kill_after: u32) {
    let pki = TestPki::new(1, 1);
    let fault = pki.data().join("fault");
    std::fs::create_dir_all(&fault).unwrap();
    let kill_after_text = kill_after.to_string();
    let mut am = AmProcess::start_with_env(
        pki.data(),
        &["--no-export"],
        &[
            ("LD_PRELOAD", shim.to_str().unwrap()),
            ("ACCT_FAULT_DIR", fault.to_str().unwrap()),
            ("ACCT_FAULT_KILL_AFTER", &kill_after_text),
        ],
    );
    let rt = runtime();
    let mut created = HashSet::new();
    let (mut sessions, crashed) = rt.block_on(async {
        let admin = AmClient::connect(am.address, &pki.identity(Role::AccountingManager, "am-1"))
            .await
            .unwrap();
        let mut sessions = open_sessions(&pki, &admin, "provider-0001", SESSIONS).await;
        admin.close().await;
        let client = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0001"))
            .await
            .unwrap();
        let statuses = round(&client, &mut sessions, 20, &mut created).await;
        assert!(
            statuses.iter().all(|status| *status == AckStatus::STORED),
            "{statuses:?}"
        );

        // The next WAL sync fails; RocksDB recovers by itself, and the shim
        // kills the AM at the chosen step of that recovery.
        std::fs::write(fault.join("arm"), b"").unwrap();
        let started = Instant::now();
        let mut refused = 0usize;
        let crashed = loop {
            assert!(
                started.elapsed() < PHASE_TIMEOUT,
                "neither a crash nor a recovery within {PHASE_TIMEOUT:?} (faulted: {}, refused: {refused})",
                fault.join("faulted").exists()
            );
            // A killed AM sends no close: a round that hears nothing for a
            // few seconds ends, and the process is looked at.
            let statuses = tokio::time::timeout(ROUND_TIMEOUT, round(&client, &mut sessions, 3, &mut created))
                .await
                .unwrap_or_default();
            for status in &statuses {
                match *status {
                    AckStatus::STORED | AckStatus::DUPLICATE => {}
                    AckStatus::OUT_OF_SPACE => refused += 1,
                    other => panic!("unexpected answer: {other:?}"),
                }
            }
            if am.exited() {
                break true;
            }
            if refused > 0 && !statuses.is_empty() && statuses.iter().all(|status| status.is_stored()) {
                // Recovered before the chosen step: crash now instead.
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(fault.join("faulted").exists(), "the WAL sync fault never fired");
        // An AM that recovered answered the failed group OUT_OF_SPACE first;
        // one killed at the failing sync, or early in its recovery, may have
        // answered nothing.
        assert!(refused > 0 || crashed, "the failed group was not answered OUT_OF_SPACE");
        println!(
            "kill point {kill_after}: {refused} refused, crashed in recovery: {crashed}, after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        (sessions, crashed)
    });
    am.kill();

    // Restart without the fault; retransmit until everything is answered.
    let am = AmProcess::start(pki.data(), &["--no-export"]);
    rt.block_on(async {
        let client = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0001"))
            .await
            .unwrap();
        for _ in 0..20 {
            if sessions.iter().all(|session| session.unacked().count() == 0) {
                break;
            }
            for status in round(&client, &mut sessions, 0, &mut created).await {
                assert!(status.is_stored(), "after the restart: {status:?}");
            }
        }
        assert!(
            sessions.iter().all(|session| session.unacked().count() == 0),
            "messages left unacked"
        );
        client.close().await;
    });
    assert!(am.terminate(Duration::from_secs(30)), "acct serve did not exit cleanly");
    if kill_after <= 1 {
        // At the failing sync, and after the recovery's first manifest
        // write (with atomic flush, its only one), the AM must have died:
        // otherwise the shim saw no recovery and the test proves nothing.
        assert!(
            crashed,
            "kill point {kill_after}: the AM was not killed inside the recovery"
        );
    }

    // Every message is stored exactly once (an answer of DUPLICATE for a
    // message whose record is missing shows up here), and the records'
    // commit sequences are contiguous (export refuses a gap).
    let stored = stored_messages(pki.data());
    let unique: HashSet<MessageId> = stored.iter().copied().collect();
    assert_eq!(
        unique.len(),
        stored.len(),
        "kill point {kill_after}: a message is stored twice"
    );
    let missing = created.difference(&unique).count();
    assert_eq!(
        missing, 0,
        "kill point {kill_after}: {missing} acked messages are not stored"
    );
    assert_eq!(
        unique.len(),
        created.len(),
        "kill point {kill_after}: stored messages nobody sent"
    );
    let store = acct::am::store::Store::open(&acct::cli::serve::database_folder(pki.data())).unwrap();
    let sequences: Vec<u64> = store
        .records(0, usize::MAX)
        .unwrap()
        .iter()
        .map(|(sequence, _)| *sequence)
        .collect();
    for pair in sequences.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "kill point {kill_after}: a gap in commit sequences"
        );
    }
}

#[test]
fn a_crash_while_recovering_from_a_failed_wal_sync_loses_nothing() {
    let folder = tempfile::tempdir().unwrap();
    let shim = build_shim(folder.path());
    for kill_after in 0..=KILL_POINTS {
        scenario(&shim, kill_after);
    }
}
