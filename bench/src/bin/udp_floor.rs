//! The floor under any UDP transport on this machine: what the kernel alone
//! charges per datagram over 127.0.0.1, with no QUIC, no encryption and no
//! async runtime. Plain blocking `send_to` / `recv_from` of datagrams the size
//! of one signed accounting message in its frame (165 bytes by default).
//!
//! Two phases, each on a pair of threads:
//! - **one way**: one thread sends `--datagrams` back to back, the other
//!   receives them. Each thread's CPU per datagram: the sender's includes the
//!   loopback delivery (IP, UDP, the receiver's socket queue), which Linux
//!   runs in the sending thread.
//! - **ping-pong**: one datagram out and its echo back, `--round-trips` times,
//!   each thread blocked in `recv_from` between them. This adds what every
//!   datagram costs when it wakes a sleeping receiver, as in an open loop where
//!   each provider's message travels alone.
//!
//! CPU time is the threads' own (user + system, from `/proc/thread-self/stat`,
//! in clock ticks). Prints one JSON line. Not a test.
//!
//! `udp_floor [--datagrams N] [--round-trips N] [--bytes B]`

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Datagrams sent in the one-way phase.
    #[arg(long, default_value_t = 1_000_000)]
    datagrams: u64,
    /// Round trips in the ping-pong phase.
    #[arg(long, default_value_t = 200_000)]
    round_trips: u64,
    /// Payload bytes per datagram (165: one message's frame in the harness).
    #[arg(long, default_value_t = 165)]
    bytes: usize,
}

/// This thread's CPU time so far (user + system), from
/// `/proc/thread-self/stat`, in seconds.
fn thread_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").context("reading /proc/thread-self/stat")?;
    // Fields after the command name, which ends at the last ')': state is
    // field 3, utime field 14, stime field 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("no ')' in /proc/thread-self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index - 3)
            .context("short /proc/thread-self/stat")?
            .parse::<u64>()
            .context("a tick count in /proc/thread-self/stat")
    };
    // The kernel's USER_HZ, fixed at 100 on Linux for this interface.
    Ok((ticks(14)? + ticks(15)?) as f64 / 100.0)
}

/// A receive timeout long enough for a busy machine, short enough that a
/// lost datagram ends a phase instead of hanging it.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(2);

struct Side {
    cpu_seconds: f64,
    datagrams: u64,
}

fn one_way(datagrams: u64, bytes: usize) -> anyhow::Result<(Side, Side, f64)> {
    let receiver = UdpSocket::bind("127.0.0.1:0")?;
    receiver.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
    let target = receiver.local_addr()?;
    let started = Instant::now();
    let receiving = std::thread::spawn(move || -> anyhow::Result<Side> {
        let mut buffer = vec![0u8; 2048];
        let before = thread_cpu_seconds()?;
        let mut received = 0u64;
        while received < datagrams {
            match receiver.recv_from(&mut buffer) {
                Ok(_) => received += 1,
                // The sender is done and the rest were dropped (a full
                // socket buffer): count what arrived.
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(Side {
            cpu_seconds: thread_cpu_seconds()? - before,
            datagrams: received,
        })
    });
    let sender = UdpSocket::bind("127.0.0.1:0")?;
    let payload = vec![7u8; bytes];
    let before = thread_cpu_seconds()?;
    for _ in 0..datagrams {
        sender.send_to(&payload, target)?;
    }
    let sent = Side {
        cpu_seconds: thread_cpu_seconds()? - before,
        datagrams,
    };
    let received = receiving
        .join()
        .map_err(|_| anyhow::anyhow!("the receiver panicked"))??;
    Ok((sent, received, started.elapsed().as_secs_f64()))
}

fn ping_pong(round_trips: u64, bytes: usize) -> anyhow::Result<(f64, f64, f64)> {
    let server = UdpSocket::bind("127.0.0.1:0")?;
    server.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
    client.connect(server.local_addr()?)?;
    let echoing = std::thread::spawn(move || -> anyhow::Result<f64> {
        let mut buffer = vec![0u8; 2048];
        let before = thread_cpu_seconds()?;
        for _ in 0..round_trips {
            let (length, from) = server.recv_from(&mut buffer)?;
            server.send_to(&buffer[..length], from)?;
        }
        Ok(thread_cpu_seconds()? - before)
    });
    let payload = vec![7u8; bytes];
    let mut buffer = vec![0u8; 2048];
    let started = Instant::now();
    let before = thread_cpu_seconds()?;
    for _ in 0..round_trips {
        client.send(&payload)?;
        client
            .recv(&mut buffer)
            .context("a lost echo (no retransmission here)")?;
    }
    let client_cpu = thread_cpu_seconds()? - before;
    let elapsed = started.elapsed().as_secs_f64();
    let server_cpu = echoing
        .join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok((client_cpu, server_cpu, elapsed))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.datagrams > 0 && args.round_trips > 0 && (1..=1200).contains(&args.bytes),
        "--datagrams and --round-trips must be at least 1, --bytes from 1 to 1200"
    );
    let (sent, received, one_way_seconds) = one_way(args.datagrams, args.bytes)?;
    let (client_cpu, server_cpu, ping_pong_seconds) = ping_pong(args.round_trips, args.bytes)?;
    let micros = |seconds: f64, count: u64| seconds * 1e6 / count.max(1) as f64;
    // Each round trip is two datagrams, each sent once and received once.
    let datagrams = 2 * args.round_trips;
    println!(
        "{}",
        serde_json::json!({
            "bytes": args.bytes,
            "one_way": {
                "datagrams_sent": sent.datagrams,
                "datagrams_received": received.datagrams,
                "seconds": one_way_seconds,
                "send_cpu_us_per_datagram": micros(sent.cpu_seconds, sent.datagrams),
                "receive_cpu_us_per_datagram": micros(received.cpu_seconds, received.datagrams),
            },
            "ping_pong": {
                "round_trips": args.round_trips,
                "seconds": ping_pong_seconds,
                "round_trip_us": ping_pong_seconds * 1e6 / args.round_trips as f64,
                "cpu_us_per_datagram": micros(client_cpu + server_cpu, datagrams),
            },
        })
    );
    Ok(())
}
