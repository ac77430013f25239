//! Revoked certificates, applied without restart by the AM and the AS:
//! `[security] denied` in the config file, re-read when the file changes
//! (checked every second). Connection tasks watch the list's version and
//! close a connection whose certificate became denied.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// How often the config file's modification time is checked.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The denied names and certificate digests.
#[derive(Debug)]
pub struct DenyList {
    entries: RwLock<HashSet<String>>,
    version: watch::Sender<u64>,
}

impl DenyList {
    /// A list with `entries` (names, or `sha256:<hex>`).
    pub fn new(entries: &[String]) -> Self {
        Self {
            entries: RwLock::new(normalize(entries)),
            version: watch::channel(0).0,
        }
    }

    /// Whether the certificate `der` of the holder `name` is denied.
    pub fn is_denied(&self, name: &str, der: &[u8]) -> bool {
        let Ok(entries) = self.entries.read() else {
            // A poisoned lock: deny rather than let a revoked peer in.
            return true;
        };
        if entries.is_empty() {
            return false;
        }
        entries.contains(name) || entries.contains(&format!("sha256:{}", hex::encode(Sha256::digest(der))))
    }

    /// Replace the list; connection tasks re-check their peers.
    pub fn replace(&self, entries: &[String]) {
        if let Ok(mut current) = self.entries.write() {
            *current = normalize(entries);
        }
        self.version.send_modify(|version| *version += 1);
    }

    /// Changes to the list, for connection tasks.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Entries in the list.
    pub fn len(&self) -> usize {
        self.entries.read().map_or(0, |entries| entries.len())
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn normalize(entries: &[String]) -> HashSet<String> {
    entries
        .iter()
        .map(|entry| {
            let entry = entry.trim();
            match entry.strip_prefix("sha256:") {
                Some(digest) => format!("sha256:{}", digest.to_ascii_lowercase()),
                None => entry.to_owned(),
            }
        })
        .filter(|entry| !entry.is_empty())
        .collect()
}

/// Where a server re-reads its deny list: a file, and how to read the list
/// from it (the engine parses its config file's `[security] denied`).
#[derive(Debug, Clone)]
pub struct DenySource {
    /// The file, watched for changes.
    pub path: PathBuf,
    /// Its denied entries, or why the file does not parse.
    pub read: fn(&Path) -> Result<Vec<String>, String>,
}

/// Re-read the list from `source` whenever its file changes, until the
/// returned task is aborted. A file that does not parse keeps the list as
/// it was (logged as an error).
pub fn watch_config(source: DenySource, deny: std::sync::Arc<DenyList>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let path = source.path;
        let modified = |path: &PathBuf| std::fs::metadata(path).and_then(|meta| meta.modified()).ok();
        let mut seen: Option<SystemTime> = modified(&path);
        loop {
            tokio::time::sleep(RELOAD_INTERVAL).await;
            let now = modified(&path);
            if now == seen {
                continue;
            }
            seen = now;
            match (source.read)(&path) {
                Ok(denied) => {
                    deny.replace(&denied);
                    tracing::warn!(denied = deny.len(), file = %path.display(), "reloaded the deny list");
                }
                Err(error) => {
                    tracing::error!(%error, "the config file does not parse; the deny list is unchanged");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_digests_deny() {
        let der = b"certificate bytes";
        let digest = hex::encode(Sha256::digest(der));
        let deny = DenyList::new(&["provider-0003".into()]);
        assert!(deny.is_denied("provider-0003", der));
        assert!(!deny.is_denied("provider-0004", der));
        let version = deny.subscribe();
        deny.replace(&[format!("sha256:{}", digest.to_uppercase())]);
        assert!(version.has_changed().unwrap());
        assert!(!deny.is_denied("provider-0003", b"other"));
        assert!(deny.is_denied("anyone", der));
        deny.replace(&[]);
        assert!(!deny.is_denied("anyone", der));
    }
}
