//! Floods of handshakes from another address cannot lock honest providers
//! out: handshakes started and abandoned are bounded in all and per address
//! (an unfinished one is dropped after 10 s), and an address whose
//! handshakes keep ending in a refused identity is dropped unanswered for a
//! while.

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
    // The flood reaches the per-address bound: the AM refuses the excess
    // before any cryptography.
    let refused = wait_until(Duration::from_secs(15), || {
        http_get(metrics_port, "/metrics").contains("reason=\"handshakes_per_address\"")
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
    // next attempts get no answer, before any cryptography.
    let dropped = wait_until(Duration::from_secs(30), || {
        http_get(metrics_port, "/metrics").contains("reason=\"address_backoff\"")
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
