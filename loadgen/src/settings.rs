//! What a loadgen run does: the command line, checked.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::Serialize;

/// Most providers (each a QUIC connection with its own certificate).
pub const PROVIDERS_MAX: usize = 100_000;
/// Most sessions in one run.
pub const SESSIONS_MAX: usize = 1_000_000;
/// Longest run.
pub const DURATION_S_MAX: u64 = 3_600;
/// Longest open-loop linger (`peer::linger::LINGER_MAX`).
pub const LINGER_MS_MAX: u64 = peer::linger::LINGER_MAX.as_millis() as u64;
/// In-flight messages per provider in closed-loop mode, at most.
pub const WINDOW_MAX: usize = 16_384;

/// Drive a running Accounting Manager with many providers, each on its own
/// QUIC connection with its own certificate, and report what it answered.
#[derive(Parser, Debug, Clone, Serialize)]
#[command(name = "loadgen", version, about)]
pub struct Settings {
    /// The AM's address (only this address is contacted).
    #[arg(long, required_unless_present = "cluster", conflicts_with = "cluster")]
    pub am: Option<SocketAddr>,
    /// Several AM partitions: a file with the cluster map (`[cluster]`, as
    /// in acct's config file or the `cluster.toml` of `acct init
    /// --partitions`). Each provider connects to its home partition, its
    /// sessions are opened there, and the audit covers every partition; the
    /// PKI folder holds each partition's identity (am-1, am-2, …).
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// The operator's PKI folder (from `acct init`; the AM's default is
    /// DATA/pki). Provider certificates missing from it are minted with its
    /// CA key. The AM's own identity (`--am-name`) gives the AM's key and
    /// runs the audit (and opens the sessions with `--admin-sessions`).
    #[arg(long)]
    pub pki: PathBuf,
    /// The AM node's name (without `--cluster`): its certificate and key in
    /// the PKI folder are the admin identity.
    #[arg(long, default_value = "am-1")]
    pub am_name: String,
    /// Providers, each with its own certificate and QUIC connection.
    #[arg(long, default_value_t = 100)]
    pub providers: usize,
    /// Concurrent service sessions in all (spread over the providers; at
    /// least one per provider).
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Users the sessions bill (round-robin).
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Open loop: messages per second in all, sent on schedule whatever the
    /// answers; each session sends Interim Accounting every
    /// sessions / rate seconds.
    #[arg(long, default_value_t = 1000, conflicts_with = "max")]
    pub rate: u64,
    /// Open loop in phases: `RATE:SECONDS[,RATE:SECONDS…]` (at most
    /// 32), each rate held for its seconds, one after the other; replaces
    /// `--rate` and `--duration` (their sum). The report then has one entry
    /// per phase (goodput, ack latencies, BUSY answers).
    #[arg(long, conflicts_with_all = ["max", "rate", "duration"])]
    pub rate_steps: Option<String>,
    /// Open loop: a provider holds a due message up to this many
    /// milliseconds so that the messages due meanwhile travel with it, in
    /// one write and fewer datagrams, as a producer's linger does. 0 (the
    /// default) sends each message when it is due. The ack latency still
    /// counts from each message's scheduled time, linger included.
    #[arg(long, default_value_t = 0, conflicts_with = "max")]
    pub linger_ms: u64,
    /// Open loop: a provider writes nothing new while a write of its is
    /// unanswered; what falls due meanwhile goes in its next write, so
    /// writes grow as answers slow down (a producer's `max.in.flight` of
    /// one, as `peer::node::ProviderNode` sends). The latency still counts
    /// from each message's scheduled time. Off by default: the harness
    /// measures without it.
    #[arg(long, conflicts_with = "max")]
    pub hold_unanswered: bool,
    /// Closed loop: as fast as acks allow, `--window` messages in flight
    /// per provider.
    #[arg(long)]
    pub max: bool,
    /// In-flight messages per provider with `--max`.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Seconds of sending; then every session sends its Final Accounting
    /// (open loop: at the same pace, in its provider's next slots, at most
    /// half the drain later; closed loop: as the window allows) and loadgen
    /// waits (at most `--drain`) for the last answers.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds to wait for answers after the sending phase.
    #[arg(long, default_value_t = 30)]
    pub drain: u64,
    /// Most messages signed ahead (the closed loop stops sending interims
    /// when a provider has sent its share).
    #[arg(long, default_value_t = 3_000_000)]
    pub messages_max: u64,
    /// Share of stored messages retransmitted (same bytes, after their
    /// ack): must be answered DUPLICATE.
    #[arg(long, default_value_t = 0.0)]
    pub duplicates: f64,
    /// Share of messages followed by a copy with a corrupted signature:
    /// must be answered BAD_SIGNATURE.
    #[arg(long, default_value_t = 0.0)]
    pub bad_signatures: f64,
    /// Share of messages followed by one for another provider's session,
    /// signed with this provider's key: must be answered WRONG_PROVIDER.
    #[arg(long, default_value_t = 0.0)]
    pub foreign_sessions: f64,
    /// Share of messages followed by a malformed frame on a stream of its
    /// own: must be answered with an Error.
    #[arg(long, default_value_t = 0.0)]
    pub malformed: f64,
    /// Seed of every random choice (usage figures, fault positions).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the HTML report (throughput and latency plots) here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// After the run, ask the AM which messages it holds and count the
    /// lost and the doubled ones.
    #[arg(long)]
    pub audit: bool,
    /// Open the sessions through the operator's admin path instead of
    /// users' credential requests (for an AM whose service list does not
    /// offer service N by provider-N).
    #[arg(long)]
    pub admin_sessions: bool,
    /// With --audit: the cold storage folder (the AS's Parquet files, e.g.
    /// DATA/cold for `acct serve --data DATA`), so that exported messages
    /// count as stored.
    #[arg(long, requires = "audit")]
    pub cold: Option<PathBuf>,
    /// Handshakes in flight while connecting.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// UDP sockets shared by the providers' connections.
    #[arg(long, default_value_t = 8)]
    pub sockets: usize,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Write the messages signed ahead to this file (loadgen/src/records.rs
    /// gives the layout) before sending, so that the benchmark harness can
    /// feed the same records to other systems.
    #[arg(long)]
    pub records: Option<PathBuf>,
    /// Most records written with `--records`.
    #[arg(long, default_value_t = 2_000_000)]
    pub records_max: usize,
}

impl Settings {
    /// Refuse settings that cannot make a bounded, meaningful run.
    pub fn check(&self) -> Result<(), String> {
        let ratio = |name: &str, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(format!("--{name} must be between 0 and 1, not {value}"))
            }
        };
        ratio("duplicates", self.duplicates)?;
        ratio("bad-signatures", self.bad_signatures)?;
        ratio("foreign-sessions", self.foreign_sessions)?;
        ratio("malformed", self.malformed)?;
        if self.providers == 0 || self.providers > PROVIDERS_MAX {
            return Err(format!("--providers must be 1..={PROVIDERS_MAX}"));
        }
        if self.sessions > SESSIONS_MAX {
            return Err(format!("--sessions must be at most {SESSIONS_MAX}"));
        }
        if self.users == 0 {
            return Err("--users must be at least 1".into());
        }
        if self.duration == 0 || self.duration > DURATION_S_MAX {
            return Err(format!("--duration must be 1..={DURATION_S_MAX} seconds"));
        }
        if self.drain > DURATION_S_MAX {
            return Err(format!("--drain must be at most {DURATION_S_MAX} seconds"));
        }
        if let Some(steps) = &self.rate_steps {
            let messages: u64 = parse_steps(steps)?
                .iter()
                .map(|(rate, seconds)| rate.saturating_mul(*seconds))
                .fold(0u64, u64::saturating_add);
            if messages > self.messages_max {
                return Err(format!(
                    "--rate-steps asks for {messages} messages, more than --messages-max {}: raise it",
                    self.messages_max
                ));
            }
        }
        if !self.max && self.rate == 0 {
            return Err("--rate must be at least 1 (or use --max)".into());
        }
        if self.linger_ms > LINGER_MS_MAX {
            return Err(format!("--linger-ms must be at most {LINGER_MS_MAX}"));
        }
        if self.window == 0 || self.window > WINDOW_MAX {
            return Err(format!("--window must be 1..={WINDOW_MAX}"));
        }
        if self.messages_max == 0 || self.messages_max > crate::workload::WORKLOAD_MESSAGES_MAX {
            return Err(format!(
                "--messages-max must be 1..={}",
                crate::workload::WORKLOAD_MESSAGES_MAX
            ));
        }
        if self.foreign_sessions > 0.0 && self.providers < 2 {
            return Err("--foreign-sessions needs at least 2 providers".into());
        }
        if self.connect_concurrency == 0 || self.sockets == 0 || self.sockets > 1024 {
            return Err("--connect-concurrency must be at least 1 and --sockets 1..=1024".into());
        }
        Ok(())
    }

    /// Sessions actually run: at least one per provider.
    pub fn session_count(&self) -> usize {
        self.sessions.max(self.providers)
    }

    /// Interim messages signed ahead in all (the finals come on top).
    pub fn interims_planned(&self) -> u64 {
        let wanted = if self.max {
            self.messages_max
        } else {
            self.steps()
                .iter()
                .map(|(rate, seconds)| rate.saturating_mul(*seconds))
                .fold(0u64, u64::saturating_add)
        };
        wanted.min(self.messages_max)
    }

    /// The open loop's phases, (rate, seconds) each: `--rate-steps`, or
    /// `--rate` for `--duration`.
    pub fn steps(&self) -> Vec<(u64, u64)> {
        self.rate_steps
            .as_deref()
            .and_then(|steps| parse_steps(steps).ok())
            .unwrap_or_else(|| vec![(self.rate, self.duration)])
    }

    /// With `--rate-steps`: `--duration` becomes their sum and `--rate` the
    /// first step's (call after [`Settings::check`]).
    pub fn apply_steps(&mut self) {
        if self.rate_steps.is_some() {
            let steps = self.steps();
            self.duration = steps.iter().map(|(_, seconds)| seconds).sum();
            self.rate = steps.first().map_or(self.rate, |(rate, _)| *rate);
        }
    }
}

/// A provider's slots in a phase of `messages` in all over `providers`
/// taking turns: those j with index + j × providers < messages.
pub fn slots(messages: u64, providers: usize, index: usize) -> usize {
    let (providers, index) = (providers.max(1) as u64, index as u64);
    if messages <= index {
        0
    } else {
        ((messages - index - 1) / providers + 1) as usize
    }
}

/// Most phases in `--rate-steps`.
pub const RATE_STEPS_MAX: usize = 32;

/// `RATE:SECONDS[,RATE:SECONDS…]`, each at least 1, the seconds summing to
/// at most [`DURATION_S_MAX`].
fn parse_steps(text: &str) -> Result<Vec<(u64, u64)>, String> {
    let bad = || format!("--rate-steps takes RATE:SECONDS[,RATE:SECONDS…] (at most {RATE_STEPS_MAX}), not '{text}'");
    let mut steps = Vec::new();
    for step in text.split(',') {
        let (rate, seconds) = step.trim().split_once(':').ok_or_else(bad)?;
        let rate: u64 = rate.trim().parse().map_err(|_| bad())?;
        let seconds: u64 = seconds.trim().parse().map_err(|_| bad())?;
        if rate == 0 || seconds == 0 {
            return Err(bad());
        }
        steps.push((rate, seconds));
    }
    if steps.is_empty() || steps.len() > RATE_STEPS_MAX {
        return Err(bad());
    }
    if steps.iter().map(|(_, seconds)| seconds).sum::<u64>() > DURATION_S_MAX {
        return Err(format!(
            "--rate-steps must last at most {DURATION_S_MAX} seconds in all"
        ));
    }
    Ok(steps)
}
