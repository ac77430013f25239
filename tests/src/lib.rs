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

use acct::pki;
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
        pki::init(&folder.path().join("pki"), providers, users).unwrap_or_else(|error| panic!("pki: {error}"));
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

/// How long a test waits for `acct serve` to print its address.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

impl AmProcess {
    /// Start `acct serve --data DIR --listen 127.0.0.1:0 [extra]` and wait
    /// (bounded) until it prints the address it listens on.
    pub fn start(data: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(binary("acct"))
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("spawning acct serve: {error}"));
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
                    if let Some(address) = line.strip_prefix("acct serve: listening on ") {
                        break address
                            .trim()
                            .parse()
                            .unwrap_or_else(|error| panic!("address {address}: {error}"));
                    }
                }
                Err(error) => {
                    let _ = child.kill();
                    panic!("acct serve did not report its address: {error}");
                }
            }
        };
        Self { child, address, lines }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (bounded) for exit; returns whether it exited with 0.
    pub fn terminate(mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
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
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|error| panic!("no free port: {error}"))
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
