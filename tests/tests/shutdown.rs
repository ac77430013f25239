//! How `acct serve` and `acct storage` stop: SIGTERM at any moment after
//! they announce readiness drains and exits 0, never the default action of
//! the signal (death by signal 15).

use std::time::Duration;

use acct_tests::{AmProcess, TestPki, free_udp_port};

/// Tries per process kind: the race this guards against lost 1 of 3 tries.
const TRIES: usize = 20;

#[test]
fn sigterm_right_after_the_listening_line_drains_and_exits_zero() {
    let pki = TestPki::new(1, 1);
    for attempt in 0..TRIES {
        let am = AmProcess::start(pki.data(), &[]);
        assert!(
            am.terminate(Duration::from_secs(60)),
            "acct serve did not exit 0 on a SIGTERM right after it listened (try {attempt})"
        );
    }
    let folder = tempfile::tempdir().unwrap();
    for attempt in 0..TRIES {
        let listen = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let storage = AmProcess::start_storage(&pki.pki(), folder.path(), listen, &[]);
        assert!(
            storage.terminate(Duration::from_secs(60)),
            "acct storage did not exit 0 on a SIGTERM right after it listened (try {attempt})"
        );
    }
}

/// Accounting messages one stuck provider sends.
const STUCK_MESSAGES: usize = 3_000;

/// A provider that stops reading its acks makes the drain deadline expire
/// (its stream's ack writer waits on flow control for ever). The AM must
/// still stop its pipeline, export everything committed and exit 0.
#[test]
fn sigterm_with_a_provider_that_reads_no_acks_exports_everything_and_exits_zero() {
    use acct_tests::{cold_rows, now_ms, open_sessions, runtime};
    use peer::quic::{AccountingStream, AmClient, Received};
    use wire::{AccountingKind, Role, Usage};

    let pki = TestPki::new(1, 1);
    let config = pki.pki().join("acct.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("# drain_deadline_s = 10", "drain_deadline_s = 1");
    assert!(text.contains("\ndrain_deadline_s = 1"));
    std::fs::write(&config, text).unwrap();
    let cold = pki.pki().join("cold");
    let runtime = runtime();
    let mut rows_before = 0;
    for attempt in 0..TRIES {
        let am = AmProcess::start(pki.data(), &["--config", config.to_str().unwrap()]);
        let stuck = runtime.block_on(async {
            let admin = AmClient::connect(am.address, &pki.identity(Role::AccountingManager, "am-1"))
                .await
                .unwrap();
            let mut sessions = open_sessions(&pki, &admin, "provider-0001", 1).await;
            admin.close().await;
            let now = now_ms();
            let messages: Vec<_> = (0..STUCK_MESSAGES)
                .map(|_| {
                    sessions[0]
                        .account(
                            AccountingKind::INTERIM,
                            Usage {
                                units: Some(1),
                                interval_ms: Some((now - 1_000, now)),
                                ..Usage::default()
                            },
                        )
                        .unwrap()
                })
                .collect();
            // Its stream takes 256 bytes of acks, then reads no more.
            let identity = pki.identity(Role::Provider, "provider-0001");
            let mut client_config = peer::quic::client_config(&identity).unwrap();
            let mut transport = quinn::TransportConfig::default();
            transport.stream_receive_window(256u32.into());
            client_config.transport_config(std::sync::Arc::new(transport));
            let endpoint = peer::quic::shared_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
            let client = AmClient::connect_with(&endpoint, client_config, am.address)
                .await
                .unwrap();
            let AccountingStream {
                mut sender,
                mut receiver,
            } = client.open_accounting().await.unwrap();
            let sending = tokio::spawn(async move {
                let _ = sender.send(&messages).await;
                sender
            });
            // One ack read: the AM has committed; then nothing more is read.
            let first = tokio::time::timeout(Duration::from_secs(60), receiver.next()).await;
            assert!(
                matches!(first, Ok(Ok(Some(Received::Acks(_))))),
                "try {attempt}: {first:?}"
            );
            (endpoint, client, receiver, sending)
        });
        assert!(
            am.terminate(Duration::from_secs(120)),
            "try {attempt}: acct serve did not exit 0 with a provider that reads no acks"
        );
        runtime.block_on(async move { drop(stuck) });
        // Everything committed left the hot store for the cold one.
        let store = acct::am::store::Store::open(&acct::cli::serve::database_folder(pki.data())).unwrap();
        let hot = store.records(0, usize::MAX).unwrap().len();
        drop(store);
        assert_eq!(hot, 0, "try {attempt}: records left unexported");
        let rows = cold_rows(&cold).len();
        assert!(rows > rows_before, "try {attempt}: nothing exported");
        rows_before = rows;
    }
}
