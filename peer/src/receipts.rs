//! Session receipts on the parties' side (docs/protocol.md 4.20): checked
//! against the AM's key, and kept by the provider node.

use std::collections::{HashMap, VecDeque};

use wire::{PublicKey, SessionId, SessionReceipt, Signed};

use crate::quic::ClientError;

/// Receipts a [`Receipts`] holds at most; the oldest goes first.
pub const RECEIPTS_HELD_MAX: usize = 65_536;

/// Check a receipt: signed by `am_key` (the key of the partition that holds
/// the session) and about `session_id`.
pub fn check(receipt: &Signed<SessionReceipt>, am_key: &PublicKey, session_id: SessionId) -> Result<(), ClientError> {
    receipt
        .verify(am_key)
        .map_err(|error| ClientError::Connection(format!("the receipt's signature: {error}")))?;
    if receipt.value().session_id != session_id {
        return Err(ClientError::Connection(format!(
            "a receipt for session {} was sent for {session_id}",
            receipt.value().session_id
        )));
    }
    Ok(())
}

/// Checked receipts by session, at most [`RECEIPTS_HELD_MAX`]; a receipt
/// stating more messages replaces one stating fewer (a late interim stored
/// after the Final brings a second receipt).
#[derive(Default)]
pub struct Receipts {
    by_session: HashMap<SessionId, Signed<SessionReceipt>>,
    order: VecDeque<SessionId>,
}

impl Receipts {
    /// Keep `receipt` (already checked).
    pub fn insert(&mut self, receipt: Signed<SessionReceipt>) {
        let session_id = receipt.value().session_id;
        match self.by_session.get(&session_id) {
            Some(held) if held.value().message_count > receipt.value().message_count => return,
            Some(_) => {}
            None => self.order.push_back(session_id),
        }
        self.by_session.insert(session_id, receipt);
        while self.order.len() > RECEIPTS_HELD_MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.by_session.remove(&oldest);
            }
        }
    }

    /// The receipt held for `session_id`.
    pub fn get(&self, session_id: SessionId) -> Option<Signed<SessionReceipt>> {
        self.by_session.get(&session_id).cloned()
    }

    /// Every receipt held, oldest first, and forget them.
    pub fn take(&mut self) -> Vec<Signed<SessionReceipt>> {
        let mut out = Vec::with_capacity(self.order.len());
        for session_id in self.order.drain(..) {
            if let Some(receipt) = self.by_session.remove(&session_id) {
                out.push(receipt);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{Name, ReceiptDigest, ServiceId, SigningKey, UsageSums};

    fn receipt(key: &SigningKey, session: u8) -> Signed<SessionReceipt> {
        Signed::sign(
            SessionReceipt {
                node: Name::new("am-1").unwrap(),
                session_id: SessionId([session; 16]),
                provider: Name::new("provider-0001").unwrap(),
                user_id: Name::new("user-0001").unwrap(),
                service_id: ServiceId(1),
                issued_ms: 1,
                message_count: 1,
                highest_sequence: 1,
                final_stored: true,
                sums: UsageSums::default(),
                digest: ReceiptDigest::default(),
            },
            key,
        )
        .unwrap()
    }

    #[test]
    fn receipts_are_checked_and_held_within_the_bound() {
        let key = SigningKey::from_seed(&[1; 32]);
        let other = SigningKey::from_seed(&[2; 32]);
        assert!(check(&receipt(&key, 1), &key.public_key(), SessionId([1; 16])).is_ok());
        assert!(check(&receipt(&other, 1), &key.public_key(), SessionId([1; 16])).is_err());
        assert!(check(&receipt(&key, 1), &key.public_key(), SessionId([2; 16])).is_err());
        let mut held = Receipts::default();
        held.insert(receipt(&key, 1));
        held.insert(receipt(&key, 1));
        held.insert(receipt(&key, 2));
        assert!(held.get(SessionId([1; 16])).is_some());
        assert_eq!(held.take().len(), 2);
        assert!(held.get(SessionId([1; 16])).is_none());
    }
}
