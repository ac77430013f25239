//! What a run found: a JSON report for machines, a summary for people, and
//! an HTML page with plots (inline SVG: no network needed to view it).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::drive::{Class, QuicTraffic, Stats};
use crate::settings::Settings;

/// Version of the JSON report's layout.
pub const REPORT_VERSION: u32 = 1;

/// Answers that ask the provider to send the same message again.
const RETRYABLE: [&str; 3] = ["busy", "out_of_space", "shutting_down"];

/// Latency percentiles in milliseconds.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// Largest.
    pub max: f64,
    /// Answers measured.
    pub count: u64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p99_9: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            count: histogram.len(),
        }
    }
}

/// One second of the run.
#[derive(Serialize, Debug, Clone)]
pub struct Second {
    /// Seconds since the start of the timed phase.
    pub second: u64,
    /// Interims and finals answered as stored in that second.
    pub acked: u64,
    /// Their latency.
    pub latency_ms: Latency,
    /// Open loop: the largest delay (ms) between a message's scheduled send
    /// time in this second and loadgen picking it up (loadgen's own
    /// lateness); none in the closed loop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lateness_max_ms: Option<f64>,
    /// The latency of the attempts answered stored in this second, each
    /// from when loadgen picked it up to write it (retries included).
    pub stored_attempt_ms: Latency,
    /// Attempts answered "busy, retry" in this second.
    pub busy: u64,
    /// Their latency, from their send to the answer.
    pub busy_attempt_ms: Latency,
    /// The earliest intended send time (seconds from the start) among the
    /// messages stored in this second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_intended_s: Option<f64>,
}

/// Attempt latencies: each attempt from its own send to its answer.
#[derive(Serialize, Debug, Clone)]
pub struct AttemptLatency {
    /// Attempts answered STORED or DUPLICATE.
    pub stored: Latency,
    /// Attempts answered "busy, retry" (BUSY, OUT_OF_SPACE, SHUTTING_DOWN).
    pub busy: Latency,
}

/// One phase of `--rate-steps`, by the seconds its answers came in.
#[derive(Serialize, Debug, Clone)]
pub struct PhaseReport {
    /// The rate offered, messages per second.
    pub rate: u64,
    /// Its seconds from the start: `start_s` ..< `end_s`.
    pub start_s: u64,
    /// See `start_s`.
    pub end_s: u64,
    /// Interims and finals answered as stored in those seconds.
    pub stored: u64,
    /// Those per second.
    pub goodput_per_s: f64,
    /// Their latency from their intended send time.
    pub latency_ms: Latency,
    /// The latency of the attempts answered stored, each from its own send.
    pub stored_attempt_ms: Latency,
    /// Attempts answered "busy, retry".
    pub busy: u64,
    /// Their latency, from their send to the answer.
    pub busy_attempt_ms: Latency,
}

/// One fault class: how many were injected and how each was answered.
#[derive(Serialize, Debug, Clone, Default)]
pub struct FaultReport {
    /// Injected.
    pub sent: u64,
    /// Answers by name.
    pub answers: BTreeMap<String, u64>,
    /// Never answered.
    pub unanswered: u64,
}

/// The audit against the AM.
#[derive(Serialize, Debug, Clone, Default)]
pub struct AuditReport {
    /// Records the AM's hot store held for every session (all runs).
    pub records_in_store: u64,
    /// Messages of this run acked as stored (STORED or DUPLICATE).
    pub acked_as_stored: u64,
    /// Of those, how many the store holds exactly once.
    pub stored_once: u64,
    /// Of those, how many the AM reports as exported to the Accounting
    /// Storage (only its dedup marker is hot; without `--cold` the audit
    /// takes the AM's word that they are stored once).
    pub exported: u64,
    /// Acked as stored but not in the store.
    pub lost: u64,
    /// (session, sequence) pairs of this run stored more than once.
    pub double_stored: u64,
    /// Stored but never acked (the ack was lost with a connection).
    pub stored_unacked: u64,
    /// What was checked.
    pub scope: String,
}

/// The JSON report.
#[derive(Serialize, Debug, Clone)]
pub struct Report {
    /// Layout version.
    pub report_version: u32,
    /// The settings of the run.
    pub settings: Settings,
    /// "open loop" or "closed loop".
    pub mode: String,
    /// Messages were signed before the timed phase.
    pub presigned: bool,
    /// What happened before the timed phase (flattened into the report).
    #[serde(flatten)]
    pub setup: Setup,
    /// Frames sent on accounting streams (every class, retries included).
    pub sent: u64,
    /// Interims and finals sent once (not counting retries).
    pub sent_accounting: u64,
    /// Interims and finals answered STORED.
    pub acked_stored: u64,
    /// Answers DUPLICATE (to retransmissions, and to interims or finals
    /// stored by an earlier connection).
    pub acked_duplicate: u64,
    /// Answers that refused a message for good, by reason (every class).
    pub rejected: BTreeMap<String, u64>,
    /// Retransmissions (retryable answers, lost connections).
    pub retried: u64,
    /// Interims and finals with no final answer at the end.
    pub unanswered: u64,
    /// Interims and finals answered as stored per second, from the start
    /// of the timed phase to the last such answer.
    pub throughput_per_s: f64,
    /// Seconds from the start of the timed phase to the last answer.
    pub elapsed_s: f64,
    /// Latency from each interim's or final's intended send time to the
    /// answer that stored it (open loop: the schedule, so no coordinated
    /// omission; closed loop: when the window let it go).
    pub latency_ms: Latency,
    /// Open loop: from each interim's or final's scheduled send time to
    /// loadgen picking it up to write it. This is loadgen's own lateness,
    /// part of `latency_ms`: where it is large, loadgen (which shares the
    /// machine with the AM in the harness), not the AM, delayed the
    /// messages. None in the closed loop.
    pub send_lateness_ms: Option<Latency>,
    /// Acks lost and regained by reconnecting.
    pub connections_lost: u64,
    /// Failed connection attempts.
    pub connect_failures: u64,
    /// Closed loop: providers that sent every signed interim before the end.
    pub exhausted_providers: u64,
    /// QUIC traffic of all connections (summed when each ended).
    pub quic: QuicTraffic,
    /// Injected faults and their answers.
    pub faults: BTreeMap<String, FaultReport>,
    /// Lost messages (from the audit; null without `--audit`).
    pub lost: Option<u64>,
    /// Doubled messages (from the audit; null without `--audit`).
    pub double_stored: Option<u64>,
    /// The audit, with `--audit`.
    pub audit: Option<AuditReport>,
    /// Per second.
    pub timeline: Vec<Second>,
    /// With `--cluster`: each partition's share of the run.
    pub partitions: Option<Vec<PartitionReport>>,
    /// Attempt latencies, each from its own send: the AM's answer time
    /// (`latency_ms` counts a retried message from its first intended time).
    pub attempt_latency_ms: AttemptLatency,
    /// When the timed phase started, ms since the Unix epoch.
    pub start_unix_ms: u64,
    /// With `--rate-steps`: one entry per phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phases: Option<Vec<PhaseReport>>,
}

/// One partition's share of a run with `--cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    /// Its id.
    pub id: u16,
    /// Its name.
    pub name: String,
    /// Its address.
    pub address: String,
    /// Providers whose home it is.
    pub providers: u64,
    /// Sessions it minted.
    pub sessions: u64,
    /// Interims and finals it acked as stored: STORED, or DUPLICATE for one
    /// stored before (its first ack lost, say with a killed partition).
    pub acked_stored: u64,
    /// Stored acks per second of the run (second 0 starts the timed phase).
    pub acked_per_second: Vec<u64>,
}

/// Each partition's share of the run.
pub fn partitions(
    topology: &crate::cluster::Topology,
    stats: &Stats,
    session_ids: &[wire::SessionId],
) -> Vec<PartitionReport> {
    let providers = topology.providers_per_node();
    topology
        .nodes
        .iter()
        .zip(providers)
        .map(|(node, providers)| {
            let per_second = stats.stored_by_partition.get(&node.id.0).cloned().unwrap_or_default();
            PartitionReport {
                id: node.id.0,
                name: node.name.to_string(),
                address: node.address.to_string(),
                providers: providers as u64,
                sessions: session_ids
                    .iter()
                    .filter(|session| session.partition() == node.id)
                    .count() as u64,
                acked_stored: per_second.iter().sum(),
                acked_per_second: per_second,
            }
        })
        .collect()
}

/// Figures from before the timed phase.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Setup {
    /// Messages signed ahead (interims and finals).
    pub messages_presigned: u64,
    /// Seconds spent signing ahead (not part of the timed phase).
    pub signing_s: f64,
    /// Sessions opened through the AM (User Credentials it issued).
    pub credentials_issued: u64,
    /// Seconds spent opening them.
    pub sessions_open_s: f64,
    /// Sessions opened per second (credential issuance rate through the
    /// whole flow, or the admin path with `--admin-sessions`).
    pub credentials_per_s: f64,
    /// How the sessions were opened: `credentials` (users' requests, the
    /// AM's push to the provider) or `admin`.
    pub sessions_via: String,
    /// Provider certificates minted by loadgen.
    pub certificates_minted: u64,
    /// Providers whose first connection came up.
    pub providers_connected: u64,
    /// Seconds to connect every provider (before the timed phase).
    pub connect_s: f64,
}

/// Per phase of `--rate-steps`: the timeline's seconds inside it merged.
fn phases(settings: &Settings, timeline: &[crate::drive::SecondStats]) -> Vec<PhaseReport> {
    let mut start = 0u64;
    let mut out = Vec::new();
    for (rate, seconds) in settings.steps() {
        let end = start + seconds;
        let mut merged = crate::drive::SecondStats::new();
        for this in timeline.iter().take(end as usize).skip(start as usize) {
            merged.stored += this.stored;
            let _ = merged.latency.add(&this.latency);
            let _ = merged.attempt.add(&this.attempt);
            let _ = merged.busy.add(&this.busy);
        }
        out.push(PhaseReport {
            rate,
            start_s: start,
            end_s: end,
            stored: merged.stored,
            goodput_per_s: merged.stored as f64 / seconds as f64,
            latency_ms: Latency::of(&merged.latency),
            stored_attempt_ms: Latency::of(&merged.attempt),
            busy: merged.busy.len(),
            busy_attempt_ms: Latency::of(&merged.busy),
        });
        start = end;
    }
    out
}

fn class_name(class: Class) -> &'static str {
    match class {
        Class::Interim => "interim",
        Class::Final => "final",
        Class::Duplicate => "duplicate",
        Class::BadSignature => "bad_signature",
        Class::ForeignSession => "foreign_session",
        Class::Malformed => "malformed",
    }
}

impl Report {
    /// Build the report from the run's figures.
    pub fn new(settings: &Settings, setup: &Setup, stats: &Stats, sent: u64, elapsed_s: f64) -> Self {
        let mut acked_stored = 0;
        let mut acked_duplicate = 0;
        let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
        let mut faults: BTreeMap<String, FaultReport> = BTreeMap::new();
        for ((class, status), count) in &stats.answers {
            match class {
                Class::Interim | Class::Final => {
                    if status == "stored" {
                        acked_stored += count;
                    } else if status == "duplicate" {
                        acked_duplicate += count;
                    } else if RETRYABLE.contains(&status.as_str()) {
                        // Sent again: counted in `retried`, not refused.
                    } else {
                        *rejected.entry(status.clone()).or_default() += count;
                    }
                }
                other => {
                    if RETRYABLE.contains(&status.as_str()) {
                        continue;
                    }
                    if status == "duplicate" {
                        acked_duplicate += count;
                    } else if status != "stored" && status.starts_with(|c: char| c.is_ascii_lowercase()) {
                        *rejected.entry(status.clone()).or_default() += count;
                    }
                    *faults
                        .entry(class_name(*other).to_owned())
                        .or_default()
                        .answers
                        .entry(status.clone())
                        .or_default() += count;
                }
            }
        }
        for (class, count) in &stats.sent_by_class {
            if *count > 0 && !matches!(class, Class::Interim | Class::Final) {
                faults.entry(class_name(*class).to_owned()).or_default().sent += count;
            }
        }
        let mut unanswered = 0;
        for (class, count) in &stats.unanswered {
            if matches!(class, Class::Interim | Class::Final) {
                unanswered += count;
            } else {
                faults.entry(class_name(*class).to_owned()).or_default().unanswered += count;
            }
        }
        let stored_any = acked_stored
            + stats.answers.get(&(Class::Interim, "duplicate".into())).unwrap_or(&0)
            + stats.answers.get(&(Class::Final, "duplicate".into())).unwrap_or(&0);
        let timeline = stats
            .timeline
            .iter()
            .enumerate()
            .map(|(second, this)| Second {
                second: second as u64,
                acked: this.stored,
                latency_ms: Latency::of(&this.latency),
                send_lateness_max_ms: (!settings.max)
                    .then(|| stats.send_lateness_max.get(second).copied().unwrap_or(0) as f64 / 1000.0),
                stored_attempt_ms: Latency::of(&this.attempt),
                busy: this.busy.len(),
                busy_attempt_ms: Latency::of(&this.busy),
                oldest_intended_s: (this.oldest_intended_us != u64::MAX).then(|| this.oldest_intended_us as f64 / 1e6),
            })
            .collect();
        let phases = settings.rate_steps.is_some().then(|| phases(settings, &stats.timeline));
        Self {
            report_version: REPORT_VERSION,
            settings: settings.clone(),
            mode: if settings.max { "closed loop" } else { "open loop" }.into(),
            presigned: true,
            setup: setup.clone(),
            sent,
            sent_accounting: stats.sent_by_class.get(&Class::Interim).unwrap_or(&0)
                + stats.sent_by_class.get(&Class::Final).unwrap_or(&0),
            acked_stored,
            acked_duplicate,
            rejected,
            retried: stats.retried,
            unanswered,
            throughput_per_s: if elapsed_s > 0.0 {
                stored_any as f64 / elapsed_s
            } else {
                0.0
            },
            elapsed_s,
            latency_ms: Latency::of(&stats.latency),
            send_lateness_ms: (!settings.max).then(|| Latency::of(&stats.send_lateness)),
            connections_lost: stats.connections_lost,
            connect_failures: stats.connect_failures,
            exhausted_providers: stats.exhausted_providers,
            quic: stats.quic,
            faults,
            lost: None,
            double_stored: None,
            audit: None,
            timeline,
            partitions: None,
            attempt_latency_ms: AttemptLatency {
                stored: Latency::of(&stats.attempt_stored),
                busy: Latency::of(&stats.attempt_busy),
            },
            start_unix_ms: stats.start_unix_ms,
            phases,
        }
    }

    /// Add each partition's share (with `--cluster`).
    pub fn set_partitions(&mut self, partitions: Vec<PartitionReport>) {
        self.partitions = Some(partitions);
    }

    /// Add the audit's findings.
    pub fn set_audit(&mut self, audit: AuditReport) {
        self.lost = Some(audit.lost);
        self.double_stored = Some(audit.double_stored);
        self.audit = Some(audit);
    }

    /// What was loaded: the AM's address, or the partitions.
    fn target(&self) -> String {
        match (&self.partitions, self.settings.am) {
            (Some(partitions), _) => format!("{} partitions", partitions.len()),
            (None, Some(address)) => address.to_string(),
            (None, None) => "the cluster".to_owned(),
        }
    }

    /// The summary printed at the end.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "loadgen: {} against {}, {} providers, {} sessions, {} s",
            self.mode,
            self.target(),
            self.settings.providers,
            self.setup.credentials_issued,
            self.settings.duration
        );
        for partition in self.partitions.iter().flatten() {
            let _ = writeln!(
                out,
                "  partition {} ({} at {}): {} providers, {} sessions, {} stored",
                partition.id,
                partition.name,
                partition.address,
                partition.providers,
                partition.sessions,
                partition.acked_stored
            );
        }
        let _ = writeln!(
            out,
            "  setup: {} sessions opened via {} in {:.1} s ({:.0}/s), {} messages signed ahead in {:.1} s, {} providers connected in {:.1} s",
            self.setup.credentials_issued,
            self.setup.sessions_via,
            self.setup.sessions_open_s,
            self.setup.credentials_per_s,
            self.setup.messages_presigned,
            self.setup.signing_s,
            self.setup.providers_connected,
            self.setup.connect_s
        );
        let _ = writeln!(
            out,
            "  accounting: {} sent, {} stored, {} duplicate, {} retried, {} unanswered",
            self.sent_accounting, self.acked_stored, self.acked_duplicate, self.retried, self.unanswered
        );
        let _ = writeln!(
            out,
            "  throughput: {:.0} stored acks/s over {:.1} s",
            self.throughput_per_s, self.elapsed_s
        );
        let l = &self.latency_ms;
        let _ = writeln!(
            out,
            "  ack latency (ms): p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            l.p50, l.p90, l.p99, l.p99_9, l.max
        );
        if let Some(l) = &self.send_lateness_ms {
            let _ = writeln!(
                out,
                "  loadgen's own lateness (ms, scheduled send to write, part of the ack latency): p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                l.p50, l.p99, l.p99_9, l.max
            );
        }
        let q = &self.quic;
        let stored = (self.acked_stored + self.acked_duplicate).max(1) as f64;
        let _ = writeln!(
            out,
            "  QUIC per stored message: {:.2} datagrams sent ({:.2} send calls), {:.2} received ({:.2} batches); ACK frames {:.2} sent, {:.2} received; {} packets lost",
            q.datagrams_sent as f64 / stored,
            q.send_calls as f64 / stored,
            q.datagrams_received as f64 / stored,
            q.receive_calls as f64 / stored,
            q.ack_frames_sent as f64 / stored,
            q.ack_frames_received as f64 / stored,
            q.packets_lost
        );
        if !self.rejected.is_empty() {
            let list: Vec<String> = self
                .rejected
                .iter()
                .map(|(name, count)| format!("{name} {count}"))
                .collect();
            let _ = writeln!(out, "  refused: {}", list.join(", "));
        }
        for (class, fault) in &self.faults {
            let list: Vec<String> = fault
                .answers
                .iter()
                .map(|(name, count)| format!("{name} {count}"))
                .collect();
            let _ = writeln!(
                out,
                "  {class}: {} sent, answered {}{}",
                fault.sent,
                if list.is_empty() {
                    "nothing".into()
                } else {
                    list.join(", ")
                },
                if fault.unanswered > 0 {
                    format!(", {} unanswered", fault.unanswered)
                } else {
                    String::new()
                }
            );
        }
        if self.connections_lost > 0 || self.connect_failures > 0 {
            let _ = writeln!(
                out,
                "  connections: {} lost and re-made, {} failed attempts",
                self.connections_lost, self.connect_failures
            );
        }
        if self.exhausted_providers > 0 {
            let _ = writeln!(
                out,
                "  note: {} providers sent every signed message before the end (raise --messages-max)",
                self.exhausted_providers
            );
        }
        match &self.audit {
            Some(audit) => {
                let _ = writeln!(
                    out,
                    "  audit ({}): {} acked as stored, {} stored once ({} of them exported), {} lost, {} doubled, {} stored but unacked",
                    audit.scope,
                    audit.acked_as_stored,
                    audit.stored_once,
                    audit.exported,
                    audit.lost,
                    audit.double_stored,
                    audit.stored_unacked
                );
            }
            None => {
                let _ = writeln!(out, "  audit: not run (--audit)");
            }
        }
        out
    }

    /// The HTML page: settings, summary, and plots of throughput and
    /// latency over time and of the latency distribution.
    pub fn html(&self, latency: &Histogram<u64>) -> String {
        let throughput: Vec<(f64, f64)> = self
            .timeline
            .iter()
            .map(|second| (second.second as f64, second.acked as f64))
            .collect();
        let p50: Vec<(f64, f64)> = self
            .timeline
            .iter()
            .filter(|second| second.acked > 0)
            .map(|second| (second.second as f64, second.latency_ms.p50))
            .collect();
        let p99: Vec<(f64, f64)> = self
            .timeline
            .iter()
            .filter(|second| second.acked > 0)
            .map(|second| (second.second as f64, second.latency_ms.p99))
            .collect();
        let mut distribution: Vec<(f64, f64)> = Vec::new();
        if !latency.is_empty() {
            for step in 0..=200 {
                let percentile = 100.0 * (1.0 - 10f64.powf(-(step as f64) / 40.0));
                let value = latency.value_at_percentile(percentile) as f64 / 1000.0;
                distribution.push((step as f64 / 40.0, value));
            }
        }
        let plots = [
            svg_plot(
                "Stored acks per second",
                "seconds",
                "acks/s",
                &[("acks/s", &throughput)],
                false,
            ),
            svg_plot(
                "Ack latency over time",
                "seconds",
                "ms",
                &[("p50", &p50), ("p99", &p99)],
                false,
            ),
            svg_plot(
                "Latency distribution (x: nines; 1 = p90, 2 = p99, 3 = p99.9)",
                "nines",
                "ms",
                &[("latency", &distribution)],
                false,
            ),
        ];
        let json = serde_json::to_string_pretty(self).unwrap_or_default();
        let mut page = String::new();
        let _ = write!(
            page,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>acct loadgen report</title>\
             <style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}}\
             pre{{background:#f4f4f4;padding:1em;overflow:auto}}svg{{margin:1em 0}}</style></head><body>\
             <h1>acct loadgen report</h1><pre>{}</pre>",
            escape(&self.summary())
        );
        for plot in plots {
            page.push_str(&plot);
        }
        let _ = write!(
            page,
            "<details><summary>JSON report</summary><pre>{}</pre></details></body></html>",
            escape(&json)
        );
        page
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A line plot as inline SVG, drawn with plotters' SVG backend.
fn svg_plot(title: &str, x_label: &str, y_label: &str, series: &[(&str, &[(f64, f64)])], _log: bool) -> String {
    use plotters::prelude::*;
    let mut svg = String::new();
    {
        let x_max = series
            .iter()
            .flat_map(|(_, points)| points.iter().map(|point| point.0))
            .fold(1.0f64, f64::max);
        let y_max = series
            .iter()
            .flat_map(|(_, points)| points.iter().map(|point| point.1))
            .fold(1e-3f64, f64::max)
            * 1.1;
        let root = SVGBackend::with_string(&mut svg, (900, 360)).into_drawing_area();
        let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(64)
                .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
            chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw()?;
            let colors = [BLUE, RED, GREEN];
            for (index, (name, points)) in series.iter().enumerate() {
                let color = colors[index % colors.len()];
                chart
                    .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
                    .label(*name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
            root.present()?;
            Ok(())
        })();
        if let Err(error) = drawn {
            return format!("<p>plot {title}: {}</p>", escape(&error.to_string()));
        }
    }
    svg
}

/// Add the cold storage's rows to the hot store's runs: the runs of both,
/// and the records of both. `before` lists the files that existed before
/// the hot store was read; a message in the hot store and in a file is the
/// same copy on its way out (its batch stored, not yet deleted) and counts
/// once.
pub fn join_cold(
    folder: &std::path::Path,
    before: &[std::path::PathBuf],
    hot_records: u64,
    hot_runs: &[wire::AuditRun],
) -> anyhow::Result<(u64, Vec<wire::AuditRun>)> {
    let before: std::collections::HashSet<&std::path::PathBuf> = before.iter().collect();
    // (hot, cold before, cold after) copies per message.
    let mut copies: HashMap<(wire::SessionId, u64), [u32; 3]> = HashMap::new();
    for run in hot_runs {
        for sequence in run.first..=run.last {
            copies.entry((run.session_id, sequence)).or_default()[0] += run.copies;
        }
    }
    let mut records = hot_records;
    for path in archive::parquet_files(folder)? {
        let slot = if before.contains(&path) { 1 } else { 2 };
        archive::read_file(&path, |row| {
            copies.entry((row.session_id, row.message_id)).or_default()[slot] += 1;
        })?;
    }
    let mut counted: Vec<((wire::SessionId, u64), u32)> = Vec::with_capacity(copies.len());
    for (key, [hot, old, new]) in copies {
        // A record is in the hot store and in a file both while its batch
        // is stored but not yet deleted (ack in flight), or when an export
        // ran during the audit: one copy, moved. Copies within the hot
        // store, or within the files (`acct audit` checks those), still count.
        let moved = hot.min(old + new);
        records += u64::from(old + new);
        records -= u64::from(moved);
        counted.push((key, hot + old + new - moved));
    }
    counted.sort_unstable_by_key(|(key, _)| *key);
    let mut runs: Vec<wire::AuditRun> = Vec::new();
    for ((session_id, sequence), copies) in counted {
        wire::AuditRun::append(&mut runs, session_id, sequence, copies);
    }
    Ok((records, runs))
}

/// Audit this run's acked messages against the AM's answer.
pub fn audit(stats: &Stats, sessions: &[wire::SessionId], records: u64, runs: &[wire::AuditRun]) -> AuditReport {
    // Per session: the AM's runs, and the acked sequences, both sorted, so
    // that every lookup is a binary search.
    let mut by_session: HashMap<wire::SessionId, Vec<&wire::AuditRun>> = HashMap::new();
    for run in runs {
        by_session.entry(run.session_id).or_default().push(run);
    }
    for list in by_session.values_mut() {
        list.sort_unstable_by_key(|run| run.first);
    }
    let mut report = AuditReport {
        records_in_store: records,
        scope: "the AM's hot store, and its dedup markers of exported records".into(),
        ..AuditReport::default()
    };
    let no_runs = Vec::new();
    for session in sessions {
        let list = by_session.get(session).unwrap_or(&no_runs);
        let mut acked = stats.stored_sequences.get(session).cloned().unwrap_or_default();
        acked.sort_unstable();
        acked.dedup();
        for sequence in &acked {
            report.acked_as_stored += 1;
            let index = list.partition_point(|run| run.last < *sequence);
            match list.get(index) {
                Some(run) if run.first <= *sequence && run.copies == 1 => {
                    report.stored_once += 1;
                    report.exported += u64::from(run.exported);
                }
                Some(run) if run.first <= *sequence => {}
                _ => report.lost += 1,
            }
        }
        for run in list {
            let span = run.last - run.first + 1;
            if run.copies > 1 {
                report.double_stored += span;
            }
            let acked_in_run = (acked.partition_point(|sequence| *sequence <= run.last)
                - acked.partition_point(|sequence| *sequence < run.first)) as u64;
            report.stored_unacked += span - acked_in_run.min(span);
        }
    }
    report
}
