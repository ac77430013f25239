//! `acct audit DIR` or `acct audit s3://bucket/prefix`: re-verify every
//! exported record and look for doubles.
//!
//! For every row of every `*.parquet` file under DIR (or object under the
//! bucket's prefix): the provider's
//! signature verifies over `signed_fields` with the engine's own acceptance
//! rule (ZIP-215, the accounting domain prefix), and every column derived
//! from the signed bytes agrees with them. Across all files, no (session,
//! message id) appears twice. Files are checked on every core.
//!
//! Memory: about 40 bytes per row for the double check (a map of 24-byte
//! keys), plus, per thread, one Arrow batch and 32 bytes per row of the
//! file it is reading.

use std::collections::HashMap;
use std::sync::Mutex;

use clap::Args;
use wire::SessionId;

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
}

/// Check every batch of `archive`.
pub fn audit(archive: &storage::reader::Archive) -> anyhow::Result<Findings> {
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
                    // Verify while reading; keep only ids for the double check.
                    let mut ids: Vec<(SessionId, u64, u64)> = Vec::new();
                    let mut problems = Vec::new();
                    let read = archive.read(index, |row| {
                        if let Err(problem) = row.verify() {
                            problems.push(format!(
                                "{}: session {} message {}: {problem}",
                                path,
                                row.session_id,
                                row.message_id
                            ));
                        }
                        ids.push((row.session_id, row.message_id, row.commit_sequence));
                    });
                    if let Err(error) = read {
                        problems.push(format!("{path}: unreadable: {error}"));
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
    findings
        .into_inner()
        .map_err(|_| anyhow::anyhow!("an audit thread panicked"))
}

/// Run the audit; exit status 1 when anything is wrong.
pub fn run(args: AuditArgs) -> anyhow::Result<()> {
    let archive = storage::reader::Archive::open(&args.location, &args.bucket.settings())?;
    let findings = audit(&archive)?;
    for problem in findings.problems.iter().take(args.show) {
        println!("{problem}");
    }
    if findings.problems.len() > args.show {
        println!("… and {} more", findings.problems.len() - args.show);
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
