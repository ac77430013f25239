//! A real S3-protocol server for the tests (`s3s-fs`, from crates.io,
//! installed by scripts/test.sh; it keeps each object as a file under its
//! root folder) on 127.0.0.1, `acct storage --bucket` processes on it, and
//! a client that speaks Record Accounting to a storage as an AM does.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use peer::quic::{AmClient, ClientIdentity};
use wire::{AccountingKind, AckStatus, BatchId, Message, RecordAccounting, RecordAck, Role, SessionId, Signed, Usage};

use crate::{AmProcess, TestPki, free_tcp_port, open_sessions_on, runtime, send_all};

/// The bucket every test server has.
pub const BUCKET: &str = "acct";
/// The test server's access key.
pub const ACCESS_KEY: &str = "acct-test";
/// The test server's secret key.
pub const SECRET_KEY: &str = "acct-test-secret-key";

/// An `s3s-fs` server on 127.0.0.1 serving a temp folder, killed on drop;
/// it can be killed and started again on the same port and folder.
pub struct S3Server {
    child: Option<Child>,
    port: u16,
    root: tempfile::TempDir,
}

/// The `s3s-fs` binary: `ACCT_S3S_FS`, else on the PATH, else cargo's bin
/// folder (where scripts/test.sh installs it).
fn s3s_fs() -> PathBuf {
    if let Some(path) = std::env::var_os("ACCT_S3S_FS") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|folder| folder.join("s3s-fs"))
        .find(|candidate| candidate.is_file());
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    on_path
        .or_else(|| {
            cargo_home
                .map(|home| home.join("bin/s3s-fs"))
                .filter(|path| path.is_file())
        })
        .unwrap_or_else(|| panic!("s3s-fs not found: run scripts/test.sh, which installs it (cargo install s3s-fs)"))
}

impl S3Server {
    /// A server on a free port with an empty bucket [`BUCKET`].
    pub fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(BUCKET)).unwrap();
        let mut server = Self {
            child: None,
            port: free_tcp_port(),
            root,
        };
        server.restart();
        server
    }

    /// Start the server again (after [`S3Server::kill`]) on the same port
    /// and folder, and wait (bounded) until it listens.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("starting s3s-fs: {error}"));
        self.child = Some(child);
        // Listening, and still running: a server that could not bind (the
        // port taken meanwhile) exits, and another process's listener
        // must not pass for it.
        let started = Instant::now();
        loop {
            let exited = self.child.as_mut().map(|child| child.try_wait());
            assert!(
                matches!(exited, Some(Ok(None))),
                "s3s-fs exited at start (port {} taken?)",
                self.port
            );
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "s3s-fs did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL the server, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's root folder (buckets, and its multipart state:
    /// `.upload_id-*` files).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The folder that holds the objects under `prefix`.
    pub fn objects(&self, prefix: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(prefix)
    }

    /// Files of unfinished multipart uploads (`.upload_id-*` in the root).
    pub fn upload_files(&self) -> Vec<String> {
        std::fs::read_dir(self.root())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.starts_with(".upload_id-"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The keys under `prefix` as the S3 API lists them (`ListObjectsV2`),
    /// sorted.
    pub fn listed(&self, prefix: &str) -> Vec<String> {
        use futures::TryStreamExt;
        use object_store::ObjectStore;
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .unwrap();
        let prefix = object_store::path::Path::from(prefix);
        let mut keys: Vec<String> = runtime()
            .block_on(store.list(Some(&prefix)).try_collect::<Vec<_>>())
            .unwrap()
            .into_iter()
            .map(|meta| meta.location.to_string())
            .collect();
        keys.sort();
        keys
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `acct storage` on `s3://acct/PREFIX` at the S3 server, credentials from
/// the environment as an operator gives them, with `extra` arguments.
pub fn storage_on_bucket(
    pki: &TestPki,
    s3: &S3Server,
    prefix: &str,
    listen: SocketAddr,
    extra: &[&str],
    env: &[(&str, &str)],
) -> AmProcess {
    let mut args: Vec<std::ffi::OsString> = vec![
        "storage".into(),
        "--pki".into(),
        pki.pki().into(),
        "--bucket".into(),
        format!("s3://{BUCKET}/{prefix}").into(),
        "--endpoint".into(),
        s3.endpoint().into(),
        "--allow-http".into(),
        "--listen".into(),
        listen.to_string().into(),
    ];
    args.extend(extra.iter().map(Into::into));
    let mut all_env = vec![
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", "us-east-1"),
    ];
    all_env.extend_from_slice(env);
    AmProcess::spawn(&args, &all_env, "acct storage: listening on ")
}

/// `sessions * per_session` interim messages of `provider-0001` through the
/// AM `am-1`, every one STORED.
pub fn ingest(pki: &TestPki, am: &AmProcess, sessions: usize, per_session: u64) -> Vec<Signed<wire::Accounting>> {
    ingest_on(pki, am, "am-1", sessions, per_session)
}

/// [`ingest`] through the AM node `am_name`.
pub fn ingest_on(
    pki: &TestPki,
    am: &AmProcess,
    am_name: &str,
    sessions: usize,
    per_session: u64,
) -> Vec<Signed<wire::Accounting>> {
    runtime().block_on(async {
        let admin = AmClient::connect(am.address, &pki.identity(Role::AccountingManager, am_name))
            .await
            .unwrap();
        let mut sessions = open_sessions_on(pki, &admin, am_name, "provider-0001", sessions).await;
        admin.close().await;
        let now = crate::now_ms();
        let mut messages = Vec::new();
        for session in &mut sessions {
            for index in 0..per_session {
                let usage = Usage {
                    units: Some(index + 1),
                    interval_ms: Some((now - 1000, now)),
                    ..Usage::default()
                };
                messages.push(session.account(AccountingKind::INTERIM, usage).unwrap());
            }
        }
        let client = AmClient::connect(am.address, &pki.identity(Role::Provider, "provider-0001"))
            .await
            .unwrap();
        let answers = send_all(&client, &messages).await;
        client.close().await;
        assert!(
            answers.values().all(|status| *status == AckStatus::STORED),
            "{answers:?}"
        );
        messages
    })
}

/// The Parquet files under `folder`, as names relative to it.
pub fn object_names(folder: &Path) -> Vec<String> {
    archive::parquet_files(folder)
        .map(|files| {
            files
                .iter()
                .map(|path| path.strip_prefix(folder).unwrap().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A Record Accounting from AM `am-1` of `rows` well-formed rows whose
/// signed bytes are `row_bytes` of noise each (Parquet cannot compress
/// them, so the file is about `rows * row_bytes` long), signed with the
/// AM's key. The storage checks the file, not the rows' signatures.
pub fn synthetic_batch(pki: &TestPki, rows: usize, row_bytes: usize) -> Signed<RecordAccounting> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).unwrap();
    synthetic_batch_with_id(pki, BatchId(id), rows, row_bytes)
}

/// [`synthetic_batch`] under a given batch id (other rows each call).
pub fn synthetic_batch_with_id(
    pki: &TestPki,
    batch_id: BatchId,
    rows: usize,
    row_bytes: usize,
) -> Signed<RecordAccounting> {
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).unwrap();
    let mut state = u64::from_le_bytes(seed) | 1;
    let mut noise = |length: usize| -> Vec<u8> {
        (0..length)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    let session_id = SessionId(noise(16).try_into().unwrap());
    let now = crate::now_ms();
    let rows: Vec<archive::Row> = (0..rows)
        .map(|index| archive::Row {
            commit_sequence: index as u64 + 1,
            am_node: "am-1".into(),
            session_id,
            message_id: index as u64 + 1,
            kind: AccountingKind::INTERIM,
            provider_id: "provider-0001".into(),
            user_id: "user-0001".into(),
            service_id: 1,
            received_at_ms: now,
            interval_ms: Some((now - 1000, now)),
            units: Some(index as u64),
            bytes_up: None,
            bytes_down: None,
            duration_ms: None,
            custom: Vec::new(),
            flags: 0,
            credential_digest: [7; wire::limits::CREDENTIAL_DIGEST_BYTES],
            provider_key: [9; wire::limits::PUBLIC_KEY_BYTES],
            signed_fields: Bytes::from(noise(row_bytes)),
            signature: noise(64).try_into().unwrap(),
        })
        .collect();
    let payload = archive::encode(&rows, &batch_id.to_string(), 1).unwrap();
    let identity = pki.identity(Role::AccountingManager, "am-1");
    RecordAccounting::sign_batch(
        wire::BatchToSign {
            batch_id,
            node: wire::Name::new("am-1").unwrap(),
            created_ms: now,
            number: 1,
            first_commit_sequence: 1,
            record_count: rows.len() as u32,
            previous: wire::chain::CHAIN_START,
            payload: Bytes::from(payload),
        },
        &identity.signing_key,
    )
    .unwrap()
}

/// Longest wait for a storage's answer (the AM waits 120 s).
pub const RECORD_ANSWER_TIMEOUT: Duration = Duration::from_secs(150);

/// Send one Record Accounting to the storage at `address` as the AM
/// `identity`, as the AM's exporter does (one bidirectional stream, one
/// frame each way); the answer, or why there is none within
/// [`RECORD_ANSWER_TIMEOUT`].
pub async fn send_record(
    address: SocketAddr,
    identity: &ClientIdentity,
    record: &Signed<RecordAccounting>,
) -> Result<RecordAck, String> {
    tokio::time::timeout(RECORD_ANSWER_TIMEOUT, send_record_once(address, identity, record))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", RECORD_ANSWER_TIMEOUT.as_secs())))
}

async fn send_record_once(
    address: SocketAddr,
    identity: &ClientIdentity,
    record: &Signed<RecordAccounting>,
) -> Result<RecordAck, String> {
    let text = |error: &dyn std::fmt::Display| error.to_string();
    let mut endpoint = peer::quic::shared_endpoint(([127, 0, 0, 1], 0).into()).map_err(|error| text(&error))?;
    let mut config = peer::quic::client_config_for(
        &identity.ca_der,
        Some((&identity.certificate_der, &identity.signing_key)),
        Role::AccountingStorage,
    )
    .map_err(|error| text(&error))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(10)).unwrap()));
    config.transport_config(std::sync::Arc::new(transport));
    endpoint.set_default_client_config(config);
    let connection = endpoint
        .connect(address, peer::quic::AM_SERVER_NAME)
        .map_err(|error| text(&error))?
        .await
        .map_err(|error| text(&error))?;
    let (mut send, mut receive) = connection.open_bi().await.map_err(|error| text(&error))?;
    let mut frame = BytesMut::new();
    record.encode_frame(&mut frame);
    send.write_all(&frame).await.map_err(|error| text(&error))?;
    send.finish().map_err(|error| text(&error))?;
    let answer = receive.read_to_end(64 * 1024).await.map_err(|error| text(&error))?;
    connection.close(0u32.into(), b"done");
    match Message::decode(Bytes::from(answer)) {
        Ok(Message::RecordAck(ack)) => Ok(ack),
        other => Err(format!("unexpected answer: {other:?}")),
    }
}
