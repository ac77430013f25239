//! The archive as its readers see it (`acct report`, `acct audit`): the
//! batch files under a folder, or the batch objects under a bucket's prefix
//! (`s3://bucket/prefix`), listed once and read one batch at a time. Names
//! starting with `.` (temp files, the storage's probe) are not batches.
//!
//! Memory: the list of names, and one batch's bytes per reading thread (a
//! batch is at most one 64 MiB frame).

use std::collections::BTreeMap;
use std::path::PathBuf;

use archive::chain::{NodeChain, ObjectKind};
use futures::StreamExt;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;

use super::bucket::{Bucket, BucketSettings};

/// Why the archive could not be listed or read.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    /// A folder or file could not be read, or a file is not acct Parquet.
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    /// The bucket could not be reached or listed, or an object read.
    #[error("{0}")]
    Bucket(String),
}

/// Where the batches are.
pub enum Archive {
    /// Files under a folder.
    Folder {
        /// The folder given.
        root: PathBuf,
        /// The batch files.
        files: Vec<PathBuf>,
    },
    /// Objects under a bucket's prefix.
    Bucket {
        /// The client.
        bucket: Bucket,
        /// Drives the client for the readers' threads.
        runtime: tokio::runtime::Runtime,
        /// The batch objects.
        objects: Vec<ObjectPath>,
    },
}

impl Archive {
    /// List the batches at `location`: a folder, or `s3://bucket[/prefix]`
    /// reached as `settings` say (its `url` is replaced by `location`).
    pub fn open(location: &str, settings: &BucketSettings) -> Result<Self, ReaderError> {
        if !location.starts_with("s3://") {
            let root = PathBuf::from(location);
            let files = archive::parquet_files(&root)?;
            return Ok(Self::Folder { root, files });
        }
        let settings = BucketSettings {
            url: location.to_owned(),
            ..settings.clone()
        };
        let bucket = Bucket::open(&settings).map_err(|error| ReaderError::Bucket(error.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("acct-archive-reader")
            .enable_all()
            .build()
            .map_err(|error| ReaderError::Bucket(format!("starting the runtime: {error}")))?;
        let objects = runtime
            .block_on(bucket.batch_objects())
            .map_err(|error| ReaderError::Bucket(format!("listing {location}: {error}")))?;
        Ok(Self::Bucket {
            bucket,
            runtime,
            objects,
        })
    }

    /// Batches listed.
    pub fn len(&self) -> usize {
        match self {
            Self::Folder { files, .. } => files.len(),
            Self::Bucket { objects, .. } => objects.len(),
        }
    }

    /// Whether no batch was listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `index`th batch's name, for messages (a path, or `s3://…`).
    pub fn name(&self, index: usize) -> String {
        match self {
            Self::Folder { files, .. } => files
                .get(index)
                .map(|path| path.display().to_string())
                .unwrap_or_default(),
            Self::Bucket { bucket, objects, .. } => objects
                .get(index)
                .map(|path| format!("s3://{}/{path}", bucket.bucket_name()))
                .unwrap_or_default(),
        }
    }

    /// The `index`th batch's path relative to the archive's root (`/`
    /// separated), for telling its node and batch id.
    pub fn relative_name(&self, index: usize) -> String {
        match self {
            Self::Folder { root, files } => files
                .get(index)
                .map(|path| {
                    let relative = path.strip_prefix(root).unwrap_or(path);
                    relative
                        .components()
                        .map(|part| part.as_os_str().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .unwrap_or_default(),
            Self::Bucket { bucket, objects, .. } => objects
                .get(index)
                .map(|path| bucket.relative(path).to_owned())
                .unwrap_or_default(),
        }
    }

    /// The `index`th batch's bytes, whole. Callable from several threads at
    /// once.
    pub fn bytes(&self, index: usize) -> Result<Bytes, ReaderError> {
        match self {
            Self::Folder { files, .. } => match files.get(index) {
                Some(path) => std::fs::read(path).map(Bytes::from).map_err(|source| {
                    ReaderError::Archive(archive::ArchiveError::Io {
                        path: path.clone(),
                        source,
                    })
                }),
                None => Ok(Bytes::new()),
            },
            Self::Bucket {
                bucket,
                runtime,
                objects,
            } => {
                let Some(path) = objects.get(index) else {
                    return Ok(Bytes::new());
                };
                runtime
                    .block_on(bucket.read(path))
                    .map_err(|error| ReaderError::Bucket(format!("reading {path}: {error}")))
            }
        }
    }

    /// Read the `index`th batch's rows into `each`; the number of rows.
    /// Callable from several threads at once.
    pub fn read(&self, index: usize, each: impl FnMut(archive::Row)) -> Result<u64, ReaderError> {
        Ok(archive::read(self.bytes(index)?, each)?)
    }

    /// Every node's chain objects (`archive::chain`), read whole. A chain
    /// object is small (a header or a head: at most 245 bytes, a
    /// certificate a few KiB); a larger one, or one that is not a file, is
    /// not read and is listed as unreadable. A bucket's objects are read 32
    /// at a time.
    pub fn chains(&self) -> Result<BTreeMap<String, NodeChain>, ReaderError> {
        let max = archive::chain::CHAIN_OBJECT_BYTES_MAX;
        // (path, bytes, or why it was not read)
        let mut found: Vec<(String, Result<Bytes, String>)> = Vec::new();
        match self {
            Self::Folder { root, .. } => {
                let folder = root.join(archive::chain::CHAIN_FOLDER);
                let nodes = match std::fs::read_dir(&folder) {
                    Ok(nodes) => nodes,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
                    Err(source) => return Err(io_error(&folder, source)),
                };
                for node in nodes {
                    let node = node.map_err(|source| io_error(&folder, source))?;
                    let node_name = node.file_name().to_string_lossy().into_owned();
                    if !node.path().is_dir() {
                        continue;
                    }
                    for entry in std::fs::read_dir(node.path()).map_err(|source| io_error(&node.path(), source))? {
                        let entry = entry.map_err(|source| io_error(&node.path(), source))?;
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if name.starts_with('.') || archive::chain::object_kind(&name).is_none() {
                            continue;
                        }
                        let path = format!("{}/{node_name}/{name}", archive::chain::CHAIN_FOLDER);
                        let metadata = entry.metadata().map_err(|source| io_error(&entry.path(), source))?;
                        let bytes = if !metadata.is_file() {
                            Err("not a file".to_owned())
                        } else if metadata.len() > max {
                            Err(format!("{} bytes", metadata.len()))
                        } else {
                            std::fs::read(entry.path())
                                .map(Bytes::from)
                                .map_err(|error| error.to_string())
                        };
                        found.push((path, bytes));
                    }
                }
            }
            Self::Bucket { bucket, runtime, .. } => {
                let objects = runtime
                    .block_on(bucket.chain_objects())
                    .map_err(|error| ReaderError::Bucket(format!("listing the chain: {error}")))?;
                let read = runtime.block_on(
                    futures::stream::iter(objects)
                        .map(|(path, size)| async move {
                            let name = bucket.relative(&path).to_owned();
                            if size > max {
                                return (name, Err(format!("{size} bytes")));
                            }
                            let bytes = bucket.read(&path).await.map_err(|error| error.to_string());
                            (name, bytes)
                        })
                        .buffer_unordered(32)
                        .collect::<Vec<_>>(),
                );
                found.extend(read);
            }
        }
        let mut chains: BTreeMap<String, NodeChain> = BTreeMap::new();
        for (path, bytes) in found {
            let Some(node) = archive::chain::node_of_chain_path(&path) else {
                continue;
            };
            let name = path.rsplit('/').next().unwrap_or_default();
            let chain = chains.entry(node.to_owned()).or_default();
            let bytes = match bytes {
                Ok(bytes) => bytes,
                Err(why) => {
                    chain.unreadable.push(format!("{path} ({why})"));
                    continue;
                }
            };
            match archive::chain::object_kind(name) {
                Some(ObjectKind::Header) => chain.headers.push((path.clone(), bytes)),
                Some(ObjectKind::Head) => chain.heads.push((path.clone(), bytes)),
                Some(ObjectKind::Certificate) => chain.certificates.push((path.clone(), bytes)),
                None => {}
            }
        }
        for chain in chains.values_mut() {
            chain.headers.sort_by(|a, b| a.0.cmp(&b.0));
            chain.heads.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(chains)
    }
}

fn io_error(path: &std::path::Path, source: std::io::Error) -> ReaderError {
    ReaderError::Archive(archive::ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    })
}
