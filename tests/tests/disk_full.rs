//! Disk full on the AM's data folder: the AM's RocksDB on a size-limited
//! tmpfs. Providers get an explicit OUT_OF_SPACE answer (never an ack for
//! what was not stored, never silence), nothing is corrupted, and ingest
//! resumes by itself once space returns, without a restart.
//!
//! Mounting a tmpfs needs root. CI runs as root; elsewhere the test says it
//! was skipped (set ACCT_REQUIRE_ROOT_TESTS=1 to make that a failure).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use acct_tests::{AmProcess, TestPki, open_sessions, runtime, send_all, stored_messages};
use peer::provider::{AckOutcome, ProviderSession};
use peer::quic::AmClient;
use wire::{AccountingKind, AckStatus, MessageId, Role, Usage};

/// The tmpfs size: more than RocksDB needs free before it resumes (room to
/// flush its largest memtable, 128 MiB).
const TMPFS_MIB: u64 = 1024;
/// What the ballast leaves free once the AM runs.
const FREE_AFTER_BALLAST_MIB: u64 = 6;
/// Messages per send round (per session).
const PER_SESSION_PER_ROUND: usize = 50;
const SESSIONS: usize = 40;
/// Rounds before the disk must be full (6 MiB fill in far fewer).
const ROUNDS_MAX: usize = 400;

/// A mounted tmpfs, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, mib: u64) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"])
            .arg(path)
            .status()
            .ok()?;
        status.success().then(|| Self { path: path.to_owned() })
    }

    fn free_bytes(&self) -> u64 {
        let output = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .nth(1)
            .and_then(|line| line.trim().parse().ok())
            .unwrap_or_else(|| panic!("df output: {}", String::from_utf8_lossy(&output.stdout)))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Send the next `per_session` new messages of every session plus whatever
/// is unacked; return the answers and feed them back to the sessions.
async fn round(
    client: &AmClient,
    sessions: &mut [ProviderSession],
    per_session: usize,
    answers_seen: &mut HashMap<MessageId, Vec<AckStatus>>,
) -> HashMap<MessageId, AckStatus> {
    let mut outgoing: Vec<_> = sessions.iter().flat_map(|session| session.unacked().cloned()).collect();
    let now = acct_tests::now_ms();
    for _ in 0..per_session {
        for session in sessions.iter_mut() {
            if session.unacked().count() >= 200 {
                continue;
            }
            let usage = Usage {
                units: Some(1),
                interval_ms: Some((now - 1000, now)),
                ..Usage::default()
            };
            outgoing.push(session.account(AccountingKind::INTERIM, usage).unwrap());
        }
    }
    let answers = send_all(client, &outgoing).await;
    for session in sessions.iter_mut() {
        let session_id = session.session_id();
        for message in outgoing
            .iter()
            .filter(|message| message.value().session_id == session_id)
        {
            let id = message.value().message_id();
            let status = answers[&id];
            answers_seen.entry(id).or_default().push(status);
            let _: AckOutcome = session.on_ack(&wire::AckEntry { message_id: id, status });
        }
    }
    answers
}

#[test]
fn disk_full_answers_out_of_space_and_recovers_without_restart() {
    if !is_root() {
        assert!(
            std::env::var_os("ACCT_REQUIRE_ROOT_TESTS").is_none(),
            "this test needs root to mount a tmpfs"
        );
        println!("skipped: mounting a tmpfs needs root");
        return;
    }
    let pki = TestPki::new(1, 1);
    let tmpfs = Tmpfs::mount(&pki.data().join("db"), TMPFS_MIB).expect("mount a tmpfs (root)");
    let am = AmProcess::start(pki.data(), &["--no-export"]);
    let rt = runtime();
    let mut answers_seen: HashMap<MessageId, Vec<AckStatus>> = HashMap::new();

    rt.block_on(async {
        let admin = AmClient::connect(am.address, &pki.identity(Role::AccountingManager, "am-1"))
            .await
            .unwrap();
        let mut sessions = open_sessions(&pki, &admin, "provider-0001", SESSIONS).await;
        admin.close().await;
        let client = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0001"))
            .await
            .unwrap();
        // Some traffic first, then the ballast leaves only a little room.
        let answers = round(&client, &mut sessions, 10, &mut answers_seen).await;
        assert!(
            answers.values().all(|status| *status == AckStatus::STORED),
            "{answers:?}"
        );
        let ballast = tmpfs.path.join("ballast");
        let fill = tmpfs.free_bytes().saturating_sub(FREE_AFTER_BALLAST_MIB << 20);
        std::fs::write(&ballast, vec![0u8; fill as usize]).unwrap();

        // Send until the disk is full: explicit OUT_OF_SPACE answers.
        let mut out_of_space = 0usize;
        let mut rounds = 0usize;
        while out_of_space == 0 {
            assert!(rounds < ROUNDS_MAX, "the disk never filled after {rounds} rounds");
            rounds += 1;
            let answers = round(&client, &mut sessions, PER_SESSION_PER_ROUND, &mut answers_seen).await;
            for status in answers.values() {
                match *status {
                    AckStatus::STORED | AckStatus::DUPLICATE => {}
                    AckStatus::OUT_OF_SPACE => out_of_space += 1,
                    other => panic!("unexpected answer while the disk fills: {other:?}"),
                }
            }
        }
        println!("disk full after {rounds} rounds: {out_of_space} OUT_OF_SPACE answers");
        // While full, the answer stays explicit.
        let answers = round(&client, &mut sessions, 5, &mut answers_seen).await;
        assert!(
            answers
                .values()
                .all(|status| *status == AckStatus::OUT_OF_SPACE || status.is_stored()),
            "answers while full: {answers:?}"
        );

        // Space returns: ingest resumes by itself (bounded wait), the same
        // process, the same connection or a new one.
        std::fs::remove_file(&ballast).unwrap();
        let started = Instant::now();
        let mut recovered = false;
        while started.elapsed() < Duration::from_secs(90) {
            let answers = round(&client, &mut sessions, 5, &mut answers_seen).await;
            if !answers.is_empty() && answers.values().all(|status| status.is_stored()) {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(recovered, "ingest did not resume within 90 s of space returning");
        println!("resumed {:.1} s after space returned", started.elapsed().as_secs_f64());
        // Everything unacked is now stored.
        let answers = round(&client, &mut sessions, 0, &mut answers_seen).await;
        assert!(answers.values().all(|status| status.is_stored()));
        assert!(sessions.iter().all(|session| session.unacked().count() == 0));
        client.close().await;
    });
    assert!(am.terminate(Duration::from_secs(30)), "acct serve did not exit cleanly");

    // Nothing corrupted: the store opens, every message acked as stored is
    // there exactly once, nothing else is.
    let stored = stored_messages(pki.data());
    let unique: HashSet<MessageId> = stored.iter().copied().collect();
    assert_eq!(unique.len(), stored.len(), "a message is stored twice");
    let acked: HashSet<MessageId> = answers_seen
        .iter()
        .filter(|(_, statuses)| statuses.iter().any(|status| status.is_stored()))
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(unique, acked, "stored messages differ from those acked as stored");
    let never_stored = answers_seen.len() - acked.len();
    assert_eq!(never_stored, 0, "every message was retried until stored");
    println!("{} messages stored once each", unique.len());
    drop(tmpfs);
}
