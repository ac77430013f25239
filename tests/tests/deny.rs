//! Revoking a certificate without a restart: `[security] denied` in the
//! config file, re-read by the running AM.

use std::time::Duration;

use acct_tests::{AmProcess, TestPki, now_ms, open_sessions, runtime, send_all, set_denied as deny};
use bytes::Bytes;
use peer::net::UserClient;
use peer::quic::{AmClient, ClientError};
use sha2::Digest;
use wire::{AccountingKind, AckStatus, Address, ErrorCode, Nonce, RequestId, Role, ServiceId, Usage};

fn usage() -> Usage {
    Usage {
        units: Some(1),
        interval_ms: Some((now_ms() - 1000, now_ms())),
        ..Usage::default()
    }
}

#[test]
fn a_denied_certificate_is_cut_off_without_a_restart() {
    let pki = TestPki::new(2, 1);
    let config = pki.pki().join("acct.toml");
    let am = AmProcess::start(pki.data(), &["--config", config.to_str().unwrap(), "--no-export"]);
    runtime().block_on(async {
        let admin = AmClient::connect(am.address, &pki.identity(Role::AccountingManager, "am-1"))
            .await
            .unwrap();
        let mut first = open_sessions(&pki, &admin, "provider-0001", 1).await;
        let mut second = open_sessions(&pki, &admin, "provider-0002", 1).await;
        let one = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0001"))
            .await
            .unwrap();
        let two = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0002"))
            .await
            .unwrap();
        let message = first[0].account(AccountingKind::INTERIM, usage()).unwrap();
        assert_eq!(
            send_all(&one, &[message]).await.into_values().next(),
            Some(AckStatus::STORED)
        );

        // Revoke provider-0001 by name: its connection closes, the other stays.
        deny(&config, &["provider-0001".into()]);
        let reason = tokio::time::timeout(Duration::from_secs(15), one.closed())
            .await
            .unwrap_or_else(|_| panic!("the revoked provider is still connected"));
        assert!(reason.contains("certificate revoked"), "{reason}");
        let message = second[0].account(AccountingKind::INTERIM, usage()).unwrap();
        assert_eq!(
            send_all(&two, &[message]).await.into_values().next(),
            Some(AckStatus::STORED)
        );
        // And it cannot come back.
        if let Ok(again) = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0001")).await {
            let reason = tokio::time::timeout(Duration::from_secs(15), again.closed())
                .await
                .unwrap();
            assert!(reason.contains("certificate revoked"), "{reason}");
        }

        // Revoke one user certificate by its digest: no credential for it.
        let user = pki.identity(Role::User, "user-0001");
        let digest = hex::encode(sha2::Sha256::digest(&user.certificate_der));
        deny(&config, &[format!("sha256:{digest}")]);
        // The AM re-reads the file within about a second: ask until it
        // refuses (bounded), each time with a fresh request.
        let client = UserClient::connect(am.address, &pki.ca_der()).await.unwrap();
        let mut refusal = None;
        for attempt in 0..100u8 {
            let request = peer::user::credential_request(
                ServiceId(2),
                RequestId([attempt; 16]),
                Nonce([attempt.wrapping_add(100); 16]),
                now_ms(),
                Address::new("127.0.0.1:5000").unwrap(),
                Bytes::from(user.certificate_der.clone()),
                &user.signing_key,
            )
            .unwrap();
            match client.request_credential(&request).await {
                Err(ClientError::Refused(error)) if error.detail.contains("revoked") => {
                    refusal = Some(error);
                    break;
                }
                // Before the reload: provider-0002 serves no pushes here.
                Err(ClientError::Refused(error)) if error.code == ErrorCode::PROVIDER_UNAVAILABLE => {}
                other => panic!("unexpected answer {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let refusal = refusal.unwrap_or_else(|| panic!("the revoked user was never refused"));
        assert_eq!(refusal.code, ErrorCode::CREDENTIAL_REFUSED);
        client.close().await;

        // provider-0001 is no longer denied: it connects and accounts again.
        let back = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0001"))
            .await
            .unwrap();
        let message = first[0].account(AccountingKind::INTERIM, usage()).unwrap();
        assert_eq!(
            send_all(&back, &[message]).await.into_values().next(),
            Some(AckStatus::STORED)
        );
        back.close().await;
        two.close().await;
        admin.close().await;
    });
    assert!(am.terminate(Duration::from_secs(30)));
}

/// The storage applies `[security] denied` too: an AM whose certificate is
/// revoked is cut off within about a second and cannot deliver again.
#[test]
fn the_storage_cuts_off_a_denied_am() {
    let pki = TestPki::new(1, 1);
    let config = pki.pki().join("acct.toml");
    let cold = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", acct_tests::free_udp_port());
    let storage = AmProcess::spawn(
        &[
            "storage".into(),
            "--config".into(),
            config.clone().into(),
            "--folder".into(),
            cold.path().into(),
            "--listen".into(),
            listen.clone().into(),
        ],
        &[],
        "acct storage: listening on ",
    );
    let am = pki.identity(Role::AccountingManager, "am-1");
    runtime().block_on(async {
        let connect = || async {
            let endpoint = peer::quic::shared_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
            let config = peer::quic::client_config_for(
                &am.ca_der,
                Some((&am.certificate_der, &am.signing_key)),
                Role::AccountingStorage,
            )
            .unwrap();
            AmClient::connect_with(&endpoint, config, storage.address)
                .await
                .unwrap()
        };
        let connection = connect().await;
        // Not denied: the connection stays.
        assert!(
            tokio::time::timeout(Duration::from_secs(2), connection.closed())
                .await
                .is_err()
        );
        deny(&config, &["am-1".into()]);
        let reason = tokio::time::timeout(Duration::from_secs(15), connection.closed())
            .await
            .unwrap_or_else(|_| panic!("the revoked AM is still connected to the storage"));
        assert!(reason.contains("certificate revoked"), "{reason}");
        // And it cannot come back.
        let again = connect().await;
        let reason = tokio::time::timeout(Duration::from_secs(15), again.closed())
            .await
            .unwrap_or_else(|_| panic!("the storage took a revoked AM back"));
        assert!(reason.contains("certificate revoked"), "{reason}");
    });
    assert!(storage.terminate(Duration::from_secs(30)));
    assert!(archive::parquet_files(cold.path()).unwrap().is_empty());
}
