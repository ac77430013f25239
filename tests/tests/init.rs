//! `acct init` as a real process: the PKI it writes is usable by the wire
//! crate's checks and by the peer library, end to end through files.

use std::time::{SystemTime, UNIX_EPOCH};

use acct_tests::run_acct;
use bytes::Bytes;
use wire::{Address, Nonce, RequestId, Role, ServiceId, TrustedCa};

fn now() -> (u64, u64) {
    let elapsed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (elapsed.as_secs(), elapsed.as_millis() as u64)
}

#[test]
fn init_writes_a_pki_that_the_protocol_accepts() {
    let folder = tempfile::tempdir().unwrap();
    let pki_folder = folder.path().join("pki");
    let output = run_acct(&["init", pki_folder.to_str().unwrap(), "--providers", "3", "--users", "2"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("7 identities"), "{stdout}");

    let ca = TrustedCa::from_der(pki::read_certificate_der(&pki_folder.join("ca.crt.pem")).unwrap()).unwrap();
    let (now_s, now_ms) = now();
    for (role, name) in [
        (Role::AccountingManager, "am-1"),
        (Role::AccountingStorage, "storage-1"),
        (Role::Provider, "provider-0003"),
        (Role::User, "user-0002"),
    ] {
        let name = wire::Name::new(name).unwrap();
        let (certificate, _) = pki::identity_paths(role, &name);
        let der = pki::read_certificate_der(&pki_folder.join(certificate)).unwrap();
        assert_eq!(ca.verify(&der, role, now_s).unwrap().name, name);
    }

    // A user signs a credential request with the files init wrote; the AM's
    // check accepts it and names the user.
    let name = wire::Name::new("user-0001").unwrap();
    let (certificate, key) = pki::identity_paths(Role::User, &name);
    let der = pki::read_certificate_der(&pki_folder.join(certificate)).unwrap();
    let signing_key = pki::read_signing_key(&pki_folder.join(key)).unwrap();
    let request = peer::user::credential_request(
        ServiceId(1),
        RequestId([1; 16]),
        Nonce([2; 16]),
        now_ms,
        Address::new("127.0.0.1:5000").unwrap(),
        Bytes::from(der),
        &signing_key,
    )
    .unwrap();
    assert_eq!(ca.verify_credential_request(&request, now_s).unwrap().name, name);
    // A provider's certificate is not a user's.
    let (provider_certificate, _) = pki::identity_paths(Role::Provider, &wire::Name::new("provider-0001").unwrap());
    let provider_der = pki::read_certificate_der(&pki_folder.join(provider_certificate)).unwrap();
    assert!(ca.verify(&provider_der, Role::User, now_s).is_err());

    // The config file init wrote parses and points at the files.
    let config = acct::config::Config::load(&pki_folder.join("acct.toml")).unwrap();
    assert!(config.pki.certificate.exists() && config.pki.key.exists() && config.pki.ca_certificate.exists());

    // Running init again on the same folder refuses to replace the CA.
    let again = run_acct(&["init", pki_folder.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
}

#[test]
fn init_rejects_bad_arguments() {
    let output = run_acct(&["init"]);
    assert!(!output.status.success());
    let output = run_acct(&["init", "/tmp/x", "--providers", "many"]);
    assert!(!output.status.success());
}

/// Operators inspect and rotate keys with OpenSSL: every key file `acct
/// init` writes, the CA's included, is one `openssl pkey` reads, and it names
/// the same public key as the certificate.
#[test]
fn openssl_reads_every_key_file_init_writes() {
    let folder = tempfile::tempdir().unwrap();
    let pki_folder = folder.path().join("pki");
    let output = run_acct(&["init", pki_folder.to_str().unwrap(), "--providers", "1", "--users", "1"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut keys = Vec::new();
    let mut folders = vec![pki_folder.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.to_string_lossy().ends_with(".key.pem") {
                keys.push(path);
            }
        }
    }
    assert!(keys.len() >= 5, "{keys:?}");
    for key in keys {
        let output = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&key)
            .output()
            .expect("openssl (scripts/install-deps.sh installs it)");
        assert!(
            output.status.success(),
            "openssl pkey refused {}: {}",
            key.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        // The SubjectPublicKeyInfo's last 32 bytes are the Ed25519 key.
        let public = pki::read_signing_key(&key).unwrap().public_key();
        assert!(output.stdout.ends_with(public.as_bytes()), "{}", key.display());
    }
}

/// `acct init --partitions 3`: three AM identities, a config per node
/// naming its own certificate, address and data folder, and one cluster
/// map in every config and in `cluster.toml`.
#[test]
fn init_with_partitions_writes_a_config_per_node_and_one_map() {
    let folder = tempfile::tempdir().unwrap();
    let pki_folder = folder.path().join("pki");
    let output = run_acct(&["init", pki_folder.to_str().unwrap(), "--partitions", "3"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let ca = TrustedCa::from_der(pki::read_certificate_der(&pki_folder.join("ca.crt.pem")).unwrap()).unwrap();
    let (now_s, _) = now();
    let mut maps = Vec::new();
    for (id, file) in [(1u16, "acct.toml"), (2, "am-2.toml"), (3, "am-3.toml")] {
        let config = acct::config::Config::load(&pki_folder.join(file)).unwrap();
        let name = format!("am-{id}");
        assert_eq!(config.node.name, name);
        let der = pki::read_certificate_der(&config.pki.certificate).unwrap();
        assert_eq!(
            ca.verify(&der, Role::AccountingManager, now_s).unwrap().name.as_str(),
            name
        );
        assert_eq!(config.am.listen.port(), 5432 + id);
        let map = config.cluster.as_ref().unwrap().map().unwrap();
        let own = map.by_name(&wire::Name::new(name.as_str()).unwrap()).unwrap();
        assert_eq!(own.id, wire::PartitionId(id));
        assert_eq!(own.address.as_str(), config.am.listen.to_string());
        maps.push(map);
    }
    assert!(maps.windows(2).all(|pair| pair[0] == pair[1]), "the nodes' maps differ");
    let alone = std::fs::read_to_string(pki_folder.join("cluster.toml")).unwrap();
    let parsed: toml::Value = toml::from_str(&alone).unwrap();
    assert_eq!(parsed["cluster"]["partitions"].as_array().unwrap().len(), 3);
}
