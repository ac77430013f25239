//! `acct demo`: the patent's whole flow on 127.0.0.1 in one command: an AM
//! (with its embedded storage), one provider, one user, a service session
//! with interim accounting every second, a final accounting, the export.
//! Prints each step as it happens, then the session's records as the
//! Accounting Storage holds them. Exits 0 only if every step succeeded.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use peer::net::{UserClient, request_service};
use peer::node::ProviderNode;
use peer::quic::ClientIdentity;
use wire::{
    AccountingKind, Address, DataFields, Name, Nonce, RequestId, Role, ServiceEntry, ServiceId, TimeOfDay, Usage,
};

use super::serve::{ServeArgs, settings};
use crate::am::credentials::ServiceDirectory;
use crate::clock::now_ms;

/// Arguments of `acct demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the data (RocksDB, PKI, Parquet) in DIR instead of a temp folder
    /// removed at the end.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Interim accounting messages, one per second.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub interims: u64,
}

fn step(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn random16() -> anyhow::Result<[u8; 16]> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|error| anyhow::anyhow!("randomness: {error}"))?;
    Ok(bytes)
}

/// Run the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let (data, temporary) = match &args.data {
        Some(folder) => (folder.clone(), false),
        None => (
            std::env::temp_dir().join(format!("acct-demo-{}", hex::encode(random16()?))),
            true,
        ),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = runtime.block_on(demo(&data, args.interims));
    if temporary {
        let _ = std::fs::remove_dir_all(&data);
    }
    match &result {
        Ok(()) => step("acct demo: every step succeeded"),
        Err(error) => step(&format!("acct demo: FAILED: {error:#}")),
    }
    result
}

async fn demo(data: &std::path::Path, interims: u64) -> anyhow::Result<()> {
    // The AM on the embedded default, with one service whose provider
    // serves users on a port chosen now.
    let provider_port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let provider_address: SocketAddr = ([127, 0, 0, 1], provider_port).into();
    let mut am_settings = settings(&ServeArgs {
        config: None,
        data: Some(data.to_path_buf()),
        listen: Some("127.0.0.1:0".parse()?),
        metrics: None,
        storage: None,
        export_interval_ms: None,
        export_records_max: None,
        no_export: false,
    })?;
    let pki_folder = data.join("pki");
    let service = ServiceEntry {
        service_id: ServiceId(1),
        name: Name::new("demo-call")?,
        provider: Name::new("provider-0001")?,
        provider_address: Address::new(provider_address.to_string())?,
        unit: Name::new("seconds")?,
        policy: wire::Policy {
            valid_from_ms: 0,
            valid_until_ms: 3_600_000,
            time_of_day: TimeOfDay::ANY,
            requests_max: 10,
            address_change_allowed: false,
            required_data: DataFields::UNITS.union(DataFields::INTERVAL),
            interim_interval_max_s: 5,
        },
    };
    am_settings.services = ServiceDirectory::from_entries(vec![service.clone()]);
    let (address_sender, address) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let am = tokio::spawn(crate::am::server::run(
        am_settings,
        async move {
            let _ = stopped.await;
        },
        move |address| {
            let _ = address_sender.send(address);
        },
    ));
    let am_address = match address.await {
        Ok(address) => address,
        Err(_) => return Err(am.await?.err().unwrap_or_else(|| anyhow::anyhow!("the AM stopped"))),
    };
    step(&format!("[AM] listening on {am_address}; data in {}", data.display()));

    let identity = |role: Role, name: &str| -> anyhow::Result<ClientIdentity> {
        let (certificate, key) = pki::identity_paths(role, &Name::new(name)?);
        Ok(ClientIdentity {
            ca_der: pki::read_certificate_der(&pki_folder.join(pki::CA_CERTIFICATE_FILE))?,
            certificate_der: pki::read_certificate_der(&pki_folder.join(certificate))?,
            signing_key: pki::read_signing_key(&pki_folder.join(key))?,
        })
    };
    let am_key = identity(Role::AccountingManager, "am-1")?.signing_key.public_key();
    let provider_identity = identity(Role::Provider, "provider-0001")?;
    let user_identity = identity(Role::User, "user-0001")?;
    let ca_der = user_identity.ca_der.clone();

    let provider = ProviderNode::start(am_address, provider_identity, am_key, provider_address)
        .await
        .context("starting the provider")?;
    step(&format!(
        "[SP] provider-0001 connected to the AM; serving users on {provider_address}"
    ));

    let user = UserClient::connect(am_address, &ca_der)
        .await
        .context("user connecting")?;
    let services = user.services().await.context("201 service list")?;
    for entry in &services {
        step(&format!(
            "[201] user-0001 reads the service list: service {} \"{}\" by {} at {}, charged in {}",
            entry.service_id.0, entry.name, entry.provider, entry.provider_address, entry.unit
        ));
    }
    let user_address = Address::new("127.0.0.1:5000")?;
    let request_id = RequestId(random16()?);
    let request = peer::user::credential_request(
        service.service_id,
        request_id,
        Nonce(random16()?),
        now_ms(),
        user_address.clone(),
        Bytes::from(user_identity.certificate_der.clone()),
        &user_identity.signing_key,
    )?;
    step("[202] user-0001 sends a Service Credential Request for service 1 (signed, with its certificate)");
    let credential = user.request_credential(&request).await.context("202 → 206")?;
    peer::user::check_credential(&credential, request_id, &am_key)?;
    let session_id = credential.value().session_id;
    user.close().await;
    let pushed = provider
        .next_credential(Duration::from_secs(5))
        .await
        .context("208: the provider did not receive the User Credential")?;
    anyhow::ensure!(pushed == session_id, "208: the provider got another session");
    step(&format!(
        "[208] provider-0001 holds the User Credential for session {session_id} (it confirmed receipt to the AM)"
    ));
    step(&format!(
        "[206] user-0001 holds the Service Credential: session {session_id}, provider at {}, valid for 1 h; signature checked",
        credential.value().provider_address
    ));

    let service_request = peer::user::service_request(credential.value(), user_address, Nonce(random16()?), now_ms())?;
    let proof = request_service(provider_address, &ca_der, &service_request)
        .await
        .context("210 → 211")?;
    peer::user::check_proof(&proof, service_request.value(), credential.value())?;
    step(
        "[210→211] user-0001 sends its Service Request; provider-0001 validates it and proves it holds the session key",
    );

    let mut last = now_ms();
    for index in 1..=interims {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = now_ms();
        let units = (now - last) / 1000;
        provider.account(
            session_id,
            AccountingKind::INTERIM,
            Usage {
                units: Some(units.max(1)),
                interval_ms: Some((last, now)),
                ..Usage::default()
            },
        )?;
        last = now;
        let delivery = provider.deliver(Duration::from_secs(10)).await?;
        anyhow::ensure!(
            delivery.stored == 1 && delivery.pending == 0 && delivery.refused.is_empty(),
            "214: interim {index} was not acked as stored: {delivery:?}"
        );
        step(&format!(
            "[214→216] interim {index}: {} second(s) → acked STORED",
            units.max(1)
        ));
    }
    let now = now_ms();
    provider.account(
        session_id,
        AccountingKind::FINAL,
        Usage {
            units: Some(1),
            interval_ms: Some((last, now)),
            ..Usage::default()
        },
    )?;
    let delivery = provider.deliver(Duration::from_secs(10)).await?;
    anyhow::ensure!(
        delivery.stored == 1 && delivery.pending == 0,
        "220: the final accounting was not acked as stored: {delivery:?}"
    );
    anyhow::ensure!(
        provider.is_closed(session_id) == Some(true),
        "220: the session is not closed"
    );
    step("[220→221] final accounting → acked STORED; the session is closed");
    let pushed_receipt = provider
        .wait_receipt(session_id, Duration::from_secs(10))
        .await
        .context("the AM pushed no receipt for the closed session")?;
    step(&format!(
        "[receipt] provider-0001 got the AM's signed receipt: {}; signature checked",
        describe(pushed_receipt.value())
    ));
    let user = UserClient::connect(am_address, &ca_der)
        .await
        .context("user connecting for its receipt")?;
    let user_receipt = user
        .request_receipt(session_id, &credential.value().session_key, &am_key)
        .await
        .context("the user's receipt request")?;
    user.close().await;
    anyhow::ensure!(
        wire::SessionReceipt {
            issued_ms: 0,
            ..user_receipt.value().clone()
        } == wire::SessionReceipt {
            issued_ms: 0,
            ..pushed_receipt.value().clone()
        },
        "the user's receipt differs from the provider's"
    );
    step(&format!(
        "[receipt] user-0001 asked for it (authenticated with its session key): {}; the same as the provider's",
        describe(user_receipt.value())
    ));
    let receipts = data.join("receipts");
    std::fs::create_dir_all(&receipts)?;
    for (party, receipt) in [("provider", &pushed_receipt), ("user", &user_receipt)] {
        std::fs::write(receipts.join(format!("{session_id}-{party}.receipt")), receipt.body())?;
    }
    provider.stop().await;

    let _ = stop.send(());
    am.await.context("the AM task")??;
    let cold = am_settings_cold_folder(data);
    let mut rows = Vec::new();
    for path in archive::parquet_files(&cold)? {
        archive::read_file(&path, |row| {
            if row.session_id == session_id {
                rows.push(row);
            }
        })?;
    }
    step(&format!(
        "[222→224] the AM stopped; it exported the session to the Accounting Storage ({})",
        cold.display()
    ));
    anyhow::ensure!(
        rows.len() as u64 == interims + 1,
        "the storage holds {} records of the session, expected {}",
        rows.len(),
        interims + 1
    );
    let mut receipt_rows: Vec<archive::receipts::ReceiptRow> =
        rows.iter().map(archive::receipts::ReceiptRow::of).collect();
    let comparison = archive::receipts::compare(user_receipt.value(), &mut receipt_rows);
    anyhow::ensure!(
        comparison.differences.is_empty() && comparison.later_rows == 0,
        "the receipt and the archive differ: {comparison:?}"
    );
    step(&format!(
        "[receipt] both receipts match the archive's rows (count, sums, digest); kept in {}: check them any time with `acct audit {} --ca {} --receipts {}`",
        receipts.display(),
        cold.display(),
        pki_folder.join(pki::CA_CERTIFICATE_FILE).display(),
        receipts.display()
    ));
    step(&format!("records of session {session_id}:"));
    step("  message_id  kind     provider       user       service  units  interval_ms                  signature");
    for row in &rows {
        row.verify()
            .map_err(|problem| anyhow::anyhow!("record {}: {problem}", row.message_id))?;
        let interval = row
            .interval_ms
            .map_or_else(|| "-".to_owned(), |(start, end)| format!("{start}..{end}"));
        step(&format!(
            "  {:>10}  {:<7}  {:<13}  {:<9}  {:>7}  {:>5}  {:<27}  verified",
            row.message_id,
            archive::kind_name(row.kind),
            row.provider_id,
            row.user_id,
            row.service_id,
            row.units.unwrap_or(0),
            interval
        ));
    }
    Ok(())
}

/// A receipt in one line.
fn describe(receipt: &wire::SessionReceipt) -> String {
    format!(
        "{} messages, highest sequence {}, final {}, {} units, digest {}…",
        receipt.message_count,
        receipt.highest_sequence,
        if receipt.final_stored { "stored" } else { "not stored" },
        receipt.sums.units,
        hex::encode(receipt.digest.0.get(..8).unwrap_or_default())
    )
}

fn am_settings_cold_folder(data: &std::path::Path) -> PathBuf {
    data.join(super::serve::DEFAULT_COLD_DIR)
}
