//! `acct report DIR` or `acct report s3://bucket/prefix`: billing totals
//! from the cold storage, grouped by user, provider, service or session,
//! over a time range of `received_at`.
//!
//! Memory: one entry per group (and one session id per group and session,
//! for the session count); files are read one Arrow batch at a time.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;

use anyhow::Context;
use clap::{Args, ValueEnum};
use wire::SessionId;

/// Arguments of `acct report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The cold storage: a folder (every `*.parquet` below it is read), or
    /// `s3://bucket/prefix` (every `*.parquet` object under it).
    #[arg(value_name = "DIR_OR_S3_URL")]
    pub location: String,
    /// How to reach a bucket.
    #[command(flatten)]
    pub bucket: super::BucketArgs,
    /// What to group by.
    #[arg(long, value_enum, default_value_t = GroupBy::User)]
    pub by: GroupBy,
    /// Only messages received at or after this time: `YYYY-MM-DD`,
    /// `YYYY-MM-DDTHH:MM:SSZ` or Unix ms (UTC).
    #[arg(long)]
    pub from: Option<String>,
    /// Only messages received before this time (same forms).
    #[arg(long)]
    pub to: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Grouping key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupBy {
    /// The billed user.
    User,
    /// The provider.
    Provider,
    /// The service id.
    Service,
    /// The accounting session.
    Session,
}

impl GroupBy {
    fn column(self) -> &'static str {
        match self {
            Self::User => "user_id",
            Self::Provider => "provider_id",
            Self::Service => "service_id",
            Self::Session => "session_id",
        }
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// RFC 4180 CSV with a header line.
    Csv,
    /// One JSON document.
    Json,
}

/// Totals of one group. Sums are u128: no realistic bill overflows them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    /// Distinct sessions.
    pub sessions: u64,
    /// Accounting messages.
    pub messages: u64,
    /// Sum of `units`.
    pub units: u128,
    /// Sum of `bytes_up`.
    pub bytes_up: u128,
    /// Sum of `bytes_down`.
    pub bytes_down: u128,
    /// Sum of `duration_ms`.
    pub duration_ms: u128,
    /// Sums of the custom counters, by name.
    pub custom: BTreeMap<String, u128>,
}

/// Parse a time bound: `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SSZ` or Unix ms.
pub fn parse_time(text: &str) -> anyhow::Result<u64> {
    if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
        return text.parse().context("Unix ms");
    }
    let bad = || anyhow::anyhow!("{text:?}: expected YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or Unix ms");
    let (date, clock) = match text.split_once('T') {
        Some((date, clock)) => (date, Some(clock.strip_suffix('Z').ok_or_else(bad)?)),
        None => (text, None),
    };
    let mut parts = date.split('-').map(|part| part.parse::<i32>().map_err(|_| bad()));
    let (Some(year), Some(month), Some(day), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let month = time::Month::try_from(u8::try_from(month?).map_err(|_| bad())?).map_err(|_| bad())?;
    let date =
        time::Date::from_calendar_date(year?, month, u8::try_from(day?).map_err(|_| bad())?).map_err(|_| bad())?;
    let (hour, minute, second) = match clock {
        Some(clock) => {
            let fields: Vec<u8> = clock
                .split(':')
                .map(|part| part.parse::<u8>().map_err(|_| bad()))
                .collect::<Result<_, _>>()?;
            let [hour, minute, second] = fields[..] else {
                return Err(bad());
            };
            (hour, minute, second)
        }
        None => (0, 0, 0),
    };
    let moment = date
        .with_hms(hour, minute, second)
        .map_err(|_| bad())?
        .assume_utc()
        .unix_timestamp();
    u64::try_from(moment)
        .map(|seconds| seconds * 1000)
        .map_err(|_| anyhow::anyhow!("{text:?} is before 1970"))
}

/// Totals per group over every batch of `archive`, for messages received
/// in `[from, to)`.
pub fn totals(
    archive: &storage::reader::Archive,
    by: GroupBy,
    from: u64,
    to: u64,
) -> anyhow::Result<BTreeMap<String, Totals>> {
    let mut groups: BTreeMap<String, Totals> = BTreeMap::new();
    let mut seen: HashSet<(String, SessionId)> = HashSet::new();
    for index in 0..archive.len() {
        archive
            .read(index, |row| {
                if row.received_at_ms < from || row.received_at_ms >= to {
                    return;
                }
                let key = match by {
                    GroupBy::User => row.user_id.clone(),
                    GroupBy::Provider => row.provider_id.clone(),
                    GroupBy::Service => row.service_id.to_string(),
                    GroupBy::Session => row.session_id.to_string(),
                };
                let new_session = seen.insert((key.clone(), row.session_id));
                let entry = groups.entry(key).or_default();
                entry.sessions += u64::from(new_session);
                entry.messages += 1;
                entry.units += u128::from(row.units.unwrap_or(0));
                entry.bytes_up += u128::from(row.bytes_up.unwrap_or(0));
                entry.bytes_down += u128::from(row.bytes_down.unwrap_or(0));
                entry.duration_ms += u128::from(row.duration_ms.unwrap_or(0));
                for (name, value) in &row.custom {
                    *entry.custom.entry(name.clone()).or_default() += u128::from(*value);
                }
            })
            .with_context(|| format!("reading {}", archive.name(index)))?;
    }
    Ok(groups)
}

/// Print the report.
pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let from = args.from.as_deref().map(parse_time).transpose()?.unwrap_or(0);
    let to = args.to.as_deref().map(parse_time).transpose()?.unwrap_or(u64::MAX);
    let archive = storage::reader::Archive::open(&args.location, &args.bucket.settings())?;
    let groups = totals(&archive, args.by, from, to)?;
    let mut all = Totals::default();
    for group in groups.values() {
        all.sessions += group.sessions;
        all.messages += group.messages;
        all.units += group.units;
        all.bytes_up += group.bytes_up;
        all.bytes_down += group.bytes_down;
        all.duration_ms += group.duration_ms;
        for (name, value) in &group.custom {
            *all.custom.entry(name.clone()).or_default() += value;
        }
    }
    let key = args.by.column();
    let mut out = std::io::stdout().lock();
    let figures = |totals: &Totals| {
        [
            totals.sessions.to_string(),
            totals.messages.to_string(),
            totals.units.to_string(),
            totals.bytes_up.to_string(),
            totals.bytes_down.to_string(),
            totals.duration_ms.to_string(),
        ]
    };
    let header = [
        key,
        "sessions",
        "messages",
        "units",
        "bytes_up",
        "bytes_down",
        "duration_ms",
    ];
    match args.format {
        Format::Json => {
            let json_totals = |totals: &Totals| {
                // Sums as JSON integers (readers without big integers round
                // beyond 2^53); a sum beyond u64 is a decimal string, never
                // a rounded number.
                let number = |value: u128| {
                    serde_json::Number::from_u128(value).map_or_else(
                        || serde_json::Value::String(value.to_string()),
                        serde_json::Value::Number,
                    )
                };
                serde_json::json!({
                    "sessions": totals.sessions,
                    "messages": totals.messages,
                    "units": number(totals.units),
                    "bytes_up": number(totals.bytes_up),
                    "bytes_down": number(totals.bytes_down),
                    "duration_ms": number(totals.duration_ms),
                    "custom": totals.custom.iter().map(|(name, value)| (name.clone(), number(*value))).collect::<serde_json::Map<_, _>>(),
                })
            };
            let groups: Vec<serde_json::Value> = groups
                .iter()
                .map(|(name, totals)| {
                    let mut value = json_totals(totals);
                    value[key] = serde_json::Value::String(name.clone());
                    value
                })
                .collect();
            let document = serde_json::json!({
                "group_by": key,
                "from_ms": from,
                "to_ms": if to == u64::MAX { serde_json::Value::Null } else { to.into() },
                "groups": groups,
                "total": json_totals(&all),
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&document)?)?;
        }
        Format::Csv => {
            writeln!(out, "{}", header.join(","))?;
            for (name, totals) in &groups {
                writeln!(out, "{},{}", csv_field(name), figures(totals).join(","))?;
            }
        }
        Format::Table => {
            let mut lines: Vec<Vec<String>> = vec![header.iter().map(|text| (*text).to_owned()).collect()];
            for (name, totals) in &groups {
                let mut line = vec![name.clone()];
                line.extend(figures(totals));
                lines.push(line);
            }
            let mut line = vec!["TOTAL".to_owned()];
            line.extend(figures(&all));
            lines.push(line);
            let widths: Vec<usize> = (0..header.len())
                .map(|column| lines.iter().map(|line| line[column].len()).max().unwrap_or(0))
                .collect();
            for line in &lines {
                let cells: Vec<String> = line
                    .iter()
                    .enumerate()
                    .map(|(column, cell)| {
                        if column == 0 {
                            format!("{cell:<width$}", width = widths[column])
                        } else {
                            format!("{cell:>width$}", width = widths[column])
                        }
                    })
                    .collect();
                writeln!(out, "{}", cells.join("  "))?;
            }
        }
    }
    Ok(())
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bounds_parse() {
        assert_eq!(parse_time("1970-01-02").unwrap(), 86_400_000);
        assert_eq!(parse_time("2026-11-26T01:02:03Z").unwrap(), 1_795_654_923_000);
        assert_eq!(parse_time("1234").unwrap(), 1234);
        for bad in ["2026-13-01", "2026-11-26T01:02:03", "yesterday", "2026-11", ""] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
