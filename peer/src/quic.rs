//! A provider's (or the operator's) QUIC connection to the AM: mutual TLS
//! 1.3 with a certificate from the operator's CA, ALPN `acct/1`.
//!
//! Accounting goes on long-lived bidirectional streams: frames out, acks
//! back on the same stream, many messages in flight. [`AccountingStream`]
//! splits into a sender and an ack receiver so both can run at once.

use std::borrow::Borrow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use wire::limits::SMALL_FRAME_BODY_BYTES_MAX;
use wire::{
    Accounting, AckEntry, AdminOpenSession, DecodeError, ErrorMessage, FrameDecoder, Message, Signed, SigningKey,
    UserCredential,
};

/// The ALPN of protocol version 1.
pub const ALPN: &[u8] = b"acct/1";

/// The name the AM's certificate is checked against.
pub const AM_SERVER_NAME: &str = "localhost";

/// Why talking to the AM failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TLS configuration refused the certificates or key.
    #[error("tls: {0}")]
    Tls(String),
    /// Connecting failed (handshake refused, unreachable).
    #[error("connect: {0}")]
    Connect(String),
    /// The connection or stream failed.
    #[error("connection: {0}")]
    Connection(String),
    /// The AM sent bytes that do not decode.
    #[error("the AM sent a malformed frame: {0}")]
    Decode(#[from] DecodeError),
    /// The AM answered with an Error message.
    #[error("the AM answered {:?}: {}", .0.code, .0.detail)]
    Refused(ErrorMessage),
    /// The AM answered with a message that makes no sense here.
    #[error("unexpected message type 0x{0:02x}")]
    Unexpected(u8),
    /// The request belongs to another AM partition: send it there
    /// (nothing was stored or consumed here).
    #[error("ask partition {} ({}) at {}", .0.partition, .0.node, .0.address)]
    Redirect(wire::Redirect),
}

/// Certificates and key of the connecting party.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The operator CA, DER (verifies the AM).
    pub ca_der: Vec<u8>,
    /// This party's certificate, DER.
    pub certificate_der: Vec<u8>,
    /// This party's Ed25519 key.
    pub signing_key: SigningKey,
}

/// A connection to the AM.
pub struct AmClient {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    /// Whether the endpoint was made for this connection alone.
    owns_endpoint: bool,
}

impl AmClient {
    /// Connect to the AM at `address` (loopback or not) with `identity`, on
    /// an endpoint (UDP socket) of its own.
    pub async fn connect(address: SocketAddr, identity: &ClientIdentity) -> Result<Self, ClientError> {
        let endpoint = client_endpoint(identity, address.is_ipv6())?;
        let mut client = Self::connect_on(&endpoint, address).await?;
        client.owns_endpoint = true;
        Ok(client)
    }

    /// Connect on a shared endpoint made by [`client_endpoint`]: many
    /// connections, one socket.
    pub async fn connect_on(endpoint: &quinn::Endpoint, address: SocketAddr) -> Result<Self, ClientError> {
        let endpoint = endpoint.clone();
        let connection = endpoint
            .connect(address, AM_SERVER_NAME)
            .map_err(|error| ClientError::Connect(error.to_string()))?
            .await
            .map_err(|error| ClientError::Connect(error.to_string()))?;
        Ok(Self {
            endpoint,
            connection,
            owns_endpoint: false,
        })
    }

    /// Connect on a shared endpoint as the party of `config` (made by
    /// [`client_config`]): many parties, each with its own certificate, one
    /// socket.
    pub async fn connect_with(
        endpoint: &quinn::Endpoint,
        config: quinn::ClientConfig,
        address: SocketAddr,
    ) -> Result<Self, ClientError> {
        let connection = endpoint
            .connect_with(config, address, AM_SERVER_NAME)
            .map_err(|error| ClientError::Connect(error.to_string()))?
            .await
            .map_err(|error| ClientError::Connect(error.to_string()))?;
        Ok(Self {
            endpoint: endpoint.clone(),
            connection,
            owns_endpoint: false,
        })
    }

    /// Open a stream for accounting.
    pub async fn open_accounting(&self) -> Result<AccountingStream, ClientError> {
        open_accounting_on(&self.connection).await
    }

    /// A handle that opens accounting streams on this connection from
    /// other tasks.
    pub fn stream_opener(&self) -> StreamOpener {
        StreamOpener {
            connection: self.connection.clone(),
        }
    }

    /// Ask the AM to open a session (the operator's admin role only).
    pub async fn open_session(&self, request: &AdminOpenSession) -> Result<Signed<UserCredential>, ClientError> {
        let stream = self.open_accounting().await?;
        let (mut sender, mut receiver) = (stream.sender, stream.receiver);
        let mut frame = BytesMut::new();
        request.encode_frame(&mut frame);
        sender.send_raw(&frame).await?;
        let answer = receiver.next_message().await?;
        let _ = sender.finish();
        match answer {
            Some(Message::UserCredential(credential)) => Ok(credential),
            Some(Message::Redirect(redirect)) => Err(ClientError::Redirect(redirect)),
            Some(Message::Error(error)) => Err(ClientError::Refused(error)),
            Some(other) => Err(ClientError::Unexpected(other.message_type().0)),
            None => Err(ClientError::Connection("stream ended without an answer".into())),
        }
    }

    /// Ask the AM which messages its hot store holds (the operator's admin
    /// role only): the number of records read and the runs of stored
    /// sequences per session, at most `runs_max` runs.
    pub async fn audit(&self, runs_max: usize) -> Result<(u64, Vec<wire::AuditRun>), ClientError> {
        let stream = self.open_accounting().await?;
        let (mut sender, mut receiver) = (stream.sender, stream.receiver);
        let mut frame = BytesMut::new();
        wire::AdminAuditRequest.encode_frame(&mut frame);
        sender.send_raw(&frame).await?;
        let mut runs = Vec::new();
        loop {
            match receiver.next_message().await? {
                Some(Message::AdminAuditReport(report)) => {
                    if runs.len() + report.runs.len() > runs_max {
                        return Err(ClientError::Connection(format!(
                            "the audit answer has more than {runs_max} runs"
                        )));
                    }
                    runs.extend(report.runs);
                    if report.done {
                        let _ = sender.finish();
                        return Ok((report.records, runs));
                    }
                }
                Some(Message::Error(error)) => return Err(ClientError::Refused(error)),
                Some(other) => return Err(ClientError::Unexpected(other.message_type().0)),
                None => return Err(ClientError::Connection("stream ended before the audit was done".into())),
            }
        }
    }

    /// Close the connection; on an endpoint of its own, wait (bounded) for
    /// the close to reach the AM.
    pub async fn close(self) {
        self.connection.close(0u32.into(), b"done");
        if self.owns_endpoint {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        }
    }

    /// Wait (at most `timeout`) until the AM serves this connection: an
    /// empty stream that the AM finishes only then. After it, credentials
    /// the AM pushes can reach this provider.
    pub async fn confirm_served(&self, timeout: Duration) -> Result<(), ClientError> {
        let mut probe = self.open_accounting().await?;
        probe.sender.finish()?;
        match tokio::time::timeout(timeout, probe.receiver.next()).await {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(other))) => Err(ClientError::Connection(format!(
                "the AM answered the probe with {other:?}"
            ))),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(ClientError::Connection(format!(
                "the AM did not serve the connection within {timeout:?}"
            ))),
        }
    }

    /// Answer the AM's pushed User Credentials (208) on this connection:
    /// each pushed stream's credential goes to `handler`, whose status is
    /// sent back as the receipt. Runs until the connection closes.
    /// Session receipts pushed by the AM are dropped: use
    /// [`Self::serve_pushes_with_receipts`] to keep them.
    pub fn serve_pushes(
        &self,
        handler: impl Fn(Signed<UserCredential>) -> wire::ReceiptStatus + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        self.serve_pushes_with_receipts(handler, |_| {})
    }

    /// [`Self::serve_pushes`], and each Session Receipt the AM pushes
    /// (4.20, when a session's Final is stored) goes to `receipts`
    /// unchecked; the stream is finished without an answer.
    pub fn serve_pushes_with_receipts(
        &self,
        handler: impl Fn(Signed<UserCredential>) -> wire::ReceiptStatus + Send + Sync + 'static,
        receipts: impl Fn(Signed<wire::SessionReceipt>) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        answer_streams(self.connection.clone(), move |message| {
            let mut out = BytesMut::new();
            match message {
                Ok(Message::UserCredential(credential)) => {
                    let session_id = credential.value().session_id;
                    let status = handler(credential);
                    wire::UserCredentialReceipt { session_id, status }.encode_frame(&mut out);
                }
                Ok(Message::SessionReceipt(receipt)) => receipts(receipt),
                _ => ErrorMessage::new(
                    wire::ErrorCode::UNEXPECTED_MESSAGE,
                    "a pushed stream carries one User Credential",
                )
                .encode_frame(&mut out),
            }
            out
        })
    }

    /// The underlying QUIC connection (to wait for its close, say).
    pub fn connection_handle(&self) -> quinn::Connection {
        self.connection.clone()
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<String> {
        self.connection.close_reason().map(|reason| reason.to_string())
    }

    /// Wait until the connection is closed (by either side) and say why.
    pub async fn closed(&self) -> String {
        self.connection.closed().await.to_string()
    }
}

/// Serve one-exchange streams on `connection` until it closes: each
/// stream the peer opens carries one frame (read to its end, at most a
/// small frame), `answer` turns it into the reply, which is written before
/// the stream is finished.
pub(crate) fn answer_streams(
    connection: quinn::Connection,
    answer: impl Fn(Result<Message, DecodeError>) -> BytesMut + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut send, mut receive)) = connection.accept_bi().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let limit = wire::limits::FRAME_HEADER_BYTES + SMALL_FRAME_BODY_BYTES_MAX;
                let Ok(bytes) = receive.read_to_end(limit).await else {
                    return;
                };
                let out = answer(Message::decode(bytes::Bytes::from(bytes)));
                let _ = send.write_all(&out).await;
                let _ = send.finish();
                // Let the answer reach the peer before the stream is dropped.
                let _ = send.stopped().await;
            });
        }
    })
}

/// The name in the `am` certificate the AM at the other end of `connection`
/// presented (checked against the CA `ca_der` again). Among partitions a
/// client reaches a partition by address and must check it is the one it
/// meant (docs/protocol.md, section 7.1).
pub fn am_name(connection: &quinn::Connection, ca_der: &[u8]) -> Result<wire::Name, ClientError> {
    let refused = |detail: String| ClientError::Connect(detail);
    let ca = wire::TrustedCa::from_der(ca_der.to_vec()).map_err(|error| refused(error.to_string()))?;
    let chain = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| refused("the AM presented no certificate".into()))?;
    let first = chain
        .first()
        .ok_or_else(|| refused("the AM presented no certificate".into()))?;
    let identity = ca
        .verify(first, wire::Role::AccountingManager, crate::clock::now_ms() / 1000)
        .map_err(|error| refused(format!("the AM's certificate: {error}")))?;
    Ok(identity.name)
}

/// Fails (and closes the connection) unless the AM at the other end of
/// `connection` is the one named `expected`.
pub fn check_am_name(connection: &quinn::Connection, ca_der: &[u8], expected: &wire::Name) -> Result<(), ClientError> {
    let name = am_name(connection, ca_der)?;
    if &name == expected {
        return Ok(());
    }
    connection.close(0u32.into(), b"not the partition asked for");
    Err(ClientError::Connect(format!(
        "the AM at this address is {name}, not {expected}: the cluster map or the addresses are wrong"
    )))
}

/// Opens accounting streams on a connection; see [`AmClient::stream_opener`].
#[derive(Clone)]
pub struct StreamOpener {
    connection: quinn::Connection,
}

impl StreamOpener {
    /// Open a stream for accounting.
    pub async fn open_accounting(&self) -> Result<AccountingStream, ClientError> {
        open_accounting_on(&self.connection).await
    }
}

async fn open_accounting_on(connection: &quinn::Connection) -> Result<AccountingStream, ClientError> {
    let (send, receive) = connection
        .open_bi()
        .await
        .map_err(|error| ClientError::Connection(error.to_string()))?;
    Ok(AccountingStream {
        sender: AccountingSender {
            send,
            frame: BytesMut::new(),
        },
        receiver: AckReceiver {
            receive,
            buffer: BytesMut::new(),
            decoder: FrameDecoder::new(SMALL_FRAME_BODY_BYTES_MAX),
        },
    })
}

/// An accounting stream, to split into its two halves.
pub struct AccountingStream {
    /// Sends accounting frames.
    pub sender: AccountingSender,
    /// Receives acks.
    pub receiver: AckReceiver,
}

/// The sending half of an accounting stream.
pub struct AccountingSender {
    send: quinn::SendStream,
    frame: BytesMut,
}

impl AccountingSender {
    /// Send messages as frames in one write. Takes the messages or
    /// references to them, so a sender that keeps its messages need not
    /// clone them.
    pub async fn send<M: Borrow<Signed<Accounting>>>(
        &mut self,
        messages: impl IntoIterator<Item = M>,
    ) -> Result<(), ClientError> {
        for message in messages {
            message.borrow().encode_frame(&mut self.frame);
        }
        // The frames move into the stream's send buffer without a copy; the
        // buffer's spare capacity stays here for the next write.
        let frames = self.frame.split().freeze();
        self.send
            .write_chunk(frames)
            .await
            .map_err(|error| ClientError::Connection(error.to_string()))
    }

    /// Send raw bytes (tests use this for malformed frames).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send
            .write_all(bytes)
            .await
            .map_err(|error| ClientError::Connection(error.to_string()))
    }

    /// Say no more frames follow.
    pub fn finish(&mut self) -> Result<(), ClientError> {
        self.send
            .finish()
            .map_err(|error| ClientError::Connection(error.to_string()))
    }
}

/// What arrives on an accounting stream.
#[derive(Debug)]
pub enum Received {
    /// Answers for accounting messages.
    Acks(Vec<AckEntry>),
    /// The AM closes the stream with this error.
    Error(ErrorMessage),
}

/// The receiving half of an accounting stream.
pub struct AckReceiver {
    receive: quinn::RecvStream,
    buffer: BytesMut,
    decoder: FrameDecoder,
}

impl AckReceiver {
    /// The next acks or error; `None` when the AM finished the stream.
    pub async fn next(&mut self) -> Result<Option<Received>, ClientError> {
        match self.next_message().await? {
            None => Ok(None),
            Some(Message::AccountingAck(ack)) => Ok(Some(Received::Acks(ack.entries))),
            Some(Message::Error(error)) => Ok(Some(Received::Error(error))),
            Some(other) => Err(ClientError::Unexpected(other.message_type().0)),
        }
    }

    async fn next_message(&mut self) -> Result<Option<Message>, ClientError> {
        loop {
            if let Some(frame) = self.decoder.next_frame(&mut self.buffer)? {
                return Ok(Some(frame.decode()?));
            }
            match self.receive.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk.bytes),
                Ok(None) => return Ok(None),
                Err(error) => return Err(ClientError::Connection(error.to_string())),
            }
        }
    }
}

/// A client endpoint on an ephemeral local port that connects as `identity`.
pub fn client_endpoint(identity: &ClientIdentity, ipv6: bool) -> Result<quinn::Endpoint, ClientError> {
    let bind: SocketAddr = if ipv6 {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    };
    let mut endpoint = shared_endpoint(bind)?;
    endpoint.set_default_client_config(client_config(identity)?);
    Ok(endpoint)
}

/// A client endpoint on `bind` with no default identity, for parties that
/// connect with [`AmClient::connect_with`]; its socket has large kernel
/// buffers ([`quic_socket`]).
pub fn shared_endpoint(bind: SocketAddr) -> Result<quinn::Endpoint, ClientError> {
    let connect = |error: std::io::Error| ClientError::Connect(error.to_string());
    let (socket, _) = quic_socket(bind).map_err(connect)?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(connect)
}

/// The QUIC client configuration that connects to the AM as `identity`:
/// for many parties sharing one endpoint with [`AmClient::connect_with`].
/// The server must present an `am` certificate from the CA.
pub fn client_config(identity: &ClientIdentity) -> Result<quinn::ClientConfig, ClientError> {
    client_config_for(
        &identity.ca_der,
        Some((&identity.certificate_der, &identity.signing_key)),
        wire::Role::AccountingManager,
    )
}

/// A QUIC client configuration that trusts only servers certified by the
/// CA `ca_der` for `server_role` (checked during the handshake: a chain to
/// the CA alone would let any certified party, a provider say, pose as the
/// AM) and, with `certificate`, authenticates with that certificate and key
/// (without: no client certificate, as users connect).
pub fn client_config_for(
    ca_der: &[u8],
    certificate: Option<(&[u8], &SigningKey)>,
    server_role: wire::Role,
) -> Result<quinn::ClientConfig, ClientError> {
    let tls = |error: rustls::Error| ClientError::Tls(error.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec())).map_err(tls)?;
    let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|error| ClientError::Tls(error.to_string()))?;
    let ca = wire::TrustedCa::from_der(ca_der.to_vec()).map_err(|error| ClientError::Tls(error.to_string()))?;
    let verifier = Arc::new(RoleVerifier {
        chain,
        ca,
        role: server_role,
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match certificate {
        Some((certificate_der, signing_key)) => {
            let key = signing_key
                .to_pkcs8_der()
                .map_err(|error| ClientError::Tls(error.to_string()))?;
            builder
                .with_client_auth_cert(
                    vec![CertificateDer::from(certificate_der.to_vec())],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
                )
                .map_err(tls)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config)
        .map_err(|error| ClientError::Tls(error.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_concurrent_uni_streams(0u32.into());
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// The server certificate check of every connection the library makes:
/// rustls's WebPKI check (chain to the CA, validity, server name), then the
/// `urn:acct:<role>:` identity of the role the client expects.
#[derive(Debug)]
struct RoleVerifier {
    chain: Arc<rustls::client::WebPkiServerVerifier>,
    ca: wire::TrustedCa,
    role: wire::Role,
}

impl rustls::client::danger::ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        match self.ca.verify(end_entity, self.role, now.as_secs()) {
            Ok(_) => Ok(verified),
            Err(error) => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                rustls::OtherError(Arc::new(WrongServer { role: self.role, error })),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, certificate, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// A server whose certificate chains to the CA but is not of the role
/// expected.
#[derive(thiserror::Error)]
#[error("the server is not a certified {}: {error}", .role.as_str())]
struct WrongServer {
    role: wire::Role,
    error: wire::CertificateError,
}

/// As the Display: rustls prints an `OtherError` certificate error with
/// `Debug`, and this text is what the connecting party reads.
impl std::fmt::Debug for WrongServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Bytes asked for each client QUIC socket's kernel send and receive
/// buffers. The kernel's defaults (about 200 KiB) overflow on loopback at
/// tens of thousands of messages per second, and every dropped datagram
/// costs a loss-recovery round. See [`quic_socket_sized`] for how the
/// request meets the kernel's caps.
pub const UDP_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// A UDP socket bound to `address` with buffers of [`UDP_BUFFER_BYTES`],
/// for a QUIC endpoint. Returns the socket and the receive buffer obtained.
pub fn quic_socket(address: std::net::SocketAddr) -> std::io::Result<(std::net::UdpSocket, usize)> {
    quic_socket_sized(address, UDP_BUFFER_BYTES)
}

/// A UDP socket bound to `address` whose kernel send and receive buffers
/// may each hold `buffer_bytes` of datagrams, for a QUIC endpoint.
///
/// Linux caps a plain request at `net.core.rmem_max` / `net.core.wmem_max`
/// (4 MiB on many machines), silently. A process allowed to exceed the caps
/// (`CAP_NET_ADMIN`, root) gets the full size through `SO_RCVBUFFORCE` /
/// `SO_SNDBUFFORCE`, as quic-go does; any other gets what the caps allow.
/// The buffers are kernel memory used only while datagrams wait.
///
/// Returns the socket and the receive buffer granted: `buffer_bytes` on a
/// full grant. (Linux reports twice the size set, half of it for its own
/// bookkeeping; the size returned here is the one set.)
pub fn quic_socket_sized(
    address: std::net::SocketAddr,
    buffer_bytes: usize,
) -> std::io::Result<(std::net::UdpSocket, usize)> {
    let socket = std::net::UdpSocket::bind(address)?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    // Best effort: a smaller buffer still works, only with more losses.
    #[cfg(target_os = "linux")]
    let forced = (
        rustix::net::sockopt::set_socket_recv_buffer_size_force(&socket, buffer_bytes).is_ok(),
        rustix::net::sockopt::set_socket_send_buffer_size_force(&socket, buffer_bytes).is_ok(),
    );
    #[cfg(not(target_os = "linux"))]
    let forced = (false, false);
    if !forced.0 {
        let _ = state.set_recv_buffer_size((&socket).into(), buffer_bytes);
    }
    if !forced.1 {
        let _ = state.set_send_buffer_size((&socket).into(), buffer_bytes);
    }
    let reported = state.recv_buffer_size((&socket).into()).unwrap_or(0);
    let obtained = if cfg!(target_os = "linux") {
        reported / 2
    } else {
        reported
    };
    Ok((socket, obtained))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::quic_socket_sized;

    /// Whether this process holds CAP_NET_ADMIN (bit 12 of CapEff).
    fn net_admin() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("CapEff:"))
            .and_then(|bits| u64::from_str_radix(bits.trim(), 16).ok())
            .is_some_and(|bits| bits & (1 << 12) != 0)
    }

    /// A request above `net.core.rmem_max`: a process allowed to exceed the
    /// cap gets all of it, any other at least the cap.
    #[test]
    fn socket_buffers_exceed_the_kernel_cap_when_allowed() {
        let cap: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .expect("reading net.core.rmem_max")
            .trim()
            .parse()
            .expect("a number");
        let request = (cap + 1024 * 1024).min(1 << 30);
        let (_socket, obtained) =
            quic_socket_sized("127.0.0.1:0".parse().expect("an address"), request).expect("a socket");
        if net_admin() {
            assert!(
                obtained >= request,
                "asked {request}, got {obtained} with CAP_NET_ADMIN"
            );
        } else {
            assert!(
                obtained >= cap.min(request),
                "asked {request}, got {obtained}, cap {cap}"
            );
        }
    }
}
