//! Several AM partitions as one system: real `acct serve` processes on
//! 127.0.0.1 sharing one cluster map.

use bytes::Bytes;
use peer::net::UserClient;
use peer::quic::{AmClient, ClientError};
use wire::{
    AccountingKind, AckStatus, Address, ErrorCode, Name, Nonce, PartitionId, RequestId, Role, ServiceId, Usage,
};

use acct_tests::{TestPki, hot_records_on, now_ms, open_policy, runtime, send_all};

fn random16() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).unwrap();
    bytes
}

/// Requests and accounting sent to a partition that is not the provider's
/// home, or not the session's, are answered with the right partition and
/// nothing is stored there; the same request at the home is served.
#[test]
fn wrong_node_traffic_is_redirected_and_nothing_is_stored_there() {
    let pki = TestPki::new(4, 1);
    let cluster = pki.start_cluster(3, &["--no-export"]);
    // provider-0001's home among am-1, am-2, am-3 (docs/protocol.md 6.1).
    let home = cluster.home("provider-0001").clone();
    assert_eq!(home.name.as_str(), "am-1");
    let wrong = cluster.map.by_id(PartitionId(2)).unwrap().clone();
    let open = || wire::AdminOpenSession {
        provider: Name::new("provider-0001").unwrap(),
        service_id: ServiceId(1),
        user_id: Name::new("user-0001").unwrap(),
        user_address: Address::new("127.0.0.1:5000").unwrap(),
        policy: open_policy(now_ms()),
    };
    runtime().block_on(async {
        // The operator asks the wrong partition: redirected to the home.
        let admin = AmClient::connect(
            cluster.node(wrong.id.0).address,
            &pki.identity(Role::AccountingManager, wrong.name.as_str()),
        )
        .await
        .unwrap();
        match admin.open_session(&open()).await {
            Err(ClientError::Redirect(redirect)) => {
                assert_eq!(redirect, wire::Redirect::to(&home));
            }
            other => panic!("expected a redirect, got {other:?}"),
        }
        admin.close().await;

        // At the home: a session whose id names the home.
        let admin = AmClient::connect(
            cluster.node(home.id.0).address,
            &pki.identity(Role::AccountingManager, home.name.as_str()),
        )
        .await
        .unwrap();
        let credential = admin.open_session(&open()).await.unwrap();
        admin.close().await;
        assert_eq!(credential.value().session_id.partition(), home.id);
        let home_key = pki
            .identity(Role::AccountingManager, home.name.as_str())
            .signing_key
            .public_key();
        let provider = pki.identity(Role::Provider, "provider-0001");
        let mut session =
            peer::provider::ProviderSession::accept(credential, &home_key, provider.signing_key.clone()).unwrap();
        let now = now_ms();
        let messages: Vec<_> = (1..=3)
            .map(|units| {
                session
                    .account(
                        AccountingKind::INTERIM,
                        Usage {
                            units: Some(units),
                            interval_ms: Some((now - 1000, now)),
                            ..Usage::default()
                        },
                    )
                    .unwrap()
            })
            .collect();

        // Accounting for the home's session sent to the wrong partition.
        let client = AmClient::connect(cluster.node(wrong.id.0).address, &provider)
            .await
            .unwrap();
        let answers = send_all(&client, &messages).await;
        client.close().await;
        assert!(
            answers.values().all(|status| *status == AckStatus::WRONG_PARTITION),
            "{answers:?}"
        );
        // The same bytes at the home: stored.
        let client = AmClient::connect(cluster.node(home.id.0).address, &provider)
            .await
            .unwrap();
        let answers = send_all(&client, &messages).await;
        client.close().await;
        assert!(
            answers.values().all(|status| *status == AckStatus::STORED),
            "{answers:?}"
        );

        // A user asks the wrong partition for service 1 (provider-0001's):
        // redirected, and the same request is not a replay at the home.
        let user = pki.identity(Role::User, "user-0001");
        let request = peer::user::credential_request(
            ServiceId(1),
            RequestId(random16()),
            Nonce(random16()),
            now_ms(),
            Address::new("10.0.0.7:5000").unwrap(),
            Bytes::from(user.certificate_der.clone()),
            &user.signing_key,
        )
        .unwrap();
        let client = UserClient::connect(cluster.node(wrong.id.0).address, &pki.ca_der())
            .await
            .unwrap();
        match client.request_credential(&request).await {
            Err(ClientError::Redirect(redirect)) => assert_eq!(redirect, wire::Redirect::to(&home)),
            other => panic!("expected a redirect, got {other:?}"),
        }
        client.close().await;
        let client = UserClient::connect(cluster.node(home.id.0).address, &pki.ca_der())
            .await
            .unwrap();
        match client.request_credential(&request).await {
            // provider-0001 has no provider node connected in this test.
            Err(ClientError::Refused(error)) => assert_eq!(error.code, ErrorCode::PROVIDER_UNAVAILABLE, "{error:?}"),
            other => panic!("expected PROVIDER_UNAVAILABLE at the home, got {other:?}"),
        }
        client.close().await;
    });
    assert_eq!(
        hot_records_on(&pki, cluster.node(wrong.id.0), wrong.name.as_str()),
        0,
        "nothing is stored on the wrong partition"
    );
    assert_eq!(
        hot_records_on(&pki, cluster.node(home.id.0), home.name.as_str()),
        3,
        "the home stored the three messages"
    );
}
