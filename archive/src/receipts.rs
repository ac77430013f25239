//! Checking session receipts (docs/protocol.md 4.20) against the archive:
//! the rows of a receipt's session, in commit order, must give exactly the
//! receipt's count, highest sequence, Final, sums and digest.

use sha2::{Digest, Sha256};
use wire::{AccountingKind, ReceiptDigest, SessionReceipt, UsageSums};

use crate::Row;

/// What the audit keeps of a row of a session whose receipt it checks.
#[derive(Debug, Clone)]
pub struct ReceiptRow {
    /// The AM's commit order on its node.
    pub commit_sequence: u64,
    /// The AM node that stored it.
    pub am_node: String,
    /// e4.
    pub sequence: u64,
    /// Whether it is the Final Accounting.
    pub is_final: bool,
    /// e5 `units`, `bytes_up`, `bytes_down`, `duration_ms`, and the
    /// `requests` counter.
    pub usage: [Option<u64>; 5],
    /// SHA-256 of the signed fields.
    pub leaf: [u8; 32],
}

impl ReceiptRow {
    /// The parts of `row` a receipt covers.
    pub fn of(row: &Row) -> Self {
        let requests = row
            .custom
            .iter()
            .find(|(name, _)| name == "requests")
            .map(|(_, value)| *value);
        Self {
            commit_sequence: row.commit_sequence,
            am_node: row.am_node.clone(),
            sequence: row.message_id,
            is_final: row.kind == AccountingKind::FINAL,
            usage: [row.units, row.bytes_up, row.bytes_down, row.duration_ms, requests],
            leaf: Sha256::digest(&row.signed_fields).into(),
        }
    }
}

/// How a receipt compares with its session's rows.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Where they disagree (empty: they agree).
    pub differences: Vec<String>,
    /// Rows stored after the receipt was signed (a live session's later
    /// messages, or an interim numbered below the Final stored after it):
    /// not a difference, the receipt stated the session when it was signed.
    pub later_rows: usize,
}

/// Compare a receipt with its session's rows: the first `message_count`
/// rows in commit order must give exactly its figures. A message found
/// twice in the archive (a copied file, a problem the audit reports on its
/// own) counts once.
pub fn compare(receipt: &SessionReceipt, rows: &mut Vec<ReceiptRow>) -> Comparison {
    rows.sort_by_key(|row| row.commit_sequence);
    let mut seen = std::collections::HashSet::new();
    rows.retain(|row| seen.insert(row.sequence));
    let covered = rows
        .len()
        .min(usize::try_from(receipt.message_count).unwrap_or(usize::MAX));
    let later_rows = rows.len() - covered;
    let rows = &rows[..covered];
    let mut sums = [0u64; 5];
    let mut digest = ReceiptDigest::default();
    let mut highest = 0u64;
    let mut final_stored = false;
    let mut nodes: Vec<&str> = Vec::new();
    for row in rows.iter() {
        for (sum, value) in sums.iter_mut().zip(row.usage) {
            *sum = sum.saturating_add(value.unwrap_or(0));
        }
        digest = digest.then_leaf(row.sequence, &row.leaf);
        highest = highest.max(row.sequence);
        final_stored |= row.is_final;
        if !nodes.contains(&row.am_node.as_str()) {
            nodes.push(&row.am_node);
        }
    }
    let archived = UsageSums {
        units: sums[0],
        bytes_up: sums[1],
        bytes_down: sums[2],
        duration_ms: sums[3],
        requests: sums[4],
    };
    let mut differences = Vec::new();
    let mut differ = |what: &str, receipt: String, archive: String| {
        if receipt != archive {
            differences.push(format!("{what}: receipt {receipt}, archive {archive}"));
        }
    };
    differ("messages", receipt.message_count.to_string(), rows.len().to_string());
    differ(
        "highest sequence",
        receipt.highest_sequence.to_string(),
        highest.to_string(),
    );
    differ(
        "final stored",
        receipt.final_stored.to_string(),
        final_stored.to_string(),
    );
    differ("sums", format!("{:?}", receipt.sums), format!("{archived:?}"));
    differ("digest", hex::encode(receipt.digest.0), hex::encode(digest.0));
    if nodes.iter().any(|node| *node != receipt.node.as_str()) {
        differences.push(format!("node: receipt {}, archive {}", receipt.node, nodes.join(", ")));
    }
    Comparison {
        differences,
        later_rows,
    }
}
