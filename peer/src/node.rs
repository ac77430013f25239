//! A Service Provider as one object, for providers that take the whole
//! library: its connection to the AM (receiving pushed User Credentials,
//! 208), its endpoint for users (Service Request → proof, 210/211), and
//! its sessions' accounting (214/220) with retransmission of everything
//! unacked after a reconnect (same message ids: the AM's dedup makes the
//! delivery exactly-once).
//!
//! With several AM partitions ([`ProviderNode::start_in_cluster`]) the node
//! keeps its connection to its home partition (where its sessions are
//! minted and its credentials pushed) and sends each session's accounting
//! to the partition its id names, connecting there when needed (sessions
//! minted before the cluster map changed). Addresses are names resolved
//! again at every connection.
//!
//! Accounting goes out by itself: a background sender holds each accounted
//! message for the node's linger (default [`LINGER_DEFAULT`], 5 ms; zero
//! sends at once; `None` leaves sending to [`ProviderNode::deliver`]) so that
//! the messages accounted meanwhile travel with it in one write, as a
//! producer's `linger.ms` does (peer::linger, the rule loadgen's
//! `--linger-ms` follows too). Each partition has one flight out at a time
//! (a stream carrying a batch and its answers): what is accounted while it
//! flies waits and goes with the next, so a session's messages are written
//! in the order they were accounted (a retransmission goes after what was
//! written before it) and the batches grow when answers are slow, as a
//! producer's `max.in.flight` of one does. What a flight leaves unanswered
//! (BUSY, a partition that is down, WRONG_PARTITION from a stale map) goes
//! again after that partition's backoff (peer::backoff), never at once.
//! [`ProviderNode::deliver`] sends at once what no flight holds and waits
//! for the flights' answers.
//!
//! Bounds: sessions held are those the AM pushed (the AM bounds them);
//! each session holds at most `UNACKED_MESSAGES_MAX` unacked messages (a
//! message is in at most one flight at a time); flights: one per partition
//! of the map at a time, the background's each at most
//! [`FLIGHT_TIMEOUT`]; refusals kept for the next delivery's report:
//! [`REFUSED_REPORTED_MAX`]; pushed-credential notifications queue up to
//! [`ARRIVALS_MAX`]; connections: one per partition of the map at most.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use wire::{
    AccountingKind, AckStatus, ClusterMap, ErrorCode, ErrorMessage, MessageId, Name, PartitionId, PublicKey,
    ReceiptStatus, SessionId, Usage,
};

use crate::backoff::{Backoff, asks_backoff};
use crate::clock::now_ms;
use crate::linger::{Held, LINGER_DEFAULT, Linger};
use crate::net::ServiceServer;
use crate::provider::{AckOutcome, ProviderError, ProviderSession};
use crate::quic::{AmClient, ClientError, ClientIdentity, Received};
use crate::receipts::Receipts;

/// Pushed credentials waiting to be noticed by [`ProviderNode::next_credential`].
pub const ARRIVALS_MAX: usize = 1024;
/// Longest a background flight waits for its answers; what is unanswered
/// then is sent again.
pub const FLIGHT_TIMEOUT: Duration = Duration::from_secs(30);
/// Refusals kept for the next delivery's report (`Delivery::refused`);
/// past it they are counted in `Delivery::refused_unlisted`.
pub const REFUSED_REPORTED_MAX: usize = 4096;

type Sessions = Arc<Mutex<HashMap<SessionId, ProviderSession>>>;

/// What one [`ProviderNode::deliver`] achieved. The answers counted are
/// all those read since the last delivery that returned `Ok` (by it or by
/// the background sender): each message's answer is counted once, in one
/// report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Messages unacked when it began (retransmissions included), whether
    /// it sent them or waited for the background sender's flight.
    pub sent: usize,
    /// Answered STORED or DUPLICATE: stored once at the AM.
    pub stored: usize,
    /// Of those, answered DUPLICATE (a retransmission of a stored message).
    pub duplicates: usize,
    /// Refused for good, with the reason (at most [`REFUSED_REPORTED_MAX`]).
    pub refused: Vec<(MessageId, AckStatus)>,
    /// Refused for good beyond those listed.
    pub refused_unlisted: usize,
    /// Still unacked (retry later).
    pub pending: usize,
    /// Of those, held unsent: their session's partition is not in the
    /// cluster map this node has (give it the map that has it:
    /// [`ProviderNode::set_map`]).
    pub unroutable: usize,
    /// Partitions that could not be reached this time, and why.
    pub unreached: Vec<(PartitionId, String)>,
}

/// A running Service Provider.
pub struct ProviderNode {
    inner: Arc<Inner>,
    arrivals: tokio::sync::Mutex<mpsc::Receiver<SessionId>>,
    server: ServiceServer,
    /// Keeps the home's connection up (aborted with the node).
    keeper: AbortOnDrop,
    /// The background sender (aborted with the node: its flights too).
    sender: AbortOnDrop,
}

/// What the node's tasks share.
struct Inner {
    /// Where traffic goes; replaced by [`ProviderNode::set_map`].
    route: std::sync::RwLock<Route>,
    /// Wakes the keeper when the home changes.
    home_changed: Arc<tokio::sync::Notify>,
    /// This provider's name (its certificate's).
    name: Option<Name>,
    identity: ClientIdentity,
    /// Connections by partition; the home's is kept up. Held as `Arc`s so
    /// that no lock is held while a stream is opened or a connection closed.
    clients: tokio::sync::Mutex<HashMap<PartitionId, Arc<AmClient>>>,
    /// One connection attempt at a time per partition (the keeper and a
    /// delivery may both find the home's connection gone); a partition that
    /// is down holds back no other.
    connecting: std::sync::Mutex<HashMap<PartitionId, Arc<tokio::sync::Mutex<()>>>>,
    sessions: Sessions,
    arrivals_sender: mpsc::Sender<SessionId>,
    /// Session receipts the AM pushed, checked (at most
    /// [`crate::receipts::RECEIPTS_HELD_MAX`]).
    receipts: Arc<std::sync::Mutex<Receipts>>,
    /// Wakes [`ProviderNode::wait_receipt`] when a receipt arrives.
    receipt_arrived: Arc<tokio::sync::Notify>,
    /// Per partition: the backoff after it answered "busy, retry" (one
    /// entry per partition of the map at most).
    backoff: std::sync::Mutex<HashMap<PartitionId, Backoff>>,
    /// What the background sender and the deliveries share. Locked after
    /// `sessions` when both are.
    sending: std::sync::Mutex<Sending>,
    /// Wakes the background sender: a message held, the linger changed,
    /// a flight left messages unanswered.
    send_wake: Arc<tokio::sync::Notify>,
    /// Wakes deliveries waiting for messages another one has in flight.
    flight_done: tokio::sync::Notify,
    /// Set by [`ProviderNode::stop`]: no connection is kept after it.
    closing: std::sync::atomic::AtomicBool,
}

/// The background sender's state, and what deliveries have in flight.
struct Sending {
    /// `None`: accounted messages wait for [`ProviderNode::deliver`].
    linger: Option<Linger>,
    /// Per partition: when its oldest message not yet handed to a flight
    /// was accounted (an entry per partition of the maps seen at most).
    held: HashMap<PartitionId, Held>,
    /// Messages a flight is writing or awaiting answers for: no other
    /// sends them meanwhile (at most the sessions' unacked messages).
    in_flight: HashSet<MessageId>,
    /// Partitions with a flight out (one at a time each).
    flying: HashSet<PartitionId>,
    /// Every answer read, counted as it settles its message (under the
    /// sessions' lock), until a [`ProviderNode::deliver`] reports it.
    answered: Part,
}

/// The partitions and the home.
#[derive(Clone)]
struct Route {
    /// Every partition it may talk to (one without a cluster map).
    partitions: Vec<Target>,
    /// The home partition: new sessions are pushed on its connection.
    home: PartitionId,
    /// Whether sessions are routed by their ids' partition (a cluster map
    /// was given); without one, everything goes to the one AM.
    clustered: bool,
    /// The home before the last [`ProviderNode::set_map`], if it changed.
    previous_home: Option<PartitionId>,
}

/// Longest wait for one connection (handshake and the AM's first answer).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A partition the node may connect to.
#[derive(Clone)]
struct Target {
    id: PartitionId,
    /// Its name: the AM there must present it (among partitions).
    name: Option<Name>,
    /// `host:port`, resolved at every connection.
    address: String,
    /// Its key (verifies the credentials it minted).
    key: PublicKey,
}

/// How long after its lifetime a session is kept (late accounting, acks).
const SESSION_GRACE_MS: u64 = 3_600_000;
/// Backoff between reconnection attempts, doubling up to the maximum,
/// jittered 0.5-1.5x (`peer::backoff`).
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// Sessions are pruned when the map reaches a multiple of this size.
const PRUNE_EVERY: usize = 1024;

impl ProviderNode {
    /// Connect to the AM as `identity` (a provider certificate), accept the
    /// credentials it pushes (verified with `am_key`), and serve users on
    /// `service_listen`.
    pub async fn start(
        am_address: SocketAddr,
        identity: ClientIdentity,
        am_key: PublicKey,
        service_listen: SocketAddr,
    ) -> Result<Self, ClientError> {
        let target = Target {
            id: PartitionId(1),
            name: None,
            address: am_address.to_string(),
            key: am_key,
        };
        let route = Route {
            partitions: vec![target],
            home: PartitionId(1),
            clustered: false,
            previous_home: None,
        };
        Self::start_with(route, None, identity, service_listen).await
    }

    /// Like [`ProviderNode::start`] among several AM partitions: the
    /// provider (named by its certificate) connects to its home in `map`
    /// and to other partitions when it has sessions there, checking that
    /// each presents the map's name; `keys` holds each partition's key (it
    /// verifies the credentials pushed).
    pub async fn start_in_cluster(
        map: &ClusterMap,
        keys: &HashMap<PartitionId, PublicKey>,
        identity: ClientIdentity,
        service_listen: SocketAddr,
    ) -> Result<Self, ClientError> {
        let ca =
            wire::TrustedCa::from_der(identity.ca_der.clone()).map_err(|error| ClientError::Tls(error.to_string()))?;
        let provider = ca
            .verify(&identity.certificate_der, wire::Role::Provider, now_ms() / 1000)
            .map_err(|error| ClientError::Tls(format!("this provider's certificate: {error}")))?
            .name;
        let route = route_in(map, keys, &provider)?;
        Self::start_with(route, Some(provider), identity, service_listen).await
    }

    /// A new cluster map (partitions added or removed): from now on new
    /// sessions come from the provider's home in `map`, which it connects
    /// to now (the map applies even when that fails: the keeper retries);
    /// sessions minted before keep going to the partition their ids name
    /// while it is in the map, and the previous home's connection is kept
    /// until the next map. A connection already open to a partition keeps
    /// the key and address it was opened with.
    pub async fn set_map(&self, map: &ClusterMap, keys: &HashMap<PartitionId, PublicKey>) -> Result<(), ClientError> {
        let applied = self.apply_map(map, keys).await;
        // Messages the old map could not route may go now.
        if self.unacked_count() > 0 {
            self.inner.hold_all(Instant::now());
        }
        applied
    }

    async fn apply_map(&self, map: &ClusterMap, keys: &HashMap<PartitionId, PublicKey>) -> Result<(), ClientError> {
        let provider = self
            .inner
            .name
            .clone()
            .ok_or_else(|| ClientError::Connect("this node was started without a cluster map".into()))?;
        let mut route = route_in(map, keys, &provider)?;
        let home = route.home;
        {
            let mut current = self
                .inner
                .route
                .write()
                .map_err(|_| ClientError::Connect("route poisoned".into()))?;
            route.previous_home = (current.home != home).then_some(current.home);
            *current = route;
        }
        self.inner.home_changed.notify_one();
        self.inner.connect(home).await.map(drop)
    }

    async fn start_with(
        route: Route,
        name: Option<Name>,
        identity: ClientIdentity,
        service_listen: SocketAddr,
    ) -> Result<Self, ClientError> {
        let home = route.home;
        let sessions: Sessions = Arc::new(Mutex::new(HashMap::new()));
        let (arrivals_sender, arrivals) = mpsc::channel(ARRIVALS_MAX);
        let served = sessions.clone();
        let server = ServiceServer::start(
            service_listen,
            &identity.certificate_der,
            &identity.signing_key,
            move |request| {
                let mut sessions = served
                    .lock()
                    .map_err(|_| ErrorMessage::new(ErrorCode::INTERNAL, "sessions poisoned"))?;
                let Some(session) = sessions.get_mut(&request.value().session_id) else {
                    return Err(ErrorMessage::new(
                        ErrorCode::SESSION_REFUSED,
                        "this provider holds no such session",
                    ));
                };
                session.validate(&request, now_ms()).map_err(|error| match error {
                    ProviderError::RequestMac | ProviderError::WrongSession(_) => {
                        ErrorMessage::new(ErrorCode::SESSION_REFUSED, &error.to_string())
                    }
                    other => ErrorMessage::new(ErrorCode::INTERNAL, &other.to_string()),
                })
            },
        )?;
        let inner = Arc::new(Inner {
            route: std::sync::RwLock::new(route),
            home_changed: Arc::new(tokio::sync::Notify::new()),
            name,
            identity,
            clients: tokio::sync::Mutex::new(HashMap::new()),
            connecting: std::sync::Mutex::new(HashMap::new()),
            sessions,
            arrivals_sender,
            receipts: Arc::new(std::sync::Mutex::new(Receipts::default())),
            receipt_arrived: Arc::new(tokio::sync::Notify::new()),
            backoff: std::sync::Mutex::new(HashMap::new()),
            sending: std::sync::Mutex::new(Sending {
                linger: Some(Linger::new(LINGER_DEFAULT)),
                held: HashMap::new(),
                in_flight: HashSet::new(),
                flying: HashSet::new(),
                answered: Part::default(),
            }),
            send_wake: Arc::new(tokio::sync::Notify::new()),
            flight_done: tokio::sync::Notify::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
        });
        inner.connect(home).await?;
        // Keep the connection to the AM up even when nothing is to be sent:
        // an idle provider must still receive new sessions.
        let keeper = AbortOnDrop(tokio::spawn(keep_connected(Arc::downgrade(&inner))));
        let sender = AbortOnDrop(tokio::spawn(send_held(Arc::downgrade(&inner))));
        Ok(Self {
            inner,
            arrivals: tokio::sync::Mutex::new(arrivals),
            server,
            keeper,
            sender,
        })
    }
}

/// The route of `provider` in `map`.
fn route_in(map: &ClusterMap, keys: &HashMap<PartitionId, PublicKey>, provider: &Name) -> Result<Route, ClientError> {
    let partitions = map
        .partitions()
        .iter()
        .map(|partition| {
            let key = keys
                .get(&partition.id)
                .copied()
                .ok_or_else(|| ClientError::Connect(format!("no key for partition {}", partition.name)))?;
            Ok(Target {
                id: partition.id,
                name: Some(partition.name.clone()),
                address: partition.address.to_string(),
                key,
            })
        })
        .collect::<Result<Vec<_>, ClientError>>()?;
    Ok(Route {
        partitions,
        home: map.home(provider).id,
        clustered: true,
        previous_home: None,
    })
}

/// Reconnect (with backoff) whenever the AM connection is closed, until
/// the node is dropped.
async fn keep_connected(inner: std::sync::Weak<Inner>) {
    // Jittered: providers that lost the AM together do not all come back
    // in the same instant.
    let mut backoff = Backoff::with_bounds(RECONNECT_MIN, RECONNECT_MAX, None);
    loop {
        // Only a weak reference while waiting: a node dropped without `stop`
        // is freed.
        let (closed, changed) = {
            let Some(node) = inner.upgrade() else { return };
            let home = node.home();
            let clients = node.clients.lock().await;
            (
                clients.get(&home).map(|client| client.connection_handle()),
                node.home_changed.clone(),
            )
        };
        match closed {
            // Until the home's connection closes or the home changes.
            Some(connection) => {
                tokio::select! {
                    _ = connection.closed() => {}
                    () = changed.notified() => {}
                }
            }
            None => {
                let until = backoff.until(Instant::now()).unwrap_or_else(Instant::now);
                tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
            }
        }
        let Some(node) = inner.upgrade() else { return };
        let attempt = Instant::now();
        match node.connect(node.home()).await {
            Ok(_) => backoff.stored(),
            Err(_) => {
                let until = backoff.refused(Instant::now(), attempt);
                tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
            }
        }
    }
}

impl Inner {
    /// When `partition`'s backoff ends, if one runs.
    fn backoff_until(&self, partition: PartitionId) -> Option<Instant> {
        let backoff = self.backoff.lock().ok()?;
        backoff
            .get(&partition)
            .and_then(|backoff| backoff.until(Instant::now()))
    }

    /// One frame of answers from `partition`: a "busy, retry" starts a
    /// backoff (once per flight; the streak ends after a quiet time, not
    /// at a stored answer: peer::backoff). True when one asked for a backoff.
    /// `sent`: when the delivery began writing (the earliest send).
    fn note_answers(&self, partition: PartitionId, entries: &[wire::AckEntry], sent: Instant) -> bool {
        if !entries.iter().any(|entry| asks_backoff(entry.status)) {
            return false;
        }
        if let Ok(mut backoff) = self.backoff.lock() {
            backoff.entry(partition).or_default().refused(Instant::now(), sent);
        }
        true
    }

    /// A message for `partition` fell due at `due`: the background sender
    /// sends it (with everything else unacked there and in no flight) once
    /// the linger has passed and no flight or backoff holds the partition.
    fn hold_for(&self, partition: PartitionId, due: Instant) {
        let wake = match self.sending.lock() {
            Ok(mut sending) if sending.linger.is_some() => {
                let held = sending.held.entry(partition).or_default();
                let first = held.is_empty();
                held.note(due);
                first
            }
            _ => false,
        };
        if wake {
            self.send_wake.notify_one();
        }
    }

    /// [`Inner::hold_for`] every partition of the map.
    fn hold_all(&self, due: Instant) {
        for target in self.route().partitions {
            self.hold_for(target.id, due);
        }
    }

    /// The route now.
    fn route(&self) -> Route {
        self.route
            .read()
            .map_or_else(|poisoned| poisoned.into_inner().clone(), |route| route.clone())
    }

    /// The home partition now.
    fn home(&self) -> PartitionId {
        self.route().home
    }

    /// The partition a session's accounting goes to: the one its id names
    /// (the one AM without a map); `None` when the map does not have it
    /// (sending it to another would only get WRONG_PARTITION back).
    fn partition_of(route: &Route, session: &SessionId) -> Option<PartitionId> {
        if !route.clustered {
            return Some(route.home);
        }
        let named = session.partition();
        route
            .partitions
            .iter()
            .any(|target| target.id == named)
            .then_some(named)
    }

    /// The live connection to `partition`, if there is one.
    async fn live(&self, partition: PartitionId) -> Option<Arc<AmClient>> {
        self.clients
            .lock()
            .await
            .get(&partition)
            .filter(|client| client.close_reason().is_none())
            .cloned()
    }

    /// The connection to `partition`: the live one, else a new one (its
    /// address resolved now, within [`CONNECT_TIMEOUT`]) serving its pushes.
    async fn connect(&self, partition: PartitionId) -> Result<Arc<AmClient>, ClientError> {
        if let Some(client) = self.live(partition).await {
            return Ok(client);
        }
        let lock = {
            let mut locks = self
                .connecting
                .lock()
                .map_err(|_| ClientError::Connect("connection locks poisoned".into()))?;
            locks.entry(partition).or_default().clone()
        };
        let _one_at_a_time = lock.lock().await;
        if let Some(client) = self.live(partition).await {
            return Ok(client);
        }
        tokio::time::timeout(CONNECT_TIMEOUT, self.connect_new(partition))
            .await
            .map_err(|_| {
                ClientError::Connect(format!(
                    "partition {partition}: no connection within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ))
            })?
    }

    async fn connect_new(&self, partition: PartitionId) -> Result<Arc<AmClient>, ClientError> {
        let target = self
            .route()
            .partitions
            .iter()
            .find(|target| target.id == partition)
            .cloned()
            .ok_or_else(|| ClientError::Connect(format!("no partition {partition}")))?;
        let address = tokio::net::lookup_host(target.address.as_str())
            .await
            .map_err(|error| ClientError::Connect(format!("resolving {}: {error}", target.address)))?
            .next()
            .ok_or_else(|| ClientError::Connect(format!("{} resolves to no address", target.address)))?;
        let client = AmClient::connect(address, &self.identity).await?;
        // Closed unless it is stored below: a connect cut short (a timeout,
        // a deadline, stop) leaves no connection open behind it.
        let mut orphan = CloseOnDrop(Some(client.connection_handle()));
        if let Some(name) = &target.name {
            crate::quic::check_am_name(&client.connection_handle(), &self.identity.ca_der, name)?;
        }
        let sessions = self.sessions.clone();
        let am_key = target.key;
        let signing_key = self.identity.signing_key.clone();
        let arrivals = self.arrivals_sender.clone();
        let receipts = self.receipts.clone();
        let receipt_arrived = self.receipt_arrived.clone();
        let name = self.name.clone();
        let keep_receipt = move |receipt: wire::Signed<wire::SessionReceipt>| {
            // Only receipts signed by this partition, for this provider.
            let session_id = receipt.value().session_id;
            let mine = name.as_ref().is_none_or(|name| *name == receipt.value().provider);
            if !mine || crate::receipts::check(&receipt, &am_key, session_id).is_err() {
                return;
            }
            if let Ok(mut receipts) = receipts.lock() {
                receipts.insert(receipt);
            }
            receipt_arrived.notify_waiters();
        };
        client.serve_pushes_with_receipts(
            move |credential| {
                let session_id = credential.value().session_id;
                let Ok(session) = ProviderSession::accept(credential, &am_key, signing_key.clone()) else {
                    return ReceiptStatus::BAD_SIGNATURE;
                };
                let Ok(mut sessions) = sessions.lock() else {
                    return ReceiptStatus::BUSY;
                };
                // Now and then, forget sessions that are done: finished and
                // acked, or long past their lifetime.
                if sessions.len() % PRUNE_EVERY == PRUNE_EVERY - 1 {
                    let now = now_ms();
                    sessions.retain(|_, held| {
                        !held.is_finished()
                            && held
                                .credential()
                                .value()
                                .policy
                                .valid_until_ms
                                .saturating_add(SESSION_GRACE_MS)
                                > now
                    });
                }
                sessions.entry(session_id).or_insert(session);
                let _ = arrivals.try_send(session_id);
                ReceiptStatus::ACCEPTED
            },
            keep_receipt,
        );
        client.confirm_served(Duration::from_secs(10)).await?;
        let client = Arc::new(client);
        let mut clients = self.clients.lock().await;
        if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
            // Stopped meanwhile: `orphan` closes it.
            return Err(ClientError::Connect("the node is stopping".into()));
        }
        // The one it replaces is closed already (or it would be live).
        let replaced = clients.insert(partition, client.clone());
        drop(clients);
        orphan.0 = None;
        drop(replaced);
        Ok(client)
    }
}

impl ProviderNode {
    /// Close the connection to the AM (as a network failure would); the
    /// node reconnects by itself.
    pub async fn disconnect(&self) {
        let clients: Vec<Arc<AmClient>> = self
            .inner
            .clients
            .lock()
            .await
            .drain()
            .map(|(_, client)| client)
            .collect();
        for client in clients {
            match Arc::try_unwrap(client) {
                Ok(client) => client.close().await,
                Err(shared) => shared.connection_handle().close(0u32.into(), b"done"),
            }
        }
    }

    /// Where users reach this provider.
    pub fn service_address(&self) -> Result<SocketAddr, ClientError> {
        self.server.local_addr()
    }

    /// Wait (at most `timeout`) for the next credential the AM pushes.
    pub async fn next_credential(&self, timeout: Duration) -> Option<SessionId> {
        let mut arrivals = self.arrivals.lock().await;
        tokio::time::timeout(timeout, arrivals.recv()).await.ok().flatten()
    }

    /// Account for a session: the message is signed and kept until acked;
    /// the background sender sends it once the linger has passed (with
    /// everything accounted meanwhile), unless the linger is off
    /// ([`ProviderNode::set_linger`]).
    pub fn account(
        &self,
        session_id: SessionId,
        kind: AccountingKind,
        usage: Usage,
    ) -> Result<MessageId, ProviderError> {
        let message_id = {
            let mut sessions = self.inner.sessions.lock().map_err(|_| ProviderError::Backlog)?;
            let session = sessions
                .get_mut(&session_id)
                .ok_or(ProviderError::WrongSession(session_id))?;
            session.account(kind, usage)?.value().message_id()
        };
        // (A session the map cannot route waits for the map that can: set_map.)
        if let Some(partition) = Inner::partition_of(&self.inner.route(), &session_id) {
            self.inner.hold_for(partition, Instant::now());
        }
        Ok(message_id)
    }

    /// How long the background sender holds an accounted message for those
    /// accounted after it to join it in one write (capped at
    /// [`crate::linger::LINGER_MAX`]; zero sends each at once). `None`
    /// turns the background sender off: accounting then goes only with
    /// [`ProviderNode::deliver`]. The default is [`LINGER_DEFAULT`].
    pub fn set_linger(&self, linger: Option<Duration>) {
        if let Ok(mut sending) = self.inner.sending.lock() {
            sending.linger = linger.map(Linger::new);
        }
        // What is unacked now goes after the new linger.
        if self.unacked_count() > 0 {
            self.inner.hold_all(Instant::now());
        }
        self.inner.send_wake.notify_one();
    }

    /// The linger now (`None`: no background sending).
    pub fn linger(&self) -> Option<Duration> {
        self.inner
            .sending
            .lock()
            .ok()
            .and_then(|sending| sending.linger.map(Linger::hold))
    }

    /// Messages accounted and not yet answered for good (sent or not).
    pub fn unacked_count(&self) -> usize {
        self.inner.sessions.lock().map_or(0, |sessions| {
            sessions.values().map(ProviderSession::unacked_count).sum()
        })
    }

    /// Sessions held (pushed and not yet pruned).
    pub fn session_count(&self) -> usize {
        self.inner.sessions.lock().map_or(0, |sessions| sessions.len())
    }

    /// The User Credential the AM pushed for a session.
    pub fn credential(&self, session_id: SessionId) -> Option<wire::Signed<wire::UserCredential>> {
        self.inner
            .sessions
            .lock()
            .ok()
            .and_then(|sessions| sessions.get(&session_id).map(|session| session.credential().clone()))
    }

    /// The receipt the AM pushed for a session once its Final was stored
    /// (4.20), checked against the key of the partition that holds it.
    pub fn receipt(&self, session_id: SessionId) -> Option<wire::Signed<wire::SessionReceipt>> {
        self.inner
            .receipts
            .lock()
            .ok()
            .and_then(|receipts| receipts.get(session_id))
    }

    /// Every receipt held, oldest first; they are forgotten (keep them: a
    /// receipt is the provider's proof of what the AM holds).
    pub fn take_receipts(&self) -> Vec<wire::Signed<wire::SessionReceipt>> {
        self.inner
            .receipts
            .lock()
            .map(|mut receipts| receipts.take())
            .unwrap_or_default()
    }

    /// Wait at most `timeout` for the receipt of `session_id`.
    pub async fn wait_receipt(
        &self,
        session_id: SessionId,
        timeout: Duration,
    ) -> Option<wire::Signed<wire::SessionReceipt>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.inner.receipt_arrived.notified();
            if let Some(receipt) = self.receipt(session_id) {
                return Some(receipt);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.receipt(session_id);
            }
        }
    }

    /// Whether the session is closed by its final accounting (`None`: unknown).
    pub fn is_closed(&self, session_id: SessionId) -> Option<bool> {
        self.inner
            .sessions
            .lock()
            .ok()
            .and_then(|sessions| sessions.get(&session_id).map(ProviderSession::is_closed))
    }

    /// Send every unacked message of every session (retransmissions keep
    /// their ids) while reading their acks, all within `timeout`. What a
    /// flight of the background sender holds is not sent twice: its answers
    /// are waited for, and what it leaves unanswered is sent then (a
    /// partition has one flight at a time, so a delivery may wait for the
    /// one out there). Reconnects first if the connection to the AM is gone.
    /// Each message is sent at most once by one delivery.
    pub async fn deliver(&self, timeout: Duration) -> Result<Delivery, ClientError> {
        let deadline = Instant::now() + timeout;
        // Every message unacked now that has a partition to go to.
        let route = self.inner.route();
        let (mut unsent, unroutable) = match self.inner.sessions.lock() {
            Ok(sessions) => {
                let mut unacked = HashSet::new();
                let mut unroutable = 0;
                for message in sessions.values().flat_map(ProviderSession::unacked) {
                    match Inner::partition_of(&route, &message.value().session_id) {
                        Some(_) => {
                            unacked.insert(message.value().message_id());
                        }
                        None => unroutable += 1,
                    }
                }
                (unacked, unroutable)
            }
            Err(_) => return Err(ClientError::Connection("sessions poisoned".into())),
        };
        let mut delivery = Delivery {
            sent: unsent.len(),
            unroutable,
            ..Delivery::default()
        };
        let mut failed = None;
        let mut reached = 0;
        // Rounds: each sends some of `unsent` (removing them) or waits for
        // a flight to end, until the deadline.
        loop {
            let flight_ended = self.inner.flight_done.notified();
            tokio::pin!(flight_ended);
            flight_ended.as_mut().enable();
            let (claimed, blocked) = claim(&self.inner, Scope::Messages(&unsent, deadline))?;
            if !claimed.is_empty() {
                for (outgoing, _) in claimed.values() {
                    for message in outgoing {
                        unsent.remove(&message.value().message_id());
                    }
                }
                for (partition, _, result) in fly(&self.inner, claimed, deadline, false).await {
                    match result {
                        Ok(()) => reached += 1,
                        Err(error) => {
                            delivery.unreached.push((partition, error.to_string()));
                            failed = Some(error);
                        }
                    }
                }
                continue;
            }
            // The rest waits for flights out (the background sender's).
            if !blocked
                || tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), flight_ended)
                    .await
                    .is_err()
            {
                break;
            }
        }
        // Only when no partition could be reached is it an error; otherwise
        // what is left shows in `pending`. Either way the answers read stay
        // counted until a delivery reports them.
        if let (0, Some(error)) = (reached, failed) {
            self.inner.hold_all(Instant::now());
            return Err(error);
        }
        if let Ok(mut sending) = self.inner.sending.lock() {
            let answered = std::mem::take(&mut sending.answered);
            delivery.stored = answered.stored;
            delivery.duplicates = answered.duplicates;
            delivery.refused = answered.refused;
            delivery.refused_unlisted = answered.refused_unlisted;
        }
        // Partitions where a flight this delivery waited for did not land.
        if let Ok(sessions) = self.inner.sessions.lock() {
            let mut late: Vec<PartitionId> = sessions
                .values()
                .flat_map(ProviderSession::unacked)
                .filter(|message| unsent.contains(&message.value().message_id()))
                .filter_map(|message| Inner::partition_of(&route, &message.value().session_id))
                .filter(|partition| delivery.unreached.iter().all(|(unreached, _)| unreached != partition))
                .collect();
            late.sort();
            late.dedup();
            for partition in late {
                delivery
                    .unreached
                    .push((partition, "its flight out or its backoff outlasted the delivery".into()));
            }
        }
        delivery.pending = self.unacked_count();
        if delivery.pending > 0 {
            // The background sender tries again (after the backoff).
            self.inner.hold_all(Instant::now());
        }
        self.close_idle().await;
        Ok(delivery)
    }

    /// The partitions this node holds a connection to now.
    pub async fn connected_partitions(&self) -> Vec<PartitionId> {
        let mut partitions: Vec<PartitionId> = self.inner.clients.lock().await.keys().copied().collect();
        partitions.sort();
        partitions
    }

    /// Close the connections to partitions other than the home where no
    /// session of this node is still open or unacked (a provider moved by
    /// a map change keeps its old partition's connection only while its
    /// sessions there live).
    async fn close_idle(&self) {
        let route = self.inner.route();
        let needed: std::collections::HashSet<PartitionId> = match self.inner.sessions.lock() {
            Ok(sessions) => sessions
                .values()
                .filter(|session| !session.is_finished())
                .filter_map(|session| Inner::partition_of(&route, &session.session_id()))
                .collect(),
            Err(_) => return,
        };
        // The previous home too, until the next map: partitions that have
        // not yet taken the new map still push its new sessions there.
        let home = route.home;
        let previous = route.previous_home;
        let idle: Vec<Arc<AmClient>> = {
            let mut clients = self.inner.clients.lock().await;
            let gone: Vec<PartitionId> = clients
                .keys()
                .filter(|partition| **partition != home && Some(**partition) != previous && !needed.contains(partition))
                .copied()
                .collect();
            gone.iter().filter_map(|partition| clients.remove(partition)).collect()
        };
        for client in idle {
            client.connection_handle().close(0u32.into(), b"no sessions here");
        }
    }

    /// Stop: close the AM connection and the users' endpoint.
    pub async fn stop(self) {
        // No connection is kept from now on (a flight or the keeper that
        // is connecting closes what it gets); then the tasks.
        self.inner.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        self.sender.0.abort();
        self.keeper.0.abort();
        self.disconnect().await;
        self.server.stop();
    }
}

/// Answers counted: by one flight (what it settled), or all of them until
/// a delivery reports them.
#[derive(Debug, Default)]
struct Part {
    stored: usize,
    duplicates: usize,
    refused: Vec<(MessageId, AckStatus)>,
    refused_unlisted: usize,
    /// A "busy, retry" answer started (or fell within) the partition's
    /// backoff during this flight.
    backed_off: bool,
}

impl Part {
    /// Answers for good: stored or refused.
    fn settled(&self) -> usize {
        self.stored + self.refused.len() + self.refused_unlisted
    }

    /// Count one answer's outcome.
    fn count(&mut self, message_id: MessageId, status: AckStatus, outcome: &AckOutcome) {
        match outcome {
            AckOutcome::Stored => {
                self.stored += 1;
                if status == AckStatus::DUPLICATE {
                    self.duplicates += 1;
                }
            }
            AckOutcome::Refused(status) if self.refused.len() < REFUSED_REPORTED_MAX => {
                self.refused.push((message_id, *status));
            }
            AckOutcome::Refused(_) => self.refused_unlisted += 1,
            AckOutcome::Retry(_) | AckOutcome::Unknown => {}
        }
    }
}

/// One flight's messages, all to one partition: no other flight sends them,
/// nor anything else to that partition, until this is dropped (however the
/// flight ends). Then, with the linger on, what is still unacked is held
/// again for the background sender.
struct Claim {
    inner: Arc<Inner>,
    partition: PartitionId,
    message_ids: Vec<MessageId>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let wake = match self.inner.sending.lock() {
            Ok(mut sending) => {
                for message_id in &self.message_ids {
                    sending.in_flight.remove(message_id);
                }
                sending.flying.remove(&self.partition);
                // Held again, after the release: the sender claims what is
                // left, or what waited for this partition, once the linger
                // (and any backoff) passed; if all was answered it finds
                // nothing. The sender left this partition out while it
                // flew: wake it to count it in again.
                match sending.linger {
                    Some(_) => {
                        sending.held.entry(self.partition).or_default().note(Instant::now());
                        true
                    }
                    None => false,
                }
            }
            Err(_) => false,
        };
        self.inner.flight_done.notify_waiters();
        if wake {
            self.inner.send_wake.notify_one();
        }
    }
}

/// Claimed messages by partition.
type Claimed = HashMap<PartitionId, (Vec<wire::Signed<wire::Accounting>>, Claim)>;

/// What a [`claim`] may take.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// The background sender: every unacked message of these partitions
    /// (none of them flying).
    Partitions(&'a HashSet<PartitionId>),
    /// A delivery: these messages, by its deadline.
    Messages(&'a HashSet<MessageId>, Instant),
}

/// Claim, by partition, the unacked messages in `scope` that no flight
/// holds and whose partition is known and has no flight out. For a
/// delivery, also whether any of its messages waits for a flight out (a
/// partition whose backoff outlasts the deadline is left alone: nothing
/// would go there in time, and the delivery reports it unreached).
fn claim(inner: &Arc<Inner>, scope: Scope<'_>) -> Result<(Claimed, bool), ClientError> {
    let route = inner.route();
    // Before the guards: were anything below to panic, the guards are
    // released before a `Claim` drops (and locks `sending`).
    let mut claimed = Claimed::new();
    let sessions = inner
        .sessions
        .lock()
        .map_err(|_| ClientError::Connection("sessions poisoned".into()))?;
    let mut sending = inner
        .sending
        .lock()
        .map_err(|_| ClientError::Connection("sending state poisoned".into()))?;
    let mut blocked = false;
    let mut backoffs: HashMap<PartitionId, Option<Instant>> = HashMap::new();
    for session in sessions.values() {
        if session.unacked_count() == 0 {
            continue;
        }
        let Some(partition) = Inner::partition_of(&route, &session.session_id()) else {
            continue;
        };
        let flying = sending.flying.contains(&partition);
        if let Scope::Partitions(partitions) = scope
            && (flying || !partitions.contains(&partition))
        {
            continue;
        }
        let backoff_until = *backoffs
            .entry(partition)
            .or_insert_with(|| inner.backoff_until(partition));
        for message in session.unacked() {
            let message_id = message.value().message_id();
            let in_flight = sending.in_flight.contains(&message_id);
            if let Scope::Messages(only, deadline) = scope {
                if !only.contains(&message_id) {
                    continue;
                }
                if in_flight {
                    blocked = true;
                    continue;
                }
                if backoff_until.is_some_and(|until| until >= deadline) {
                    continue;
                }
                if flying {
                    blocked = true;
                    continue;
                }
            } else if in_flight {
                continue;
            }
            let (outgoing, claim) = claimed.entry(partition).or_insert_with(|| {
                (
                    Vec::new(),
                    Claim {
                        inner: inner.clone(),
                        partition,
                        message_ids: Vec::new(),
                    },
                )
            });
            outgoing.push(message.clone());
            claim.message_ids.push(message_id);
        }
    }
    for (partition, (outgoing, _)) in &claimed {
        sending.flying.insert(*partition);
        for message in outgoing {
            sending.in_flight.insert(message.value().message_id());
        }
    }
    drop(sending);
    drop(sessions);
    Ok((claimed, blocked))
}

/// Fly claimed messages to every partition at once, each bounded by the
/// deadline (one that is down holds back no other): what each settled,
/// and how it ended.
async fn fly(
    inner: &Arc<Inner>,
    claimed: Claimed,
    deadline: Instant,
    own_deadline: bool,
) -> Vec<(PartitionId, usize, Result<(), ClientError>)> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut partitions = HashMap::new();
    for (partition, (outgoing, claim)) in claimed {
        let inner = inner.clone();
        let task = tasks.spawn(async move {
            let (settled, result) = flight(&inner, partition, outgoing, deadline, own_deadline).await;
            drop(claim);
            (partition, settled, result)
        });
        partitions.insert(task.id(), partition);
    }
    let mut ended = Vec::new();
    while let Some(joined) = tasks.join_next_with_id().await {
        match joined {
            Ok((_, flight)) => ended.push(flight),
            Err(error) => {
                if let Some(partition) = partitions.get(&error.id()) {
                    ended.push((*partition, 0, Err(ClientError::Connection(error.to_string()))));
                }
            }
        }
    }
    ended
}

/// One flight to `partition`: what it settled and how it ended. When the
/// partition left messages unsettled (unreached, cut off, its stream ended
/// early, WRONG_PARTITION, no answer within the flight's own timeout) it
/// backs off: the next flight there waits. A BUSY answer has started the
/// backoff already (once per flight), and a caller's deadline running out
/// (`own_deadline` false: a delivery's) is not the partition's doing.
async fn flight(
    inner: &Inner,
    partition: PartitionId,
    outgoing: Vec<wire::Signed<wire::Accounting>>,
    deadline: Instant,
    own_deadline: bool,
) -> (usize, Result<(), ClientError>) {
    let claimed = outgoing.len();
    let started = Instant::now();
    let (part, result) = deliver_to(inner, partition, outgoing, deadline).await;
    let settled = part.settled();
    let cut_by_caller = !own_deadline && Instant::now() >= deadline;
    if settled < claimed
        && !part.backed_off
        && !cut_by_caller
        && let Ok(mut backoff) = inner.backoff.lock()
    {
        backoff.entry(partition).or_default().refused(Instant::now(), started);
    }
    (settled, result)
}

/// The background sender: for each partition with no flight out, once
/// what is held there has lingered its time and its backoff has ended,
/// claim every unacked message there that no flight holds and fly it (a
/// partition with a flight out gets the next batch when it lands); until
/// the node is gone.
async fn send_held(inner: std::sync::Weak<Inner>) {
    let mut flights = tokio::task::JoinSet::new();
    loop {
        // Only a weak reference while waiting: a node dropped without
        // `stop` is freed.
        let (wake, release_at) = {
            let Some(node) = inner.upgrade() else { return };
            let Ok(sending) = node.sending.lock() else { return };
            let release_at = sending.linger.and_then(|linger| {
                sending
                    .held
                    .iter()
                    .filter(|(partition, _)| !sending.flying.contains(partition))
                    .filter_map(|(partition, held)| {
                        let release = held.release_at(linger)?;
                        Some(
                            node.backoff_until(*partition)
                                .map_or(release, |until| until.max(release)),
                        )
                    })
                    .min()
            });
            (node.send_wake.clone(), release_at)
        };
        let release = tokio::time::Instant::from_std(release_at.unwrap_or_else(Instant::now));
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep_until(release), if release_at.is_some() => {}
            Some(_) = flights.join_next(), if !flights.is_empty() => {}
        }
        while flights.try_join_next().is_some() {}
        let Some(node) = inner.upgrade() else { return };
        let ripe: HashSet<PartitionId> = {
            let Ok(mut sending) = node.sending.lock() else { return };
            let Some(linger) = sending.linger else { continue };
            let now = Instant::now();
            let Sending { held, flying, .. } = &mut *sending;
            let ripe = held
                .iter_mut()
                .filter(|(partition, _)| !flying.contains(partition) && node.backoff_until(**partition).is_none())
                .filter_map(|(partition, held)| held.take_if_ripe(linger, now).then_some(*partition))
                .collect();
            held.retain(|_, held| !held.is_empty());
            ripe
        };
        if ripe.is_empty() {
            continue;
        }
        let Ok((claimed, _)) = claim(&node, Scope::Partitions(&ripe)) else {
            return;
        };
        let deadline = Instant::now() + FLIGHT_TIMEOUT;
        for (partition, (outgoing, claim)) in claimed {
            let node = node.clone();
            flights.spawn(async move {
                // What it left is held again when the claim drops; the
                // partition backs off.
                let _ended = flight(&node, partition, outgoing, deadline, true).await;
                drop(claim);
            });
        }
    }
}

/// Send `outgoing` to `partition` while reading the acks, until `deadline`:
/// what was answered (also when it failed part way), and how it ended.
async fn deliver_to(
    inner: &Inner,
    partition: PartitionId,
    outgoing: Vec<wire::Signed<wire::Accounting>>,
    deadline: Instant,
) -> (Part, Result<(), ClientError>) {
    let mut part = Part::default();
    let result = deliver_into(inner, partition, outgoing, deadline, &mut part).await;
    (part, result)
}

async fn deliver_into(
    inner: &Inner,
    partition: PartitionId,
    outgoing: Vec<wire::Signed<wire::Accounting>>,
    deadline: Instant,
    part: &mut Part,
) -> Result<(), ClientError> {
    // A partition that answered "busy, retry" gets nothing before its
    // backoff ends (peer::backoff): what waits stays pending for a later
    // delivery when the backoff outlasts this one.
    if let Some(until) = inner.backoff_until(partition) {
        if until >= deadline {
            return Ok(());
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
    }
    // A connection from before the partition restarted looks open until
    // its first packets meet a stateless reset: when it breaks before any
    // answer, it is dropped and the delivery made once more on a new one.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (client, answered) = deliver_once(inner, partition, outgoing.clone(), deadline, part).await?;
        match answered {
            Ok(()) => return Ok(()),
            Err((error, 0)) if attempt == 1 && matches!(error, ClientError::Connection(_)) => {
                let mut clients = inner.clients.lock().await;
                if clients.get(&partition).is_some_and(|held| Arc::ptr_eq(held, &client)) {
                    clients.remove(&partition);
                }
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// One delivery on the connection [`Inner::connect`] gives: that
/// connection, and how the ack loop ended (with the answers counted so far
/// when it failed).
async fn deliver_once(
    inner: &Inner,
    partition: PartitionId,
    outgoing: Vec<wire::Signed<wire::Accounting>>,
    deadline: Instant,
    part: &mut Part,
) -> Result<(Arc<AmClient>, Result<(), (ClientError, usize)>), ClientError> {
    // The connection and the stream within the deadline; the ack loop
    // below keeps what was answered by then.
    let opening = async {
        let client = inner.connect(partition).await?;
        let stream = client.open_accounting().await;
        Ok::<_, ClientError>((client, stream))
    };
    let (client, stream) = tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), opening)
        .await
        .map_err(|_| ClientError::Connection(format!("partition {partition}: not reached in time")))??;
    let stream = match stream {
        Ok(stream) => stream,
        Err(error) => return Ok((client, Err((error, 0)))),
    };
    let (mut sender, mut receiver) = (stream.sender, stream.receiver);
    let expected = outgoing.len();
    // Send and read at once: the AM reads a stream only while its acks
    // are read, so sending everything first could block both sides. A
    // "busy, retry" answer stops the sending (the backoff holds the rest):
    // the stream is finished, the AM answers what it read and finishes its
    // side, which ends the loop below.
    let refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_sending = refused.clone();
    let sent = Instant::now();
    let writer = AbortOnDrop(tokio::spawn(async move {
        for chunk in outgoing.chunks(256) {
            if stop_sending.load(std::sync::atomic::Ordering::Relaxed) || sender.send(chunk).await.is_err() {
                break;
            }
        }
        let _ = sender.finish();
    }));
    let mut answered = 0usize;
    while answered < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        let entries = match tokio::time::timeout(left, receiver.next()).await {
            Ok(Ok(Some(Received::Acks(entries)))) => entries,
            Ok(Ok(Some(Received::Error(error)))) => return Ok((client, Err((ClientError::Refused(error), answered)))),
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(error)) => return Ok((client, Err((error, answered)))),
        };
        if inner.note_answers(partition, &entries, sent) {
            refused.store(true, std::sync::atomic::Ordering::Relaxed);
            part.backed_off = true;
        }
        let Ok(mut sessions) = inner.sessions.lock() else {
            return Err(ClientError::Connection("sessions poisoned".into()));
        };
        // Counted for the report in the same critical section that settles
        // the message: a delivery that finds it settled finds it counted.
        let Ok(mut sending) = inner.sending.lock() else {
            return Err(ClientError::Connection("sending state poisoned".into()));
        };
        for entry in entries {
            answered += 1;
            let Some(session) = sessions.get_mut(&entry.message_id.session_id) else {
                continue;
            };
            let outcome = session.on_ack(&entry);
            part.count(entry.message_id, entry.status, &outcome);
            sending.answered.count(entry.message_id, entry.status, &outcome);
        }
    }
    drop(writer);
    Ok((client, Ok(())))
}

/// Aborts its task when dropped (the writer of a delivery that ended).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Closes its connection when dropped, unless emptied first.
struct CloseOnDrop(Option<quinn::Connection>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(connection) = self.0.take() {
            connection.close(0u32.into(), b"connect abandoned");
        }
    }
}
