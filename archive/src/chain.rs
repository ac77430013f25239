//! The archive's chain: where the AS keeps each batch's signed header, the
//! node's signed head and the AM certificates that signed them, and the
//! proof an auditor draws from them (docs/schema.md, "The chain").
//!
//! Layout, beside the `date=…/node=…/batch-….parquet` files:
//!
//! ```text
//! _chain/node=<node>/batch-<number, 20 digits>-<batch id>-<header digest, 16 hex>.header
//! _chain/node=<node>/head-<number, 20 digits>
//! _chain/node=<node>/am-<SHA-256 of the certificate, 64 hex>.der
//! ```
//!
//! The leading `_` keeps Hive-style readers (pyarrow datasets, Spark) from
//! taking the folder for data; globs on `*.parquet` never see it. A header's
//! name carries its own digest, so two different headers never share a
//! name: a forked chain leaves both for the auditor to see. Heads are kept
//! one per batch, each written once: the node's head is the highest that
//! verifies (no object is ever overwritten, so no race between storages
//! can move it back).
//!
//! [`verify`] proves, per node: every header is signed by one of the node's
//! AM certificates (checked against the operator's CA); the numbers run
//! from 1 to the head's without a gap or a fork; each header names its
//! predecessor's digest; the commit sequences are contiguous; and every
//! file is the one its header describes. It names the batch that is
//! missing, altered or out of place.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use wire::chain::{CHAIN_START, header_digest};
use wire::{ArchiveHead, BatchHeader, BatchId, Role, Signed, TrustedCa};

/// The folder (or key prefix) under the archive's root that holds the chain.
pub const CHAIN_FOLDER: &str = "_chain";
/// Most bytes of a chain object the auditor reads: a header or a head is
/// at most 245 bytes, a certificate a few KiB.
pub const CHAIN_OBJECT_BYTES_MAX: u64 = 64 * 1024;

/// The folder of `node`'s chain objects, relative to the archive's root.
pub fn node_folder(node: &str) -> String {
    format!("{CHAIN_FOLDER}/node={node}")
}

/// The name of a header's object in its node's folder.
pub fn header_name(header: &Signed<BatchHeader>) -> String {
    let value = header.value();
    let digest = header_digest(header.body());
    format!(
        "batch-{:020}-{}-{}.header",
        value.number,
        value.batch_id,
        hex::encode(digest.get(..8).unwrap_or_default())
    )
}

/// The name of the head of batch `number` in its node's folder.
pub fn head_name(number: u64) -> String {
    format!("head-{number:020}")
}

/// The name of an AM certificate's object in its node's folder.
pub fn certificate_name(der: &[u8]) -> String {
    format!("am-{}.der", hex::encode(Sha256::digest(der)))
}

/// What kind of chain object a name in a node's folder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A batch header.
    Header,
    /// The node's head.
    Head,
    /// An AM certificate (DER).
    Certificate,
}

/// The kind of the object named `name` (the last path segment), if it is a
/// chain object at all.
pub fn object_kind(name: &str) -> Option<ObjectKind> {
    if name.starts_with("head-") {
        Some(ObjectKind::Head)
    } else if name.starts_with("batch-") && name.ends_with(".header") {
        Some(ObjectKind::Header)
    } else if name.starts_with("am-") && name.ends_with(".der") {
        Some(ObjectKind::Certificate)
    } else {
        None
    }
}

/// The node a chain object's path names (`…/_chain/node=<node>/<name>`).
pub fn node_of_chain_path(path: &str) -> Option<&str> {
    let mut segments = path.rsplit('/');
    segments.next()?;
    let node = segments.next()?.strip_prefix("node=")?;
    (segments.next()? == CHAIN_FOLDER).then_some(node)
}

/// One node's chain objects as listed and read: (name for messages, bytes).
#[derive(Debug, Default, Clone)]
pub struct NodeChain {
    /// The header objects.
    pub headers: Vec<(String, Bytes)>,
    /// The head objects (one per batch the storage stored).
    pub heads: Vec<(String, Bytes)>,
    /// The AM certificates.
    pub certificates: Vec<(String, Bytes)>,
    /// Objects that could not be read as chain objects (too large, not a
    /// file), with why: each is a problem.
    pub unreadable: Vec<String>,
}

/// What the audit learnt of one Parquet file while reading it.
#[derive(Debug, Clone)]
pub struct FileFacts {
    /// Where it is, for messages.
    pub name: String,
    /// The `node=` segment of its path.
    pub path_node: Option<String>,
    /// The batch id of its name (`batch-<id>.parquet`).
    pub batch_id: Option<BatchId>,
    /// SHA-256 of its bytes.
    pub digest: [u8; 32],
    /// The batch number of its metadata; none for files from before the
    /// chain (and for unreadable files).
    pub batch_number: Option<u64>,
    /// Rows read.
    pub rows: u64,
    /// Smallest and largest commit sequence of its rows, if any.
    pub commit_range: Option<(u64, u64)>,
    /// Whether its commit sequences are distinct and without a hole.
    pub contiguous: bool,
    /// Whether it could be read whole (an unreadable file is reported by
    /// the row audit; here it is neither chained nor from before the chain).
    pub readable: bool,
}

/// The batch id in a Parquet file's name.
pub fn batch_id_of_file(path: &str) -> Option<BatchId> {
    let name = path.rsplit('/').next()?;
    let hex_id = name.strip_prefix("batch-")?.strip_suffix(".parquet")?;
    let mut id = [0u8; 16];
    hex::decode_to_slice(hex_id, &mut id).ok()?;
    Some(BatchId(id))
}

/// The `node=` segment of a file's path.
pub fn node_of_file(path: &str) -> Option<String> {
    path.split('/')
        .find_map(|segment| segment.strip_prefix("node="))
        .map(str::to_owned)
}

/// Whether a file's commit sequences (in any order) are distinct and
/// contiguous; `sequences` is sorted in place.
pub fn contiguous(sequences: &mut [u64]) -> bool {
    sequences.sort_unstable();
    sequences.windows(2).all(|pair| pair[1] == pair[0] + 1)
}

/// What the chain audit found.
#[derive(Debug, Default)]
pub struct ChainFindings {
    /// One line per node: its batches, commit sequences and verdict.
    pub summaries: Vec<String>,
    /// Problems, each naming the batch and what is wrong with it.
    pub problems: Vec<String>,
    /// Files without a batch number (exported before the chain): their
    /// completeness cannot be proven.
    pub unchained_files: Vec<String>,
}

/// What the auditor is told besides the archive.
#[derive(Debug, Default)]
pub struct Expectations<'a> {
    /// The operator's CA, against which the AM certificates are checked
    /// (`None`: the structure is proven, the signatures are not checked;
    /// the caller says so).
    pub ca: Option<&'a TrustedCa>,
    /// Nodes that must be in the archive (a node deleted whole leaves no
    /// trace otherwise).
    pub nodes: &'a [String],
    /// Now, Unix seconds: certificates valid now sign any batch.
    pub now_s: u64,
}

/// A header that decoded and verified, with its digest.
struct Link {
    name: String,
    header: Signed<BatchHeader>,
    digest: [u8; 32],
}

/// Prove each node's chain.
pub fn verify(chains: &BTreeMap<String, NodeChain>, files: &[FileFacts], expect: &Expectations<'_>) -> ChainFindings {
    let mut findings = ChainFindings::default();
    let mut nodes: BTreeSet<String> = chains.keys().cloned().collect();
    for file in files {
        match (&file.path_node, file.batch_number) {
            (Some(node), Some(_)) => {
                nodes.insert(node.clone());
            }
            // Reported unreadable by the row audit.
            (_, None) if !file.readable => {}
            (_, None) => findings.unchained_files.push(file.name.clone()),
            (None, Some(_)) => findings.problems.push(format!(
                "{}: a chained batch outside any node= folder (out of place)",
                file.name
            )),
        }
    }
    for node in expect.nodes {
        if !nodes.contains(node) {
            findings.problems.push(format!(
                "node {node}: nothing in the archive (no chain, no chained file)"
            ));
        }
    }
    let empty = NodeChain::default();
    for node in nodes {
        let chain = chains.get(&node).unwrap_or(&empty);
        let before = findings.problems.len();
        let summary = verify_node(&node, chain, files, expect, &mut findings.problems);
        let verdict = match findings.problems.len() - before {
            0 => "complete".to_owned(),
            count => format!("{count} problems"),
        };
        findings.summaries.push(format!("node {node}: {summary}: {verdict}"));
    }
    findings
}

/// A node's AM certificates from the CA: those valid now (checked once),
/// and the DER of the others, checked at each batch's time (a certificate
/// that expired since it signed).
struct NodeKeys<'a> {
    current: Vec<wire::PublicKey>,
    expired: Vec<&'a [u8]>,
    ca: Option<&'a TrustedCa>,
    node: &'a str,
}

impl<'a> NodeKeys<'a> {
    fn new(node: &'a str, chain: &'a NodeChain, expect: &Expectations<'a>) -> Self {
        let mut keys = Self {
            current: Vec::new(),
            expired: Vec::new(),
            ca: expect.ca,
            node,
        };
        if let Some(ca) = expect.ca {
            for (_, der) in &chain.certificates {
                match ca.verify(der, Role::AccountingManager, expect.now_s) {
                    Ok(identity) if identity.name.as_str() == node => keys.current.push(identity.public_key),
                    Ok(_) => {}
                    Err(_) => keys.expired.push(der),
                }
            }
        }
        keys
    }

    /// Whether `verify` holds under one of the keys (always, without a CA).
    fn verifies(&self, at_ms: u64, verify: impl Fn(&wire::PublicKey) -> bool) -> bool {
        let Some(ca) = self.ca else { return true };
        self.current.iter().any(&verify)
            || self
                .expired
                .iter()
                .filter_map(|der| ca.verify(der, Role::AccountingManager, at_ms / 1000).ok())
                .filter(|identity| identity.name.as_str() == self.node)
                .any(|identity| verify(&identity.public_key))
    }
}

/// Whether `verify` holds under one of `node`'s AM certificates kept in
/// `chain` that chain to the CA (always, without a CA): how a receipt
/// signed by an AM node is checked with the archive's certificates.
pub fn signed_by_node(
    node: &str,
    chain: &NodeChain,
    expect: &Expectations<'_>,
    at_ms: u64,
    verify: impl Fn(&wire::PublicKey) -> bool,
) -> bool {
    NodeKeys::new(node, chain, expect).verifies(at_ms, verify)
}

fn verify_node(
    node: &str,
    chain: &NodeChain,
    all_files: &[FileFacts],
    expect: &Expectations<'_>,
    problems: &mut Vec<String>,
) -> String {
    let keys = NodeKeys::new(node, chain, expect);
    for why in &chain.unreadable {
        problems.push(format!("{why}: not a chain object (altered)"));
    }
    // Headers: decode, check place and signature.
    let mut by_number: BTreeMap<u64, Vec<Link>> = BTreeMap::new();
    let mut refused: BTreeSet<u64> = BTreeSet::new();
    let mut refused_batches: BTreeSet<BatchId> = BTreeSet::new();
    for (name, bytes) in &chain.headers {
        let header = match Signed::<BatchHeader>::decode_body(bytes.clone()) {
            Ok(header) => header,
            Err(error) => {
                problems.push(format!("{name}: not a batch header ({error}): altered"));
                continue;
            }
        };
        let value = header.value();
        if value.node.as_str() != node {
            problems.push(format!(
                "{name}: a header of node {} in node {node}'s chain (out of place)",
                value.node
            ));
            continue;
        }
        if !keys.verifies(value.created_ms, |key| header.verify(key).is_ok()) {
            problems.push(format!(
                "batch #{} ({}): its header's signature does not verify under any AM certificate of {node} from the CA (altered or re-signed)",
                value.number, value.batch_id
            ));
            refused.insert(value.number);
            refused_batches.insert(value.batch_id);
            continue;
        }
        let digest = header_digest(header.body());
        by_number.entry(value.number).or_default().push(Link {
            name: name.clone(),
            header,
            digest,
        });
    }
    // Heads: every one verified; the node's head is the highest.
    let mut head: Option<ArchiveHead> = None;
    for (name, bytes) in &chain.heads {
        match Signed::<ArchiveHead>::decode_body(bytes.clone()) {
            Err(error) => problems.push(format!("{name}: not a head ({error}): altered")),
            Ok(found) if found.value().node.as_str() != node => {
                problems.push(format!(
                    "{name}: the head of node {} (out of place)",
                    found.value().node
                ));
            }
            Ok(found) if !keys.verifies(found.value().created_ms, |key| found.verify(key).is_ok()) => {
                problems.push(format!(
                    "{name}: the head's signature does not verify under any AM certificate of {node} from the CA (altered or re-signed)"
                ));
            }
            Ok(found) => {
                if head.as_ref().is_none_or(|held| held.number < found.value().number) {
                    head = Some(found.value().clone());
                }
            }
        }
    }
    if head.is_none() {
        problems.push(format!(
            "node {node}: no head: the last batches cannot be proven present"
        ));
    }
    let highest_header = by_number.keys().next_back().copied().unwrap_or(0);
    let last = head
        .as_ref()
        .map_or(highest_header, |head| head.number.max(highest_header));
    // Numbers: every one from 1 to the last, once. Walks the numbers
    // present (a forged head's huge number costs nothing).
    let present: BTreeSet<u64> = by_number.keys().chain(refused.iter()).copied().collect();
    let report_gap = |start: u64, end: u64, problems: &mut Vec<String>| {
        if start == end {
            problems.push(format!("batch #{start} of {node}: missing (no header)"));
        } else if start < end {
            problems.push(format!("batches #{start}..=#{end} of {node}: missing (no headers)"));
        }
    };
    let mut expected = 1u64;
    for number in &present {
        if *number > expected {
            report_gap(expected, number - 1, problems);
        }
        expected = number.saturating_add(1);
    }
    if last >= expected {
        report_gap(expected, last, problems);
    }
    // Forks, links and commit sequences.
    for (number, links) in &by_number {
        // The same fields signed twice (a retry after a key rotation) are
        // one batch; different fields under one number are a fork.
        let distinct: BTreeSet<Vec<u8>> = links
            .iter()
            .map(|link| {
                let body = link.header.body();
                body.get(..body.len().saturating_sub(wire::limits::SIGNATURE_BYTES))
                    .unwrap_or_default()
                    .to_vec()
            })
            .collect();
        if distinct.len() > 1 {
            let names: Vec<String> = links.iter().map(|link| link.name.clone()).collect();
            problems.push(format!(
                "batch #{number} of {node}: {} different headers ({}): the chain forks",
                distinct.len(),
                names.join(", ")
            ));
        }
        for link in links {
            let value = link.header.value();
            if *number == 1 {
                if value.previous != CHAIN_START {
                    problems.push(format!(
                        "batch #1 ({}) of {node}: does not start a chain (its previous digest is not zero)",
                        value.batch_id
                    ));
                }
                continue;
            }
            let Some(previous) = by_number.get(&(number - 1)) else {
                continue;
            };
            match previous.iter().find(|earlier| earlier.digest == value.previous) {
                None => problems.push(format!(
                    "batch #{number} ({}) of {node}: its previous digest is not batch #{}'s header (a header replaced, or batches out of order)",
                    value.batch_id,
                    number - 1
                )),
                Some(earlier) => {
                    let ended = earlier.header.value().last_commit_sequence;
                    if ended.checked_add(1) != Some(value.first_commit_sequence) {
                        problems.push(format!(
                            "batch #{number} ({}) of {node}: starts at commit sequence {}, batch #{} ended at {ended} (commit sequences {})",
                            value.batch_id,
                            value.first_commit_sequence,
                            number - 1,
                            if value.first_commit_sequence > ended { "missing" } else { "overlap" },
                        ));
                    }
                }
            }
        }
    }
    // The head names the last header.
    if let Some(head) = &head {
        match by_number.get(&head.number) {
            Some(links) if links.iter().any(|link| link.digest == head.header_digest) => {}
            Some(_) => problems.push(format!(
                "the head of {node} names batch #{} ({}) but not its stored header (a header replaced)",
                head.number, head.batch_id
            )),
            None => {} // reported as missing above
        }
        if highest_header > head.number {
            problems.push(format!(
                "the head of {node} names batch #{} but batches up to #{highest_header} are stored (a head deleted)",
                head.number
            ));
        }
    }
    // Files against their headers.
    let mut described: BTreeSet<BatchId> = refused_batches;
    for links in by_number.values() {
        for link in links {
            let value = link.header.value();
            if !described.insert(value.batch_id) {
                continue; // the same batch signed twice: checked once
            }
            let number = value.number;
            let label = format!("batch #{number} ({}) of {node}", value.batch_id);
            let candidates: Vec<&FileFacts> = all_files
                .iter()
                .filter(|file| file.batch_id == Some(value.batch_id))
                .collect();
            let Some(file) = candidates.first() else {
                problems.push(format!("{label}: missing (its file is gone)"));
                continue;
            };
            if candidates.len() > 1 {
                let names: Vec<&str> = candidates.iter().map(|file| file.name.as_str()).collect();
                problems.push(format!(
                    "{label}: stored {} times ({})",
                    candidates.len(),
                    names.join(", ")
                ));
            }
            if file.path_node.as_deref() != Some(node) {
                problems.push(format!(
                    "{label}: its file {} is under another node (out of place)",
                    file.name
                ));
            }
            if file.digest != value.file_digest {
                problems.push(format!(
                    "{label}: {} is not the file its signed header describes (altered, truncated or swapped)",
                    file.name
                ));
                continue;
            }
            let range_ok = file.commit_range == Some((value.first_commit_sequence, value.last_commit_sequence));
            if file.rows != u64::from(value.record_count) || !range_ok || !file.contiguous {
                problems.push(format!(
                    "{label}: {} holds {} rows, commit sequences {:?}, but its header says {} rows, {}..={}",
                    file.name,
                    file.rows,
                    file.commit_range,
                    value.record_count,
                    value.first_commit_sequence,
                    value.last_commit_sequence
                ));
            }
            if file.batch_number != Some(number) {
                problems.push(format!(
                    "{label}: {} says it is batch #{:?}",
                    file.name, file.batch_number
                ));
            }
        }
    }
    for file in all_files {
        if file.path_node.as_deref() != Some(node) || file.batch_number.is_none() {
            continue;
        }
        if file.batch_id.is_none_or(|id| !described.contains(&id)) {
            problems.push(format!(
                "{}: batch #{} of {node} without a header in the chain (out of place, or its header was deleted)",
                file.name,
                file.batch_number.unwrap_or(0)
            ));
        }
    }
    // Summary.
    let first_sequence = by_number
        .get(&1)
        .and_then(|links| links.first())
        .map(|link| link.header.value().first_commit_sequence);
    match (first_sequence, head.as_ref()) {
        (Some(first), Some(head)) => format!(
            "batches #1..=#{last}, commit sequences {first}..={}",
            head.last_commit_sequence
        ),
        _ => format!(
            "{} headers, head {}",
            by_number.len(),
            head.map_or("absent".to_owned(), |head| format!("#{}", head.number))
        ),
    }
}
