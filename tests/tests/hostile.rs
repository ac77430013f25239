//! A flood of QUIC handshakes started and abandoned (from another address)
//! cannot lock honest providers out: handshakes in progress are bounded in
//! all and per address, and an unfinished one is dropped after 10 s.

use std::process::{Command, Stdio};
use std::time::Duration;

use acct_tests::{AmProcess, TestPki, binary, http_get, open_sessions, runtime, send_all, wait_until};
use peer::quic::AmClient;
use wire::{AccountingKind, AckStatus, Role, Usage};

#[test]
fn abandoned_handshakes_do_not_lock_out_honest_providers() {
    let pki = TestPki::new(1, 0);
    let metrics_port = acct_tests::free_tcp_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let am = AmProcess::start(pki.data(), &["--no-export", "--metrics", &metrics]);
    let mut attacker = Command::new(binary("attacker"))
        .args(["--am", &am.address.to_string()])
        .arg("--pki")
        .arg(pki.pki())
        .args(["--attack", "half-open", "--duration", "20", "--bind", "127.0.0.2"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("starting the attacker: {error}"));
    // The flood reaches the per-address bound: the AM refuses the excess
    // before any cryptography.
    let refused = wait_until(Duration::from_secs(15), || {
        http_get(metrics_port, "/metrics").contains("reason=\"handshakes_per_address\"")
    });
    // Meanwhile an honest provider (from 127.0.0.1) connects and is served.
    let rt = runtime();
    let answers = rt.block_on(async {
        let admin = AmClient::connect(am.address, &pki.identity(Role::AccountingManager, "am-1"))
            .await
            .unwrap();
        let mut sessions = open_sessions(&pki, &admin, "provider-0001", 2).await;
        admin.close().await;
        let client = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0001"))
            .await
            .unwrap();
        let now = acct_tests::now_ms();
        let messages: Vec<_> = (0..100)
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
    });
    let _ = attacker.kill();
    let _ = attacker.wait();
    assert!(refused, "the flood never reached the per-address bound");
    assert_eq!(answers.len(), 100);
    assert!(answers.values().all(|status| *status == AckStatus::STORED));
    assert!(am.terminate(Duration::from_secs(30)));
}
