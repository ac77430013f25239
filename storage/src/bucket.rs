//! The AS on an S3-compatible bucket: one object per batch at
//! `<prefix>/date=YYYY-MM-DD/node=<am node>/batch-<batch id>.parquet`, the
//! same Hive-style layout as the folder, so every reader lists it alike.
//!
//! A batch id is stored once, with no local index: each object is written
//! with a conditional create (`If-None-Match: *`). When the object is
//! already there (a retransmission, another AS process serving the same
//! bucket, or a restart between the store's confirmation and the ack), the
//! stored object's bytes are hashed and the answer is ALREADY_STORED when
//! they are the batch's, CONFLICTING_BATCH when not. The batch's SHA-256 also
//! travels in the object's metadata (`x-amz-meta-acct-digest`) for auditors.
//! The ack is sent only after the object store confirmed the write.
//!
//! Credentials come from the standard AWS environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ...);
//! none is read from acct's config file.

use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, Attributes, GetOptions, ObjectStore, PutMode, PutOptions, PutPayload};
use sha2::{Digest, Sha256};
use wire::{RecordAccounting, RecordAck, RecordStatus};

use super::files::utc_date;

/// The object metadata key that holds a batch's SHA-256 (hex).
pub const DIGEST_METADATA_KEY: &str = "acct-digest";

/// Where the bucket is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSettings {
    /// `s3://bucket` or `s3://bucket/prefix`.
    pub url: String,
    /// An S3-compatible endpoint instead of AWS's (e.g.
    /// `http://127.0.0.1:9000`).
    pub endpoint: Option<String>,
    /// The region (default: `AWS_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// Allow an `http://` endpoint (a local test server).
    pub allow_http: bool,
}

/// Why the bucket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// The URL is not `s3://bucket[/prefix]`.
    #[error("{0:?} is not an s3://bucket[/prefix] URL")]
    Url(String),
    /// The object store client could not be built.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

/// The bucket and the prefix the AS writes under.
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
}

impl Bucket {
    /// A client for `settings` (no request is made yet).
    pub fn open(settings: &BucketSettings) -> Result<Self, BucketError> {
        let rest = settings
            .url
            .strip_prefix("s3://")
            .ok_or_else(|| BucketError::Url(settings.url.clone()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(BucketError::Url(settings.url.clone()));
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_allow_http(settings.allow_http);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &settings.region {
            builder = builder.with_region(region);
        }
        Ok(Self {
            store: Arc::new(builder.build()?),
            prefix: ObjectPath::from(prefix.trim_matches('/')),
            url: settings.url.clone(),
        })
    }

    /// The bucket's URL, for logs.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object a batch goes to.
    pub fn batch_path(&self, record: &RecordAccounting) -> ObjectPath {
        self.prefix
            .clone()
            .join(format!("date={}", utc_date(record.created_ms)))
            .join(format!("node={}", record.node))
            .join(format!("batch-{}.parquet", record.batch_id))
    }

    /// Store a checked batch (`checks::check`); the answer to send back.
    /// STORED only once the object store confirmed the write.
    pub async fn store(&self, record: &RecordAccounting) -> RecordAck {
        let answer = |status: RecordStatus, digest: [u8; 32]| RecordAck {
            batch_id: record.batch_id,
            digest,
            status,
        };
        let path = self.batch_path(record);
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::Metadata(DIGEST_METADATA_KEY.into()),
            hex::encode(record.digest).into(),
        );
        let options = PutOptions {
            mode: PutMode::Create,
            attributes,
            ..PutOptions::default()
        };
        let payload = PutPayload::from_bytes(record.payload.clone());
        match self.store.put_opts(&path, payload, options).await {
            Ok(_) => {
                tracing::info!(batch = %record.batch_id, rows = record.record_count, bytes = record.payload.len(), object = %path, "stored");
                metrics::counter!("acct_storage_batches_total").increment(1);
                metrics::counter!("acct_storage_rows_total").increment(u64::from(record.record_count));
                answer(RecordStatus::STORED, record.digest)
            }
            Err(object_store::Error::AlreadyExists { .. }) => match self.stored_digest(&path).await {
                Ok(stored) if stored == record.digest => answer(RecordStatus::ALREADY_STORED, stored),
                Ok(stored) => {
                    tracing::error!(batch = %record.batch_id, object = %path, "refused: batch id stored with other bytes");
                    answer(RecordStatus::CONFLICTING_BATCH, stored)
                }
                Err(error) => {
                    tracing::error!(object = %path, %error, "cannot read a stored batch");
                    answer(RecordStatus::UNAVAILABLE, record.digest)
                }
            },
            Err(error) => {
                tracing::error!(batch = %record.batch_id, %error, "cannot store the batch; the AM will retry");
                answer(RecordStatus::UNAVAILABLE, record.digest)
            }
        }
    }

    /// The SHA-256 of the object's bytes as stored (read whole: a batch is
    /// at most one 64 MiB frame, and this runs only for a batch id that is
    /// already there).
    async fn stored_digest(&self, path: &ObjectPath) -> Result<[u8; 32], object_store::Error> {
        let stored: Bytes = self.store.get_opts(path, GetOptions::default()).await?.bytes().await?;
        Ok(Sha256::digest(&stored).into())
    }
}
