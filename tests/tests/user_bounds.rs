//! Connections without a certificate (users, or anyone) cannot hold the
//! AM's user slots or make it send without bound: a connection closes 30 s
//! after its last complete request whatever its streams hold, one address
//! holds at most 64 of them, and one connection is sent the service list
//! twice at most.

use std::time::{Duration, Instant};

use acct::am::user::{SERVICE_LISTS_PER_CONNECTION_MAX, USER_CONNECTIONS_PER_ADDRESS_MAX, USER_IDLE};
use acct_tests::{AmProcess, TestPki, runtime};
use peer::net::UserClient;
use peer::quic::ClientError;
use wire::{ErrorCode, Role};

/// An anonymous QUIC connection from `bind` to the AM, with one stream
/// that holds the first byte of a frame header and nothing more.
async fn half_frame(endpoint: &quinn::Endpoint, pki: &TestPki, am: std::net::SocketAddr) -> HalfFrame {
    let config = peer::quic::client_config_for(&pki.ca_der(), None, Role::AccountingManager).unwrap();
    let connection = endpoint
        .connect_with(config, am, peer::quic::AM_SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    // A connection over a bound may be closed before its stream opens.
    let stream = match connection.open_bi().await {
        Ok((mut send, receive)) => {
            let _ = send.write_all(&[wire::limits::PROTOCOL_VERSION]).await;
            Some((send, receive))
        }
        Err(_) => None,
    };
    HalfFrame {
        connection,
        _stream: stream,
    }
}

/// A connection and its stream's halves, kept (dropping the send half
/// would finish the stream).
struct HalfFrame {
    connection: quinn::Connection,
    _stream: Option<(quinn::SendStream, quinn::RecvStream)>,
}

#[test]
fn a_connection_sitting_on_half_a_frame_is_closed_after_the_idle_time() {
    let pki = TestPki::new(1, 1);
    let am = AmProcess::start(pki.data(), &["--no-export"]);
    runtime().block_on(async {
        let endpoint = peer::quic::shared_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let started = Instant::now();
        let held = half_frame(&endpoint, &pki, am.address).await;
        let closed = tokio::time::timeout(USER_IDLE + Duration::from_secs(15), held.connection.closed()).await;
        assert!(closed.is_ok(), "a stream holding one byte kept the connection open");
        assert!(started.elapsed() >= USER_IDLE - Duration::from_secs(1));
    });
    assert!(am.terminate(Duration::from_secs(30)));
}

#[test]
fn one_address_cannot_hold_every_user_slot_and_a_real_user_is_served() {
    let pki = TestPki::new(1, 1);
    let am = AmProcess::start(pki.data(), &["--no-export"]);
    runtime().block_on(async {
        // The attacker's address: 127.0.0.2 (all of 127/8 is loopback).
        let attacker = peer::quic::shared_endpoint("127.0.0.2:0".parse().unwrap()).unwrap();
        let extra = 8;
        let mut held = Vec::new();
        for _ in 0..USER_CONNECTIONS_PER_ADDRESS_MAX + extra {
            held.push(half_frame(&attacker, &pki, am.address).await);
        }
        // The connections beyond the bound are closed at once.
        let mut waits = tokio::task::JoinSet::new();
        for half in &held {
            let connection = half.connection.clone();
            waits.spawn(async move { tokio::time::timeout(Duration::from_secs(3), connection.closed()).await });
        }
        let mut refused = 0;
        while let Some(waited) = waits.join_next().await {
            if let Ok(reason) = waited.unwrap() {
                assert!(reason.to_string().contains("too many user connections"), "{reason}");
                refused += 1;
            }
        }
        assert_eq!(refused, extra, "per-address bound");
        // A user from another address is served while they are held.
        let user = UserClient::connect(am.address, &pki.ca_der()).await.unwrap();
        assert!(!user.services().await.unwrap().is_empty());
        user.close().await;
        drop(held);
    });
    assert!(am.terminate(Duration::from_secs(30)));
}

#[test]
fn a_connection_is_sent_the_service_list_a_bounded_number_of_times() {
    let pki = TestPki::new(1, 1);
    let am = AmProcess::start(pki.data(), &["--no-export"]);
    runtime().block_on(async {
        let user = UserClient::connect(am.address, &pki.ca_der()).await.unwrap();
        for _ in 0..SERVICE_LISTS_PER_CONNECTION_MAX {
            assert!(!user.services().await.unwrap().is_empty());
        }
        match user.services().await {
            Err(ClientError::Refused(error)) => assert_eq!(error.code, ErrorCode::BUSY, "{error:?}"),
            other => panic!("a third service list on one connection: {other:?}"),
        }
        user.close().await;
        // A new connection gets it again.
        let user = UserClient::connect(am.address, &pki.ca_der()).await.unwrap();
        assert!(!user.services().await.unwrap().is_empty());
        user.close().await;
    });
    assert!(am.terminate(Duration::from_secs(30)));
}
