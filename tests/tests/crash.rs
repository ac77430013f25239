//! SIGKILL the AM while providers send, restart it, retransmit what was not
//! acked: every message acked as stored is stored, and nothing twice.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use acct_tests::{AmProcess, TestPki, now_ms, open_policy, runtime};
use peer::provider::{AckOutcome, ProviderSession, UNACKED_MESSAGES_MAX};
use peer::quic::{AmClient, Received};
use wire::{AccountingKind, AckStatus, Address, AdminOpenSession, MessageId, Name, Role, ServiceId, Usage};

const KILLS: usize = 5;
const SESSIONS: usize = 8;
/// Each round sends at most this many new messages per session.
const NEW_PER_ROUND: usize = 2000;

/// A small deterministic generator for the kill moments; the seed is printed.
fn next(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *state >> 33
}

#[test]
fn sigkill_loses_nothing_acked_and_stores_nothing_twice() {
    let mut random = now_ms();
    println!("crash test seed {random}");
    let pki = TestPki::new(1, 1);
    let rt = runtime();
    let provider_identity = pki.identity(Role::Provider, "provider-0001");
    let mut sessions: Vec<ProviderSession> = Vec::new();
    let mut acked_stored: HashSet<MessageId> = HashSet::new();
    let mut sent: HashSet<MessageId> = HashSet::new();
    let mut interrupted_rounds = 0usize;

    for round in 0..=KILLS {
        // Export often, so that kills also land in the middle of exports.
        let am = AmProcess::start(pki.data(), &["--export-interval-ms", "200"]);
        let last_round = round == KILLS;
        let kill_at_percent = 5 + (next(&mut random) % 91) as usize;
        rt.block_on(async {
            if sessions.is_empty() {
                let admin = AmClient::connect(am.address, &pki.identity(Role::AccountingManager, "am-1"))
                    .await
                    .unwrap();
                for index in 0..SESSIONS {
                    let credential = admin
                        .open_session(&AdminOpenSession {
                            provider: Name::new("provider-0001").unwrap(),
                            service_id: ServiceId(3),
                            user_id: Name::new(format!("user-{index}")).unwrap(),
                            user_address: Address::new("127.0.0.1:9").unwrap(),
                            policy: open_policy(now_ms()),
                        })
                        .await
                        .unwrap();
                    sessions.push(
                        ProviderSession::accept(credential, &pki.am_key(), provider_identity.signing_key.clone())
                            .unwrap(),
                    );
                }
                admin.close().await;
            }
            let Ok(client) = AmClient::connect(am.address, &provider_identity).await else {
                return;
            };
            let Ok(stream) = client.open_accounting().await else {
                return;
            };
            let (mut sender, mut receiver) = (stream.sender, stream.receiver);
            // Retransmit everything unacked first (same bytes), then new messages.
            let mut outgoing: Vec<_> = sessions.iter().flat_map(|session| session.unacked().cloned()).collect();
            if !last_round {
                let now = now_ms();
                for count in 0..NEW_PER_ROUND {
                    for session in &mut sessions {
                        // Stay within the provider library's bounded backlog.
                        if session.unacked().count() >= UNACKED_MESSAGES_MAX {
                            continue;
                        }
                        let usage = Usage {
                            units: Some(1 + count as u64),
                            interval_ms: Some((now - 1000, now)),
                            ..Usage::default()
                        };
                        outgoing.push(session.account(AccountingKind::INTERIM, usage).unwrap());
                    }
                }
            }
            for message in &outgoing {
                sent.insert(message.value().message_id());
            }
            let expected = outgoing.len();
            let (progress_sender, mut progress) = tokio::sync::watch::channel(0usize);
            let reader = tokio::spawn(async move {
                let mut answers: HashMap<MessageId, AckStatus> = HashMap::new();
                let deadline = Instant::now() + Duration::from_secs(60);
                while answers.len() < expected && Instant::now() < deadline {
                    match tokio::time::timeout(Duration::from_secs(5), receiver.next()).await {
                        Ok(Ok(Some(Received::Acks(entries)))) => {
                            for entry in entries {
                                answers.insert(entry.message_id, entry.status);
                            }
                            let _ = progress_sender.send(answers.len());
                        }
                        _ => break,
                    }
                }
                answers
            });
            let writer = tokio::spawn(async move {
                for chunk in outgoing.chunks(64) {
                    if sender.send(chunk).await.is_err() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                sender
            });
            if last_round {
                let _ = writer.await;
            } else {
                // Kill at a random point of the flow: once a random share
                // (5-95%) of this round's messages were answered.
                let target = expected * kill_at_percent / 100;
                let _ = tokio::time::timeout(
                    Duration::from_secs(30),
                    progress.wait_for(|answered| *answered >= target),
                )
                .await;
                let _ = std::process::Command::new("kill")
                    .arg("-KILL")
                    .arg(am.pid().to_string())
                    .status();
                // A dead peer sends nothing back over UDP: close our side so
                // the reader and writer stop now instead of at the idle timeout.
                writer.abort();
                let _ = writer.await;
                client.close().await;
            }
            let answers = reader.await.unwrap();
            if !last_round && answers.len() < expected {
                interrupted_rounds += 1;
            }
            println!(
                "round {round}: {} of {expected} answered before the kill",
                answers.len()
            );
            for session in &mut sessions {
                let session_id = session.session_id();
                for (message_id, status) in answers.iter().filter(|(id, _)| id.session_id == session_id) {
                    let entry = wire::AckEntry {
                        message_id: *message_id,
                        status: *status,
                    };
                    if session.on_ack(&entry) == AckOutcome::Stored {
                        acked_stored.insert(*message_id);
                    }
                }
            }
            assert!(
                answers
                    .values()
                    .all(|status| status.is_stored() || status.is_retryable()),
                "unexpected refusal: {:?}",
                answers
                    .values()
                    .filter(|status| !status.is_stored())
                    .collect::<Vec<_>>()
            );
        });
        if last_round {
            assert!(am.terminate(Duration::from_secs(30)));
        } else {
            am.kill();
        }
        println!(
            "round {round}: {} acked so far, {} sent",
            acked_stored.len(),
            sent.len()
        );
    }

    // After the final round every message sent was answered as stored.
    let unacked: usize = sessions.iter().map(|session| session.unacked().count()).sum();
    assert_eq!(unacked, 0, "messages still unacked after the final round");
    assert_eq!(acked_stored, sent);
    // Hot store and cold storage together (exports ran between the kills).
    let ids = acct_tests::stored_messages(pki.data());
    let unique: HashSet<MessageId> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "a message is stored twice");
    assert_eq!(unique, acked_stored, "stored and acked sets differ");
    assert!(
        acked_stored.len() >= KILLS * SESSIONS,
        "too few messages went through to mean anything"
    );
    // The kills must land while messages are in flight, or the test proves nothing.
    assert!(
        interrupted_rounds + 1 >= KILLS,
        "only {interrupted_rounds} of {KILLS} kills interrupted traffic"
    );
}

/// A provider connected to an AM that is killed and restarted on the same
/// address learns at once that its connection is gone: the restarted AM
/// answers the old connection's packets with a valid QUIC stateless reset
/// (its reset key is derived from its identity), instead of leaving the
/// provider to its idle timeout (60 s) before it reconnects.
#[test]
fn a_restarted_am_resets_connections_of_the_killed_one() {
    let pki = TestPki::new(1, 0);
    let port = acct_tests::free_udp_port();
    let listen = format!("127.0.0.1:{port}");
    let args: Vec<std::ffi::OsString> = ["serve", "--no-export", "--listen", &listen, "--data"]
        .into_iter()
        .map(Into::into)
        .chain([pki.data().as_os_str().to_owned()])
        .collect();
    let am = AmProcess::spawn(&args, &[], "acct serve: listening on ");
    let rt = runtime();
    let identity = pki.identity(Role::Provider, "provider-0001");
    let client = rt.block_on(AmClient::connect(am.address, &identity)).unwrap();
    let connection = client.connection_handle();
    am.kill();
    let restarted = AmProcess::spawn(&args, &[], "acct serve: listening on ");
    let started = Instant::now();
    let closed = rt.block_on(async {
        // Keep-alives (every 5 s) or this stream's packets reach the new
        // process, which resets the connection.
        let _ = client.open_accounting().await;
        tokio::time::timeout(Duration::from_secs(20), connection.closed()).await
    });
    let reason = closed.expect("the connection was not reset within 20 s of the restart");
    println!(
        "connection closed {:.2} s after the restart: {reason}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        matches!(reason, quinn::ConnectionError::Reset),
        "closed, but not by a stateless reset: {reason}"
    );
    drop(restarted);
}
