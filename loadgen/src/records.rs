//! A run's signed messages as a file, so that the benchmark harness feeds
//! the very same records (same bytes, same signatures, same duplicates) to
//! the verification ceiling, PostgreSQL and JetStream as loadgen sends to
//! the AM.
//!
//! Layout (all integers little-endian):
//! - the magic `ACCTREC1`;
//! - `u32` provider count, then each provider's 32-byte Ed25519 public key;
//! - records until the end: `u32` provider index, then the Accounting
//!   message as the wire carries it (a frame: header and signed body).
//!
//! Order: the providers' messages interleaved round-robin, as they reach the
//! AM; each planned retransmission comes [`DUPLICATE_DELAY`] records after
//! its original (loadgen retransmits after the ack), and every session's
//! Final Accounting comes last.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use wire::{Accounting, FrameHeader, Message, PublicKey, Signed};

use crate::plan::ProviderPlan;

const MAGIC: &[u8; 8] = b"ACCTREC1";

/// How many records after its original a retransmission is written.
pub const DUPLICATE_DELAY: usize = 4_096;

/// Most providers a records file may name (loadgen's own maximum).
pub const PROVIDERS_MAX: usize = crate::settings::PROVIDERS_MAX;

/// One record: the sending provider and its signed message.
#[derive(Debug, Clone)]
pub struct Record {
    /// Index into [`Records::keys`].
    pub provider: u32,
    /// The signed Accounting message.
    pub message: Signed<Accounting>,
    /// Whether an earlier record carries the same message (a retransmission).
    pub duplicate: bool,
}

/// A records file, read back.
pub struct Records {
    /// Each provider's public key.
    pub keys: Vec<PublicKey>,
    /// The records in file order.
    pub records: Vec<Record>,
}

/// Write the messages of `plans` (at most `max` records, retransmissions
/// included) to `path`; returns the number of records written.
pub fn write(path: &Path, keys: &[PublicKey], plans: &[ProviderPlan], max: usize) -> anyhow::Result<usize> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = Writer {
        out: BufWriter::new(file),
        frame: BytesMut::new(),
        written: 0,
    };
    out.out.write_all(MAGIC)?;
    out.out.write_all(&u32::try_from(keys.len())?.to_le_bytes())?;
    for key in keys {
        out.out.write_all(key.as_bytes())?;
    }
    // Retransmissions waiting for their turn: (due at record, provider, message).
    let mut pending: std::collections::VecDeque<(usize, usize, &Signed<Accounting>)> = Default::default();
    let longest = plans.iter().map(|plan| plan.interims.len()).max().unwrap_or(0);
    'rounds: for position in 0..longest {
        for plan in plans {
            if out.written >= max {
                break 'rounds;
            }
            if let Some(&(due, provider, message)) = pending.front()
                && due <= out.written
            {
                out.put(provider, message)?;
                pending.pop_front();
                continue;
            }
            let Some(message) = plan.interims.get(position) else {
                continue;
            };
            out.put(plan.index, message)?;
            if plan.duplicate.get(position).copied().unwrap_or(false) {
                pending.push_back((out.written + DUPLICATE_DELAY, plan.index, message));
            }
        }
    }
    let finals = plans
        .iter()
        .flat_map(|plan| plan.finals.iter().map(move |message| (plan.index, message)));
    for (provider, message) in pending
        .into_iter()
        .map(|(_, provider, message)| (provider, message))
        .chain(finals)
    {
        if out.written >= max {
            break;
        }
        out.put(provider, message)?;
    }
    out.out.flush()?;
    Ok(out.written)
}

struct Writer {
    out: BufWriter<std::fs::File>,
    frame: BytesMut,
    written: usize,
}

impl Writer {
    fn put(&mut self, provider: usize, message: &Signed<Accounting>) -> anyhow::Result<()> {
        self.frame.clear();
        message.encode_frame(&mut self.frame);
        self.out.write_all(&u32::try_from(provider)?.to_le_bytes())?;
        self.out.write_all(&self.frame)?;
        self.written += 1;
        Ok(())
    }
}

/// Read at most `max` records from `path`, frame by frame (each body at
/// most [`wire::limits::SMALL_FRAME_BODY_BYTES_MAX`], so a damaged file cannot
/// ask for a large allocation). Every record must decode as an Accounting
/// message of a listed provider.
pub fn read(path: &Path, max: usize) -> anyhow::Result<Records> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut input = BufReader::new(file);
    let mut magic = [0u8; 8];
    input
        .read_exact(&mut magic)
        .with_context(|| format!("{} is not a records file", path.display()))?;
    anyhow::ensure!(&magic == MAGIC, "{} is not a records file", path.display());
    let count = take_u32(&mut input)?.context("the file ends before its key list")? as usize;
    anyhow::ensure!(count <= PROVIDERS_MAX, "{count} providers: at most {PROVIDERS_MAX}");
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        let mut key = [0u8; 32];
        input.read_exact(&mut key).context("the key list is cut short")?;
        keys.push(PublicKey::from_bytes(key).map_err(|error| anyhow::anyhow!("a provider key: {error}"))?);
    }
    let mut seen = std::collections::HashSet::new();
    let mut records = Vec::new();
    while records.len() < max {
        let Some(provider) = take_u32(&mut input)? else { break };
        anyhow::ensure!((provider as usize) < keys.len(), "record names provider {provider}");
        let mut header = [0u8; wire::limits::FRAME_HEADER_BYTES];
        input.read_exact(&mut header).context("a record is cut short")?;
        let parsed = FrameHeader::parse(&header, wire::limits::SMALL_FRAME_BODY_BYTES_MAX)?;
        let mut body = vec![0u8; parsed.body_bytes];
        input.read_exact(&mut body).context("a record is cut short")?;
        let Message::Accounting(message) = Message::decode_body(parsed.message_type, Bytes::from(body))? else {
            anyhow::bail!("a record is not an Accounting message");
        };
        let duplicate = !seen.insert(message.value().message_id());
        records.push(Record {
            provider,
            message,
            duplicate,
        });
    }
    Ok(Records { keys, records })
}

/// The next little-endian u32, or None at the end of the file.
fn take_u32(input: &mut impl Read) -> anyhow::Result<Option<u32>> {
    let mut bytes = [0u8; 4];
    match input.read_exact(&mut bytes) {
        Ok(()) => Ok(Some(u32::from_le_bytes(bytes))),
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(error) => Err(error.into()),
    }
}
