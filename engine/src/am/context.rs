//! The AM driver's shared state: what every connection and stream task of
//! `acct serve` reads (the CA, the pipeline, the bounds) and the counters
//! and registries they share. Built once by [`super::server::run`], shared
//! as an `Arc`, and taken back whole at shutdown.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use wire::{SigningKey, TrustedCa};

use super::cluster::Placement;
use super::credentials::{ProviderRegistry, ReplayCache, ServiceDirectory};
use super::gate::InitialGate;
use super::handshakes::Handshakes;
use super::ingest::Ingest;
use super::penalty::Penalties;
use super::slots::{SessionSlots, UserSlots};
use super::store::Store;
use crate::config::IngestConfig;
use serving::deny::DenyList;

/// See the module documentation.
pub(super) struct Context {
    pub(super) ca: TrustedCa,
    pub(super) store: Arc<Store>,
    /// The verifier and committer threads and their queues.
    pub(super) pipeline: Ingest,
    pub(super) signing_key: SigningKey,
    /// This node's name (its certificate's): the node of its receipts.
    pub(super) node: wire::Name,
    /// Receipt Requests being answered ([`super::receipts::QUERIES_MAX`]).
    pub(super) receipt_queries: tokio::sync::Semaphore,
    /// The `[ingest]` settings: bounds and policies.
    pub(super) config: IngestConfig,
    /// Provider and admin connections open now (bounded by
    /// `connections_max`).
    pub(super) connections: AtomicUsize,
    pub(super) directory: ServiceDirectory,
    pub(super) replay: std::sync::Mutex<ReplayCache>,
    pub(super) providers: ProviderRegistry,
    pub(super) deny: Arc<DenyList>,
    /// Backoffs of provider names whose connection was closed for abuse
    /// (any [`Verdict`](super::abuse::Verdict)).
    pub(super) penalties: Penalties<String>,
    /// Backoffs of addresses whose handshakes keep ending in a refused
    /// identity (denied, a name in its backoff, or a provider over its
    /// connection bound).
    pub(super) address_penalties: Penalties<IpAddr>,
    /// Drops new connections from backed-off addresses before QUIC
    /// decrypts them (see [`super::gate`]).
    pub(super) gate: Arc<InitialGate>,
    /// Handshakes in progress.
    pub(super) handshakes: Handshakes,
    /// The service list's frames, encoded once.
    pub(super) service_list: bytes::Bytes,
    /// User connections open now, bounded in all and per address.
    pub(super) user_slots: UserSlots,
    /// Sessions being opened now.
    pub(super) session_slots: SessionSlots,
    /// This node's partition, and the others'.
    pub(super) placement: Placement,
    /// The echo floor (benchmarks only): accounting is answered STORED at
    /// admission, neither verified nor stored. See [`AmSettings::echo_floor`].
    ///
    /// [`AmSettings::echo_floor`]: super::server::AmSettings::echo_floor
    pub(super) echo_floor: bool,
}

impl Context {
    /// A strike against `address`: once it is in a backoff, its new
    /// connections are dropped at the gate until the backoff ends.
    pub(super) fn strike_address(&self, address: IpAddr) {
        let now = Instant::now();
        let backoff = self.address_penalties.strike(&address, now);
        if !backoff.is_zero() {
            self.gate.back_off(address, now + backoff, now);
        }
    }
}
