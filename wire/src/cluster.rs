//! Several AM partitions as one system: the cluster map, where a session
//! lives, where a provider lives, and the answer that sends a request to the
//! right partition.
//!
//! - A **partition** is one AM node: an id (1..=65535), the name in its
//!   `am` certificate, and the address providers and users reach it at. The
//!   cluster map lists them all; every node and every client holds the
//!   same map.
//! - A **session** lives on the partition that minted it for its whole
//!   life: the first two bytes of its id are the partition id (big-endian),
//!   the other 14 are random ([`SessionId::partition`]).
//! - A **provider's home** is the partition with the highest rendezvous
//!   score for its name ([`placement_score`]): its sessions are minted
//!   there and its accounting goes there. Adding a partition moves only the
//!   providers whose new highest score is the new partition's (about 1/N).
//! - A request sent to the wrong partition is answered with a [`Redirect`]
//!   naming the right one; an accounting message for a session of another
//!   partition is answered `WRONG_PARTITION`. Neither is stored there.

use bytes::{BufMut, BytesMut};
use sha2::{Digest, Sha256};

use crate::codec::Reader;
use crate::error::DecodeError;
use crate::frame::{MessageType, put_frame};
use crate::ids::SessionId;
use crate::limits::ID_BYTES;
use crate::text::{Address, Name};

/// A partition's id: 1..=65535 (0 is never a partition).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PartitionId(pub u16);

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The random bytes of a session id after its partition id.
pub const SESSION_RANDOM_BYTES: usize = ID_BYTES - 2;

impl SessionId {
    /// A session id of `partition` with `random` (from a CSPRNG) after it.
    pub fn for_partition(partition: PartitionId, random: [u8; SESSION_RANDOM_BYTES]) -> Self {
        let mut id = [0u8; ID_BYTES];
        id[..2].copy_from_slice(&partition.0.to_be_bytes());
        id[2..].copy_from_slice(&random);
        Self(id)
    }

    /// The partition that minted this session: its first two bytes.
    pub fn partition(&self) -> PartitionId {
        PartitionId(u16::from_be_bytes([self.0[0], self.0[1]]))
    }
}

/// The domain prefix of a placement score.
pub const PLACEMENT_DOMAIN: &[u8] = b"acct/1 placement\0";

/// The rendezvous score of `provider` on the partition named `partition`:
/// the first 8 bytes, big-endian, of SHA-256(`acct/1 placement\0` ||
/// partition name || 0x00 || provider name). The provider's home is the
/// partition with the highest score (ties, which need a SHA-256 collision
/// of 64 bits, go to the lower partition id).
pub fn placement_score(partition: &Name, provider: &Name) -> u64 {
    let mut hash = Sha256::new();
    hash.update(PLACEMENT_DOMAIN);
    hash.update(partition.as_str().as_bytes());
    hash.update([0u8]);
    hash.update(provider.as_str().as_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// One partition of the cluster map.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Partition {
    /// Its id (the first two bytes of its sessions' ids).
    pub id: PartitionId,
    /// The name in its `am` certificate (and its `node=` in the archive).
    pub name: Name,
    /// Where providers and users reach it (`host:port`).
    pub address: Address,
}

/// Why a cluster map is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// No partition.
    #[error("the cluster map has no partition")]
    Empty,
    /// Partition id 0.
    #[error("partition ids start at 1")]
    ZeroId,
    /// An id twice.
    #[error("partition id {0} appears twice")]
    DuplicateId(u16),
    /// A name twice.
    #[error("partition name {0} appears twice")]
    DuplicateName(String),
}

/// Every partition of the system, sorted by id.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ClusterMap {
    partitions: Vec<Partition>,
}

impl ClusterMap {
    /// A map of `partitions` (any order): ids from 1, ids and names unique.
    pub fn new(mut partitions: Vec<Partition>) -> Result<Self, ClusterError> {
        if partitions.is_empty() {
            return Err(ClusterError::Empty);
        }
        partitions.sort_by_key(|partition| partition.id);
        if partitions[0].id.0 == 0 {
            return Err(ClusterError::ZeroId);
        }
        for pair in partitions.windows(2) {
            if pair[0].id == pair[1].id {
                return Err(ClusterError::DuplicateId(pair[0].id.0));
            }
        }
        let mut names: Vec<&Name> = partitions.iter().map(|partition| &partition.name).collect();
        names.sort();
        for pair in names.windows(2) {
            if pair[0] == pair[1] {
                return Err(ClusterError::DuplicateName(pair[0].to_string()));
            }
        }
        Ok(Self { partitions })
    }

    /// The partitions, by id.
    pub fn partitions(&self) -> &[Partition] {
        &self.partitions
    }

    /// The partition with this id.
    pub fn by_id(&self, id: PartitionId) -> Option<&Partition> {
        self.partitions
            .binary_search_by_key(&id, |partition| partition.id)
            .ok()
            .map(|index| &self.partitions[index])
    }

    /// The partition with this name.
    pub fn by_name(&self, name: &Name) -> Option<&Partition> {
        self.partitions.iter().find(|partition| &partition.name == name)
    }

    /// The provider's home partition: the highest [`placement_score`].
    pub fn home(&self, provider: &Name) -> &Partition {
        let mut best = &self.partitions[0];
        let mut best_score = placement_score(&best.name, provider);
        for partition in &self.partitions[1..] {
            let score = placement_score(&partition.name, provider);
            if score > best_score {
                best = partition;
                best_score = score;
            }
        }
        best
    }

    /// The partition a session lives on, if the map has it.
    pub fn of_session(&self, session: &SessionId) -> Option<&Partition> {
        self.by_id(session.partition())
    }
}

/// AM → client: "not here; ask this partition". The answer to a Service
/// Credential Request or an Admin Open Session sent to a partition that is
/// not the provider's home. Nothing was stored or consumed (the request's
/// nonce included): the same request may be sent to the named partition.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Redirect {
    /// The partition to ask.
    pub partition: PartitionId,
    /// Its name (its `am` certificate's).
    pub node: Name,
    /// Its address.
    pub address: Address,
}

impl Redirect {
    /// The redirect to `partition`.
    pub fn to(partition: &Partition) -> Self {
        Self {
            partition: partition.id,
            node: partition.name.clone(),
            address: partition.address.clone(),
        }
    }

    /// Append as a frame.
    pub fn encode_frame(&self, out: &mut BytesMut) {
        let mut body = BytesMut::with_capacity(2 + 1 + 64 + 1 + 253);
        body.put_u16(self.partition.0);
        self.node.encode(&mut body);
        self.address.encode(&mut body);
        put_frame(out, MessageType::REDIRECT, &body);
    }

    /// Read the body.
    pub fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            partition: PartitionId(reader.u16("partition")?),
            node: Name::decode(reader)?,
            address: Address::decode(reader)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Message;

    fn partition(id: u16, name: &str) -> Partition {
        Partition {
            id: PartitionId(id),
            name: Name::new(name).unwrap(),
            address: Address::new(format!("127.0.0.1:{}", 4000 + id)).unwrap(),
        }
    }

    fn map(count: u16) -> ClusterMap {
        ClusterMap::new((1..=count).map(|id| partition(id, &format!("am-{id}"))).collect()).unwrap()
    }

    #[test]
    fn a_session_id_carries_its_partition() {
        let id = SessionId::for_partition(PartitionId(0x0203), [9; SESSION_RANDOM_BYTES]);
        assert_eq!(id.0[..2], [2, 3]);
        assert_eq!(id.partition(), PartitionId(0x0203));
        assert_eq!(
            map(3)
                .of_session(&SessionId::for_partition(PartitionId(2), [0; 14]))
                .unwrap()
                .id,
            PartitionId(2)
        );
        assert_eq!(
            map(3).of_session(&SessionId::for_partition(PartitionId(4), [0; 14])),
            None
        );
    }

    #[test]
    fn the_placement_score_is_the_documented_hash() {
        // docs/protocol.md gives this example.
        let score = placement_score(&Name::new("am-1").unwrap(), &Name::new("provider-0001").unwrap());
        let mut hash = Sha256::new();
        hash.update(b"acct/1 placement\0am-1\0provider-0001");
        let digest = hash.finalize();
        assert_eq!(score.to_be_bytes(), digest[..8]);
    }

    #[test]
    fn placement_spreads_providers_and_a_new_partition_moves_about_a_fourth() {
        let three = map(3);
        let four = map(4);
        let providers: Vec<Name> = (1..=3000)
            .map(|index| Name::new(format!("provider-{index:04}")).unwrap())
            .collect();
        let mut counts = [0usize; 4];
        let mut moved = 0;
        for provider in &providers {
            let before = three.home(provider);
            counts[usize::from(before.id.0) - 1] += 1;
            let after = four.home(provider);
            if after.id != before.id {
                moved += 1;
                assert_eq!(after.id, PartitionId(4), "a provider moved between old partitions");
            }
        }
        for count in &counts[..3] {
            assert!((850..=1150).contains(count), "{counts:?}");
        }
        assert!((600..=900).contains(&moved), "{moved} of 3000 moved");
    }

    #[test]
    fn maps_refuse_zero_and_repeated_ids_and_names() {
        assert_eq!(ClusterMap::new(vec![]), Err(ClusterError::Empty));
        assert_eq!(ClusterMap::new(vec![partition(0, "a")]), Err(ClusterError::ZeroId));
        assert_eq!(
            ClusterMap::new(vec![partition(1, "a"), partition(1, "b")]),
            Err(ClusterError::DuplicateId(1))
        );
        assert_eq!(
            ClusterMap::new(vec![partition(1, "a"), partition(2, "a")]),
            Err(ClusterError::DuplicateName("a".into()))
        );
    }

    #[test]
    fn a_redirect_round_trips() {
        let redirect = Redirect::to(&partition(7, "am-7"));
        let mut out = BytesMut::new();
        redirect.encode_frame(&mut out);
        assert_eq!(Message::decode(out.freeze()).unwrap(), Message::Redirect(redirect));
    }
}
