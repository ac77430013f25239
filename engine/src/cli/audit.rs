//! `acct audit DIR` or `acct audit s3://bucket/prefix`: re-verify every
//! exported record, look for doubles, and prove the archive complete.
//!
//! For every row of every `*.parquet` file under DIR (or object under the
//! bucket's prefix): the provider's
//! signature verifies over `signed_fields` with the engine's own acceptance
//! rule (ZIP-215, the accounting domain prefix), and every column derived
//! from the signed bytes agrees with them. Across all files, no (session,
//! message id) appears twice. Files are checked on every core.
//!
//! Then the chain (`archive::chain`), per AM node: every header signed by
//! one of the node's AM certificates from the CA (`--ca`), numbers from 1
//! to the head's without a gap or a fork, each header naming its
//! predecessor, commit sequences contiguous, and every file the one its
//! header describes.
//!
//! Memory: about 40 bytes per row for the double check (a map of 24-byte
//! keys), plus, per thread, one batch's bytes, one Arrow batch and 40 bytes
//! per row of the file it is reading; and the chain's objects (about 300
//! bytes per batch).

use std::collections::HashMap;
use std::sync::Mutex;

use archive::chain::FileFacts;
use archive::receipts::ReceiptRow;
use clap::Args;
use sha2::{Digest, Sha256};
use wire::SessionId;
use wire::{SessionReceipt, Signed};

/// Arguments of `acct audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The cold storage: a folder (every `*.parquet` below it is checked),
    /// or `s3://bucket/prefix` (every `*.parquet` object under it).
    #[arg(value_name = "DIR_OR_S3_URL")]
    pub location: String,
    /// How to reach a bucket.
    #[command(flatten)]
    pub bucket: super::BucketArgs,
    /// The operator's CA certificate (PEM): the AM certificates kept with
    /// the chain must chain to it. Without it the chain's structure is
    /// proven but not its signatures (a line says so).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
    /// A folder of session receipts (`*.receipt`: a Session Receipt's
    /// body, as `ProviderNode::take_receipts` and `UserClient::request_receipt`
    /// give them): each is checked against the archive's rows of its
    /// session (count, highest sequence, Final, sums, digest) and its
    /// signature against its node's AM certificates.
    #[arg(long, value_name = "DIR")]
    pub receipts: Option<std::path::PathBuf>,
    /// An AM node that must be in the archive (repeat for each): a node
    /// deleted whole, chain and files, leaves no other trace.
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,
    /// Print at most this many problems (all are counted).
    #[arg(long, default_value_t = 100)]
    pub show: usize,
}

/// What the audit found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Files read.
    pub files: usize,
    /// Rows read.
    pub rows: u64,
    /// Problems, each with where it is.
    pub problems: Vec<String>,
    /// One line per AM node: its chain and its verdict.
    pub chains: Vec<String>,
    /// Files exported before the chain (no batch number).
    pub unchained_files: usize,
    /// Receipts checked against the archive.
    pub receipts: usize,
    /// Receipts whose session has rows stored after the receipt was issued.
    pub receipts_with_later_rows: usize,
}

/// Most bytes of a receipt file (a Session Receipt's body is at most 16 KiB).
const RECEIPT_FILE_BYTES_MAX: u64 = 16 * 1024;

/// The receipts under `folder` (`*.receipt`, one level), decoded: (file,
/// receipt); a file that is not a receipt is a problem.
fn load_receipts(
    folder: &std::path::Path,
    problems: &mut Vec<String>,
) -> anyhow::Result<Vec<(String, Signed<SessionReceipt>)>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(folder).map_err(|error| anyhow::anyhow!("{}: {error}", folder.display()))?;
    let mut paths: Vec<std::path::PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "receipt"))
        .collect();
    paths.sort();
    for path in paths {
        let name = path.display().to_string();
        let bytes = match std::fs::metadata(&path) {
            Ok(metadata) if metadata.is_file() && metadata.len() <= RECEIPT_FILE_BYTES_MAX => std::fs::read(&path),
            Ok(_) => {
                problems.push(format!("{name}: not a receipt (not a file, or over 16 KiB)"));
                continue;
            }
            Err(error) => Err(error),
        };
        match bytes.map_err(|error| error.to_string()).and_then(|bytes| {
            Signed::<SessionReceipt>::decode_body(bytes::Bytes::from(bytes)).map_err(|error| error.to_string())
        }) {
            Ok(receipt) => out.push((name, receipt)),
            Err(error) => problems.push(format!("{name}: not a receipt ({error})")),
        }
    }
    Ok(out)
}

/// Check every batch of `archive`, its chain as `expect` says, and the
/// receipts in `receipts`.
pub fn audit(
    archive: &storage::reader::Archive,
    expect: &archive::chain::Expectations<'_>,
    receipts: Option<&std::path::Path>,
) -> anyhow::Result<Findings> {
    let chains = archive.chains()?;
    let mut receipt_problems = Vec::new();
    let receipts = match receipts {
        Some(folder) => load_receipts(folder, &mut receipt_problems)?,
        None => Vec::new(),
    };
    let wanted: std::collections::HashSet<SessionId> =
        receipts.iter().map(|(_, receipt)| receipt.value().session_id).collect();
    let receipt_rows: Mutex<HashMap<SessionId, Vec<ReceiptRow>>> = Mutex::new(HashMap::new());
    let facts: Mutex<Vec<FileFacts>> = Mutex::new(Vec::with_capacity(archive.len()));
    let next = Mutex::new(0usize);
    // (session, message id) → (file index, commit sequence) of the first copy.
    let seen: Mutex<HashMap<(SessionId, u64), (usize, u64)>> = Mutex::new(HashMap::new());
    let findings = Mutex::new(Findings {
        files: archive.len(),
        ..Findings::default()
    });
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let index = {
                        let Ok(mut next) = next.lock() else { return };
                        let index = *next;
                        *next += 1;
                        index
                    };
                    if index >= archive.len() {
                        return;
                    }
                    let path = archive.name(index);
                    let relative = archive.relative_name(index);
                    // Verify while reading; keep only ids for the double check.
                    let mut ids: Vec<(SessionId, u64, u64)> = Vec::new();
                    let mut problems = Vec::new();
                    let bytes = archive.bytes(index);
                    let digest: [u8; 32] = bytes
                        .as_ref()
                        .map(|bytes| Sha256::digest(bytes).into())
                        .unwrap_or_default();
                    let batch_number = bytes
                        .as_ref()
                        .ok()
                        .and_then(|bytes| archive::inspect(bytes.clone()).ok())
                        .and_then(|info| info.batch_number);
                    let read = bytes.map_err(anyhow::Error::from).and_then(|bytes| {
                        archive::read(bytes, |row| {
                            let verified = match row.verify() {
                                Ok(()) => true,
                                Err(problem) => {
                                    problems.push(format!(
                                        "{}: session {} message {}: {problem}",
                                        path, row.session_id, row.message_id
                                    ));
                                    false
                                }
                            };
                            ids.push((row.session_id, row.message_id, row.commit_sequence));
                            // Rows that verify (forged rows are problems of
                            // their own); copies are counted once by compare.
                            if verified
                                && wanted.contains(&row.session_id)
                                && let Ok(mut rows) = receipt_rows.lock()
                            {
                                rows.entry(row.session_id).or_default().push(ReceiptRow::of(&row));
                            }
                        })
                        .map_err(anyhow::Error::from)
                    });
                    if let Err(error) = &read {
                        problems.push(format!("{path}: unreadable: {error}"));
                    }
                    let mut sequences: Vec<u64> = ids.iter().map(|id| id.2).collect();
                    let contiguous = archive::chain::contiguous(&mut sequences);
                    let file = FileFacts {
                        name: path.clone(),
                        path_node: archive::chain::node_of_file(&relative),
                        batch_id: archive::chain::batch_id_of_file(&relative),
                        digest,
                        batch_number,
                        rows: ids.len() as u64,
                        commit_range: sequences.first().zip(sequences.last()).map(|(a, b)| (*a, *b)),
                        contiguous,
                        readable: read.is_ok(),
                    };
                    if let Ok(mut facts) = facts.lock() {
                        facts.push(file);
                    }
                    if let Ok(mut seen) = seen.lock() {
                        for (session_id, message_id, commit_sequence) in &ids {
                            if let Some((first_file, first_commit)) =
                                seen.insert((*session_id, *message_id), (index, *commit_sequence))
                            {
                                problems.push(format!(
                                    "session {session_id} message {message_id} stored twice: {} (commit {first_commit}) and {} (commit {commit_sequence})",
                                    archive.name(first_file),
                                    path,
                                ));
                            }
                        }
                    }
                    if let Ok(mut findings) = findings.lock() {
                        findings.rows += ids.len() as u64;
                        findings.problems.extend(problems);
                    }
                }
            });
        }
    });
    let mut findings = findings
        .into_inner()
        .map_err(|_| anyhow::anyhow!("an audit thread panicked"))?;
    let mut facts = facts
        .into_inner()
        .map_err(|_| anyhow::anyhow!("an audit thread panicked"))?;
    facts.sort_by(|a, b| a.name.cmp(&b.name));
    let chain = archive::chain::verify(&chains, &facts, expect);
    findings.problems.extend(chain.problems);
    findings.chains = chain.summaries;
    findings.unchained_files = chain.unchained_files.len();
    let mut receipt_rows = receipt_rows
        .into_inner()
        .map_err(|_| anyhow::anyhow!("an audit thread panicked"))?;
    findings.problems.extend(receipt_problems);
    let empty = archive::chain::NodeChain::default();
    for (name, receipt) in &receipts {
        findings.receipts += 1;
        let value = receipt.value();
        let node = value.node.as_str();
        let chain = chains.get(node).unwrap_or(&empty);
        if !archive::chain::signed_by_node(node, chain, expect, value.issued_ms, |key| receipt.verify(key).is_ok()) {
            findings.problems.push(format!(
                "{name} (session {}): its signature does not verify under any AM certificate of {node} from the CA",
                value.session_id
            ));
            continue;
        }
        let mut none = Vec::new();
        let rows = receipt_rows.get_mut(&value.session_id).unwrap_or(&mut none);
        let comparison = archive::receipts::compare(value, rows);
        for difference in comparison.differences {
            findings
                .problems
                .push(format!("{name} (session {}): {difference}", value.session_id));
        }
        if comparison.later_rows > 0 {
            findings.receipts_with_later_rows += 1;
        }
    }
    Ok(findings)
}

/// Run the audit; exit status 1 when anything is wrong.
pub fn run(args: AuditArgs) -> anyhow::Result<()> {
    let archive = storage::reader::Archive::open(&args.location, &args.bucket.settings())?;
    let ca = match &args.ca {
        Some(path) => Some(
            wire::TrustedCa::from_der(pki::read_certificate_der(path)?)
                .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?,
        ),
        None => None,
    };
    let expect = archive::chain::Expectations {
        ca: ca.as_ref(),
        nodes: &args.nodes,
        now_s: crate::clock::now_s(),
    };
    let findings = audit(&archive, &expect, args.receipts.as_deref())?;
    for problem in findings.problems.iter().take(args.show) {
        println!("{problem}");
    }
    if findings.problems.len() > args.show {
        println!("… and {} more", findings.problems.len() - args.show);
    }
    for chain in &findings.chains {
        println!("{chain}");
    }
    if args.receipts.is_some() {
        println!("{} receipts checked against the archive", findings.receipts);
        if findings.receipts_with_later_rows > 0 {
            println!(
                "{} of them were issued before their session's last stored message (a live session's receipt, or an interim stored after the Final): checked against the rows they cover",
                findings.receipts_with_later_rows
            );
        }
    }
    if ca.is_none() && (!findings.chains.is_empty() || findings.receipts > 0) {
        println!("the chain's signatures were not checked: give the operator's CA certificate with --ca");
    }
    if findings.unchained_files > 0 {
        println!(
            "{} files were exported before the chain (no batch number): their completeness is not proven",
            findings.unchained_files
        );
    }
    println!(
        "acct audit: {} files, {} rows, {} problems",
        findings.files,
        findings.rows,
        findings.problems.len()
    );
    anyhow::ensure!(
        findings.problems.is_empty(),
        "{} problems in {}",
        findings.problems.len(),
        args.location
    );
    Ok(())
}
