//! The two peers of acct's protocol, User and Service Provider: what each
//! computes, checks and remembers ([`user`], [`provider`], no transport), and
//! QUIC clients and endpoints that carry it ([`quic`], [`net`], [`node`]).
//! Real providers embed this; loadgen and the tests drive the AM through it.
//!
//! - [`user`]: build a Service Credential Request (202), check the Service
//!   Credential (206), make the Service Request (210) and check the
//!   provider's proof (211).
//! - [`provider`]: validate a Service Request against the User Credential and
//!   its policies (211), answer with the proof, and number, sign and track
//!   the session's Interim and Final Accounting (214/220) until acked.
//!
//! - [`quic`]: the provider's (and the operator's) QUIC connection to the AM,
//!   including the pushed User Credentials (208) and their receipts.
//! - [`net`]: the user's connection to the AM (service list, credential
//!   requests) and the small user ↔ provider channel (210/211).
//! - [`node`]: a whole Service Provider: pushed credentials, its endpoint
//!   for users, accounting with retransmission after reconnects.
//! - [`backoff`] and [`linger`]: when a provider waits after "busy, retry",
//!   and how long it holds a due message for others to join it; the node
//!   and loadgen share both.
//!
//! In [`user`] and [`provider`] time is always an argument (Unix ms), so
//! every decision is testable; [`node`] reads the system clock.

pub mod backoff;
pub mod clock;
pub mod linger;
pub mod net;
pub mod node;
pub mod provider;
pub mod quic;
pub mod receipts;
pub mod user;
