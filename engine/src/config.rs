//! The config file: what the deployment is (names, PKI files, addresses).
//! Flags say how one process runs and override the file where both exist.
//!
//! Relative paths in the file are relative to the file's own folder, so a
//! PKI folder made by `acct init` works wherever it is moved.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node.
    pub node: NodeConfig,
    /// Certificates and keys.
    pub pki: PkiConfig,
    /// The Accounting Manager.
    pub am: AmConfig,
    /// Ingest bounds and policies (every field has a default).
    #[serde(default)]
    pub ingest: IngestConfig,
    /// The AM's export to the Accounting Storage (every field has a default).
    #[serde(default)]
    pub export: ExportConfig,
    /// The Accounting Storage (`acct storage`, and the AM's embedded one).
    #[serde(default)]
    pub storage: StorageConfig,
    /// The services the AM accounts for (its service list, step 201).
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// Revocations, re-read while the AM runs.
    #[serde(default)]
    pub security: SecurityConfig,
    /// The AM partitions of one system (absent: this node alone).
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// The cluster map: every AM partition, the same on every node and client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Every partition; `[node] name` must be one of them.
    pub partitions: Vec<PartitionConfig>,
}

/// One AM partition.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionConfig {
    /// 1..=65535, never reused for another node: the first two bytes of
    /// its sessions' ids.
    pub id: u16,
    /// The name in its `am` certificate.
    pub name: String,
    /// Where providers and users reach it (`host:port`).
    pub address: String,
}

impl ClusterConfig {
    /// The map, checked (ids from 1, ids and names unique).
    pub fn map(&self) -> anyhow::Result<wire::ClusterMap> {
        let partitions = self
            .partitions
            .iter()
            .map(|partition| {
                Ok(wire::Partition {
                    id: wire::PartitionId(partition.id),
                    name: wire::Name::new(partition.name.as_str())
                        .map_err(|error| anyhow::anyhow!("partition {} name: {error}", partition.id))?,
                    address: wire::Address::new(partition.address.as_str())
                        .map_err(|error| anyhow::anyhow!("partition {} address: {error}", partition.id))?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(wire::ClusterMap::new(partitions)?)
    }
}

/// What the AM re-reads from the config file while it runs (every second,
/// when the file changes): no restart needed to revoke a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Denied certificates: a certificate's name (`provider-0003`: every
    /// certificate with that name) or `sha256:<hex>` of one certificate's
    /// DER. Denied providers are disconnected within about a second and
    /// refused afterwards; denied users get no credentials.
    pub denied: Vec<String>,
}

/// One service users may request a credential for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The service id (a1).
    pub id: u32,
    /// Its name, for people.
    pub name: String,
    /// The provider offering it (its certificate name).
    pub provider: String,
    /// Where users reach the provider (b2).
    pub provider_address: String,
    /// The unit `usage.units` counts in.
    #[serde(default = "default_unit")]
    pub unit: String,
    /// How long a credential is valid after issuance, seconds.
    #[serde(default = "default_lifetime_s")]
    pub lifetime_s: u64,
    /// Service Requests allowed per session; 0 means no limit.
    #[serde(default)]
    pub requests_max: u32,
    /// Daily window `[start, end)` in UTC minutes (0..1440); equal values
    /// mean all day.
    #[serde(default)]
    pub time_of_day: [u16; 2],
    /// Whether the user may use the session from another address.
    #[serde(default)]
    pub address_change_allowed: bool,
    /// Fields every accounting message must carry: any of "units",
    /// "bytes_up", "bytes_down", "duration", "interval".
    #[serde(default)]
    pub required_data: Vec<String>,
    /// Longest gap between accounting messages, seconds; 0: no limit.
    #[serde(default)]
    pub interim_interval_max_s: u32,
}

fn default_unit() -> String {
    "units".to_owned()
}

fn default_lifetime_s() -> u64 {
    24 * 3600
}

/// When and where the AM exports committed records.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// `"embedded"`: an in-process AS (the `[storage]` section, on
    /// 127.0.0.1, same QUIC path); or the address of an `acct storage`.
    pub storage: String,
    /// Cut a batch at least this often while records wait, milliseconds.
    pub interval_ms: u64,
    /// Or as soon as this many records wait (at most 1,000,000).
    pub records_max: usize,
    /// On SIGTERM, export what is committed for at most this long, seconds.
    pub shutdown_deadline_s: u64,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            storage: "embedded".to_owned(),
            interval_ms: 10_000,
            records_max: 100_000,
            shutdown_deadline_s: 30,
        }
    }
}

/// The Accounting Storage's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The QUIC address of `acct storage` (the embedded AS picks a free
    /// loopback port instead).
    pub listen: SocketAddr,
    /// Where the Parquet files go (when no `bucket` is set).
    pub folder: PathBuf,
    /// An S3-compatible bucket instead of the folder: `s3://bucket` or
    /// `s3://bucket/prefix`. Credentials come from the standard AWS
    /// environment variables or the shared profile, never from this file.
    pub bucket: Option<String>,
    /// The bucket's endpoint, for an S3-compatible store other than AWS.
    pub endpoint: Option<String>,
    /// The bucket's region (default: `AWS_REGION`, else us-east-1).
    pub region: Option<String>,
    /// Allow an `http://` endpoint (a local test server only).
    pub allow_http: bool,
    /// A batch larger than this many MiB goes up to the bucket as a
    /// multipart upload in parts of this size (at least 5, S3's minimum).
    pub part_mib: usize,
    /// The AS's certificate (role `storage`) and key.
    pub certificate: PathBuf,
    /// The AS's Ed25519 key (PKCS#8 PEM).
    pub key: PathBuf,
    /// AM connections at once.
    pub connections_max: usize,
    /// Batches buffered at once (each up to 64 MiB).
    pub receiving_max: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4434)),
            folder: PathBuf::from("cold"),
            bucket: None,
            endpoint: None,
            region: None,
            allow_http: false,
            part_mib: storage::bucket::PART_BYTES_DEFAULT / (1024 * 1024),
            certificate: PathBuf::from("storage-1.crt.pem"),
            key: PathBuf::from("storage-1.key.pem"),
            connections_max: 16,
            receiving_max: 2,
        }
    }
}

/// Bounds and policies of the ingest path. Each queue and window here is a
/// memory bound; docs/architecture.md gives the arithmetic.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Verifier threads; 0 means one per CPU.
    pub verify_threads: usize,
    /// QUIC I/O threads (the async runtime's workers: sockets, QUIC,
    /// decoding, acks); 0 means one per four CPUs, at least one. Each
    /// connection's work crosses threads less with fewer of them; see
    /// docs/performance.md for the measurements behind the default.
    pub io_threads: usize,
    /// Most signatures in one verification batch.
    pub verify_batch_messages_max: usize,
    /// Messages waiting for verification, all connections together (at
    /// least 256: one stream read's batch must fit).
    pub verify_queue_messages_max: usize,
    /// Verified messages waiting for the committer.
    pub commit_queue_messages_max: usize,
    /// Most messages in one commit group (one WAL sync).
    pub commit_group_messages_max: usize,
    /// Unanswered messages per stream; at the bound the AM stops reading
    /// the stream and QUIC flow control holds the provider.
    pub stream_inflight_messages_max: usize,
    /// How long a message may wait for room in the verify queue before it
    /// is answered "busy, retry" (the queue is full only when overload
    /// control is off or cannot keep up: see `queue_delay_target_ms`).
    pub admission_wait_ms: u64,
    /// Overload control: the verify queue's delay it holds the queue near,
    /// by answering a share of the stream reads BUSY at admission while the
    /// delay is above it (docs/operating.md, "Overload"); 0 turns it off.
    pub queue_delay_target_ms: u64,
    /// Provider and admin connections at once; more are refused.
    pub connections_max: usize,
    /// Connections one provider (one certificate name) may hold at once;
    /// more are closed right after their handshake (code 8), so that one
    /// provider cannot take the slots of all the others.
    pub connections_per_provider_max: usize,
    /// Concurrent streams per connection.
    pub streams_per_connection_max: u32,
    /// QUIC receive window per connection, bytes.
    pub connection_receive_window_bytes: u32,
    /// QUIC receive window per stream, bytes.
    pub stream_receive_window_bytes: u32,
    /// Kernel send and receive buffer of the AM's UDP socket, bytes each
    /// (64 KiB..=1 GiB). Every connection's datagrams wait here while the
    /// I/O threads are busy; an overflow drops datagrams and stalls their
    /// connections in loss recovery. Beyond `net.core.rmem_max` only with
    /// CAP_NET_ADMIN (docs/operating.md).
    pub udp_buffer_bytes: usize,
    /// How far in the future an accounted interval may end, seconds.
    pub future_skew_s: u64,
    /// How late accounting may arrive after its interval ends, seconds.
    pub lateness_s: u64,
    /// How long a closed or expired session's dedup state is kept, seconds.
    pub dedup_window_s: u64,
    /// Sessions the AM holds (open, or closed within the dedup window).
    pub sessions_max: usize,
    /// Live sessions (no Final stored, still within their validity) one
    /// user may hold; a credential request beyond is answered BUSY. The
    /// admin path is not bound by it.
    pub sessions_per_user_max: usize,
    /// How long a graceful shutdown waits for in-flight messages, seconds.
    pub drain_deadline_s: u64,
}

impl IngestConfig {
    /// The QUIC I/O threads to run: `io_threads` (at most 256), or for 0
    /// one per four CPUs, at least one.
    pub fn io_thread_count(&self) -> usize {
        match self.io_threads {
            0 => std::thread::available_parallelism().map_or(1, |cpus| cpus.get().div_ceil(4)),
            threads => threads.min(256),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            verify_threads: 0,
            io_threads: 0,
            verify_batch_messages_max: 1_024,
            verify_queue_messages_max: 16_384,
            commit_queue_messages_max: 16_384,
            commit_group_messages_max: 4_096,
            stream_inflight_messages_max: 1_024,
            admission_wait_ms: 50,
            queue_delay_target_ms: 100,
            connections_max: 20_000,
            connections_per_provider_max: 64,
            streams_per_connection_max: 8,
            connection_receive_window_bytes: 64 * 1024,
            stream_receive_window_bytes: 64 * 1024,
            udp_buffer_bytes: 64 * 1024 * 1024,
            future_skew_s: 300,
            lateness_s: 48 * 3600,
            dedup_window_s: 24 * 3600,
            sessions_max: 1_000_000,
            sessions_per_user_max: 1_000,
            drain_deadline_s: 10,
        }
    }
}

/// This node's identity.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name (the name in its certificate).
    pub name: String,
}

/// PKI files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PkiConfig {
    /// The operator CA's certificate (PEM).
    pub ca_certificate: PathBuf,
    /// This node's certificate (PEM).
    pub certificate: PathBuf,
    /// This node's Ed25519 key (PKCS#8 PEM).
    pub key: PathBuf,
}

/// The Accounting Manager's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmConfig {
    /// The QUIC address providers and users connect to.
    pub listen: SocketAddr,
    /// The data folder (RocksDB and export state).
    pub data: PathBuf,
}

/// Why the config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause, with line and column.
        source: toml::de::Error,
    },
}

impl StorageConfig {
    /// Where this AS keeps batches: the bucket if one is set, else the
    /// folder.
    pub fn target(&self) -> storage::server::Target {
        match &self.bucket {
            Some(url) => storage::server::Target::Bucket(storage::bucket::BucketSettings {
                url: url.clone(),
                endpoint: self.endpoint.clone(),
                region: self.region.clone(),
                allow_http: self.allow_http,
                part_bytes: self.part_mib.saturating_mul(1024 * 1024),
            }),
            None => storage::server::Target::Folder(self.folder.clone()),
        }
    }
}

/// Where a running server re-reads `[security] denied`: the config file at
/// `path`.
pub fn deny_source(path: PathBuf) -> serving::deny::DenySource {
    serving::deny::DenySource {
        path,
        read: |path| {
            Config::load(path)
                .map(|config| config.security.denied)
                .map_err(|error| error.to_string())
        },
    }
}

impl Config {
    /// Read and parse `path`, resolving relative paths against its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        for file in [
            &mut config.pki.ca_certificate,
            &mut config.pki.certificate,
            &mut config.pki.key,
            &mut config.am.data,
            &mut config.storage.folder,
            &mut config.storage.certificate,
            &mut config.storage.key,
        ] {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        Ok(config)
    }
}

/// The commented config file `acct init` writes next to the PKI.
pub fn commented_default() -> &'static str {
    r#"# acct configuration: what this deployment is.
# Flags (see `acct --help`) say how one process runs and override these values.
# Relative paths are relative to this file's folder.

[node]
# This node's name; it must match the name in its certificate
# (urn:acct:am:<name>).
name = "am-1"

[pki]
# The operator CA that issued every provider, user, AM and AS certificate.
ca_certificate = "ca.crt.pem"
# This node's certificate and its Ed25519 key (PKCS#8 PEM, mode 0600).
certificate = "am-1.crt.pem"
key = "am-1.key.pem"

[am]
# QUIC (TLS 1.3) address for providers and users. Keep it on loopback until
# the certificates are the operator's own.
listen = "127.0.0.1:4433"
# RocksDB and export state.
data = "data"

[ingest]
# Every bound of the ingest path; the values shown are the defaults.
# verify_threads = 0                      # 0: one per CPU
# io_threads = 0                          # 0: one per four CPUs, at least one
# verify_batch_messages_max = 1024
# verify_queue_messages_max = 16384
# commit_queue_messages_max = 16384
# commit_group_messages_max = 4096        # messages per WAL sync
# stream_inflight_messages_max = 1024     # then QUIC flow control holds the provider
# admission_wait_ms = 50                  # for room in a full verify queue, then "busy, retry"
# queue_delay_target_ms = 100             # overload control sheds reads BUSY above this delay; 0: off
# connections_max = 20000
# connections_per_provider_max = 64      # then code 8 right after the handshake
# streams_per_connection_max = 8
# connection_receive_window_bytes = 65536
# stream_receive_window_bytes = 65536
# udp_buffer_bytes = 67108864             # kernel buffers of the QUIC socket; see docs/operating.md
# future_skew_s = 300
# lateness_s = 172800                     # 48 h
# dedup_window_s = 86400                  # 24 h after a session closes or expires
# sessions_max = 1000000
# sessions_per_user_max = 1000            # live sessions one user may hold (credential requests)
# drain_deadline_s = 10

[export]
# Committed records leave RocksDB as Parquet batches, deleted only after the
# Accounting Storage acked them. "embedded" runs the storage in-process (the
# [storage] section below, on a free loopback port); or give the address of
# an `acct storage`, e.g. "127.0.0.1:4434".
# storage = "embedded"
# interval_ms = 10000                     # cut a batch at least this often
# records_max = 100000                    # or as soon as this many records wait
# shutdown_deadline_s = 30                # SIGTERM exports what is committed, for at most this long

[storage]
# The Accounting Storage: `acct storage --config THIS_FILE`, or embedded.
# listen = "127.0.0.1:4434"
# folder = "cold"                         # date=YYYY-MM-DD/node=<am>/batch-<id>.parquet
# An S3-compatible bucket instead of the folder (same layout under the
# prefix; each batch a conditional create, so several AS processes may share
# it). Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the
# environment, or the shared profile (AWS_PROFILE, ~/.aws/credentials),
# never in this file.
# bucket = "s3://acct-archive/cold"
# endpoint = "https://s3.example.net"     # for a store other than AWS
# region = "eu-west-1"
# allow_http = false                      # true only for a local test server
# part_mib = 8                            # larger batches go up as multipart uploads, in parts this size (>= 5)
# certificate = "storage-1.crt.pem"
# key = "storage-1.key.pem"
# connections_max = 16
# receiving_max = 2                       # batches buffered at once, up to 64 MiB each

[security]
# Revoked certificates, applied without restart: the AM re-reads this list
# when the file changes (checked every second). A name denies every
# certificate with that name; "sha256:<hex>" one certificate (SHA-256 of its
# DER, e.g. `openssl x509 -in c.pem -outform der | sha256sum`).
# denied = ["provider-0003", "sha256:9f86d081884c7d65..."]

# The services users may request credentials for (the service list). Without
# any, the AM offers service N by provider-N (4 digits, as `acct init` names
# providers) at 127.0.0.1:(7000 + N), for N = 1..10000.
# [[services]]
# id = 1
# name = "video-call"
# provider = "provider-0001"
# provider_address = "127.0.0.1:7001"     # where users reach the provider
# unit = "minutes"
# lifetime_s = 86400                      # credential validity after issuance
# requests_max = 0                        # service requests per session, 0: no limit
# time_of_day = [0, 0]                    # UTC minutes [start, end); equal: all day
# address_change_allowed = false
# required_data = ["units", "interval"]   # also bytes_up, bytes_down, duration
# interim_interval_max_s = 0              # 0: no limit

# Several AM partitions as one system (`acct init --partitions N` writes one
# config per node with this map): every node and client holds the same map;
# `[node] name` is one of them. Without it, this node is partition 1 alone.
# [[cluster.partitions]]
# id = 2                                  # the first two bytes of its sessions' ids
# name = "am-2"                           # the name in its am certificate
# address = "10.0.0.2:4433"               # where providers and users reach it
"#
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commented_default_parses_and_resolves_paths() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("acct.toml");
        std::fs::write(&path, commented_default()).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.node.name, "am-1");
        assert_eq!(config.am.listen, "127.0.0.1:4433".parse().unwrap());
        assert_eq!(config.pki.ca_certificate, folder.path().join("ca.crt.pem"));
        assert_eq!(config.am.data, folder.path().join("data"));
        assert_eq!(config.export, ExportConfig::default());
        assert_eq!(config.storage.folder, folder.path().join("cold"));
    }

    /// The commented [ingest] values in the sample config are the defaults.
    #[test]
    fn commented_ingest_values_are_the_defaults() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("acct.toml");
        let mut section = "";
        let text: Vec<String> = commented_default()
            .lines()
            .map(|line| {
                if line.starts_with('[') {
                    section = line;
                }
                match line.strip_prefix("# ") {
                    Some(setting) if section == "[ingest]" && setting.contains(" = ") => setting.to_string(),
                    _ => line.to_string(),
                }
            })
            .collect();
        std::fs::write(&path, text.join("\n")).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.ingest, IngestConfig::default());
        assert!(text.iter().any(|line| line.starts_with("io_threads = ")));
        assert!(text.iter().any(|line| line.starts_with("udp_buffer_bytes = ")));
    }

    #[test]
    fn io_threads_default_to_a_quarter_of_the_cpus() {
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(IngestConfig::default().io_thread_count(), cpus.div_ceil(4));
        let set = |io_threads| IngestConfig {
            io_threads,
            ..IngestConfig::default()
        };
        assert_eq!(set(3).io_thread_count(), 3);
        assert_eq!(set(100_000).io_thread_count(), 256);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("acct.toml");
        let text = commented_default().replace("[am]", "[am]\nlisen = \"x\"");
        std::fs::write(&path, text).unwrap();
        let error = Config::load(&path).unwrap_err().to_string();
        assert!(error.contains("lisen"), "{error}");
    }
}
