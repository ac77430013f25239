//! The User's side over QUIC, and the small User ↔ provider channel the
//! library offers so the flow runs end to end (providers with a channel of
//! their own use [`crate::user`] and [`crate::provider`] directly).
//!
//! - [`UserClient`]: a user's connection to the AM (no client certificate:
//!   the request carries it, a5, and is signed with its key, a4): the
//!   service list (201) and credential requests (202 → 206).
//! - [`ServiceServer`]: the provider's endpoint for users: Service Request
//!   in (210), Service Proof out (211), one exchange per stream.
//! - [`request_service`]: the user's side of that exchange.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use wire::limits::SMALL_FRAME_BODY_BYTES_MAX;
use wire::{
    ErrorMessage, FrameDecoder, Maced, Message, ServiceCredential, ServiceCredentialRequest, ServiceEntry,
    ServiceProof, ServiceRequest, Signed, SigningKey,
};

use crate::quic::{ALPN, AM_SERVER_NAME, ClientError, client_config_for, shared_endpoint};

/// Largest answer read for one request.
const ANSWER_BYTES_MAX: usize = 1024 * 1024;
/// How long one exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

fn unspecified(address: SocketAddr) -> SocketAddr {
    if address.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    }
}

/// Connect without a client certificate to a server whose certificate
/// chains to the CA and carries the role `role` (checked in the handshake by
/// [`client_config_for`]).
async fn connect_anonymous(
    address: SocketAddr,
    ca_der: &[u8],
    role: wire::Role,
) -> Result<(quinn::Endpoint, quinn::Connection), ClientError> {
    let mut endpoint = shared_endpoint(unspecified(address))?;
    endpoint.set_default_client_config(client_config_for(ca_der, None, role)?);
    let connection = endpoint
        .connect(address, AM_SERVER_NAME)
        .map_err(|error| ClientError::Connect(error.to_string()))?
        .await
        .map_err(|error| ClientError::Connect(error.to_string()))?;
    Ok((endpoint, connection))
}

/// One request, its answers until `last` says the exchange is complete.
async fn exchange(
    connection: &quinn::Connection,
    request: &[u8],
    mut last: impl FnMut(&Message) -> bool,
) -> Result<Vec<Message>, ClientError> {
    let work = async {
        let (mut send, mut receive) = connection
            .open_bi()
            .await
            .map_err(|error| ClientError::Connection(error.to_string()))?;
        send.write_all(request)
            .await
            .map_err(|error| ClientError::Connection(error.to_string()))?;
        // One request per stream: the peer may read to the end.
        send.finish()
            .map_err(|error| ClientError::Connection(error.to_string()))?;
        let decoder = FrameDecoder::new(SMALL_FRAME_BODY_BYTES_MAX);
        let mut buffer = BytesMut::new();
        let mut answers = Vec::new();
        let mut read = 0usize;
        loop {
            while let Some(frame) = decoder.next_frame(&mut buffer)? {
                let message = frame.decode()?;
                let done = last(&message) || matches!(message, Message::Error(_));
                answers.push(message);
                if done {
                    return Ok(answers);
                }
            }
            match receive.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => {
                    read += chunk.bytes.len();
                    if read > ANSWER_BYTES_MAX {
                        return Err(ClientError::Connection("the answer is too long".into()));
                    }
                    buffer.extend_from_slice(&chunk.bytes);
                }
                Ok(None) => return Err(ClientError::Connection("stream ended before the answer".into())),
                Err(error) => return Err(ClientError::Connection(error.to_string())),
            }
        }
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, work)
        .await
        .map_err(|_| ClientError::Connection("no answer within 30 s".into()))?
}

/// A user's connection to the AM.
pub struct UserClient {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
}

impl UserClient {
    /// Connect to the AM, checking its certificate against the CA `ca_der`.
    pub async fn connect(address: SocketAddr, ca_der: &[u8]) -> Result<Self, ClientError> {
        let (endpoint, connection) = connect_anonymous(address, ca_der, wire::Role::AccountingManager).await?;
        Ok(Self { endpoint, connection })
    }

    /// Connect to the AM at `address` (`host:port`, resolved now).
    pub async fn connect_to(address: &str, ca_der: &[u8]) -> Result<Self, ClientError> {
        let resolved = tokio::net::lookup_host(address)
            .await
            .map_err(|error| ClientError::Connect(format!("resolving {address}: {error}")))?
            .next()
            .ok_or_else(|| ClientError::Connect(format!("{address} resolves to no address")))?;
        Self::connect(resolved, ca_der).await
    }

    /// Among several AM partitions: send `request` to the AM at `address`
    /// (any partition) and, when it answers with a Redirect, once more to
    /// the partition it names (the same bytes: the first partition consumed
    /// nothing). Returns the credential and the redirect followed, if any
    /// (its partition minted the credential: check it with that
    /// partition's key).
    pub async fn request_credential_in_cluster(
        address: &str,
        ca_der: &[u8],
        request: &Signed<ServiceCredentialRequest>,
    ) -> Result<(Signed<ServiceCredential>, Option<wire::Redirect>), ClientError> {
        let client = Self::connect_to(address, ca_der).await?;
        let answer = client.request_credential(request).await;
        client.close().await;
        let redirect = match answer {
            Err(ClientError::Redirect(redirect)) => redirect,
            other => return other.map(|credential| (credential, None)),
        };
        let client = Self::connect_to(redirect.address.as_str(), ca_der).await?;
        crate::quic::check_am_name(&client.connection, ca_der, &redirect.node)?;
        let answer = client.request_credential(request).await;
        client.close().await;
        match answer {
            // The home never redirects: a second redirect is a broken map.
            Err(ClientError::Redirect(again)) => Err(ClientError::Connect(format!(
                "{} redirected to {} as well: the partitions' cluster maps differ",
                redirect.node, again.node
            ))),
            other => other.map(|credential| (credential, Some(redirect))),
        }
    }

    /// The AM's service list (201).
    pub async fn services(&self) -> Result<Vec<ServiceEntry>, ClientError> {
        let mut frame = BytesMut::new();
        wire::ServiceListRequest.encode_frame(&mut frame);
        let answers = exchange(
            &self.connection,
            &frame,
            |message| matches!(message, Message::ServiceList(list) if list.done),
        )
        .await?;
        let mut entries = Vec::new();
        for answer in answers {
            match answer {
                Message::ServiceList(list) => entries.extend(list.entries),
                Message::Error(error) => return Err(ClientError::Refused(error)),
                other => return Err(ClientError::Unexpected(other.message_type().0)),
            }
        }
        Ok(entries)
    }

    /// Send a Service Credential Request (202) and return the AM's answer
    /// (206), unchecked: check it with [`crate::user::check_credential`].
    pub async fn request_credential(
        &self,
        request: &Signed<ServiceCredentialRequest>,
    ) -> Result<Signed<ServiceCredential>, ClientError> {
        let mut frame = BytesMut::new();
        request.encode_frame(&mut frame);
        let mut answers = exchange(&self.connection, &frame, |_| true).await?;
        match answers.pop() {
            Some(Message::ServiceCredential(credential)) => Ok(credential),
            Some(Message::Redirect(redirect)) => Err(ClientError::Redirect(redirect)),
            Some(Message::Error(error)) => Err(ClientError::Refused(error)),
            Some(other) => Err(ClientError::Unexpected(other.message_type().0)),
            None => Err(ClientError::Connection("no answer".into())),
        }
    }

    /// Ask for a session's receipt (4.21), authenticated with its session
    /// key (b3 for the user, c3 for the provider), and check the AM's
    /// signature with `am_key` (the key of the partition that holds the
    /// session: the one that minted its credential). A Redirect comes back
    /// as [`ClientError::Redirect`].
    pub async fn request_receipt(
        &self,
        session_id: wire::SessionId,
        session_key: &wire::SessionKey,
        am_key: &wire::PublicKey,
    ) -> Result<Signed<wire::SessionReceipt>, ClientError> {
        let request = wire::Maced::seal(wire::ReceiptRequest { session_id }, session_key)
            .map_err(|error| ClientError::Connection(error.to_string()))?;
        let mut frame = BytesMut::new();
        request.encode_frame(&mut frame);
        let mut answers = exchange(&self.connection, &frame, |_| true).await?;
        match answers.pop() {
            Some(Message::SessionReceipt(receipt)) => {
                crate::receipts::check(&receipt, am_key, session_id)?;
                Ok(receipt)
            }
            Some(Message::Redirect(redirect)) => Err(ClientError::Redirect(redirect)),
            Some(Message::Error(error)) => Err(ClientError::Refused(error)),
            Some(other) => Err(ClientError::Unexpected(other.message_type().0)),
            None => Err(ClientError::Connection("no answer".into())),
        }
    }

    /// Close the connection and wait (bounded) for the close to be sent.
    pub async fn close(self) {
        self.connection.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// What a provider answers to one Service Request: the proof (which may
/// carry a refusal status), or an Error when no proof can be made (the
/// session is unknown to it, or the MAC does not verify).
pub type ServiceAnswer = Result<Maced<ServiceProof>, ErrorMessage>;

/// The provider's QUIC endpoint for its users.
pub struct ServiceServer {
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
}

impl ServiceServer {
    /// Serve on `listen` with the provider's certificate (users check it
    /// against the CA; they present none: the MAC authenticates them).
    pub fn start(
        listen: SocketAddr,
        certificate_der: &[u8],
        signing_key: &SigningKey,
        handler: impl Fn(Maced<ServiceRequest>) -> ServiceAnswer + Send + Sync + 'static,
    ) -> Result<Self, ClientError> {
        let tls = |error: rustls::Error| ClientError::Tls(error.to_string());
        let key = signing_key
            .to_pkcs8_der()
            .map_err(|error| ClientError::Tls(error.to_string()))?;
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(tls)?
                .with_no_client_auth()
                .with_single_cert(
                    vec![CertificateDer::from(certificate_der.to_vec())],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
                )
                .map_err(tls)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(config)
            .map_err(|error| ClientError::Tls(error.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_bidi_streams(16u32.into());
        server.transport_config(Arc::new(transport));
        let (socket, _) = crate::quic::quic_socket(listen).map_err(|error| ClientError::Connect(error.to_string()))?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|error| ClientError::Connect(error.to_string()))?;
        let handler = Arc::new(handler);
        let accepting = endpoint.clone();
        let task = tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let handler = handler.clone();
                tokio::spawn(async move {
                    let Ok(connection) = incoming.await else { return };
                    let _ = crate::quic::answer_streams(connection, move |message| {
                        let mut out = BytesMut::new();
                        match message {
                            Ok(Message::ServiceRequest(request)) => match handler(request) {
                                Ok(proof) => proof.encode_frame(&mut out),
                                Err(error) => error.encode_frame(&mut out),
                            },
                            _ => ErrorMessage::new(
                                wire::ErrorCode::UNEXPECTED_MESSAGE,
                                "a service stream carries one Service Request",
                            )
                            .encode_frame(&mut out),
                        }
                        out
                    })
                    .await;
                });
            }
        });
        Ok(Self { endpoint, task })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, ClientError> {
        self.endpoint
            .local_addr()
            .map_err(|error| ClientError::Connect(error.to_string()))
    }

    /// Stop serving.
    pub fn stop(self) {
        self.endpoint.close(0u32.into(), b"stopped");
        self.task.abort();
    }
}

/// The user's side of a Service Request (210 → 211): send it to the
/// provider at `address` (certified by the CA `ca_der`) and return its
/// answer, unchecked: check it with [`crate::user::check_proof`].
pub async fn request_service(
    address: SocketAddr,
    ca_der: &[u8],
    request: &Maced<ServiceRequest>,
) -> Result<Maced<ServiceProof>, ClientError> {
    let (endpoint, connection) = connect_anonymous(address, ca_der, wire::Role::Provider).await?;
    let mut frame = BytesMut::new();
    request.encode_frame(&mut frame);
    let answer = exchange(&connection, &frame, |_| true).await;
    connection.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    match answer?.pop() {
        Some(Message::ServiceProof(proof)) => Ok(proof),
        Some(Message::Error(error)) => Err(ClientError::Refused(error)),
        Some(other) => Err(ClientError::Unexpected(other.message_type().0)),
        None => Err(ClientError::Connection("no answer".into())),
    }
}
