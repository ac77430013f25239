//! Bad input to a real AM, each answered with its typed error while the
//! other streams and connections keep working.

use std::time::Duration;

use acct_tests::{AmProcess, TestPki, now_ms, open_policy, runtime};
use bytes::BytesMut;
use peer::provider::ProviderSession;
use peer::quic::{AccountingStream, AmClient, ClientIdentity, Received};
use wire::{
    Accounting, AccountingKind, AckEntry, AckStatus, Address, AdminOpenSession, DataFields, ErrorCode, Name, Role,
    ServiceId, SessionId, Signed, Usage,
};

const WAIT: Duration = Duration::from_secs(30);

fn usage(now: u64) -> Usage {
    Usage {
        units: Some(3),
        interval_ms: Some((now - 1000, now)),
        ..Usage::default()
    }
}

async fn open(pki: &TestPki, admin: &AmClient, provider: &str, required: DataFields) -> ProviderSession {
    let mut policy = open_policy(now_ms());
    policy.required_data = required;
    let credential = admin
        .open_session(&AdminOpenSession {
            provider: Name::new(provider).unwrap(),
            service_id: ServiceId(1),
            user_id: Name::new("user-0001").unwrap(),
            user_address: Address::new("127.0.0.1:5000").unwrap(),
            policy,
        })
        .await
        .unwrap();
    ProviderSession::accept(
        credential,
        &pki.am_key(),
        pki.identity(Role::Provider, provider).signing_key,
    )
    .unwrap()
}

/// Send messages on a fresh stream and collect exactly one ack per message.
async fn exchange(client: &AmClient, messages: &[Signed<Accounting>]) -> Vec<AckEntry> {
    let AccountingStream {
        mut sender,
        mut receiver,
    } = client.open_accounting().await.unwrap();
    sender.send(messages).await.unwrap();
    let mut entries = Vec::new();
    while entries.len() < messages.len() {
        match tokio::time::timeout(WAIT, receiver.next()).await {
            Ok(Ok(Some(Received::Acks(more)))) => entries.extend(more),
            other => panic!("waiting for acks: {other:?}"),
        }
    }
    let _ = sender.finish();
    entries
}

/// Send one message and return its answer.
async fn single(client: &AmClient, message: &Signed<Accounting>) -> AckStatus {
    status_of(&exchange(client, std::slice::from_ref(message)).await, message)
}

fn status_of(entries: &[AckEntry], message: &Signed<Accounting>) -> AckStatus {
    entries
        .iter()
        .find(|entry| entry.message_id == message.value().message_id())
        .map(|entry| entry.status)
        .unwrap_or_else(|| panic!("no ack for {:?}", message.value().message_id()))
}

/// Send raw bytes on a fresh stream and return the Error the AM answers.
async fn raw_error(client: &AmClient, bytes: &[u8]) -> wire::ErrorMessage {
    let AccountingStream {
        mut sender,
        mut receiver,
    } = client.open_accounting().await.unwrap();
    sender.send_raw(bytes).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, receiver.next()).await {
            Ok(Ok(Some(Received::Error(error)))) => return error,
            Ok(Ok(Some(Received::Acks(_)))) => continue,
            other => panic!("waiting for an error: {other:?}"),
        }
    }
}

#[test]
fn bad_input_gets_typed_answers_and_the_rest_keeps_working() {
    let pki = TestPki::new(2, 1);
    let am = AmProcess::start(pki.data(), &[]);
    runtime().block_on(async {
        let admin = AmClient::connect(am.address, &pki.identity(Role::AccountingManager, "am-1"))
            .await
            .unwrap();
        let mut mine = open(&pki, &admin, "provider-0001", DataFields::UNITS).await;
        let mut theirs = open(&pki, &admin, "provider-0002", DataFields::NONE).await;
        let mut strict = open(
            &pki,
            &admin,
            "provider-0001",
            DataFields::UNITS.union(DataFields::BYTES_UP),
        )
        .await;
        let client = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0001"))
            .await
            .unwrap();
        let now = now_ms();

        // A bad signature in a batch of good ones: only it is refused.
        let mut batch: Vec<Signed<Accounting>> = (0..20)
            .map(|_| mine.account(AccountingKind::INTERIM, usage(now)).unwrap())
            .collect();
        let forged = {
            let mut body = batch[7].body().to_vec();
            let last = body.len() - 10;
            body[last] ^= 0x40;
            Signed::<Accounting>::decode_body(body.into()).unwrap()
        };
        batch[7] = forged.clone();
        let acks = exchange(&client, &batch).await;
        for (index, message) in batch.iter().enumerate() {
            let expected = if index == 7 {
                AckStatus::BAD_SIGNATURE
            } else {
                AckStatus::STORED
            };
            assert_eq!(status_of(&acks, message), expected, "message {index}");
        }

        // A session issued to another provider.
        let other = theirs.account(AccountingKind::INTERIM, usage(now)).unwrap();
        let as_mine: Signed<Accounting> = Signed::sign(
            other.value().clone(),
            &pki.identity(Role::Provider, "provider-0001").signing_key,
        )
        .unwrap();
        assert_eq!(single(&client, &as_mine).await, AckStatus::WRONG_PROVIDER);

        // An unknown session.
        let mut unknown = mine
            .account(AccountingKind::INTERIM, usage(now))
            .unwrap()
            .value()
            .clone();
        unknown.session_id = SessionId([0xee; 16]);
        let unknown = Signed::sign(unknown, &pki.identity(Role::Provider, "provider-0001").signing_key).unwrap();
        assert_eq!(single(&client, &unknown).await, AckStatus::UNKNOWN_SESSION);

        // A required field missing.
        let missing = strict.account(AccountingKind::INTERIM, usage(now)).unwrap();
        assert_eq!(single(&client, &missing).await, AckStatus::MISSING_ACCOUNTING_DATA);

        // Same message id, other content.
        let stored = &batch[0];
        let mut changed = stored.value().clone();
        changed.usage.units = Some(999);
        let changed = Signed::sign(changed, &pki.identity(Role::Provider, "provider-0001").signing_key).unwrap();
        let acks = exchange(&client, &[stored.clone(), changed.clone()]).await;
        assert_eq!(acks.len(), 2);
        assert!(acks.iter().any(|entry| entry.status == AckStatus::DUPLICATE));
        assert!(
            acks.iter()
                .any(|entry| entry.status == AckStatus::CONFLICTING_DUPLICATE)
        );

        // A message after the Final Accounting.
        let last = mine.account(AccountingKind::FINAL, usage(now)).unwrap();
        assert_eq!(single(&client, &last).await, AckStatus::STORED);
        let mut after = last.value().clone();
        after.sequence += 1;
        after.kind = AccountingKind::INTERIM;
        let after = Signed::sign(after, &pki.identity(Role::Provider, "provider-0001").signing_key).unwrap();
        assert_eq!(single(&client, &after).await, AckStatus::SESSION_CLOSED);

        // A malformed frame and an oversized one: typed errors, stream closed.
        let error = raw_error(&client, &[1, 6, 0, 0, 0, 3, 1, 2, 3]).await;
        assert_eq!(error.code, ErrorCode::MALFORMED_FRAME);
        let error = raw_error(&client, &[1, 6, 0, 0x10, 0, 0]).await;
        assert_eq!(error.code, ErrorCode::FRAME_TOO_LARGE);
        let error = raw_error(&client, &[9, 6, 0, 0, 0, 0]).await;
        assert_eq!(error.code, ErrorCode::UNSUPPORTED_VERSION);
        let mut admin_frame = BytesMut::new();
        AdminOpenSession {
            provider: Name::new("provider-0001").unwrap(),
            service_id: ServiceId(1),
            user_id: Name::new("x").unwrap(),
            user_address: Address::new("a").unwrap(),
            policy: open_policy(now),
        }
        .encode_frame(&mut admin_frame);
        let error = raw_error(&client, &admin_frame).await;
        assert_eq!(
            error.code,
            ErrorCode::UNEXPECTED_MESSAGE,
            "a provider may not open sessions"
        );

        // The same connection still works after all that.
        let fine = theirs.account(AccountingKind::INTERIM, usage(now)).unwrap();
        let their_client = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0002"))
            .await
            .unwrap();
        assert_eq!(single(&their_client, &fine).await, AckStatus::STORED);
        let next = strict
            .account(
                AccountingKind::INTERIM,
                Usage {
                    bytes_up: Some(1),
                    ..usage(now)
                },
            )
            .unwrap();
        assert_eq!(single(&client, &next).await, AckStatus::STORED);

        // A client certificate from another CA is refused in the handshake.
        let stranger = TestPki::new(1, 0);
        let foreign = ClientIdentity {
            ca_der: pki.ca_der(),
            ..stranger.identity(Role::Provider, "provider-0001")
        };
        assert!(
            AmClient::connect(am.address, &foreign).await.is_err() || {
                // Some QUIC stacks finish the client side before the server's
                // verdict arrives; then the first stream fails.
                let client = AmClient::connect(am.address, &foreign).await.unwrap();
                match client.open_accounting().await {
                    Err(_) => true,
                    Ok(mut stream) => {
                        stream.sender.send_raw(&[1]).await.is_err() || stream.receiver.next().await.is_err()
                    }
                }
            }
        );

        // A user may not account: a user connection carries service list
        // and credential requests only.
        let user = AmClient::connect(am.address, &pki.identity(Role::User, "user-0001"))
            .await
            .unwrap();
        let mut stream = user.open_accounting().await.unwrap();
        stream.sender.send(std::slice::from_ref(&next)).await.unwrap();
        stream.sender.finish().unwrap();
        match tokio::time::timeout(Duration::from_secs(30), stream.receiver.next()).await {
            Ok(Ok(Some(Received::Error(error)))) => assert_eq!(error.code, wire::ErrorCode::UNEXPECTED_MESSAGE),
            other => panic!("a user's accounting was answered {other:?}"),
        }
        user.close().await;
        client.close().await;
        their_client.close().await;
        admin.close().await;
    });
    assert!(am.terminate(Duration::from_secs(30)));
}

#[test]
fn a_provider_sending_mostly_bad_signatures_is_disconnected() {
    let pki = TestPki::new(2, 1);
    let am = AmProcess::start(pki.data(), &[]);
    runtime().block_on(async {
        let admin = AmClient::connect(am.address, &pki.identity(Role::AccountingManager, "am-1"))
            .await
            .unwrap();
        let mut hostile = open(&pki, &admin, "provider-0001", DataFields::UNITS).await;
        let mut honest = open(&pki, &admin, "provider-0002", DataFields::UNITS).await;
        let now = now_ms();
        let forged: Vec<Signed<Accounting>> = (0..400)
            .map(|_| {
                let message = hostile.account(AccountingKind::INTERIM, usage(now)).unwrap();
                let mut body = message.body().to_vec();
                let last = body.len() - 5;
                body[last] ^= 1;
                Signed::<Accounting>::decode_body(body.into()).unwrap()
            })
            .collect();
        let client = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0001"))
            .await
            .unwrap();
        let AccountingStream {
            mut sender,
            mut receiver,
        } = client.open_accounting().await.unwrap();
        let _ = sender.send(&forged).await;
        let mut bad = 0usize;
        let mut closed = false;
        while !closed {
            match tokio::time::timeout(WAIT, receiver.next()).await {
                Ok(Ok(Some(Received::Acks(entries)))) => {
                    assert!(entries.iter().all(|entry| entry.status == AckStatus::BAD_SIGNATURE));
                    bad += entries.len();
                }
                Ok(Ok(None)) | Ok(Err(_)) => closed = true,
                other => panic!("waiting for the disconnect: {other:?}"),
            }
        }
        assert!(bad > 256, "{bad} bad signatures answered before the disconnect");
        let reason = tokio::time::timeout(WAIT, client.closed())
            .await
            .expect("the AM closed the connection");
        assert!(reason.contains("bad signatures"), "{reason}");
        // The honest provider is unaffected.
        let good_client = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0002"))
            .await
            .unwrap();
        let fine = honest.account(AccountingKind::INTERIM, usage(now)).unwrap();
        assert_eq!(single(&good_client, &fine).await, AckStatus::STORED);
        good_client.close().await;
        admin.close().await;
    });
    assert!(am.terminate(Duration::from_secs(30)));
}

#[test]
fn a_provider_opening_stream_after_stream_of_garbage_is_disconnected() {
    let pki = TestPki::new(2, 1);
    let am = AmProcess::start(pki.data(), &["--no-export"]);
    runtime().block_on(async {
        let admin = AmClient::connect(am.address, &pki.identity(Role::AccountingManager, "am-1"))
            .await
            .unwrap();
        let mut honest = open(&pki, &admin, "provider-0002", DataFields::UNITS).await;
        let hostile = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0001"))
            .await
            .unwrap();
        let good_client = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0002"))
            .await
            .unwrap();
        // An oversized length prefix, stream after stream: each is answered
        // with its typed error until the connection is closed.
        let mut oversized = vec![wire::limits::PROTOCOL_VERSION, wire::MessageType::ACCOUNTING.0];
        oversized.extend_from_slice(&0x8000_0000u32.to_be_bytes());
        let mut errors = 0usize;
        for _ in 0..64 {
            let Ok(AccountingStream {
                mut sender,
                mut receiver,
            }) = hostile.open_accounting().await
            else {
                break;
            };
            if sender.send_raw(&oversized).await.is_err() {
                break;
            }
            match tokio::time::timeout(WAIT, receiver.next()).await {
                Ok(Ok(Some(Received::Error(error)))) => {
                    assert_eq!(error.code, wire::ErrorCode::FRAME_TOO_LARGE, "{error:?}");
                    errors += 1;
                }
                _ => break,
            }
        }
        assert!(
            (16..64).contains(&errors),
            "{errors} streams answered before the disconnect"
        );
        let reason = tokio::time::timeout(WAIT, hostile.closed())
            .await
            .expect("the AM closed the connection");
        assert!(reason.contains("protocol errors"), "{reason}");
        // Reconnecting at once meets the backoff: closed right after the
        // handshake, before it can cost anything more.
        let again = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0001"))
            .await
            .unwrap();
        let reason = tokio::time::timeout(WAIT, again.closed())
            .await
            .expect("the AM closed the reconnect");
        assert!(reason.contains("retry in"), "{reason}");
        // The honest provider, connected all along, is unaffected.
        let fine = honest.account(AccountingKind::INTERIM, usage(now_ms())).unwrap();
        assert_eq!(single(&good_client, &fine).await, AckStatus::STORED);
        good_client.close().await;
        admin.close().await;
    });
    assert!(am.terminate(Duration::from_secs(30)));
}
