//! Where each provider's traffic goes: one AM (`--am`), or the partitions
//! of a cluster map (`--cluster FILE`: an acct config file with a
//! `[cluster]` section, or the `cluster.toml` that `acct init --partitions`
//! writes). Each provider connects to its home partition (the placement of
//! `wire::cluster`), its sessions are opened there, and the audit asks every
//! partition.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use anyhow::Context;
use peer::quic::ClientIdentity;
use serde::Deserialize;
use wire::{ClusterMap, Name, PublicKey, Role};

use crate::plan::{Identities, read_identity};
use crate::settings::Settings;

/// One AM node loadgen talks to.
pub struct Node {
    /// Its partition id (1 for one AM).
    pub id: wire::PartitionId,
    /// Its name (its `am` certificate's).
    pub name: Name,
    /// Its address.
    pub address: SocketAddr,
    /// Its own identity from the PKI folder: opens sessions, runs the audit.
    pub admin: ClientIdentity,
    /// Its key (signs the credentials it mints).
    pub am_key: PublicKey,
}

/// The nodes, and each provider's home among them.
pub struct Topology {
    /// By partition id (one node without a map).
    pub nodes: Vec<Node>,
    /// Provider index → index in `nodes`.
    homes: Vec<usize>,
    /// Whether a cluster map was given.
    pub clustered: bool,
}

#[derive(Deserialize)]
struct MapFile {
    cluster: MapSection,
}

#[derive(Deserialize)]
struct MapSection {
    partitions: Vec<MapPartition>,
}

#[derive(Deserialize)]
struct MapPartition {
    id: u16,
    name: String,
    address: String,
}

/// Read the cluster map in `path` (other sections of the file ignored).
pub fn read_map(path: &Path) -> anyhow::Result<ClusterMap> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: MapFile = toml::from_str(&text).with_context(|| format!("{}: no [cluster] map", path.display()))?;
    let partitions = file
        .cluster
        .partitions
        .into_iter()
        .map(|partition| {
            Ok(wire::Partition {
                id: wire::PartitionId(partition.id),
                name: Name::new(partition.name)?,
                address: wire::Address::new(partition.address)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(ClusterMap::new(partitions)?)
}

impl Topology {
    /// The nodes of `settings` (`--cluster`, else `--am` as `--am-name`)
    /// with their identities from the PKI folder, and every provider's home.
    pub fn load(settings: &Settings, identities: &Identities) -> anyhow::Result<Self> {
        let Some(path) = &settings.cluster else {
            let address = settings.am.context("give --am ADDR or --cluster FILE")?;
            return Ok(Self {
                nodes: vec![Node {
                    id: wire::PartitionId(1),
                    name: Name::new(settings.am_name.as_str())?,
                    address,
                    admin: identities.admin.clone(),
                    am_key: identities.am_key,
                }],
                homes: vec![0; identities.providers.len()],
                clustered: false,
            });
        };
        let map = read_map(path)?;
        let mut nodes = Vec::with_capacity(map.partitions().len());
        for partition in map.partitions() {
            let address = partition
                .address
                .as_str()
                .to_socket_addrs()
                .with_context(|| format!("resolving {}", partition.address))?
                .next()
                .with_context(|| format!("{} resolves to no address", partition.address))?;
            let admin = read_identity(
                &settings.pki,
                &identities.admin.ca_der,
                Role::AccountingManager,
                &partition.name,
            )?
            .with_context(|| {
                format!(
                    "no {} identity in {}: loadgen opens sessions and audits with it",
                    partition.name,
                    settings.pki.display()
                )
            })?;
            nodes.push(Node {
                id: partition.id,
                name: partition.name.clone(),
                address,
                am_key: admin.signing_key.public_key(),
                admin,
            });
        }
        let homes = identities
            .providers
            .iter()
            .map(|(name, _)| {
                let home = map.home(name).id;
                map.partitions()
                    .iter()
                    .position(|partition| partition.id == home)
                    .unwrap_or(0)
            })
            .collect();
        Ok(Self {
            nodes,
            homes,
            clustered: true,
        })
    }

    /// The home node of provider `index`.
    pub fn home(&self, provider: usize) -> &Node {
        &self.nodes[self.home_index(provider)]
    }

    /// The index in `nodes` of provider `index`'s home.
    pub fn home_index(&self, provider: usize) -> usize {
        self.homes.get(provider).copied().unwrap_or(0)
    }

    /// Each provider's home address, by provider index.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.homes.iter().map(|home| self.nodes[*home].address).collect()
    }

    /// Providers per node.
    pub fn providers_per_node(&self) -> Vec<usize> {
        let mut counts = vec![0; self.nodes.len()];
        for home in &self.homes {
            counts[*home] += 1;
        }
        counts
    }

    /// Where the nodes are, for the log.
    pub fn describe(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("{} at {}", node.name, node.address))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
