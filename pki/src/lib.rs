//! The acct PKI: an operator CA and Ed25519 certificates for the AM, the
//! AS, providers and users, as `acct init` writes them. A crate of its own
//! so that the engine, loadgen and an operator's tooling share it without
//! compiling the server.
//!
//! Every certificate names its holder with one URI subject alternative name,
//! `urn:acct:<role>:<name>` (see `wire::certificate`), and its key is the
//! Ed25519 key that signs the holder's protocol messages. Keys are PKCS#8 PEM
//! files readable only by their owner (mode 0600).

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use wire::{Name, Role, SigningKey};

/// File names inside a PKI folder.
pub const CA_CERTIFICATE_FILE: &str = "ca.crt.pem";
/// The CA's private key. Keep it off production AM hosts.
pub const CA_KEY_FILE: &str = "ca.key.pem";

/// Why the PKI could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The folder already holds a CA key: refusing to overwrite an operator's CA.
    #[error("{0} already holds a CA key; refusing to overwrite it")]
    Exists(PathBuf),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A key file is not an Ed25519 PKCS#8 key.
    #[error("{path}: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: wire::ed25519::KeyError,
    },
    /// A PEM file does not hold a certificate.
    #[error("{0}: no PEM certificate")]
    NotPem(PathBuf),
    /// A name is not a valid `wire::Name`.
    #[error("invalid name {0:?}")]
    BadName(String),
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(String),
}

/// The operator CA, able to issue certificates.
pub struct CertificateAuthority {
    key: KeyPair,
    /// The key as written to [`CA_KEY_FILE`]: PKCS#8 version 1.
    key_pem: String,
    params: CertificateParams,
    certificate_pem: String,
}

/// A certificate and its key, in PEM.
#[derive(Clone)]
pub struct IssuedIdentity {
    /// Role and name in the certificate.
    pub role: Role,
    /// The holder's name.
    pub name: Name,
    /// The certificate, PEM.
    pub certificate_pem: String,
    /// The certificate, DER.
    pub certificate_der: Vec<u8>,
    /// The Ed25519 key, PKCS#8 PEM.
    pub key_pem: String,
    /// The same key, ready to sign.
    pub signing_key: SigningKey,
}

/// Where `acct init` puts each identity, relative to the PKI folder.
pub fn identity_paths(role: Role, name: &Name) -> (PathBuf, PathBuf) {
    let folder = match role {
        Role::User => "users",
        Role::Provider => "providers",
        Role::AccountingManager | Role::AccountingStorage => "",
    };
    let base = Path::new(folder);
    (
        base.join(format!("{name}.crt.pem")),
        base.join(format!("{name}.key.pem")),
    )
}

impl CertificateAuthority {
    /// A new CA with a fresh key, valid for ten years from now.
    pub fn generate() -> Result<Self, PkiError> {
        let signing_key = fresh_signing_key()?;
        let key = rcgen_key(&signing_key)?;
        let now = OffsetDateTime::now_utc();
        let mut params = ca_params();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let certificate_pem = params.self_signed(&key)?.pem();
        Ok(Self {
            key,
            key_pem: key_pem(&signing_key)?,
            params,
            certificate_pem,
        })
    }

    /// Load a CA written by [`CertificateAuthority::write`].
    pub fn load(folder: &Path) -> Result<Self, PkiError> {
        let key_path = folder.join(CA_KEY_FILE);
        let pem = read(&key_path)?;
        let signing_key =
            SigningKey::from_pkcs8_pem(&pem).map_err(|source| PkiError::Key { path: key_path, source })?;
        Ok(Self {
            key: rcgen_key(&signing_key)?,
            key_pem: key_pem(&signing_key)?,
            params: ca_params(),
            certificate_pem: read(&folder.join(CA_CERTIFICATE_FILE))?,
        })
    }

    /// The CA certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// Issue a certificate for `name` in `role`, valid for a year from now,
    /// with a fresh Ed25519 key.
    pub fn issue(&self, role: Role, name: &str) -> Result<IssuedIdentity, PkiError> {
        let now = OffsetDateTime::now_utc();
        self.issue_valid(role, name, now - Duration::hours(1), now + Duration::days(365))
    }

    /// Issue a certificate valid from `not_before` to `not_after` (tests
    /// use this for expired and not-yet-valid certificates).
    pub fn issue_valid(
        &self,
        role: Role,
        name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedIdentity, PkiError> {
        let name = Name::new(name).map_err(|_| PkiError::BadName(name.to_owned()))?;
        let signing_key = fresh_signing_key()?;
        let key = rcgen_key(&signing_key)?;
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, name.as_str());
        subject.push(DnType::OrganizationName, "acct development PKI");
        params.distinguished_name = subject;
        let uri = role.uri(&name);
        let mut alt_names = vec![SanType::URI(uri.as_str().try_into()?)];
        let mut usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if role != Role::User {
            // The AM, the AS and providers also serve TLS on loopback in
            // development (providers serve users; the AM serves providers).
            alt_names.push(SanType::DnsName("localhost".try_into()?));
            alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            alt_names.push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
            usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.subject_alt_names = alt_names;
        params.extended_key_usages = usages;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let issuer = Issuer::new(self.params.clone(), &self.key);
        let certificate = params.signed_by(&key, &issuer)?;
        Ok(IssuedIdentity {
            role,
            name,
            certificate_pem: certificate.pem(),
            certificate_der: certificate.der().to_vec(),
            key_pem: key_pem(&signing_key)?,
            signing_key,
        })
    }

    /// Write the CA certificate and key into `folder`.
    pub fn write(&self, folder: &Path) -> Result<(), PkiError> {
        fs::create_dir_all(folder).map_err(|source| io(folder, source))?;
        write_file(&folder.join(CA_CERTIFICATE_FILE), &self.certificate_pem, false)?;
        write_file(&folder.join(CA_KEY_FILE), &self.key_pem, true)
    }
}

impl IssuedIdentity {
    /// Write certificate and key under `folder` at [`identity_paths`].
    pub fn write(&self, folder: &Path) -> Result<(), PkiError> {
        let (certificate, key) = identity_paths(self.role, &self.name);
        let certificate = folder.join(certificate);
        if let Some(parent) = certificate.parent() {
            fs::create_dir_all(parent).map_err(|source| io(parent, source))?;
        }
        write_file(&certificate, &self.certificate_pem, false)?;
        write_file(&folder.join(key), &self.key_pem, true)
    }
}

/// What [`init`] made.
pub struct InitSummary {
    /// The PKI folder.
    pub folder: PathBuf,
    /// Identities issued.
    pub issued: Vec<(Role, Name)>,
}

/// The default names of the development identities.
pub fn provider_name(index: usize) -> String {
    format!("provider-{index:04}")
}

/// The default name of the `index`th development user.
pub fn user_name(index: usize) -> String {
    format!("user-{index:04}")
}

/// Make a development PKI in `folder`: CA, AM (`am-1`), AS (`storage-1`),
/// `providers` providers and `users` users. (`acct init` adds its config
/// file.)
pub fn init(folder: &Path, providers: usize, users: usize) -> Result<InitSummary, PkiError> {
    if folder.join(CA_KEY_FILE).exists() {
        return Err(PkiError::Exists(folder.to_path_buf()));
    }
    let ca = CertificateAuthority::generate()?;
    ca.write(folder)?;
    let mut issued = Vec::new();
    let mut wanted = vec![
        (Role::AccountingManager, "am-1".to_owned()),
        (Role::AccountingStorage, "storage-1".to_owned()),
    ];
    wanted.extend((1..=providers).map(|index| (Role::Provider, provider_name(index))));
    wanted.extend((1..=users).map(|index| (Role::User, user_name(index))));
    for (role, name) in wanted {
        let identity = ca.issue(role, &name)?;
        identity.write(folder)?;
        issued.push((role, identity.name));
    }
    Ok(InitSummary {
        folder: folder.to_path_buf(),
        issued,
    })
}

/// Read the DER of the first certificate in a PEM file.
pub fn read_certificate_der(path: &Path) -> Result<Vec<u8>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(path)
        .map(|der| der.to_vec())
        .map_err(|_| PkiError::NotPem(path.to_path_buf()))
}

/// Read an Ed25519 PKCS#8 PEM key file.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, PkiError> {
    SigningKey::from_pkcs8_pem(&read(path)?).map_err(|source| PkiError::Key {
        path: path.to_path_buf(),
        source,
    })
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, "acct development CA");
    subject.push(DnType::OrganizationName, "acct development PKI");
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn fresh_signing_key() -> Result<SigningKey, PkiError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|error| PkiError::Random(error.to_string()))?;
    let key = SigningKey::from_seed(&seed);
    seed = [0; 32];
    std::hint::black_box(&mut seed);
    Ok(key)
}

/// A key file's contents: PKCS#8 version 1, which OpenSSL and Python's
/// `cryptography` read.
fn key_pem(signing_key: &SigningKey) -> Result<String, PkiError> {
    signing_key.to_pkcs8_pem().map_err(|source| PkiError::Key {
        path: PathBuf::new(),
        source,
    })
}

fn rcgen_key(signing_key: &SigningKey) -> Result<KeyPair, PkiError> {
    let der = signing_key.to_pkcs8_der().map_err(|source| PkiError::Key {
        path: PathBuf::new(),
        source,
    })?;
    Ok(KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls_pki_types::PrivatePkcs8KeyDer::from(der),
        &rcgen::PKCS_ED25519,
    )?)
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| io(path, source))
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = secret;
    let mut file = options.open(path).map_err(|source| io(path, source))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| io(path, source))
}

fn io(path: &Path, source: std::io::Error) -> PkiError {
    PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now_s() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn issued_certificates_verify_against_the_ca() {
        let folder = tempfile::tempdir().unwrap();
        let summary = init(folder.path(), 2, 2).unwrap();
        assert_eq!(summary.issued.len(), 6);
        let ca_der = read_certificate_der(&folder.path().join(CA_CERTIFICATE_FILE)).unwrap();
        let ca = wire::TrustedCa::from_der(ca_der).unwrap();
        for (role, name) in &summary.issued {
            let (certificate, key) = identity_paths(*role, name);
            let der = read_certificate_der(&folder.path().join(certificate)).unwrap();
            let identity = ca.verify(&der, *role, now_s()).unwrap();
            assert_eq!(&identity.name, name);
            let signing_key = read_signing_key(&folder.path().join(key)).unwrap();
            assert_eq!(signing_key.public_key(), identity.public_key, "{name}");
        }
        // The same CA cannot be made twice in one folder.
        assert!(matches!(init(folder.path(), 1, 1), Err(PkiError::Exists(_))));
        // A loaded CA issues certificates that still chain.
        let loaded = CertificateAuthority::load(folder.path()).unwrap();
        let extra = loaded.issue(Role::Provider, "provider-0099").unwrap();
        assert!(ca.verify(&extra.certificate_der, Role::Provider, now_s()).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let folder = tempfile::tempdir().unwrap();
        init(folder.path(), 1, 1).unwrap();
        let mode = fs::metadata(folder.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
    }
}
