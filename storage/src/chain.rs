//! What the storage decides about a node's chain objects, whatever it keeps
//! them in (`archive::chain` names them): which head to keep.

use wire::{ArchiveHead, Signed};

/// Whether `new` replaces the head `held` (its bytes, if the node has one):
/// only a head with a higher number does, so a delayed retry of an older
/// batch never moves the head back. A held head that does not decode is
/// replaced (it is not one the AM wrote); one of the same number with other
/// bytes is kept (a forked chain: the auditor sees both headers).
pub fn head_replaces(held: Option<&[u8]>, new: &Signed<ArchiveHead>) -> bool {
    let Some(held) = held else { return true };
    match Signed::<ArchiveHead>::decode_body(bytes::Bytes::copy_from_slice(held)) {
        Ok(held) if held.value().number == new.value().number && held.body() != new.body() => {
            tracing::error!(
                node = %new.value().node,
                number = new.value().number,
                "two different heads for one batch number: the node's chain forks; the first is kept"
            );
            false
        }
        Ok(held) => held.value().number < new.value().number,
        Err(error) => {
            tracing::error!(node = %new.value().node, %error, "the stored head does not decode; replacing it");
            true
        }
    }
}
