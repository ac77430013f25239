//! This node's place among the AM partitions (`wire::cluster`): which
//! partition it is, which providers are its own, which sessions are its
//! own. A node without a cluster map is partition 1 of one and owns
//! everything.

use wire::{ClusterMap, Name, PartitionId, Redirect, SessionId};

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Placement {
    map: Option<ClusterMap>,
    me: PartitionId,
}

/// The partition id of a node without a cluster map.
pub const SINGLE_PARTITION: PartitionId = PartitionId(1);

impl Placement {
    /// A node alone: partition 1, every provider and session its own.
    pub fn single() -> Self {
        Self {
            map: None,
            me: SINGLE_PARTITION,
        }
    }

    /// The node named `node` in `map`.
    pub fn in_cluster(map: ClusterMap, node: &Name) -> anyhow::Result<Self> {
        let me = map
            .by_name(node)
            .map(|partition| partition.id)
            .ok_or_else(|| anyhow::anyhow!("this node, {node}, is not in the cluster map"))?;
        Ok(Self { map: Some(map), me })
    }

    /// This node's partition id (the first two bytes of the sessions it
    /// mints).
    pub fn me(&self) -> PartitionId {
        self.me
    }

    /// The cluster map, when there is one.
    pub fn map(&self) -> Option<&ClusterMap> {
        self.map.as_ref()
    }

    /// Where to send a request for `provider`'s sessions when its home is
    /// another partition; `None` when it is this one.
    pub fn redirect_for(&self, provider: &Name) -> Option<Redirect> {
        let home = self.map.as_ref()?.home(provider);
        (home.id != self.me).then(|| Redirect::to(home))
    }

    /// Where to ask about `session` when another partition of the map
    /// minted it; `None` when it is this one's (or names no partition).
    pub fn redirect_for_session(&self, session: &SessionId) -> Option<Redirect> {
        let partition = self.map.as_ref()?.of_session(session)?;
        (partition.id != self.me).then(|| Redirect::to(partition))
    }

    /// Whether `session` was minted by another partition of the map (a
    /// session id naming no partition of the map is nobody's: unknown).
    pub fn is_elsewhere(&self, session: &SessionId) -> bool {
        self.map
            .as_ref()
            .and_then(|map| map.of_session(session))
            .is_some_and(|partition| partition.id != self.me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{Address, Partition};

    fn map() -> ClusterMap {
        ClusterMap::new(
            (1..=3)
                .map(|id| Partition {
                    id: PartitionId(id),
                    name: Name::new(format!("am-{id}")).unwrap(),
                    address: Address::new(format!("127.0.0.1:{}", 4432 + id)).unwrap(),
                })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn a_node_owns_its_providers_and_sessions_only() {
        let placement = Placement::in_cluster(map(), &Name::new("am-2").unwrap()).unwrap();
        assert_eq!(placement.me(), PartitionId(2));
        let providers: Vec<Name> = (1..=60)
            .map(|index| Name::new(format!("provider-{index:04}")).unwrap())
            .collect();
        let redirected: Vec<Redirect> = providers
            .iter()
            .filter_map(|provider| placement.redirect_for(provider))
            .collect();
        assert!(!redirected.is_empty() && redirected.len() < providers.len());
        assert!(redirected.iter().all(|redirect| redirect.partition != PartitionId(2)));
        let session = |partition: u16| SessionId::for_partition(PartitionId(partition), [1; 14]);
        assert!(!placement.is_elsewhere(&session(2)));
        assert!(placement.is_elsewhere(&session(3)));
        assert!(
            !placement.is_elsewhere(&session(9)),
            "no partition 9: an unknown session"
        );
        assert!(Placement::in_cluster(map(), &Name::new("am-4").unwrap()).is_err());
    }

    #[test]
    fn a_single_node_owns_everything() {
        let placement = Placement::single();
        assert_eq!(placement.redirect_for(&Name::new("provider-0001").unwrap()), None);
        assert!(!placement.is_elsewhere(&SessionId::for_partition(PartitionId(2), [1; 14])));
    }
}
