//! The patent's Figure 2 over real QUIC on 127.0.0.1: a user asks a real
//! `acct serve` for a credential, the AM pushes the User Credential to a
//! real provider (peer's ProviderNode), the user's Service Request is
//! validated by the provider, and the provider's accounting is acked. Then
//! every refusal, each with its typed reason.

use std::path::PathBuf;
use std::time::Duration;

use acct_tests::{AmProcess, TestPki, free_udp_port, now_ms, runtime};
use bytes::Bytes;
use peer::net::{UserClient, request_service};
use peer::node::ProviderNode;
use peer::provider::ProviderSession;
use peer::quic::{AmClient, ClientError, ClientIdentity};
use peer::user::{self, UserError};
use wire::{
    AccountingKind, AckStatus, Address, ErrorCode, Maced, Nonce, ProofStatus, RequestId, Role, ServiceCredential,
    ServiceId, ServiceRequest, SessionKey, Signed, SigningKey, Usage,
};

/// A random 16-byte id.
fn random16() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).unwrap();
    bytes
}

const USER_ADDRESS: &str = "10.0.0.7:5000";

/// An AM whose service list points at one provider node's port: service 1
/// open; 2 at most one service request; 3 outside today's time window; 4
/// valid for one second; 5 offered by a provider that is not connected.
struct World {
    pki: TestPki,
    am: AmProcess,
    provider_port: u16,
}

fn world() -> World {
    world_with(|config| config)
}

/// [`world`] with the config file's text passed through `edit` first.
fn world_with(edit: impl FnOnce(String) -> String) -> World {
    let pki = TestPki::new(2, 2);
    let provider_port = free_udp_port();
    let minute = ((now_ms() / 60_000) % 1440) as u16;
    let (start, end) = ((minute + 30) % 1440, (minute + 60) % 1440);
    let address = format!("127.0.0.1:{provider_port}");
    let services = format!(
        r#"
[[services]]
id = 1
name = "open"
provider = "provider-0001"
provider_address = "{address}"
unit = "minutes"
required_data = ["units"]

[[services]]
id = 2
name = "one-request"
provider = "provider-0001"
provider_address = "{address}"
requests_max = 1

[[services]]
id = 3
name = "night-only"
provider = "provider-0001"
provider_address = "{address}"
time_of_day = [{start}, {end}]

[[services]]
id = 4
name = "one-second"
provider = "provider-0001"
provider_address = "{address}"
lifetime_s = 1

[[services]]
id = 5
name = "elsewhere"
provider = "provider-0002"
provider_address = "127.0.0.1:9"
"#
    );
    let config: PathBuf = pki.pki().join("acct.toml");
    let text = edit(std::fs::read_to_string(&config).unwrap()) + &services;
    std::fs::write(&config, text).unwrap();
    // Records stay in RocksDB (no export), where the tests count them.
    let am = AmProcess::start(pki.data(), &["--config", config.to_str().unwrap(), "--no-export"]);
    World { pki, am, provider_port }
}

impl World {
    async fn provider(&self) -> ProviderNode {
        ProviderNode::start(
            self.am.address,
            self.pki.identity(Role::Provider, "provider-0001"),
            self.pki.am_key(),
            ([127, 0, 0, 1], self.provider_port).into(),
        )
        .await
        .unwrap()
    }

    fn user(&self) -> ClientIdentity {
        self.pki.identity(Role::User, "user-0001")
    }

    /// A fresh, correctly signed request for `service`.
    fn request(&self, identity: &ClientIdentity, service: u32) -> Signed<wire::ServiceCredentialRequest> {
        user::credential_request(
            ServiceId(service),
            RequestId(random16()),
            Nonce(random16()),
            now_ms(),
            Address::new(USER_ADDRESS).unwrap(),
            Bytes::from(identity.certificate_der.clone()),
            &identity.signing_key,
        )
        .unwrap()
    }

    async fn credential(&self, service: u32) -> Result<Signed<ServiceCredential>, ClientError> {
        let client = UserClient::connect(self.am.address, &self.pki.ca_der()).await.unwrap();
        let answer = client.request_credential(&self.request(&self.user(), service)).await;
        client.close().await;
        answer
    }

    /// A credential for `service` once the provider's pushes are served
    /// (see [`issued_once_the_provider_is_there`]).
    async fn credential_once_the_provider_is_there(&self, service: u32) -> Signed<ServiceCredential> {
        let client = UserClient::connect(self.am.address, &self.pki.ca_der()).await.unwrap();
        let credential = issued_once_the_provider_is_there(&client, &self.request(&self.user(), service)).await;
        client.close().await;
        credential
    }

    async fn ask_service(&self, credential: &ServiceCredential, address: &str) -> Result<(), UserError> {
        let request =
            user::service_request(credential, Address::new(address).unwrap(), Nonce(random16()), now_ms()).unwrap();
        let provider: std::net::SocketAddr = credential.provider_address.as_str().parse().unwrap();
        let proof = request_service(provider, &self.pki.ca_der(), &request).await.unwrap();
        user::check_proof(&proof, request.value(), credential)
    }
}

/// Send `request` until it is issued, while the AM answers
/// PROVIDER_UNAVAILABLE (the provider's connection still registering), at
/// most 100 times 100 ms apart; the same bytes every time.
async fn issued_once_the_provider_is_there(
    client: &UserClient,
    request: &Signed<wire::ServiceCredentialRequest>,
) -> Signed<ServiceCredential> {
    for _ in 0..100 {
        match client.request_credential(request).await {
            Ok(credential) => return credential,
            Err(ClientError::Refused(error)) if error.code == ErrorCode::PROVIDER_UNAVAILABLE => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("the request: {other:?}"),
        }
    }
    panic!("the provider's pushes were never served")
}

/// The Error code of a refused request.
fn refused(answer: Result<Signed<ServiceCredential>, ClientError>) -> (ErrorCode, String) {
    match answer {
        Err(ClientError::Refused(error)) => (error.code, error.detail),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn usage(units: u64) -> Usage {
    Usage {
        units: Some(units),
        ..Usage::default()
    }
}

#[test]
fn figure_2_end_to_end() {
    let world = world();
    runtime().block_on(async {
        let provider = world.provider().await;
        // 201: the service list.
        let client = UserClient::connect(world.am.address, &world.pki.ca_der())
            .await
            .unwrap();
        let services = client.services().await.unwrap();
        assert_eq!(services.len(), 5);
        let open = services.iter().find(|entry| entry.service_id == ServiceId(1)).unwrap();
        assert_eq!(open.provider.as_str(), "provider-0001");
        assert_eq!(open.unit.as_str(), "minutes");
        // 202 → 204 → 206 and 208.
        let identity = world.user();
        let request = world.request(&identity, 1);
        let credential = client.request_credential(&request).await.unwrap();
        client.close().await;
        user::check_credential(&credential, request.value().request_id, &world.pki.am_key()).unwrap();
        let session_id = credential.value().session_id;
        assert_eq!(
            provider.next_credential(Duration::from_secs(10)).await,
            Some(session_id),
            "the provider holds the User Credential before the user is answered"
        );
        let pushed = provider.credential(session_id).unwrap();
        assert_eq!(pushed.value().user_id.as_str(), "user-0001");
        assert_eq!(pushed.value().session_key, credential.value().session_key);
        assert_eq!(pushed.value().user_address.as_str(), USER_ADDRESS);
        // 210 → 211: the provider validates the Service Request and proves it holds the key.
        world.ask_service(credential.value(), USER_ADDRESS).await.unwrap();
        // 214/216: interim accounting, acked.
        for units in 1..=3 {
            provider
                .account(session_id, AccountingKind::INTERIM, usage(units))
                .unwrap();
        }
        let delivery = provider.deliver(Duration::from_secs(30)).await.unwrap();
        assert_eq!((delivery.stored, delivery.pending), (3, 0), "{delivery:?}");
        // 220/221: final accounting, acked; the session is closed.
        provider.account(session_id, AccountingKind::FINAL, usage(4)).unwrap();
        let delivery = provider.deliver(Duration::from_secs(30)).await.unwrap();
        assert_eq!((delivery.stored, delivery.pending), (1, 0), "{delivery:?}");
        assert_eq!(provider.is_closed(session_id), Some(true));
        // The AM closed it too: a later message is refused SESSION_CLOSED.
        let identity = world.pki.identity(Role::Provider, "provider-0001");
        let mut late = ProviderSession::resume(pushed, identity.signing_key.clone(), 5);
        let message = late.account(AccountingKind::INTERIM, usage(9)).unwrap();
        let am = AmClient::connect(world.am.address, &identity).await.unwrap();
        let answers = acct_tests::send_all(&am, &[message]).await;
        assert_eq!(
            answers.values().copied().collect::<Vec<_>>(),
            vec![AckStatus::SESSION_CLOSED]
        );
        am.close().await;
        provider.stop().await;
    });
    assert!(world.am.terminate(Duration::from_secs(60)));
    let stored = acct_tests::stored_messages(world.pki.data());
    assert_eq!(stored.len(), 4, "three interims and the final, once each");
}

#[test]
fn the_am_refuses_bad_requests_with_typed_reasons() {
    let world = world();
    runtime().block_on(async {
        let provider = world.provider().await;
        let client = UserClient::connect(world.am.address, &world.pki.ca_der())
            .await
            .unwrap();
        let identity = world.user();

        // Unknown CA: a user certificate from another operator's CA.
        let other = TestPki::new(0, 1);
        let stranger = other.identity(Role::User, "user-0001");
        let (code, detail) = refused(client.request_credential(&world.request(&stranger, 1)).await);
        assert_eq!(code, ErrorCode::CREDENTIAL_REFUSED, "{detail}");

        // Expired certificate.
        let ca = pki::CertificateAuthority::load(&world.pki.pki()).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let expired = ca
            .issue_valid(
                Role::User,
                "user-0001",
                now - time::Duration::days(30),
                now - time::Duration::days(1),
            )
            .unwrap();
        let expired = ClientIdentity {
            ca_der: world.pki.ca_der(),
            certificate_der: expired.certificate_der,
            signing_key: expired.signing_key,
        };
        let (code, detail) = refused(client.request_credential(&world.request(&expired, 1)).await);
        assert_eq!(code, ErrorCode::CREDENTIAL_REFUSED);
        assert!(detail.to_lowercase().contains("expired"), "{detail}");

        // Bad user signature: a4 made with another key than a5's.
        let forged = ClientIdentity {
            signing_key: SigningKey::from_seed(&[9; 32]),
            ..identity.clone()
        };
        let (code, detail) = refused(client.request_credential(&world.request(&forged, 1)).await);
        assert_eq!(code, ErrorCode::CREDENTIAL_REFUSED);
        assert!(detail.contains("signature"), "{detail}");

        // Replays: the same request; then a new id with a used nonce.
        let request = world.request(&identity, 1);
        client.request_credential(&request).await.unwrap();
        let (code, detail) = refused(client.request_credential(&request).await);
        assert_eq!(code, ErrorCode::REPLAYED_REQUEST);
        assert!(detail.contains("request id"), "{detail}");
        let same_nonce = user::credential_request(
            ServiceId(1),
            RequestId(random16()),
            request.value().nonce,
            now_ms(),
            Address::new(USER_ADDRESS).unwrap(),
            Bytes::from(identity.certificate_der.clone()),
            &identity.signing_key,
        )
        .unwrap();
        let (code, detail) = refused(client.request_credential(&same_nonce).await);
        assert_eq!(code, ErrorCode::REPLAYED_REQUEST);
        assert!(detail.contains("nonce"), "{detail}");
        // Too old.
        let stale = user::credential_request(
            ServiceId(1),
            RequestId(random16()),
            Nonce(random16()),
            now_ms() - 10 * 60 * 1000,
            Address::new(USER_ADDRESS).unwrap(),
            Bytes::from(identity.certificate_der.clone()),
            &identity.signing_key,
        )
        .unwrap();
        assert_eq!(
            refused(client.request_credential(&stale).await).0,
            ErrorCode::REPLAYED_REQUEST
        );

        // Unknown service.
        let (code, _) = refused(client.request_credential(&world.request(&identity, 99)).await);
        assert_eq!(code, ErrorCode::UNKNOWN_SERVICE);

        // Provider unavailable: provider-0002 is not connected.
        let (code, detail) = refused(client.request_credential(&world.request(&identity, 5)).await);
        assert_eq!(code, ErrorCode::PROVIDER_UNAVAILABLE, "{detail}");
        // And when provider-0001 goes away, its services are unavailable too.
        provider.stop().await;
        let mut unavailable = false;
        for _ in 0..50 {
            match client.request_credential(&world.request(&identity, 1)).await {
                Err(ClientError::Refused(error)) if error.code == ErrorCode::PROVIDER_UNAVAILABLE => {
                    unavailable = true;
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        assert!(unavailable, "a stopped provider's service is still issued");
        client.close().await;
    });
    // Only the one request the AM answered with a credential made a session.
    assert!(world.am.terminate(Duration::from_secs(60)));
}

#[test]
fn the_provider_refuses_service_requests_with_typed_reasons() {
    let world = world();
    runtime().block_on(async {
        let provider = world.provider().await;
        let open = world.credential(1).await.unwrap();
        provider.next_credential(Duration::from_secs(10)).await.unwrap();

        // A wrong MAC: no proof can be made; the provider answers SESSION_REFUSED.
        let forged = Maced::seal(
            ServiceRequest {
                session_id: open.value().session_id,
                user_address: Address::new(USER_ADDRESS).unwrap(),
                nonce: Nonce(random16()),
                timestamp_ms: now_ms(),
            },
            &SessionKey([7; 32]),
        )
        .unwrap();
        let address: std::net::SocketAddr = open.value().provider_address.as_str().parse().unwrap();
        match request_service(address, &world.pki.ca_der(), &forged).await {
            Err(ClientError::Refused(error)) => assert_eq!(error.code, ErrorCode::SESSION_REFUSED),
            other => panic!("a forged MAC was answered {other:?}"),
        }
        // Another user's address, when the policy does not allow a change.
        assert_eq!(
            world.ask_service(open.value(), "10.9.9.9:1").await,
            Err(UserError::Refused(ProofStatus::ADDRESS_CHANGED.0))
        );
        world.ask_service(open.value(), USER_ADDRESS).await.unwrap();

        // At most one request.
        let once = world.credential(2).await.unwrap();
        provider.next_credential(Duration::from_secs(10)).await.unwrap();
        world.ask_service(once.value(), USER_ADDRESS).await.unwrap();
        assert_eq!(
            world.ask_service(once.value(), USER_ADDRESS).await,
            Err(UserError::Refused(ProofStatus::REQUESTS_EXCEEDED.0))
        );

        // Outside the time-of-day window.
        let night = world.credential(3).await.unwrap();
        provider.next_credential(Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            world.ask_service(night.value(), USER_ADDRESS).await,
            Err(UserError::Refused(ProofStatus::OUTSIDE_TIME_WINDOW.0))
        );

        // After the lifetime.
        let short = world.credential(4).await.unwrap();
        provider.next_credential(Duration::from_secs(10)).await.unwrap();
        // Wait (bounded) until the lifetime the credential states is over.
        let until = short.value().policy.valid_until_ms;
        for _ in 0..100 {
            if now_ms() > until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(now_ms() > until, "the one-second lifetime did not end");
        assert_eq!(
            world.ask_service(short.value(), USER_ADDRESS).await,
            Err(UserError::Refused(ProofStatus::EXPIRED.0))
        );
        provider.stop().await;
    });
    assert!(world.am.terminate(Duration::from_secs(60)));
}

#[test]
fn a_provider_reconnecting_mid_session_delivers_its_accounting_once() {
    let world = world();
    runtime().block_on(async {
        let provider = world.provider().await;
        // Only deliveries send here: the cut below is this test's own.
        provider.set_linger(None);
        let credential = world.credential(1).await.unwrap();
        let session_id = credential.value().session_id;
        provider.next_credential(Duration::from_secs(10)).await.unwrap();
        for units in 1..=3 {
            provider
                .account(session_id, AccountingKind::INTERIM, usage(units))
                .unwrap();
        }
        assert_eq!(provider.deliver(Duration::from_secs(30)).await.unwrap().stored, 3);
        // Three more go out, and the connection drops before their acks come back.
        for units in 4..=6 {
            provider
                .account(session_id, AccountingKind::INTERIM, usage(units))
                .unwrap();
        }
        let cut = provider.deliver(Duration::ZERO).await.unwrap();
        assert_eq!(cut.sent, 3);
        provider.disconnect().await;
        // The next delivery reconnects and sends the same messages again.
        let again = provider.deliver(Duration::from_secs(30)).await.unwrap();
        assert_eq!(again.stored + cut.stored, 3, "{cut:?} {again:?}");
        assert_eq!(again.pending, 0);
        provider.account(session_id, AccountingKind::FINAL, usage(7)).unwrap();
        assert_eq!(provider.deliver(Duration::from_secs(30)).await.unwrap().stored, 1);
        provider.stop().await;
    });
    assert!(world.am.terminate(Duration::from_secs(60)));
    let stored = acct_tests::stored_messages(world.pki.data());
    let unique: std::collections::HashSet<_> = stored.iter().collect();
    assert_eq!(stored.len(), 7, "each message of the session stored");
    assert_eq!(unique.len(), 7, "none twice");
}

/// Wait (at most 30 s, polling every 10 ms) until `provider` holds no
/// unanswered message: the time from `since`.
async fn all_answered(provider: &ProviderNode, since: std::time::Instant) -> Duration {
    for _ in 0..3_000 {
        if provider.unacked_count() == 0 {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} messages still unanswered after 30 s", provider.unacked_count())
}

#[test]
fn a_provider_node_sends_its_accounting_by_itself_once_the_linger_has_passed() {
    let world = world();
    runtime().block_on(async {
        let provider = world.provider().await;
        assert_eq!(provider.linger(), Some(peer::linger::LINGER_DEFAULT), "on by default");
        let credential = world.credential(1).await.unwrap();
        let session_id = credential.value().session_id;
        provider.next_credential(Duration::from_secs(10)).await.unwrap();
        // Off: accounting waits for a delivery.
        provider.set_linger(None);
        assert_eq!(provider.linger(), None);
        provider.account(session_id, AccountingKind::INTERIM, usage(1)).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(provider.unacked_count(), 1, "nothing sent without a linger");
        // A one-second linger: what is accounted within it goes with the
        // first message, and nothing before the second is over.
        let accounted = std::time::Instant::now();
        provider.set_linger(Some(Duration::from_secs(1)));
        for units in 2..=10 {
            provider
                .account(session_id, AccountingKind::INTERIM, usage(units))
                .unwrap();
        }
        let waited = all_answered(&provider, accounted).await;
        assert!(
            waited >= Duration::from_secs(1),
            "sent before the linger was over: {waited:?}"
        );
        // The next delivery reports what the background sender was answered.
        let delivery = provider.deliver(Duration::from_secs(30)).await.unwrap();
        assert_eq!(
            (delivery.sent, delivery.stored, delivery.duplicates, delivery.pending),
            (0, 10, 0, 0),
            "{delivery:?}"
        );
        // The default linger; a delivery right after the Final (which the
        // background sender may have in flight already) counts it once.
        provider.set_linger(Some(peer::linger::LINGER_DEFAULT));
        provider.account(session_id, AccountingKind::FINAL, usage(11)).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let delivery = provider.deliver(Duration::from_secs(30)).await.unwrap();
        assert_eq!((delivery.stored, delivery.pending), (1, 0), "{delivery:?}");
        assert!(delivery.sent <= 1, "{delivery:?}");
        all_answered(&provider, std::time::Instant::now()).await;
        assert_eq!(provider.is_closed(session_id), Some(true));
        provider.stop().await;
    });
    assert!(world.am.terminate(Duration::from_secs(60)));
    let stored = acct_tests::stored_messages(world.pki.data());
    let unique: std::collections::HashSet<_> = stored.iter().collect();
    assert_eq!(stored.len(), 11, "ten interims and the final");
    assert_eq!(unique.len(), 11, "none twice");
}

#[test]
fn acct_demo_runs_the_whole_flow_and_exits_zero() {
    let folder = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(acct_tests::binary("acct"))
        .args(["demo", "--interims", "2", "--data"])
        .arg(folder.path().join("demo"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for step in [
        "[201]",
        "[202]",
        "[208]",
        "[206]",
        "[210→211]",
        "[214→216] interim 2",
        "[220→221]",
        "[receipt] provider-0001 got the AM's signed receipt: 3 messages, highest sequence 3, final stored",
        "[receipt] user-0001 asked for it",
        "[receipt] both receipts match the archive's rows",
        "[222→224]",
    ] {
        assert!(stdout.contains(step), "missing {step}:\n{stdout}");
    }
    assert_eq!(stdout.matches("verified").count(), 3, "{stdout}");
    assert!(stdout.contains("acct demo: every step succeeded"));
    // Both receipts are kept for `acct audit --receipts`, and it agrees.
    let receipts = folder.path().join("demo/receipts");
    assert_eq!(std::fs::read_dir(&receipts).unwrap().count(), 2);
    let audit = std::process::Command::new(acct_tests::binary("acct"))
        .arg("audit")
        .arg(folder.path().join("demo/cold"))
        .arg("--ca")
        .arg(folder.path().join("demo/pki").join(pki::CA_CERTIFICATE_FILE))
        .arg("--receipts")
        .arg(&receipts)
        .output()
        .unwrap();
    let audit_out = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.status.success(), "{audit_out}");
    assert!(
        audit_out.contains("2 receipts checked against the archive"),
        "{audit_out}"
    );
    assert!(audit_out.contains("node am-1: batches #1..=#"), "{audit_out}");
}

#[test]
fn users_check_who_they_talk_to_and_idle_providers_come_back() {
    let world = world();
    runtime().block_on(async {
        let provider = world.provider().await;
        // A provider's certificate chains to the CA too, but it is no AM.
        let service = provider.service_address().unwrap();
        match UserClient::connect(service, &world.pki.ca_der()).await {
            Err(ClientError::Connect(detail)) => assert!(detail.contains("not a certified am"), "{detail}"),
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("a user took a provider for the AM"),
        }
        // Nor do providers and the operator's admin clients: a server with
        // a provider's certificate cannot answer STORED in the AM's place.
        let identity = world.pki.identity(Role::Provider, "provider-0001");
        match AmClient::connect(service, &identity).await {
            Err(ClientError::Connect(detail)) => assert!(detail.contains("not a certified am"), "{detail}"),
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("a provider took another provider for the AM"),
        }
        let endpoint = peer::quic::shared_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let config = peer::quic::client_config(&identity).unwrap();
        match AmClient::connect_with(&endpoint, config, service).await {
            Err(ClientError::Connect(detail)) => assert!(detail.contains("not a certified am"), "{detail}"),
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("a provider took another provider for the AM"),
        }
        // An idle provider whose connection drops reconnects by itself:
        // users get credentials for its services again without it sending.
        provider.disconnect().await;
        let mut issued = false;
        for _ in 0..100 {
            if world.credential(1).await.is_ok() {
                issued = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(issued, "the idle provider did not come back");
        provider.stop().await;
    });
    assert!(world.am.terminate(Duration::from_secs(60)));
}

/// A request refused as "retry later" may be sent again with the same
/// bytes; a request that was issued a session is refused as a replay, and
/// still after the AM restarted (the request id is stored with the session).
#[test]
fn a_refused_request_can_be_retried_and_an_issued_one_cannot_be_replayed_even_after_a_restart() {
    let World { pki, am, provider_port } = world();
    let config = pki.pki().join("acct.toml");
    let identity = pki.identity(Role::User, "user-0001");
    let request = user::credential_request(
        ServiceId(1),
        RequestId(random16()),
        Nonce(random16()),
        now_ms(),
        Address::new(USER_ADDRESS).unwrap(),
        Bytes::from(identity.certificate_der.clone()),
        &identity.signing_key,
    )
    .unwrap();
    let runtime = runtime();
    let provider = runtime.block_on(async {
        let client = UserClient::connect(am.address, &pki.ca_der()).await.unwrap();
        // No provider yet: "retry later", and nothing is remembered.
        let (code, _) = refused(client.request_credential(&request).await);
        assert_eq!(code, ErrorCode::PROVIDER_UNAVAILABLE);
        let provider = ProviderNode::start(
            am.address,
            pki.identity(Role::Provider, "provider-0001"),
            pki.am_key(),
            ([127, 0, 0, 1], provider_port).into(),
        )
        .await
        .unwrap();
        // The same bytes again: issued.
        let credential = issued_once_the_provider_is_there(&client, &request).await;
        assert_eq!(credential.value().request_id, request.value().request_id);
        // And now a replay.
        let (code, detail) = refused(client.request_credential(&request).await);
        assert_eq!(code, ErrorCode::REPLAYED_REQUEST, "{detail}");
        client.close().await;
        provider
    });
    runtime.block_on(provider.stop());
    assert!(am.terminate(Duration::from_secs(60)));
    // After a restart, within the replay window: still a replay, before any
    // provider check.
    let am = AmProcess::start(pki.data(), &["--config", config.to_str().unwrap(), "--no-export"]);
    runtime.block_on(async {
        let client = UserClient::connect(am.address, &pki.ca_der()).await.unwrap();
        let (code, detail) = refused(client.request_credential(&request).await);
        assert_eq!(code, ErrorCode::REPLAYED_REQUEST, "{detail}");
        client.close().await;
    });
    assert!(am.terminate(Duration::from_secs(60)));
}

/// `sessions_max` holds however many requests race for the last places.
#[test]
fn the_session_bound_is_exact_under_concurrent_requests() {
    const SESSIONS_MAX: usize = 5;
    const REQUESTS: usize = 24;
    let world = world_with(|config| {
        let edited = config.replace("# sessions_max = 1000000", &format!("sessions_max = {SESSIONS_MAX}"));
        assert_ne!(edited, config, "the sample config names sessions_max");
        edited
    });
    runtime().block_on(async {
        let provider = world.provider().await;
        // The first session, once the provider's pushes are served.
        world.credential_once_the_provider_is_there(1).await;
        // Every client connected and its request signed first; then all
        // requests go at once.
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(REQUESTS + 1));
        let mut racing = tokio::task::JoinSet::new();
        for _ in 0..REQUESTS {
            let client = UserClient::connect(world.am.address, &world.pki.ca_der())
                .await
                .unwrap();
            let request = world.request(&world.user(), 1);
            let start = start.clone();
            racing.spawn(async move {
                start.wait().await;
                let answer = client.request_credential(&request).await;
                client.close().await;
                answer
            });
        }
        start.wait().await;
        let (mut issued, mut busy) = (1, 0);
        while let Some(answer) = racing.join_next().await {
            match answer.unwrap() {
                Ok(_) => issued += 1,
                Err(ClientError::Refused(error)) if error.code == ErrorCode::BUSY => busy += 1,
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(issued, SESSIONS_MAX, "sessions issued ({busy} refused BUSY)");
        assert_eq!(provider.session_count(), SESSIONS_MAX);
        provider.stop().await;
    });
    assert!(world.am.terminate(Duration::from_secs(60)));
}

/// One user holds at most `sessions_per_user_max` live sessions: one more
/// request is BUSY, other users are not affected, and a Final frees a place.
#[test]
fn one_user_holds_a_bounded_number_of_live_sessions() {
    const PER_USER: usize = 3;
    let world = world_with(|config| {
        let edited = config.replace(
            "# sessions_per_user_max = 1000",
            &format!("sessions_per_user_max = {PER_USER}"),
        );
        assert_ne!(edited, config, "the sample config names sessions_per_user_max");
        edited
    });
    runtime().block_on(async {
        let provider = world.provider().await;
        // The first one once the provider's pushes are served.
        let mut credentials = vec![world.credential_once_the_provider_is_there(1).await];
        while credentials.len() < PER_USER {
            credentials.push(world.credential(1).await.unwrap());
        }
        let (code, detail) = refused(world.credential(1).await);
        assert_eq!(code, ErrorCode::BUSY, "{detail}");
        assert!(detail.contains("sessions_per_user_max"), "{detail}");
        // Another user is served.
        let other = world.pki.identity(Role::User, "user-0002");
        let client = UserClient::connect(world.am.address, &world.pki.ca_der())
            .await
            .unwrap();
        client.request_credential(&world.request(&other, 1)).await.unwrap();
        client.close().await;
        // A Final closes one of the first user's sessions: a place is free.
        let session_id = credentials[0].value().session_id;
        provider.account(session_id, AccountingKind::FINAL, usage(1)).unwrap();
        let delivery = provider.deliver(Duration::from_secs(30)).await.unwrap();
        assert_eq!((delivery.stored, delivery.pending), (1, 0), "{delivery:?}");
        world.credential(1).await.unwrap();
        provider.stop().await;
    });
    assert!(world.am.terminate(Duration::from_secs(60)));
}
