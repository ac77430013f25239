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
//! A batch larger than one part ([`BucketSettings::part_bytes`], default
//! [`PART_BYTES_DEFAULT`]) goes up as a multipart upload, its parts one
//! after another. Its CompleteMultipartUpload carries `If-None-Match: *`
//! as the single PUT does (the AS never overwrites an object), so the
//! object appears whole or not at all: an upload killed before it
//! completes leaves no visible object, only parts that the store drops when
//! the upload is aborted (the AS aborts a failed upload; give the bucket a
//! lifecycle rule that aborts incomplete uploads after a day for the ones
//! a killed AS could not).
//!
//! Credentials come, in this order, from the standard AWS credential
//! variables ([`CREDENTIAL_VARIABLES`]: keys, session token, region), the
//! shared profile (`AWS_PROFILE`, `~/.aws/credentials`, `~/.aws/config`:
//! static keys and region, see [`crate::profile`]; read only for what the
//! environment and the settings do not give), the container and
//! web-identity providers, and otherwise the instance metadata service.
//! None is read from acct's config file, and no other `AWS_*` variable
//! (endpoint, signing, TLS) can change where or how the archive is
//! written. The storage needs to write, read and abort multipart uploads
//! under its prefix: a batch sent again after a lost ack is answered by
//! reading the stored object's digest.
//!
//! Bounds: each request has [`REQUEST_TIMEOUT`], and a request that
//! failed with a server error or a broken connection is retried, at most
//! [`RETRIES_MAX`] times with exponential backoff (a refused connection
//! uses them up in a few seconds). A batch's whole write, the read-back of
//! an object already there included, ends within [`BATCH_DEADLINE`]
//! (stored, or answered UNAVAILABLE so that the AM sends it again after its
//! own backoff), before the AM gives up on the answer (120 s); a multipart
//! upload cut by the deadline is aborted in the background.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, GetOptions, ObjectStore, ObjectStoreExt, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};
use sha2::{Digest, Sha256};
use wire::{RecordAccounting, RecordAck, RecordStatus};

use super::files::utc_date;

/// The object metadata key that holds a batch's SHA-256 (hex).
pub const DIGEST_METADATA_KEY: &str = "acct-digest";

/// The environment variables the bucket's credentials and region come
/// from (with [`crate::profile::PROFILE_VARIABLES`], which choose the
/// shared profile); every other `AWS_*` variable is ignored.
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

/// Longest time one request to the object store may take (a single PUT,
/// or one part of a multipart upload).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest time a request is retried after server errors.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(90);
/// Most retries of one request.
pub const RETRIES_MAX: usize = 10;
/// Longest time a batch's write may take, all its requests together (the
/// AM waits 120 s for the answer).
pub const BATCH_DEADLINE: Duration = Duration::from_secs(100);
/// The largest object read back to compare digests: a batch is one frame,
/// at most 64 MiB; anything larger is not one of ours.
pub const STORED_OBJECT_BYTES_MAX: u64 = 64 * 1024 * 1024;

const MIB: usize = 1024 * 1024;
/// The default part size: a batch larger than this goes up in parts of
/// this size.
pub const PART_BYTES_DEFAULT: usize = 8 * MIB;
/// The smallest part S3 accepts (but for the last).
pub const PART_BYTES_MIN: usize = 5 * MIB;
/// The largest part size: a batch (one frame) is at most 64 MiB.
pub const PART_BYTES_MAX: usize = 64 * MIB;

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
    /// A batch larger than this goes up as a multipart upload in parts of
    /// this size (at least [`PART_BYTES_MIN`]).
    pub part_bytes: usize,
}

impl BucketSettings {
    /// `url` on AWS with the default part size.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            endpoint: None,
            region: None,
            allow_http: false,
            part_bytes: PART_BYTES_DEFAULT,
        }
    }
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
        "{0} does not refuse a second conditional create (If-None-Match: *){1}: refusing to archive there, \
         a batch could be overwritten"
    )]
    NoConditionalCreate(String, &'static str),
    /// The part size is below S3's minimum or above a batch's largest size.
    #[error("the part size {0} bytes is not between 5 MiB (S3's minimum) and 64 MiB (a batch's largest)")]
    PartSize(usize),
    /// The AWS shared profile could not be used.
    #[error(transparent)]
    Profile(#[from] crate::profile::ProfileError),
}

/// The bucket and the prefix the AS writes under.
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
    bucket_name: String,
    part_bytes: usize,
}

/// Makes every CompleteMultipartUpload a create: adds `If-None-Match: *`
/// to it (S3 and compatible stores then answer 412 when the key exists),
/// as `PutMode::Create` does for a single PUT. `object_store` completes
/// its multipart uploads unconditionally, and the AS never overwrites an
/// object. The header is added after signing, as an unsigned header
/// (SigV4 requires only `x-amz-*` headers to be signed).
/// It wraps every client of the connector it is given (object_store's
/// reqwest one in production), so every attempt of a retried request goes
/// through it.
#[derive(Debug)]
struct CreateOnlyConnector<C>(C);

impl<C: HttpConnector> HttpConnector for CreateOnlyConnector<C> {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(CreateOnly(self.0.connect(options)?)))
    }
}

#[derive(Debug)]
struct CreateOnly(HttpClient);

#[async_trait::async_trait]
impl HttpService for CreateOnly {
    async fn call(&self, mut request: HttpRequest) -> Result<HttpResponse, HttpError> {
        if completes_multipart(&request) {
            request
                .headers_mut()
                .insert(http::header::IF_NONE_MATCH, http::HeaderValue::from_static("*"));
        }
        self.0.execute(request).await
    }
}

/// Whether `request` is a CompleteMultipartUpload: `POST key?uploadId=…`
/// (CreateMultipartUpload is `POST key?uploads`).
fn completes_multipart(request: &HttpRequest) -> bool {
    request.method() == http::Method::POST
        && request
            .uri()
            .query()
            .is_some_and(|query| query.split('&').any(|pair| pair.starts_with("uploadId=")))
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
        if !(PART_BYTES_MIN..=PART_BYTES_MAX).contains(&settings.part_bytes) {
            return Err(BucketError::PartSize(settings.part_bytes));
        }
        let from_environment = |variable: &str| std::env::var_os(variable).is_some();
        let keys_given = from_environment("AWS_ACCESS_KEY_ID");
        let need_region =
            settings.region.is_none() && !from_environment("AWS_REGION") && !from_environment("AWS_DEFAULT_REGION");
        let mut builder = AmazonS3Builder::new();
        for variable in CREDENTIAL_VARIABLES {
            // A session token belongs to the keys it came with.
            if *variable == "AWS_SESSION_TOKEN" && !keys_given {
                continue;
            }
            if let (Ok(value), Ok(key)) = (
                std::env::var(variable),
                variable.to_ascii_lowercase().parse::<AmazonS3ConfigKey>(),
            ) {
                builder = builder.with_config(key, value);
            }
        }
        if !keys_given {
            if let Some(profile) = crate::profile::from_environment()? {
                if let (Some(id), Some(secret)) = (profile.access_key_id, profile.secret_access_key) {
                    builder = builder.with_access_key_id(id).with_secret_access_key(secret);
                    if let Some(token) = profile.session_token {
                        builder = builder.with_token(token);
                    }
                }
                if need_region && let Some(region) = profile.region {
                    builder = builder.with_region(region);
                }
            }
        } else if need_region {
            // Only the region is wanted: a profile that cannot give keys
            // does not stop the storage.
            match crate::profile::from_environment() {
                Ok(Some(crate::profile::Profile {
                    region: Some(region), ..
                })) => {
                    builder = builder.with_region(region);
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "AWS profile not read for the region"),
            }
        }
        let mut builder = builder
            .with_bucket_name(bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_http_connector(CreateOnlyConnector(ReqwestConnector::default()))
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(REQUEST_TIMEOUT)
                    .with_allow_http(settings.allow_http),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: RETRIES_MAX,
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
            part_bytes: settings.part_bytes,
        })
    }

    /// Check the bucket before serving: the credentials write and read
    /// under the prefix, and the store refuses a second create of one
    /// object, by PUT and by multipart upload (a store that ignores
    /// `If-None-Match: *` would let a batch id be overwritten). The probe
    /// object, under `.acct-probe/`, is deleted afterwards if the
    /// credentials allow it.
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
        let checked = self.probe_again(&path, create()).await;
        if let Err(error) = self.store.delete(&path).await {
            tracing::warn!(object = %path, %error, "could not delete the probe object");
        }
        checked
    }

    /// The second creates of the probe object: each must be refused as
    /// already there, and the object must keep its first bytes.
    async fn probe_again(&self, path: &ObjectPath, create: PutOptions) -> Result<(), BucketError> {
        let refused = |attempt: Result<(), object_store::Error>, how: &'static str| match attempt {
            Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(error) => Err(BucketError::Store(error)),
            Ok(()) => Err(BucketError::NoConditionalCreate(self.url.clone(), how)),
        };
        let again = self
            .store
            .put_opts(path, PutPayload::from_static(b"acct probe, again"), create)
            .await
            .map(drop);
        refused(again, "")?;
        let deadline = tokio::time::Instant::now() + BATCH_DEADLINE;
        let in_parts = self
            .put_in_parts(
                path,
                Bytes::from_static(b"acct probe, in parts"),
                Attributes::new(),
                deadline,
            )
            .await;
        refused(in_parts, " on CompleteMultipartUpload")?;
        let stored = self.store.get_opts(path, GetOptions::default()).await?.bytes().await?;
        if stored.as_ref() != b"acct probe" {
            return Err(BucketError::NoConditionalCreate(
                self.url.clone(),
                " (the object changed)",
            ));
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

    /// Store a checked batch (`checks::check`) and its chain objects
    /// (`archive::chain`; `certificate`: the AM's, DER); the answer to send
    /// back. STORED only once the object store confirmed the write; when
    /// the write fails for any reason, the object already there (if any)
    /// decides: ALREADY_STORED for the batch's bytes, CONFLICTING_BATCH for
    /// others, UNAVAILABLE when there is none or it cannot be read. The
    /// chain objects are written after the batch and before the answer; if
    /// they cannot be, UNAVAILABLE (the AM sends the batch again). Ends
    /// within [`BATCH_DEADLINE`].
    pub async fn store(&self, record: &RecordAccounting, certificate: &[u8]) -> RecordAck {
        let deadline = tokio::time::Instant::now() + BATCH_DEADLINE;
        let ack = self.store_file(record, deadline).await;
        if !ack.status.is_stored() {
            return ack;
        }
        let error = match tokio::time::timeout_at(deadline, self.store_chain(record, certificate)).await {
            Ok(Ok(())) => return ack,
            Ok(Err(error)) => error.to_string(),
            Err(_) => "past the batch's deadline".to_owned(),
        };
        tracing::error!(batch = %record.batch_id, %error, "cannot store the batch's chain objects; the AM will retry");
        RecordAck {
            status: RecordStatus::UNAVAILABLE,
            ..ack
        }
    }

    /// The batch's header, its head and the AM's certificate, each created
    /// once (`If-None-Match: *`): no object of the chain is ever
    /// overwritten, so two storages sharing the bucket cannot undo each
    /// other's writes.
    async fn store_chain(&self, record: &RecordAccounting, certificate: &[u8]) -> Result<(), object_store::Error> {
        let mut folder = self.prefix.clone();
        for segment in archive::chain::node_folder(record.node.as_str()).split('/') {
            folder = folder.join(segment);
        }
        self.create_once(
            &folder.clone().join(archive::chain::certificate_name(certificate)),
            Bytes::copy_from_slice(certificate),
        )
        .await?;
        self.create_once(
            &folder.clone().join(archive::chain::header_name(&record.header)),
            record.header.body().clone(),
        )
        .await?;
        self.create_once(
            &folder.join(archive::chain::head_name(record.head.value().number)),
            record.head.body().clone(),
        )
        .await
    }

    /// Create `path` with `bytes` unless it exists (then it holds them: a
    /// chain object's name is determined by its bytes).
    async fn create_once(&self, path: &ObjectPath, bytes: Bytes) -> Result<(), object_store::Error> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self.store.put_opts(path, PutPayload::from_bytes(bytes), options).await {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Every chain object under the prefix (`_chain/node=…/…`) with its
    /// size, sorted by key.
    pub async fn chain_objects(&self) -> Result<Vec<(ObjectPath, u64)>, object_store::Error> {
        let folder = self.prefix.clone().join(archive::chain::CHAIN_FOLDER);
        let listed: Vec<object_store::ObjectMeta> = self.store.list(Some(&folder)).try_collect().await?;
        let mut objects: Vec<(ObjectPath, u64)> = listed.into_iter().map(|meta| (meta.location, meta.size)).collect();
        objects.sort();
        Ok(objects)
    }

    /// A key relative to the prefix (`date=…/node=…/batch-….parquet`).
    pub fn relative<'a>(&self, path: &'a ObjectPath) -> &'a str {
        let key = path.as_ref();
        let prefix = self.prefix.as_ref();
        if prefix.is_empty() {
            return key;
        }
        key.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .unwrap_or(key)
    }

    /// Store a checked batch's Parquet object, by `deadline`.
    async fn store_file(&self, record: &RecordAccounting, deadline: tokio::time::Instant) -> RecordAck {
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
        let written = if record.payload.len() > self.part_bytes {
            self.put_in_parts(&path, record.payload.clone(), attributes, deadline)
                .await
        } else {
            let options = PutOptions {
                mode: PutMode::Create,
                attributes,
                ..PutOptions::default()
            };
            let payload = PutPayload::from_bytes(record.payload.clone());
            match tokio::time::timeout_at(deadline, self.store.put_opts(&path, payload, options)).await {
                Ok(result) => result.map(drop),
                Err(_) => Err(past_deadline(&path)),
            }
        };
        let error = match written {
            Ok(()) => {
                tracing::info!(batch = %record.batch_id, rows = record.record_count, bytes = record.payload.len(), object = %path, "stored");
                metrics::counter!("acct_storage_batches_total").increment(1);
                metrics::counter!("acct_storage_rows_total").increment(u64::from(record.record_count));
                crate::failpoint("storage-after-store");
                return answer(RecordStatus::STORED, record.digest);
            }
            Err(error) => error,
        };
        let exists = matches!(error, object_store::Error::AlreadyExists { .. });
        match tokio::time::timeout_at(deadline, self.stored_digest(&path)).await {
            Ok(Ok(stored)) if stored == record.digest => {
                tracing::info!(batch = %record.batch_id, object = %path, "already stored");
                answer(RecordStatus::ALREADY_STORED, stored)
            }
            Ok(Ok(stored)) => {
                tracing::error!(batch = %record.batch_id, object = %path, "refused: batch id stored with other bytes");
                answer(RecordStatus::CONFLICTING_BATCH, stored)
            }
            Ok(Err(object_store::Error::NotFound { .. })) if exists => {
                // AWS answers 409 to a create that raced another on the
                // same key: nothing is there yet; the AM sends it again.
                tracing::warn!(batch = %record.batch_id, object = %path, "a concurrent create of the batch did not finish; the AM will retry");
                answer(RecordStatus::UNAVAILABLE, record.digest)
            }
            Ok(Err(object_store::Error::NotFound { .. })) => {
                tracing::error!(batch = %record.batch_id, %error, "cannot store the batch; the AM will retry");
                answer(RecordStatus::UNAVAILABLE, record.digest)
            }
            Ok(Err(read)) => {
                tracing::error!(batch = %record.batch_id, object = %path, %error, %read, "cannot store the batch nor read what is there; the AM will retry");
                answer(RecordStatus::UNAVAILABLE, record.digest)
            }
            Err(_) => {
                tracing::error!(batch = %record.batch_id, object = %path, %error, "cannot store the batch within the deadline; the AM will retry");
                answer(RecordStatus::UNAVAILABLE, record.digest)
            }
        }
    }

    /// Upload `payload` to `path` in parts of `part_bytes`, one after
    /// another, completed as a create (see [`CreateOnlyConnector`]):
    /// `AlreadyExists` when the key is taken. An upload that failed or ran
    /// past `deadline` is aborted in the background (best effort; a
    /// lifecycle rule catches the rest).
    async fn put_in_parts(
        &self,
        path: &ObjectPath,
        payload: Bytes,
        attributes: Attributes,
        deadline: tokio::time::Instant,
    ) -> Result<(), object_store::Error> {
        let options = PutMultipartOptions {
            attributes,
            ..PutMultipartOptions::default()
        };
        let mut upload = match tokio::time::timeout_at(deadline, self.store.put_multipart_opts(path, options)).await {
            Ok(upload) => upload?,
            Err(_) => return Err(past_deadline(path)),
        };
        let parts = payload.len().div_ceil(self.part_bytes).max(1);
        let uploading = async {
            for index in 0..parts {
                if index > 0
                    && let Some(delay) = part_delay()
                {
                    tokio::time::sleep(delay).await;
                }
                let start = index * self.part_bytes;
                let end = (start + self.part_bytes).min(payload.len());
                upload
                    .put_part(PutPayload::from_bytes(payload.slice(start..end)))
                    .await?;
                tracing::debug!(object = %path, part = index + 1, parts, "part uploaded");
            }
            upload.complete().await
        };
        let error = match tokio::time::timeout_at(deadline, uploading).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(error)) => error,
            Err(_) => past_deadline(path),
        };
        let object = path.clone();
        tokio::spawn(async move {
            if let Err(error) = upload.abort().await {
                tracing::warn!(%object, %error, "could not abort a failed multipart upload");
            }
        });
        Err(match error {
            object_store::Error::Precondition { path, source } | object_store::Error::NotModified { path, source } => {
                object_store::Error::AlreadyExists { path, source }
            }
            other => other,
        })
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

/// The error of a write cut by [`BATCH_DEADLINE`].
fn past_deadline(path: &ObjectPath) -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: format!("writing {path} took longer than {} s", BATCH_DEADLINE.as_secs()).into(),
    }
}

/// Fault injection for tests: `ACCT_STORAGE_PART_DELAY_MS` makes the
/// storage wait that long before each part of a multipart upload but the
/// first, as a slow link would. Unset in production.
fn part_delay() -> Option<Duration> {
    static DELAY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var("ACCT_STORAGE_PART_DELAY_MS")
            .ok()
            .and_then(|value| value.parse().ok())
            .map(Duration::from_millis)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: http::Method, uri: &str) -> HttpRequest {
        let mut request = HttpRequest::new(object_store::client::HttpRequestBody::empty());
        *request.method_mut() = method;
        *request.uri_mut() = uri.parse().unwrap();
        request
    }

    #[test]
    fn only_complete_multipart_upload_is_made_a_create() {
        let object = "http://127.0.0.1:9000/acct/date%3D2026-12-07/batch-1.parquet";
        assert!(completes_multipart(&request(
            http::Method::POST,
            &format!("{object}?uploadId=abc")
        )));
        assert!(!completes_multipart(&request(
            http::Method::POST,
            &format!("{object}?uploads")
        )));
        assert!(!completes_multipart(&request(
            http::Method::PUT,
            &format!("{object}?partNumber=1&uploadId=abc")
        )));
        assert!(!completes_multipart(&request(
            http::Method::DELETE,
            &format!("{object}?uploadId=abc")
        )));
        assert!(!completes_multipart(&request(
            http::Method::POST,
            "http://127.0.0.1:9000/acct?delete"
        )));
    }

    /// A minimal S3 multipart endpoint: it answers the first
    /// CompleteMultipartUpload with 503 and records the `If-None-Match`
    /// header of every request.
    #[derive(Debug, Default)]
    struct FlakyStore {
        completes: std::sync::Mutex<Vec<Option<String>>>,
        others: std::sync::Mutex<Vec<Option<String>>>,
    }

    #[derive(Debug, Clone)]
    struct FlakyConnector(Arc<FlakyStore>);

    impl HttpConnector for FlakyConnector {
        fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
            Ok(HttpClient::new(self.clone()))
        }
    }

    #[async_trait::async_trait]
    impl HttpService for FlakyConnector {
        async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
            let condition = request
                .headers()
                .get(http::header::IF_NONE_MATCH)
                .map(|value| value.to_str().unwrap_or("?").to_owned());
            let query = request.uri().query().unwrap_or("").to_owned();
            let respond = |status: u16, body: &str| {
                http::Response::builder()
                    .status(status)
                    .header("ETag", "\"part\"")
                    .body(object_store::client::HttpResponseBody::from(body.to_owned()))
                    .unwrap()
            };
            if completes_multipart(&request) {
                let mut completes = self.0.completes.lock().unwrap();
                completes.push(condition);
                return Ok(if completes.len() == 1 {
                    respond(503, "<Error><Code>SlowDown</Code></Error>")
                } else {
                    respond(
                        200,
                        "<CompleteMultipartUploadResult><ETag>\"whole\"</ETag></CompleteMultipartUploadResult>",
                    )
                });
            }
            self.0.others.lock().unwrap().push(condition);
            Ok(if query.starts_with("uploads") {
                respond(
                    200,
                    "<InitiateMultipartUploadResult><UploadId>upload-1</UploadId></InitiateMultipartUploadResult>",
                )
            } else {
                respond(200, "")
            })
        }
    }

    #[tokio::test]
    async fn every_attempt_of_a_retried_complete_is_a_create() {
        let flaky = Arc::new(FlakyStore::default());
        let store = AmazonS3Builder::new()
            .with_bucket_name("acct")
            .with_endpoint("http://127.0.0.1:9")
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("key")
            .with_secret_access_key("secret")
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(1),
                    max_backoff: Duration::from_millis(5),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: Duration::from_secs(10),
            })
            .with_http_connector(CreateOnlyConnector(FlakyConnector(flaky.clone())))
            .build()
            .unwrap();
        let mut upload = store
            .put_multipart_opts(&ObjectPath::from("a/batch-1.parquet"), PutMultipartOptions::default())
            .await
            .unwrap();
        upload.put_part(PutPayload::from_static(b"part one")).await.unwrap();
        upload.complete().await.unwrap();
        let completes = flaky.completes.lock().unwrap().clone();
        assert_eq!(
            completes,
            vec![Some("*".to_owned()), Some("*".to_owned())],
            "the retry lost the condition"
        );
        let others = flaky.others.lock().unwrap().clone();
        assert_eq!(others, vec![None, None], "only the completion is a create");
    }

    #[test]
    fn a_part_size_outside_5_to_64_mib_is_refused() {
        let settings = BucketSettings {
            part_bytes: PART_BYTES_MIN - 1,
            ..BucketSettings::new("s3://acct")
        };
        assert!(matches!(Bucket::open(&settings), Err(BucketError::PartSize(_))));
        let settings = BucketSettings {
            part_bytes: PART_BYTES_MAX + 1,
            ..BucketSettings::new("s3://acct")
        };
        assert!(matches!(Bucket::open(&settings), Err(BucketError::PartSize(_))));
    }
}
