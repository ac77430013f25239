//! TLS 1.3 for QUIC servers (the AM and the AS): client certificates from
//! the operator's CA required, ALPN `acct/1`, and reading who connected.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

/// The ALPN of protocol version 1.
pub const ALPN: &[u8] = b"acct/1";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the certificates or keys.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn refused the rustls config.
    #[error("quic crypto: {0}")]
    Quic(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_der: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec()))?;
    Ok(Arc::new(roots))
}

/// Whether a client must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client presents a certificate from the CA (the AS).
    Required,
    /// A client may connect without one (the AM: users authenticate inside
    /// their Service Credential Request, a4 and a5); a certificate that is
    /// presented must still chain to the CA.
    Optional,
}

/// A QUIC server config (AM or AS): TLS 1.3 only, ALPN `acct/1`, client
/// certificates required and verified against the CA during the handshake.
pub fn server_config(
    ca_der: &[u8],
    certificate_der: Vec<u8>,
    key_pkcs8_der: Vec<u8>,
    transport: Arc<quinn::TransportConfig>,
    client_auth: ClientAuth,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let builder = WebPkiClientVerifier::builder_with_provider(roots(ca_der)?, provider.clone());
    let verifier = match client_auth {
        ClientAuth::Required => builder.build()?,
        ClientAuth::Optional => builder.allow_unauthenticated().build()?,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(certificate_der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8_der)),
        )?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(config).map_err(|error| TlsError::Quic(error.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport);
    Ok(server)
}

/// The verified identity of a connection's peer certificate, if any.
pub fn peer_identity(
    connection: &quinn::Connection,
    ca: &wire::TrustedCa,
    now_s: u64,
) -> Option<Result<wire::CertifiedIdentity, wire::CertificateError>> {
    connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().map(|certificate| ca.identify(certificate, now_s)))
}

/// What a server may put between QUIC and its socket, and how it makes
/// connection IDs: the AM's Initial gate does both (it drops Initials of
/// backed-off addresses off the socket, and learns each ID the endpoint
/// issues). Without hooks, the socket is used as it is and IDs come from
/// quinn's keyed generator.
pub trait EndpointHooks: Send + Sync {
    /// The generator of the endpoint's connection IDs, keyed by `cid_key`
    /// (stable across restarts, see [`restart_stable_keys`]).
    fn cid_generator(&self, cid_key: u64) -> Box<dyn quinn_proto::ConnectionIdGenerator>;
    /// The socket QUIC reads and writes.
    fn wrap_socket(&self, socket: Arc<dyn quinn::AsyncUdpSocket>) -> Arc<dyn quinn::AsyncUdpSocket>;
}

/// The least time between two stateless resets a server endpoint sends:
/// at most 10,000 a second.
pub const STATELESS_RESET_INTERVAL: std::time::Duration = std::time::Duration::from_micros(100);

/// A QUIC server endpoint on `socket` (made with `peer::quic::quic_socket`
/// or `quic_socket_sized`, for their kernel buffers) serving
/// `certificate_der` / `key` with `transport`, client certificates checked
/// against the CA as `client_auth` says, its connection IDs and stateless
/// resets keyed by `key` (so a restarted server recognises its
/// predecessor's connections), with the server's `hooks` if any.
#[allow(clippy::too_many_arguments)]
pub fn server_endpoint(
    socket: std::net::UdpSocket,
    ca_der: &[u8],
    certificate_der: Vec<u8>,
    key: &wire::SigningKey,
    transport: quinn::TransportConfig,
    client_auth: ClientAuth,
    hooks: Option<Arc<dyn EndpointHooks>>,
) -> anyhow::Result<quinn::Endpoint> {
    use anyhow::Context as _;
    use quinn::Runtime as _;
    let key_der = key.to_pkcs8_der().context("encoding the key")?;
    let server_config = server_config(ca_der, certificate_der, key_der, Arc::new(transport), client_auth)
        .context("building the TLS configuration")?;
    let listen = socket.local_addr().context("reading the socket's address")?;
    let (reset_key, cid_key) = restart_stable_keys(key)?;
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
    // After a restart every peer of the old process learns that its
    // connection is gone from the stateless reset its next packet gets.
    // quinn sends at most one every 20 ms by default: 50 a second, so that
    // 10,000 providers took minutes to notice and reconnect (a reset storm
    // measured by the harness). A reset is smaller than the packet that
    // caused it (no amplification, no loop) and costs one HMAC and one
    // send: allow [`STATELESS_RESET_INTERVAL`]'s 10,000 a second.
    endpoint_config.min_reset_interval(STATELESS_RESET_INTERVAL);
    match &hooks {
        Some(hooks) => {
            let hooks = hooks.clone();
            endpoint_config.cid_generator(move || hooks.cid_generator(cid_key))
        }
        None => {
            endpoint_config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)))
        }
    };
    let mut socket = quinn::TokioRuntime
        .wrap_udp_socket(socket)
        .with_context(|| format!("listening on {listen}"))?;
    if let Some(hooks) = &hooks {
        socket = hooks.wrap_socket(socket);
    }
    quinn::Endpoint::new_with_abstract_socket(
        endpoint_config,
        Some(server_config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .with_context(|| format!("listening on {listen}"))
}

/// The server's QUIC stateless-reset key and connection-id key, derived
/// from its signing key so that they are the same after a restart. A
/// restarted AM (or AS) then recognises the connection ids it issued before
/// a crash (quinn drops packets whose id fails its keyed check) and answers
/// them with a valid stateless reset: its clients learn at once that the
/// connection is gone and reconnect, instead of waiting for their idle
/// timeout. The derivation is one-way (SHA-256 over a label and the private
/// key): the keys reveal nothing of the signing key, and without it nobody
/// can forge a reset.
pub fn restart_stable_keys(key: &wire::SigningKey) -> anyhow::Result<(ring::hmac::Key, u64)> {
    use anyhow::Context as _;
    use sha2::Digest as _;
    let der = key.to_pkcs8_der().context("encoding the key")?;
    let derive = |label: &[u8]| {
        let mut hasher = sha2::Sha256::new();
        hasher.update(label);
        hasher.update(der.as_slice());
        hasher.finalize()
    };
    let reset = derive(b"acct QUIC stateless reset key v1\0");
    let cid = derive(b"acct QUIC connection id key v1\0");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid[..8]);
    Ok((
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset.as_slice()),
        u64::from_le_bytes(cid_key),
    ))
}

/// The DER of a connection's peer certificate, if it presented one.
pub fn peer_certificate(connection: &quinn::Connection) -> Option<Vec<u8>> {
    connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().map(|certificate| certificate.to_vec()))
}
