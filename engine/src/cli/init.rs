//! `acct init DIR`: the development PKI.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

/// Arguments of `acct init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The folder to create the PKI in (created if missing).
    pub dir: PathBuf,
    /// How many provider identities to issue (provider-0001, …).
    #[arg(long, default_value_t = 4)]
    pub providers: usize,
    /// How many user identities to issue (user-0001, …).
    #[arg(long, default_value_t = 4)]
    pub users: usize,
    /// AM partitions of one system: issues am-1 … am-N and writes one
    /// config file per node (`acct.toml` for am-1, `am-K.toml` for the
    /// others; each listens on 127.0.0.1:(5432 + K) with its own data
    /// folder) and the cluster map they share (`cluster.toml`, for loadgen
    /// and clients).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub partitions: u16,
}

/// The first partition's port on 127.0.0.1 (partition K listens on
/// `PARTITION_PORT_BASE + K`).
pub const PARTITION_PORT_BASE: u16 = 5432;

/// Upper bound on identities per run: each costs a key and a certificate
/// file pair; loadgen mints its own beyond this.
const IDENTITIES_MAX: usize = 100_000;

/// Make the PKI and print what was made.
pub fn run(args: InitArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.providers <= IDENTITIES_MAX && args.users <= IDENTITIES_MAX,
        "at most {IDENTITIES_MAX} providers and {IDENTITIES_MAX} users per run"
    );
    let (summary, config) = init_folder(&args.dir, args.providers, args.users)?;
    let nodes = if args.partitions > 1 {
        init_partitions(&args.dir, args.partitions)?
    } else {
        Vec::new()
    };
    println!("created a development PKI in {}", summary.folder.display());
    println!(
        "  CA:        {}",
        summary.folder.join(pki::CA_CERTIFICATE_FILE).display()
    );
    println!(
        "  issued:    {} identities (am-1, storage-1, {} providers, {} users)",
        summary.issued.len(),
        args.providers,
        args.users
    );
    println!("  config:    {}", config.display());
    for node in &nodes {
        println!("  config:    {}", node.display());
    }
    if !nodes.is_empty() {
        println!("  cluster:   {}", args.dir.join(CLUSTER_FILE).display());
    }
    println!("keep {} secret: it can issue certificates for anyone", pki::CA_KEY_FILE);
    Ok(())
}

/// The cluster map alone, beside the node configs.
pub const CLUSTER_FILE: &str = "cluster.toml";

/// The `[cluster]` section for `partitions` nodes on 127.0.0.1.
pub fn cluster_section(partitions: u16) -> String {
    let mut text = String::from(
        "\n# The AM partitions of this system: the same map on every node and client.\n\
         # A provider's home is the partition with the highest rendezvous score for its\n\
         # name (docs/protocol.md, 'Partitions'); ids are never reused for another node.\n",
    );
    for id in 1..=partitions {
        text.push_str(&format!(
            "[[cluster.partitions]]\nid = {id}\nname = \"am-{id}\"\naddress = \"127.0.0.1:{}\"\n",
            PARTITION_PORT_BASE + id
        ));
    }
    text
}

/// am-2 … am-N beside am-1: their certificates, one config file each, the
/// cluster map in every config and alone in [`CLUSTER_FILE`]. Returns the
/// config files written.
pub fn init_partitions(folder: &Path, partitions: u16) -> anyhow::Result<Vec<PathBuf>> {
    let authority = pki::CertificateAuthority::load(folder)?;
    for id in 2..=partitions {
        authority
            .issue(wire::Role::AccountingManager, &format!("am-{id}"))?
            .write(folder)?;
    }
    let cluster = cluster_section(partitions);
    let write = |path: &Path, text: &str| {
        std::fs::File::create(path)
            .and_then(|mut file| {
                file.write_all(text.as_bytes())?;
                file.sync_all()
            })
            .with_context(|| format!("writing {}", path.display()))
    };
    let mut written = Vec::new();
    for id in 1..=partitions {
        let mut text = crate::config::commented_default().to_owned();
        for (from, to) in [
            ("name = \"am-1\"".to_owned(), format!("name = \"am-{id}\"")),
            ("\"am-1.crt.pem\"".to_owned(), format!("\"am-{id}.crt.pem\"")),
            ("\"am-1.key.pem\"".to_owned(), format!("\"am-{id}.key.pem\"")),
            (
                "listen = \"127.0.0.1:4433\"".to_owned(),
                format!("listen = \"127.0.0.1:{}\"", PARTITION_PORT_BASE + id),
            ),
            ("data = \"data\"".to_owned(), format!("data = \"data-am-{id}\"")),
        ] {
            anyhow::ensure!(
                text.matches(from.as_str()).count() == 1,
                "the default config no longer has exactly one {from}"
            );
            text = text.replacen(from.as_str(), &to, 1);
        }
        let path = if id == 1 {
            folder.join("acct.toml")
        } else {
            folder.join(format!("am-{id}.toml"))
        };
        text.push_str(&cluster);
        write(&path, &text)?;
        if id > 1 {
            written.push(path);
        }
    }
    write(&folder.join(CLUSTER_FILE), cluster.trim_start())?;
    Ok(written)
}

/// Make the development PKI in `folder` (`pki::init`) and a commented
/// config file beside it (`acct.toml`, synced); returns both.
pub fn init_folder(folder: &Path, providers: usize, users: usize) -> anyhow::Result<(pki::InitSummary, PathBuf)> {
    let summary = pki::init(folder, providers, users)
        .with_context(|| format!("creating the development PKI in {}", folder.display()))?;
    let config = folder.join("acct.toml");
    std::fs::File::create(&config)
        .and_then(|mut file| {
            file.write_all(crate::config::commented_default().as_bytes())?;
            file.sync_all()
        })
        .with_context(|| format!("writing {}", config.display()))?;
    Ok((summary, config))
}
