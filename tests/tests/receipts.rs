//! Session receipts end to end: a real `acct serve` on 127.0.0.1, a
//! `ProviderNode` that gets the AM's receipt pushed when a session's Final
//! is stored, users asking for receipts with the session key, an AM
//! SIGKILLed mid-session (the receipt state is in the store), and
//! `acct audit --receipts` checking them against the exported Parquet.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use acct_tests::{AmProcess, TestPki, credential_request, now_ms, open_sessions, runtime, send_all};
use peer::net::UserClient;
use peer::node::ProviderNode;
use peer::quic::{AmClient, ClientError};
use wire::{AccountingKind, AckStatus, CounterName, CustomCounter, ErrorCode, Role, SessionReceipt, Signed, Usage};

/// A message's usage: varied, with the `requests` counter.
fn usage(count: u64) -> Usage {
    let now = now_ms();
    Usage {
        units: Some(count * 7),
        bytes_up: Some(100 + count),
        bytes_down: None,
        duration_ms: Some(1_000),
        interval_ms: Some((now - 60_000, now)),
        custom: vec![CustomCounter {
            name: CounterName::new("requests").unwrap(),
            value: 1,
        }],
    }
}

/// `acct audit COLD --ca CA --receipts DIR`: success and what it printed.
fn audit_receipts(pki: &TestPki, cold: &Path, receipts: &Path) -> (bool, String) {
    acct_tests::audit(pki, cold, &["--receipts", &receipts.display().to_string()])
}

fn write_receipt(folder: &Path, name: &str, receipt: &Signed<SessionReceipt>) {
    std::fs::create_dir_all(folder).unwrap();
    std::fs::write(folder.join(format!("{name}.receipt")), receipt.body()).unwrap();
}

/// The provider gets each closed session's receipt pushed, the user asks
/// for the same one; a live session's receipt states what is stored so
/// far; and all of them match the archive once exported.
#[test]
fn receipts_are_pushed_to_the_provider_given_to_the_user_and_match_the_archive() {
    let pki = TestPki::new(1, 1);
    let am = AmProcess::start(pki.data(), &["--export-interval-ms", "100"]);
    let am_key = pki.am_key();
    let ca = pki.ca_der();
    let receipts = pki.data().join("receipts");
    runtime().block_on(async {
        let node = ProviderNode::start(
            am.address,
            pki.identity(Role::Provider, "provider-0001"),
            am_key,
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        // Three sessions of user-0001 with service 1 (provider-0001's):
        // each User Credential is pushed to the node.
        let user = UserClient::connect(am.address, &ca).await.unwrap();
        let mut sessions = Vec::new();
        for _ in 0..3 {
            let credential = user.request_credential(&credential_request(&pki, 1)).await.unwrap();
            let session = credential.value().session_id;
            assert_eq!(node.next_credential(Duration::from_secs(10)).await, Some(session));
            sessions.push(session);
        }
        let key_of = |session| node.credential(session).unwrap().value().session_key.clone();
        // Two interims each, then a receipt of the live first session.
        for session in &sessions {
            for count in 1..=2 {
                node.account(*session, AccountingKind::INTERIM, usage(count)).unwrap();
            }
        }
        let delivery = node.deliver(Duration::from_secs(30)).await.unwrap();
        assert_eq!(delivery.stored, 6, "{delivery:?}");
        let live = user
            .request_receipt(sessions[0], &key_of(sessions[0]), &am_key)
            .await
            .unwrap();
        assert_eq!(live.value().message_count, 2);
        assert_eq!(live.value().highest_sequence, 2);
        assert!(!live.value().final_stored);
        assert_eq!(live.value().sums.units, 7 + 14);
        assert_eq!(live.value().sums.requests, 2);
        write_receipt(&receipts, "live", &live);
        // A wrong session key and an unknown session: refused alike.
        for (session, key) in [
            (sessions[0], wire::SessionKey([9; 32])),
            (
                wire::SessionId([0x00, 0x01, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7]),
                key_of(sessions[0]),
            ),
        ] {
            match user.request_receipt(session, &key, &am_key).await {
                Err(ClientError::Refused(error)) => assert_eq!(error.code, ErrorCode::SESSION_REFUSED),
                other => panic!("{other:?}"),
            }
        }
        // Then the rest and the Finals.
        for session in &sessions {
            node.account(*session, AccountingKind::INTERIM, usage(3)).unwrap();
            node.account(*session, AccountingKind::FINAL, usage(4)).unwrap();
        }
        let delivery = node.deliver(Duration::from_secs(30)).await.unwrap();
        assert_eq!(delivery.stored, 6, "{delivery:?}");
        for (index, session) in sessions.iter().enumerate() {
            let pushed = node
                .wait_receipt(*session, Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("no receipt pushed for {session}"));
            let value = pushed.value();
            assert_eq!(value.message_count, 4);
            assert_eq!(value.highest_sequence, 4);
            assert!(value.final_stored);
            assert_eq!(value.sums.units, 7 * (1 + 2 + 3 + 4));
            assert_eq!(value.sums.bytes_up, 400 + 10);
            assert_eq!(value.sums.duration_ms, 4_000);
            assert_eq!(value.sums.requests, 4);
            assert_eq!(value.provider.as_str(), "provider-0001");
            assert_eq!(value.node.as_str(), "am-1");
            let asked = user
                .request_receipt(*session, &key_of(*session), &am_key)
                .await
                .unwrap();
            assert_eq!(
                SessionReceipt {
                    issued_ms: 0,
                    ..asked.value().clone()
                },
                SessionReceipt {
                    issued_ms: 0,
                    ..value.clone()
                }
            );
            write_receipt(&receipts, &format!("final-{index}"), &pushed);
        }
        assert_eq!(node.take_receipts().len(), 3);
        user.close().await;
        node.stop().await;
    });
    assert!(am.terminate(Duration::from_secs(60)));
    let cold = pki.data().join("cold");
    let (ok, output) = audit_receipts(&pki, &cold, &receipts);
    assert!(ok, "{output}");
    assert!(output.contains("4 receipts checked against the archive"), "{output}");

    // A receipt with its sums changed and re-signed by an impostor (an
    // `am-1` of another CA): refused.
    let impostor = TestPki::new(0, 0);
    let rogue = impostor.identity(Role::AccountingManager, "am-1");
    let genuine =
        Signed::<SessionReceipt>::decode_body(std::fs::read(receipts.join("final-0.receipt")).unwrap().into()).unwrap();
    let forged = Signed::sign(
        SessionReceipt {
            sums: wire::UsageSums {
                units: 1,
                ..genuine.value().sums
            },
            ..genuine.value().clone()
        },
        &rogue.signing_key,
    )
    .unwrap();
    let forged_folder = pki.data().join("forged-receipts");
    write_receipt(&forged_folder, "forged", &forged);
    let (ok, output) = audit_receipts(&pki, &cold, &forged_folder);
    assert!(!ok, "{output}");
    assert!(output.contains("its signature does not verify"), "{output}");

    // Genuine receipts against an archive that lost rows: each differs.
    let damaged = pki.data().join("damaged-cold");
    let status = Command::new("cp").arg("-r").arg(&cold).arg(&damaged).status().unwrap();
    assert!(status.success());
    for path in archive::parquet_files(&damaged).unwrap() {
        std::fs::remove_file(path).unwrap();
    }
    let (ok, output) = audit_receipts(&pki, &damaged, &receipts);
    assert!(!ok, "{output}");
    assert!(output.contains("messages: receipt 4, archive 0"), "{output}");
    assert!(output.contains("messages: receipt 2, archive 0"), "{output}");
}

/// The receipt state is durable with the messages: an AM SIGKILLed after
/// two messages and restarted gives receipts whose count, sums and digest
/// match the exported rows, also when an interim numbered below the Final
/// is stored after it.
#[test]
fn a_receipt_after_a_crash_states_every_stored_message() {
    let pki = TestPki::new(1, 0);
    let am = AmProcess::start(pki.data(), &["--export-interval-ms", "3600000"]);
    let am_key = pki.am_key();
    let (session_id, session_key, rest) = runtime().block_on(async {
        let admin = AmClient::connect(am.address, &pki.identity(Role::AccountingManager, "am-1"))
            .await
            .unwrap();
        let mut sessions = open_sessions(&pki, &admin, "provider-0001", 1).await;
        admin.close().await;
        let session = &mut sessions[0];
        let first: Vec<_> = (1..=2)
            .map(|count| session.account(AccountingKind::INTERIM, usage(count)).unwrap())
            .collect();
        let rest: Vec<_> = vec![
            session.account(AccountingKind::INTERIM, usage(3)).unwrap(),
            session.account(AccountingKind::FINAL, usage(4)).unwrap(),
        ];
        let client = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0001"))
            .await
            .unwrap();
        let answers = send_all(&client, &first).await;
        assert!(
            answers.values().all(|status| *status == AckStatus::STORED),
            "{answers:?}"
        );
        client.close().await;
        (
            session.session_id(),
            session.credential().value().session_key.clone(),
            rest,
        )
    });
    am.kill();
    let am = AmProcess::start(pki.data(), &["--export-interval-ms", "100"]);
    // The Final first, then the interim numbered below it (accepted after
    // the Final): a receipt after each.
    let (at_final, after_late) = runtime().block_on(async {
        let client = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0001"))
            .await
            .unwrap();
        let user = UserClient::connect(am.address, &pki.ca_der()).await.unwrap();
        let mut receipts = Vec::new();
        for message in [&rest[1], &rest[0]] {
            let answers = send_all(&client, std::slice::from_ref(message)).await;
            assert!(
                answers.values().all(|status| *status == AckStatus::STORED),
                "{answers:?}"
            );
            receipts.push(user.request_receipt(session_id, &session_key, &am_key).await.unwrap());
        }
        client.close().await;
        user.close().await;
        let after_late = receipts.pop().unwrap();
        (receipts.pop().unwrap(), after_late)
    });
    assert_eq!(at_final.value().message_count, 3);
    assert!(at_final.value().final_stored);
    assert_eq!(at_final.value().highest_sequence, 4);
    assert_eq!(after_late.value().message_count, 4);
    assert_eq!(after_late.value().sums.units, 7 * 10);
    assert!(am.terminate(Duration::from_secs(60)));
    let receipts = pki.data().join("receipts");
    write_receipt(&receipts, "at-final", &at_final);
    write_receipt(&receipts, "after-late-interim", &after_late);
    let (ok, output) = audit_receipts(&pki, &pki.data().join("cold"), &receipts);
    assert!(ok, "{output}");
    assert!(output.contains("2 receipts checked against the archive"), "{output}");
    assert!(
        output.contains("1 of them were issued before their session's last stored message"),
        "{output}"
    );
}
