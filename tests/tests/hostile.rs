//! Floods of handshakes from another address cannot lock honest providers
//! out: handshakes started and abandoned are bounded in all and per address
//! (an unfinished one is dropped after 10 s), and an address whose
//! handshakes keep ending in a refused identity is dropped unanswered for a
//! while. A provider whose packets carry a byte each is cut off, and so is
//! one that replays its stored ids with changed content.

use std::process::{Command, Stdio};
use std::time::Duration;

use acct_tests::{AmProcess, TestPki, binary, http_get, open_sessions, runtime, send_all, set_denied, wait_until};
use peer::quic::AmClient;
use wire::{AccountingKind, AckStatus, Role, Usage};

#[test]
fn abandoned_handshakes_do_not_lock_out_honest_providers() {
    let pki = TestPki::new(1, 0);
    let metrics_port = acct_tests::free_tcp_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let am = AmProcess::start(pki.data(), &["--no-export", "--metrics", &metrics]);
    let mut attacker = start_attacker(&pki, &am, "half-open", 20, Stdio::null());
    // The flood reaches the per-address bound: the AM drops the excess as
    // it comes off the socket, before any cryptography.
    let refused = wait_until(Duration::from_secs(15), || {
        http_get(metrics_port, "/metrics").contains("acct_initials_dropped_total{reason=\"handshakes_per_address\"}")
    });
    // Meanwhile an honest provider (from 127.0.0.1) connects and is served.
    let answers = honest_provider_sends(&pki, &am, 100);
    let _ = attacker.kill();
    let _ = attacker.wait();
    assert!(refused, "the flood never reached the per-address bound");
    assert_eq!(answers.len(), 100);
    assert!(answers.values().all(|status| *status == AckStatus::STORED));
    assert!(am.terminate(Duration::from_secs(30)));
}

#[test]
fn a_revoked_provider_reconnecting_in_a_loop_is_dropped_unanswered() {
    let pki = TestPki::new(1, 0);
    let config = pki.pki().join("acct.toml");
    // The attacker's certificate (minted by the attacker) is denied by name.
    set_denied(&config, &["provider-9999".to_owned()]);
    let metrics_port = acct_tests::free_tcp_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let am = AmProcess::start(
        pki.data(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--no-export",
            "--metrics",
            &metrics,
        ],
    );
    let attacker = start_attacker(&pki, &am, "revoked", 8, Stdio::piped());
    // After its free strikes the attacker's address is in a backoff: its
    // next attempts are dropped as they come off the socket, unanswered.
    let dropped = wait_until(Duration::from_secs(30), || {
        http_get(metrics_port, "/metrics").contains("acct_initials_dropped_total{reason=\"address_backoff\"}")
    });
    // Meanwhile an honest provider, from another address, is served.
    let answers = honest_provider_sends(&pki, &am, 100);
    let output = attacker.wait_with_output().unwrap();
    assert!(dropped, "the revoked provider's address was never backed off");
    assert_eq!(answers.len(), 100);
    assert!(answers.values().all(|status| *status == AckStatus::STORED));
    // Without the address backoff it completes a handshake every few
    // milliseconds (hundreds in 8 s); with it, the 8 free ones and the few
    // that end a backoff (1 s, 2 s, 4 s).
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let handshakes = report["connections"].as_u64().unwrap();
    assert!(
        (8..=20).contains(&handshakes),
        "{handshakes} handshakes completed by the revoked provider: {report}"
    );
    assert!(am.terminate(Duration::from_secs(30)));
}

/// The attacker binary running `attack` for `seconds` from 127.0.0.2.
fn start_attacker(pki: &TestPki, am: &AmProcess, attack: &str, seconds: u32, stdout: Stdio) -> std::process::Child {
    Command::new(binary("attacker"))
        .args(["--am", &am.address.to_string()])
        .arg("--pki")
        .arg(pki.pki())
        .args([
            "--attack",
            attack,
            "--duration",
            &seconds.to_string(),
            "--bind",
            "127.0.0.2",
        ])
        .stdout(stdout)
        .spawn()
        .unwrap_or_else(|error| panic!("starting the attacker: {error}"))
}

/// provider-0001, from 127.0.0.1, opens 2 sessions and sends `count`
/// messages; its answers.
fn honest_provider_sends(
    pki: &TestPki,
    am: &AmProcess,
    count: usize,
) -> std::collections::HashMap<wire::MessageId, AckStatus> {
    runtime().block_on(async {
        let admin = AmClient::connect(am.address, &pki.identity(Role::AccountingManager, "am-1"))
            .await
            .unwrap();
        let mut sessions = open_sessions(pki, &admin, "provider-0001", 2).await;
        admin.close().await;
        let client = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0001"))
            .await
            .unwrap();
        let now = acct_tests::now_ms();
        let messages: Vec<_> = (0..count)
            .map(|index| {
                sessions[index % 2]
                    .account(
                        AccountingKind::INTERIM,
                        Usage {
                            units: Some(1),
                            interval_ms: Some((now - 1000, now)),
                            ..Usage::default()
                        },
                    )
                    .unwrap()
            })
            .collect();
        let answers = send_all(&client, &messages).await;
        client.close().await;
        answers
    })
}

/// Run `attack` for 8 s against a fresh AM while an honest provider (from
/// another address) sends 100 messages. Asserts that the AM cut the
/// attacker off for `reason` (the `acct_connections_abusive_total` label,
/// and `close` in the close reason the attacker saw) and that every honest
/// message was STORED; returns what the attacker got.
fn cut_off_while_an_honest_provider_is_served(attack: &str, reason: &str, close: &str) -> serde_json::Value {
    let pki = TestPki::new(1, 0);
    let metrics_port = acct_tests::free_tcp_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let am = AmProcess::start(pki.data(), &["--no-export", "--metrics", &metrics]);
    let attacker = start_attacker(&pki, &am, attack, 8, Stdio::piped());
    let label = format!("reason=\"{reason}\"");
    let cut = wait_until(Duration::from_secs(30), || {
        http_get(metrics_port, "/metrics").contains(&label)
    });
    let answers = honest_provider_sends(&pki, &am, 100);
    let output = attacker.wait_with_output().unwrap();
    assert!(cut, "{attack}: never cut off for {reason}");
    assert_eq!(answers.len(), 100);
    assert!(answers.values().all(|status| *status == AckStatus::STORED));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let answered = report["answers"].as_object().unwrap();
    assert!(answered.keys().any(|answer| answer.contains(close)), "{report}");
    assert!(am.terminate(Duration::from_secs(30)));
    report
}

#[test]
fn a_provider_writing_a_byte_per_packet_is_cut_off() {
    // 2,048 datagrams of a byte each on a connection: it is closed (code 7).
    // The honest provider's packets carry whole messages: not judged.
    let report =
        cut_off_while_an_honest_provider_is_served("split-frames", "tiny_packets", "too many tiny packets (code 7)");
    // The attacker's packets did carry a byte each.
    let datagrams = report["answers"]["datagrams sent"].as_u64().unwrap();
    let bytes = report["answers"]["bytes written"].as_u64().unwrap();
    assert!(datagrams * 2 >= bytes, "{datagrams} datagrams for {bytes} bytes");
}

#[test]
fn a_provider_replaying_its_ids_with_changed_content_is_cut_off() {
    // The attacker stores 64 messages, then sends them again and again,
    // each round with changed content under the same ids.
    let report = cut_off_while_an_honest_provider_is_served(
        "replay-changed",
        "conflicting_duplicates",
        "too many conflicting duplicates (code 10)",
    );
    // Cut off after about 1,024 of them, then backed off: not the hundreds
    // of thousands it sends in 8 s unchecked (release build).
    let conflicting = report["answers"]["AckStatus(36)"].as_u64().unwrap();
    assert!((1_025..=20_000).contains(&conflicting), "{report}");
}

#[test]
fn one_provider_cannot_take_every_connection_slot() {
    let pki = TestPki::new(2, 0);
    let am = AmProcess::start(pki.data(), &["--no-export"]);
    runtime().block_on(async {
        let greedy = pki.identity(Role::Provider, "provider-0001");
        let mut held = Vec::new();
        for _ in 0..64 {
            held.push(AmClient::connect(am.address, &greedy).await.unwrap());
        }
        // The 65th completes its handshake and is closed at once (code 8).
        let extra = AmClient::connect(am.address, &greedy).await.unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(10), extra.connection_handle().closed())
            .await
            .expect("the 65th connection was not closed");
        assert!(
            matches!(&reason, quinn::ConnectionError::ApplicationClosed(close) if close.error_code == quinn::VarInt::from_u32(8)),
            "{reason}"
        );
        // Another provider still gets in and stays.
        let other = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0002"))
            .await
            .unwrap();
        assert!(!closed_within(&other, Duration::from_millis(500)).await);
        other.close().await;
        // The held ones were never disturbed; closing one frees its slot.
        assert!(held.iter().all(|client| client.connection_handle().close_reason().is_none()));
        held.pop().unwrap().close().await;
        let again = wait_for_slot(&am, &greedy).await;
        assert!(again, "a freed slot was not given to the provider again");
        for client in held {
            client.close().await;
        }
    });
    assert!(am.terminate(Duration::from_secs(30)));
}

/// Whether the AM closes `client`'s connection within `bound` (the AM closes
/// a refused one right after the handshake).
async fn closed_within(client: &AmClient, bound: Duration) -> bool {
    tokio::time::timeout(bound, client.connection_handle().closed())
        .await
        .is_ok()
}

/// Connect as `identity` until a connection is not closed within 300 ms (the
/// AM frees a closed connection's slot when it notices the close): at most 20
/// tries.
async fn wait_for_slot(am: &AmProcess, identity: &peer::quic::ClientIdentity) -> bool {
    for _ in 0..20 {
        let client = AmClient::connect(am.address, identity).await.unwrap();
        let open = !closed_within(&client, Duration::from_millis(300)).await;
        client.close().await;
        if open {
            return true;
        }
    }
    false
}
