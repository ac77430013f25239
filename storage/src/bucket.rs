//! The AS on an S3-compatible bucket: one object per batch at
//! `<prefix>/date=YYYY-MM-DD/node=<am node>/batch-<batch id>.parquet`, the
//! same Hive-style layout as the folder, so every reader lists it alike.
//!
//! A batch id is stored once, with no local index: each object is written
//! with a conditional create (`If-None-Match: *`). When the object is
//! already there (a retransmission, another AS process serving the same
//! bucket, or a restart between the store's confirmation and the ack), the
//! stored object's bytes are read back and hashed, and the answer is ALREADY_STORED when
//! they are the batch's, CONFLICTING_BATCH when not. The batch's SHA-256 also
//! travels in the object's metadata (`x-amz-meta-acct-digest`) for auditors.
//! The ack is sent only after the object store confirmed the write.
//!
//! Credentials come from the standard AWS credential variables
//! ([`CREDENTIAL_VARIABLES`]: keys, session token, region, the container
//! and web-identity providers; otherwise the instance metadata service);
//! none is read from acct's config file, and no other `AWS_*` variable
//! (endpoint, signing, TLS) can change where or how the archive is
//! written. Shared credential files and profiles are not read. The
//! storage needs to write and read objects under its prefix: a batch sent
//! again after a lost ack is answered by reading the stored object's
//! digest.
//!
//! Bounds: each request has [`REQUEST_TIMEOUT`], and a request that
//! failed with a server error is retried until [`RETRY_TIMEOUT`]: an upload
//! ends (stored, or answered UNAVAILABLE so that the AM sends it again)
//! before the AM gives up on the answer (120 s).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig,
};
use sha2::{Digest, Sha256};
use wire::{RecordAccounting, RecordAck, RecordStatus};

use super::files::utc_date;

/// The object metadata key that holds a batch's SHA-256 (hex).
pub const DIGEST_METADATA_KEY: &str = "acct-digest";

/// The environment variables the bucket's credentials and region come
/// from; every other `AWS_*` variable is ignored.
pub const CREDENTIAL_VARIABLES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
];

/// Longest time one request to the object store may take (a batch's
/// upload is one request).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest time a request is retried after server errors.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(100);
/// The largest object read back to compare digests: a batch is one frame,
/// at most 64 MiB; anything larger is not one of ours.
pub const STORED_OBJECT_BYTES_MAX: u64 = 64 * 1024 * 1024;

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
    /// The object store client could not be built, or the probe failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// The store accepted a second conditional create of one object: it
    /// does not honour `If-None-Match: *`, and batch ids could be
    /// overwritten.
    #[error(
        "{0} does not refuse a second conditional create (If-None-Match: *): refusing to archive there, \
         a batch could be overwritten"
    )]
    NoConditionalCreate(String),
}

/// The bucket and the prefix the AS writes under.
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
    bucket_name: String,
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
        let mut builder = AmazonS3Builder::new();
        for variable in CREDENTIAL_VARIABLES {
            if let (Ok(value), Ok(key)) = (
                std::env::var(variable),
                variable.to_ascii_lowercase().parse::<AmazonS3ConfigKey>(),
            ) {
                builder = builder.with_config(key, value);
            }
        }
        let mut builder = builder
            .with_bucket_name(bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(REQUEST_TIMEOUT)
                    .with_allow_http(settings.allow_http),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 10,
                retry_timeout: RETRY_TIMEOUT,
            });
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
            bucket_name: bucket.to_owned(),
        })
    }

    /// Check the bucket before serving: the credentials write and read
    /// under the prefix, and the store refuses a second conditional create
    /// of one object (a store that ignores `If-None-Match: *` would let a
    /// batch id be overwritten). The probe object, under `.acct-probe/`, is
    /// deleted afterwards if the credentials allow it.
    pub async fn probe(&self) -> Result<(), BucketError> {
        let mut name = [0u8; 16];
        getrandom::fill(&mut name).map_err(|error| {
            BucketError::Store(object_store::Error::Generic {
                store: "S3",
                source: Box::new(std::io::Error::other(error.to_string())),
            })
        })?;
        let path = self.prefix.clone().join(".acct-probe").join(hex::encode(name));
        let create = || PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        self.store
            .put_opts(&path, PutPayload::from_static(b"acct probe"), create())
            .await?;
        let second = self
            .store
            .put_opts(&path, PutPayload::from_static(b"acct probe, again"), create())
            .await;
        let refused = matches!(second, Err(object_store::Error::AlreadyExists { .. }));
        let stored = self.store.get_opts(&path, GetOptions::default()).await?.bytes().await?;
        if let Err(error) = self.store.delete(&path).await {
            tracing::warn!(object = %path, %error, "could not delete the probe object");
        }
        if !refused || stored.as_ref() != b"acct probe" {
            return Err(BucketError::NoConditionalCreate(self.url.clone()));
        }
        if let Err(error) = second
            && !matches!(error, object_store::Error::AlreadyExists { .. })
        {
            return Err(error.into());
        }
        Ok(())
    }

    /// The bucket's name.
    pub fn bucket_name(&self) -> &str {
        &self.bucket_name
    }

    /// Every batch object under the prefix (keys ending in `.parquet`
    /// whose segments do not start with `.`), sorted by key.
    pub async fn batch_objects(&self) -> Result<Vec<ObjectPath>, object_store::Error> {
        let listed: Vec<object_store::ObjectMeta> = self.store.list(Some(&self.prefix)).try_collect().await?;
        let mut objects: Vec<ObjectPath> = listed
            .into_iter()
            .map(|meta| meta.location)
            .filter(|path| {
                path.as_ref().ends_with(".parquet") && !path.parts().any(|part| part.as_ref().starts_with('.'))
            })
            .collect();
        objects.sort();
        Ok(objects)
    }

    /// One object's bytes, whole.
    pub async fn read(&self, path: &ObjectPath) -> Result<Bytes, object_store::Error> {
        self.store.get_opts(path, GetOptions::default()).await?.bytes().await
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

    /// The SHA-256 of the object's bytes as stored, read back whole (at
    /// most [`STORED_OBJECT_BYTES_MAX`]: a larger object is not a batch, and
    /// all ones stand for its digest). The bytes, not the metadata, decide:
    /// an ack must vouch for what is there. Runs only for a batch id that is
    /// already there.
    async fn stored_digest(&self, path: &ObjectPath) -> Result<[u8; 32], object_store::Error> {
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let head = self.store.get_opts(path, options).await?;
        if head.meta.size > STORED_OBJECT_BYTES_MAX {
            return Ok([0xff; 32]);
        }
        let stored: Bytes = self.store.get_opts(path, GetOptions::default()).await?.bytes().await?;
        Ok(Sha256::digest(&stored).into())
    }
}
