//! The Accounting Storage (AS), a role and a deployable of its own:
//! receives Record Accounting from the AM over QUIC ([`server`]) and keeps
//! each batch as one Parquet file ([`files`]). `acct storage` runs it alone;
//! `acct serve` embeds it on a loopback port by default.
//!
//! A batch is acked only after it is durable. In a folder: written to a
//! hidden temp file, fsynced, renamed into place, and the folder fsynced;
//! readers listing `**/*.parquet` never see a partial file. In a bucket
//! ([`bucket`]): once the object store confirmed a conditional create of
//! the object.

pub mod bucket;
pub mod checks;
pub mod files;
pub mod profile;
pub mod reader;
pub mod server;

/// A named point where a test can stop the process to kill it there:
/// when the environment variable `ACCT_FAILPOINT` names `point`, the calling
/// thread prints `acct: failpoint POINT reached` on stdout and sleeps until
/// the process is killed. Unset (always, in production), it costs one
/// environment lookup per exported batch.
pub fn failpoint(point: &str) {
    if std::env::var("ACCT_FAILPOINT").is_ok_and(|wanted| wanted == point) {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "acct: failpoint {point} reached");
        let _ = stdout.flush();
        drop(stdout);
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
