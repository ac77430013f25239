//! Helpers for acct's integration tests: find the built binaries, run them as
//! real processes on 127.0.0.1, and hand out identities from a real PKI.
//!
//! The binaries come from `cargo build --workspace --bins`, which the test
//! command in the README runs before `cargo test` (cargo does not build
//! another package's binaries for a test crate).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod s3;

use peer::quic::ClientIdentity;
use wire::{DataFields, Name, Policy, PublicKey, Role, TimeOfDay};

/// Path of a workspace binary built in the same profile as this test.
pub fn binary(name: &str) -> PathBuf {
    // current_exe: target/<profile>/deps/<test>-<hash>; binaries live in
    // target/<profile>/.
    let executable = std::env::current_exe().unwrap_or_else(|error| panic!("current_exe: {error}"));
    let profile_folder = executable
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap_or_else(|| panic!("unexpected test binary location {}", executable.display()));
    let path = profile_folder.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Run `acct` with `args` to completion (bounded by the command itself).
pub fn run_acct(args: &[&str]) -> Output {
    Command::new(binary("acct"))
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("running acct: {error}"))
}

/// `acct audit ARCHIVE --ca <the PKI's CA> [more]`: whether it passed, and
/// what it printed (stdout, then stderr).
pub fn audit(pki: &TestPki, archive: &Path, more: &[&str]) -> (bool, String) {
    let ca = pki.pki().join(pki::CA_CERTIFICATE_FILE);
    let mut args = vec![
        "audit".to_owned(),
        archive.display().to_string(),
        "--ca".to_owned(),
        ca.display().to_string(),
    ];
    args.extend(more.iter().map(|arg| (*arg).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run_acct(&args);
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// A data directory with a development PKI, as `acct serve --data DIR`
/// expects it (the PKI in DIR/pki).
pub struct TestPki {
    /// The temp folder (deleted on drop).
    pub folder: tempfile::TempDir,
}

impl TestPki {
    /// A PKI with `providers` providers and `users` users.
    pub fn new(providers: usize, users: usize) -> Self {
        let folder = tempfile::tempdir().unwrap_or_else(|error| panic!("tempdir: {error}"));
        acct::cli::init::init_folder(&folder.path().join("pki"), providers, users)
            .unwrap_or_else(|error| panic!("pki: {error:#}"));
        Self { folder }
    }

    /// The data directory.
    pub fn data(&self) -> &Path {
        self.folder.path()
    }

    /// The PKI folder.
    pub fn pki(&self) -> PathBuf {
        self.folder.path().join("pki")
    }

    /// A client identity from the PKI (e.g. `Role::Provider`, "provider-0001";
    /// `Role::AccountingManager`, "am-1" for admin connections).
    pub fn identity(&self, role: Role, name: &str) -> ClientIdentity {
        let name = Name::new(name).unwrap_or_else(|error| panic!("name: {error}"));
        let (certificate, key) = pki::identity_paths(role, &name);
        ClientIdentity {
            ca_der: self.ca_der(),
            certificate_der: pki::read_certificate_der(&self.pki().join(certificate))
                .unwrap_or_else(|error| panic!("{error}")),
            signing_key: pki::read_signing_key(&self.pki().join(key)).unwrap_or_else(|error| panic!("{error}")),
        }
    }

    /// Start another AM node, `name` (e.g. "am-2"): its certificate is
    /// issued now with the CA key, its data directory is a new temp folder
    /// (returned: keep it while the node runs) and its config file names
    /// them and listens on 127.0.0.1:0; `acct serve --config FILE [extra]`.
    pub fn start_node(&self, name: &str, extra: &[&str]) -> (tempfile::TempDir, AmProcess) {
        let data = tempfile::tempdir().unwrap_or_else(|error| panic!("tempdir: {error}"));
        let config = self.node_config(name, "127.0.0.1:0", data.path(), "");
        (data, start_with_config(&config, extra))
    }

    /// The config file of AM node `name` (its certificate issued now if
    /// missing) listening on `listen`, its data in `folder/data`, with
    /// `more` appended (a `[cluster]` section); written to
    /// `folder/acct.toml`.
    pub fn node_config(&self, name: &str, listen: &str, folder: &Path, more: &str) -> PathBuf {
        let pki_folder = self.pki();
        let node = Name::new(name).unwrap_or_else(|error| panic!("{error}"));
        let (certificate, key) = pki::identity_paths(Role::AccountingManager, &node);
        if !pki_folder.join(&certificate).exists() {
            let authority = pki::CertificateAuthority::load(&pki_folder).unwrap_or_else(|error| panic!("{error}"));
            authority
                .issue(Role::AccountingManager, name)
                .and_then(|issued| issued.write(&pki_folder))
                .unwrap_or_else(|error| panic!("{error}"));
        }
        let config = folder.join("acct.toml");
        let text = format!(
            "[node]\nname = {name:?}\n[pki]\nca_certificate = {:?}\ncertificate = {:?}\nkey = {:?}\n[am]\n\
             listen = {listen:?}\ndata = {:?}\n{more}",
            pki_folder.join(pki::CA_CERTIFICATE_FILE),
            pki_folder.join(certificate),
            pki_folder.join(key),
            folder.join("data"),
        );
        std::fs::write(&config, text).unwrap_or_else(|error| panic!("{error}"));
        config
    }

    /// `partitions` AM nodes am-1 … am-N on free 127.0.0.1 ports, one
    /// cluster map, each started with `extra` arguments.
    pub fn start_cluster(&self, partitions: u16, extra: &[&str]) -> TestCluster {
        let addresses: Vec<SocketAddr> = (0..partitions)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_udp_port())))
            .collect();
        let mut section = String::new();
        for (index, address) in addresses.iter().enumerate() {
            section.push_str(&format!(
                "[[cluster.partitions]]\nid = {}\nname = \"am-{}\"\naddress = \"{address}\"\n",
                index + 1,
                index + 1
            ));
        }
        let map = wire::ClusterMap::new(
            addresses
                .iter()
                .enumerate()
                .map(|(index, address)| wire::Partition {
                    id: wire::PartitionId(index as u16 + 1),
                    name: Name::new(format!("am-{}", index + 1)).unwrap(),
                    address: wire::Address::new(address.to_string()).unwrap(),
                })
                .collect(),
        )
        .unwrap_or_else(|error| panic!("{error}"));
        let mut nodes = Vec::new();
        for (index, address) in addresses.iter().enumerate() {
            let data = tempfile::tempdir().unwrap_or_else(|error| panic!("tempdir: {error}"));
            let config = self.node_config(
                &format!("am-{}", index + 1),
                &address.to_string(),
                data.path(),
                &section,
            );
            let process = start_with_config(&config, extra);
            nodes.push(ClusterNode {
                data,
                config,
                process: Some(process),
            });
        }
        TestCluster {
            map,
            section,
            nodes,
            extra: extra.iter().map(|arg| (*arg).to_owned()).collect(),
        }
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> Vec<u8> {
        pki::read_certificate_der(&self.pki().join(pki::CA_CERTIFICATE_FILE)).unwrap_or_else(|error| panic!("{error}"))
    }

    /// The AM's public key (verifies User Credentials).
    pub fn am_key(&self) -> PublicKey {
        self.identity(Role::AccountingManager, "am-1").signing_key.public_key()
    }
}

/// A running `acct serve` process.
pub struct AmProcess {
    child: Child,
    /// The address it listens on.
    pub address: SocketAddr,
    lines: mpsc::Receiver<String>,
}

/// `acct serve --config CONFIG [extra]`, waited for (bounded).
fn start_with_config(config: &Path, extra: &[&str]) -> AmProcess {
    let mut args: Vec<std::ffi::OsString> = vec!["serve".into(), "--config".into(), config.into()];
    args.extend(extra.iter().map(Into::into));
    AmProcess::spawn(&args, &[], "acct serve: listening on ")
}

/// One AM partition of a [`TestCluster`].
pub struct ClusterNode {
    /// Its data directory (and config file).
    pub data: tempfile::TempDir,
    /// Its config file.
    pub config: PathBuf,
    /// The running process (`None` while killed).
    pub process: Option<AmProcess>,
}

/// AM partitions on 127.0.0.1 sharing one cluster map
/// ([`TestPki::start_cluster`]).
pub struct TestCluster {
    /// The map.
    pub map: wire::ClusterMap,
    /// The map as the config files' `[cluster]` section.
    pub section: String,
    /// The partitions, by id - 1.
    pub nodes: Vec<ClusterNode>,
    extra: Vec<String>,
}

impl TestCluster {
    /// The running process of partition `id`.
    pub fn node(&self, id: u16) -> &AmProcess {
        self.nodes[usize::from(id) - 1]
            .process
            .as_ref()
            .unwrap_or_else(|| panic!("partition {id} is not running"))
    }

    /// The home partition of `provider`.
    pub fn home(&self, provider: &str) -> &wire::Partition {
        self.map.home(&Name::new(provider).unwrap())
    }

    /// SIGKILL partition `id`.
    pub fn kill(&mut self, id: u16) {
        if let Some(process) = self.nodes[usize::from(id) - 1].process.take() {
            process.kill();
        }
    }

    /// Start partition `id` again from its data directory.
    pub fn restart(&mut self, id: u16) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let node = &mut self.nodes[usize::from(id) - 1];
        assert!(node.process.is_none(), "partition {id} is running");
        node.process = Some(start_with_config(&node.config, &extra));
    }
}

/// How long a test waits for `acct serve` to print its address.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

impl AmProcess {
    /// Start `acct serve --data DIR --listen 127.0.0.1:0 [extra]` and wait
    /// (bounded) until it prints the address it listens on.
    pub fn start(data: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data, extra, &[])
    }

    /// [`AmProcess::start`] with extra environment variables (failpoints).
    pub fn start_with_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut args: Vec<std::ffi::OsString> = vec!["serve".into(), "--data".into(), data.into()];
        args.extend(["--listen", "127.0.0.1:0"].map(Into::into));
        args.extend(extra.iter().map(Into::into));
        Self::spawn(&args, env, "acct serve: listening on ")
    }

    /// Start `acct storage --pki PKI --folder FOLDER --listen LISTEN` and
    /// wait (bounded) until it listens.
    pub fn start_storage(pki: &Path, folder: &Path, listen: SocketAddr, env: &[(&str, &str)]) -> Self {
        let args: Vec<std::ffi::OsString> = vec![
            "storage".into(),
            "--pki".into(),
            pki.into(),
            "--folder".into(),
            folder.into(),
            "--listen".into(),
            listen.to_string().into(),
        ];
        Self::spawn(&args, env, "acct storage: listening on ")
    }

    /// Run `acct ARGS` and wait (bounded) for the line `ready_prefix ADDR`.
    pub fn spawn(args: &[std::ffi::OsString], env: &[(&str, &str)], ready_prefix: &str) -> Self {
        let mut command = Command::new(binary("acct"));
        // The developer's AWS credentials and profile never reach a test's
        // storage: a test gives its own.
        for variable in storage::bucket::CREDENTIAL_VARIABLES
            .iter()
            .chain(storage::profile::PROFILE_VARIABLES)
        {
            command.env_remove(variable);
        }
        let mut child = command
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("spawning acct: {error}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let address = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(address) = line.strip_prefix(ready_prefix) {
                        break address
                            .trim()
                            .parse()
                            .unwrap_or_else(|error| panic!("address {address}: {error}"));
                    }
                }
                Err(error) => {
                    let _ = child.kill();
                    panic!("acct did not report its address: {error}");
                }
            }
        };
        Self { child, address, lines }
    }

    /// Wait (bounded) until the process prints a line containing `needle`.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited (reaped if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGKILL, and reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (bounded) for exit; returns whether it exited with 0.
    /// The signal is sent at once (a system call, no `kill` process in
    /// between), so a test can send it right after the ready line.
    pub fn terminate(mut self, timeout: Duration) -> bool {
        if let Some(pid) = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        // The process's stdout closes when it exits: wait for that, bounded.
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(_line) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return self.child.wait().is_ok_and(|status| status.success());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return false;
                }
            }
        }
    }

    /// Lines printed to stdout since start (drained).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }
}

impl Drop for AmProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A policy that lets a session run for a day with any number of messages;
/// it requires units and the interval.
pub fn open_policy(now_ms: u64) -> Policy {
    Policy {
        valid_from_ms: now_ms.saturating_sub(3_600_000),
        valid_until_ms: now_ms + 24 * 3_600_000,
        time_of_day: TimeOfDay::ANY,
        requests_max: 0,
        address_change_allowed: true,
        required_data: DataFields::UNITS.union(DataFields::INTERVAL),
        interim_interval_max_s: 0,
    }
}

/// Unix ms now.
pub fn now_ms() -> u64 {
    acct::clock::now_ms()
}

/// A free TCP port on 127.0.0.1 (bound, then released for the AM to take).
pub fn free_tcp_port() -> u16 {
    unused_port(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
}

/// A port below the kernel's ephemeral range (Linux: 32768-60999), random,
/// that `free` finds free now. A port taken by binding port 0 would be an
/// ephemeral one, which the kernel hands again to the next socket of any
/// test that binds port 0 in the meantime (every client and every server
/// on an automatic port): the port a test chose ahead of time, for a server
/// it starts later, was then sometimes taken. Here only another test
/// choosing the same random port in the same moment can take it.
fn unused_port(free: impl Fn(u16) -> bool) -> u16 {
    /// The range the ports are drawn from.
    const FIRST: u16 = 20_000;
    const COUNT: u16 = 12_000;
    for _ in 0..1_000 {
        let mut random = [0u8; 2];
        getrandom::fill(&mut random).unwrap_or_else(|error| panic!("random: {error}"));
        let port = FIRST + u16::from_le_bytes(random) % COUNT;
        if free(port) {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{} after 1,000 tries", FIRST + COUNT)
}

/// GET `path` from an HTTP server on 127.0.0.1:`port` with a plain
/// HTTP/1.0 request to 127.0.0.1:`port`. `acct serve --metrics` binds its
/// HTTP listener before it prints its address, so no retry is needed.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|error| panic!("http connect to port {port}: {error}"));
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|error| panic!("http write: {error}"));
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// A multi-thread tokio runtime for a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|error| panic!("runtime: {error}"))
}

/// Every message the backend holds for a data directory of a stopped
/// `acct serve` with the embedded storage: the hot store's records and the
/// cold storage's rows (`DATA/cold`), one entry per stored copy.
pub fn stored_messages(data: &Path) -> Vec<wire::MessageId> {
    let store = acct::am::store::Store::open(&acct::cli::serve::database_folder(data))
        .unwrap_or_else(|error| panic!("opening the store: {error}"));
    let mut out: Vec<wire::MessageId> = store
        .records(0, usize::MAX)
        .unwrap_or_else(|error| panic!("reading the store: {error}"))
        .iter()
        .map(|(_, record)| {
            record
                .accounting()
                .unwrap_or_else(|error| panic!("a stored record: {error}"))
                .value()
                .message_id()
        })
        .collect();
    out.extend(
        cold_rows(&data.join(acct::cli::serve::DEFAULT_COLD_DIR))
            .iter()
            .map(|row| wire::MessageId {
                session_id: row.session_id,
                sequence: row.message_id,
            }),
    );
    out
}

/// Every row of every Parquet file under `folder` (none if it is missing).
pub fn cold_rows(folder: &Path) -> Vec<archive::Row> {
    if !folder.exists() {
        return Vec::new();
    }
    let mut rows = Vec::new();
    for path in archive::parquet_files(folder).unwrap_or_else(|error| panic!("listing {}: {error}", folder.display())) {
        archive::read_file(&path, |row| rows.push(row))
            .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    }
    rows
}

/// A UDP port on 127.0.0.1 that was free a moment ago (for a server that
/// must be addressed before it starts).
pub fn free_udp_port() -> u16 {
    unused_port(|port| std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok())
}

/// Wait (bounded by `timeout`, polling every 100 ms) until `condition` holds.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    condition()
}

/// The Python that has pyarrow and DuckDB (`ACCT_PYTHON`, set by the test
/// command; else the venv scripts/install-deps.sh makes).
pub fn python() -> PathBuf {
    std::env::var_os("ACCT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/acct-venv/bin/python"))
}

/// A fresh Service Credential Request of `user-0001` for `service` (its
/// provider gets the User Credential pushed when the AM mints it).
pub fn credential_request(pki: &TestPki, service: u32) -> wire::Signed<wire::ServiceCredentialRequest> {
    let random16 = || {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).unwrap_or_else(|error| panic!("{error}"));
        bytes
    };
    let user = pki.identity(Role::User, "user-0001");
    peer::user::credential_request(
        wire::ServiceId(service),
        wire::RequestId(random16()),
        wire::Nonce(random16()),
        now_ms(),
        wire::Address::new("10.0.0.7:5000").unwrap_or_else(|error| panic!("{error}")),
        bytes::Bytes::from(user.certificate_der.clone()),
        &user.signing_key,
    )
    .unwrap_or_else(|error| panic!("{error}"))
}

/// Open `count` sessions for `provider` through the admin path (users
/// `user-0000`…, service 7) and accept their credentials as the provider.
pub async fn open_sessions(
    pki: &TestPki,
    admin: &peer::quic::AmClient,
    provider: &str,
    count: usize,
) -> Vec<peer::provider::ProviderSession> {
    open_sessions_on(pki, admin, "am-1", provider, count).await
}

/// [`open_sessions`] on the AM node `am_name` (its key signs the
/// credentials).
pub async fn open_sessions_on(
    pki: &TestPki,
    admin: &peer::quic::AmClient,
    am_name: &str,
    provider: &str,
    count: usize,
) -> Vec<peer::provider::ProviderSession> {
    let am_key = pki.identity(Role::AccountingManager, am_name).signing_key.public_key();
    let mut sessions = Vec::with_capacity(count);
    let provider_identity = pki.identity(Role::Provider, provider);
    for index in 0..count {
        let credential = admin
            .open_session(&wire::AdminOpenSession {
                provider: Name::new(provider).unwrap(),
                service_id: wire::ServiceId(7),
                user_id: Name::new(format!("user-{index:04}")).unwrap(),
                user_address: wire::Address::new("127.0.0.1:5000").unwrap(),
                policy: open_policy(now_ms()),
            })
            .await
            .unwrap();
        sessions.push(
            peer::provider::ProviderSession::accept(credential, &am_key, provider_identity.signing_key.clone())
                .unwrap(),
        );
    }
    sessions
}

/// Send `messages` on one stream while reading acks (each wait bounded by
/// 60 s); return the status of each.
pub async fn send_all(
    client: &peer::quic::AmClient,
    messages: &[wire::Signed<wire::Accounting>],
) -> std::collections::HashMap<wire::MessageId, wire::AckStatus> {
    let stream = client.open_accounting().await.unwrap();
    let (mut sender, mut receiver) = (stream.sender, stream.receiver);
    let expected = messages.len();
    let reader = tokio::spawn(async move {
        let mut answers = std::collections::HashMap::new();
        while answers.len() < expected {
            match tokio::time::timeout(Duration::from_secs(60), receiver.next()).await {
                Ok(Ok(Some(peer::quic::Received::Acks(entries)))) => {
                    for entry in entries {
                        answers.insert(entry.message_id, entry.status);
                    }
                }
                other => panic!("while waiting for acks: {other:?}"),
            }
        }
        answers
    });
    for chunk in messages.chunks(256) {
        sender.send(chunk).await.unwrap();
    }
    let answers = reader.await.unwrap();
    let _ = sender.finish();
    answers
}

/// Rewrite the `[security] denied` list of the config file at `config` (a
/// running AM re-reads it within about a second).
pub fn set_denied(config: &Path, entries: &[String]) {
    let text = std::fs::read_to_string(config).unwrap_or_else(|error| panic!("reading {}: {error}", config.display()));
    let list = entries
        .iter()
        .map(|entry| format!("{entry:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let section = format!("[security]\ndenied = [{list}]\n");
    let text = match text.find("[security]") {
        Some(start) => {
            let end = start + text[start..].find("\n[").map_or(text.len() - start, |end| end + 1);
            format!("{}{}{}", &text[..start], section, &text[end..])
        }
        None => format!("{text}\n{section}"),
    };
    std::fs::write(config, text).unwrap_or_else(|error| panic!("writing {}: {error}", config.display()));
}

/// The ids of every row of every Parquet file under `folder`, asserting
/// none is there twice.
pub fn cold_ids_once(folder: &Path) -> std::collections::HashSet<wire::MessageId> {
    let rows = cold_rows(folder);
    let ids: std::collections::HashSet<wire::MessageId> = rows
        .iter()
        .map(|row| wire::MessageId {
            session_id: row.session_id,
            sequence: row.message_id,
        })
        .collect();
    assert_eq!(ids.len(), rows.len(), "a message is in cold storage twice");
    ids
}

/// The ids of `messages`.
pub fn sent_ids(messages: &[wire::Signed<wire::Accounting>]) -> std::collections::HashSet<wire::MessageId> {
    messages.iter().map(|message| message.value().message_id()).collect()
}

/// Records the AM's hot store holds (admin audit).
pub fn hot_records(pki: &TestPki, am: &AmProcess) -> u64 {
    hot_records_on(pki, am, "am-1")
}

/// [`hot_records`] of the AM node `am_name`.
pub fn hot_records_on(pki: &TestPki, am: &AmProcess, am_name: &str) -> u64 {
    runtime().block_on(async {
        let admin = peer::quic::AmClient::connect(am.address, &pki.identity(Role::AccountingManager, am_name))
            .await
            .unwrap_or_else(|error| panic!("admin connection: {error}"));
        let (records, _) = admin
            .audit(1_000_000)
            .await
            .unwrap_or_else(|error| panic!("admin audit: {error}"));
        admin.close().await;
        records
    })
}
