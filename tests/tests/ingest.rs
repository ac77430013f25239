//! The AM's ingest path end to end: a real `acct serve` process, real QUIC
//! on 127.0.0.1, real RocksDB in a temp dir.

use std::collections::HashSet;
use std::time::Duration;

use acct_tests::{AmProcess, TestPki, now_ms, open_sessions, runtime, send_all};
use peer::quic::AmClient;
use wire::{AccountingKind, AckStatus, MessageId, Role, Usage};

fn usage(now: u64, units: u64) -> Usage {
    Usage {
        units: Some(units),
        bytes_up: Some(100),
        bytes_down: Some(1000),
        duration_ms: None,
        interval_ms: Some((now - 60_000, now)),
        custom: Vec::new(),
    }
}

#[test]
fn ten_thousand_messages_stored_once_and_duplicates_acked() {
    let pki = TestPki::new(2, 2);
    let metrics_port = acct_tests::free_tcp_port();
    let metrics_address = format!("127.0.0.1:{metrics_port}");
    let am = AmProcess::start(pki.data(), &["--metrics", &metrics_address]);
    let rt = runtime();
    let messages = rt.block_on(async {
        let admin = AmClient::connect(am.address, &pki.identity(Role::AccountingManager, "am-1"))
            .await
            .unwrap();
        let mut sessions = open_sessions(&pki, &admin, "provider-0001", 20).await;
        admin.close().await;
        let client = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0001"))
            .await
            .unwrap();
        let now = now_ms();
        let mut messages = Vec::with_capacity(10_000);
        for round in 0..500 {
            for session in &mut sessions {
                let kind = if round == 499 {
                    AccountingKind::FINAL
                } else {
                    AccountingKind::INTERIM
                };
                messages.push(session.account(kind, usage(now, 1 + round)).unwrap());
            }
        }
        let first = send_all(&client, &messages).await;
        assert_eq!(first.len(), 10_000);
        assert!(
            first.values().all(|status| *status == AckStatus::STORED),
            "{:?}",
            first
                .values()
                .filter(|s| **s != AckStatus::STORED)
                .take(3)
                .collect::<Vec<_>>()
        );
        let again = send_all(&client, &messages).await;
        assert_eq!(again.len(), 10_000);
        assert!(again.values().all(|status| *status == AckStatus::DUPLICATE));
        client.close().await;
        messages
    });
    let metrics = acct_tests::http_get(metrics_port, "/metrics");
    for expected in [
        "acct_messages_total{outcome=\"stored\"} 10000",
        "acct_messages_total{outcome=\"duplicate\"} 10000",
        "acct_commit_group_messages",
        "acct_verify_batch_messages",
        "acct_verify_queue_seconds",
        "acct_commit_seconds",
        "acct_ingest_wait_seconds",
        "acct_udp_receive_queue_bytes",
        "acct_sessions 20",
    ] {
        assert!(metrics.contains(expected), "metrics lack {expected}:\n{metrics}");
    }
    assert!(
        am.terminate(Duration::from_secs(30)),
        "acct serve did not exit cleanly on SIGTERM"
    );
    // SIGTERM exported every committed record: hot store and cold storage
    // together hold each message once.
    let stored = acct_tests::stored_messages(pki.data());
    assert_eq!(stored.len(), 10_000);
    let ids: HashSet<MessageId> = stored.into_iter().collect();
    assert_eq!(ids.len(), 10_000, "a message is stored twice");
    let sent: HashSet<MessageId> = messages.iter().map(|message| message.value().message_id()).collect();
    assert_eq!(ids, sent);
}
