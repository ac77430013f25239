//! The archive as its readers see it (`acct report`, `acct audit`): the
//! batch files under a folder, or the batch objects under a bucket's prefix
//! (`s3://bucket/prefix`), listed once and read one batch at a time. Names
//! starting with `.` (temp files, the storage's probe) are not batches.
//!
//! Memory: the list of names, and one batch's bytes per reading thread (a
//! batch is at most one 64 MiB frame).

use std::path::PathBuf;

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
    Folder(Vec<PathBuf>),
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
            return Ok(Self::Folder(archive::parquet_files(std::path::Path::new(location))?));
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
            Self::Folder(files) => files.len(),
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
            Self::Folder(files) => files
                .get(index)
                .map(|path| path.display().to_string())
                .unwrap_or_default(),
            Self::Bucket { bucket, objects, .. } => objects
                .get(index)
                .map(|path| format!("s3://{}/{path}", bucket.bucket_name()))
                .unwrap_or_default(),
        }
    }

    /// Read the `index`th batch's rows into `each`; the number of rows.
    /// Callable from several threads at once.
    pub fn read(&self, index: usize, each: impl FnMut(archive::Row)) -> Result<u64, ReaderError> {
        match self {
            Self::Folder(files) => match files.get(index) {
                Some(path) => Ok(archive::read_file(path, each)?),
                None => Ok(0),
            },
            Self::Bucket {
                bucket,
                runtime,
                objects,
            } => {
                let Some(path) = objects.get(index) else { return Ok(0) };
                let bytes: Bytes = runtime
                    .block_on(bucket.read(path))
                    .map_err(|error| ReaderError::Bucket(format!("reading {path}: {error}")))?;
                Ok(archive::read(bytes, each)?)
            }
        }
    }
}
