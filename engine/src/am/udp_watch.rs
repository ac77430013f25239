//! The kernel's view of the AM's UDP socket, as metrics: the bytes waiting
//! in its receive queue and the datagrams it dropped. That queue sits in
//! front of everything the AM measures itself.

use std::time::Duration;

/// Every second, the kernel's view of the AM's UDP socket, from
/// `/proc/self/net/udp` (and `udp6`): the bytes of datagrams waiting for the
/// I/O thread to read them (`acct_udp_receive_queue_bytes`; the kernel
/// counts each datagram's whole buffer, not only its payload) and the
/// datagrams dropped because the buffer was full
/// (`acct_udp_receive_drops_total`). The socket is found by its port alone:
/// the tables list the whole network namespace, so another process bound to
/// the same port on another address could be read instead. That queue sits in front
/// of everything the AM measures itself: in an open loop past what the
/// machine carries it held 10-52 MB (docs/performance.md). Where the files
/// do not exist (not Linux) the metrics are simply absent.
pub(super) async fn watch_udp_socket(port: u16) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(Some((queued, drops))) = tokio::task::spawn_blocking(move || udp_socket_queue(port)).await else {
            continue;
        };
        metrics::gauge!("acct_udp_receive_queue_bytes").set(queued as f64);
        metrics::counter!("acct_udp_receive_drops_total").absolute(drops);
    }
}

/// The receive queue (bytes) and drop count of the UDP socket bound to
/// `port`, from the kernel's socket tables.
fn udp_socket_queue(port: u16) -> Option<(u64, u64)> {
    ["/proc/self/net/udp", "/proc/self/net/udp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .find_map(|table| parse_udp_table(&table, port))
}

/// One socket's receive queue and drops in a `/proc/net/udp` table: after a
/// header line, one line per socket, `sl local_address rem_address st
/// tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ref pointer
/// drops`, addresses and queues in hex.
fn parse_udp_table(table: &str, port: u16) -> Option<(u64, u64)> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
        if local_port != port {
            return None;
        }
        let queued = u64::from_str_radix(fields.get(4)?.rsplit(':').next()?, 16).ok()?;
        let drops = fields.get(12)?.parse().ok()?;
        Some((queued, drops))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_table_lines_give_queue_and_drops() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n  \
            7: 0100007F:A484 00000000:0000 07 00000000:00034A00 00:00000000 00000000     0        0 123456 2 0000000000000000 17\n  \
            8: 0100007F:1F90 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 123457 2 0000000000000000 0\n";
        assert_eq!(parse_udp_table(table, 0xA484), Some((0x34A00, 17)));
        assert_eq!(parse_udp_table(table, 8080), Some((0, 0)));
        assert_eq!(parse_udp_table(table, 9), None);
        assert_eq!(parse_udp_table("header only\n", 0xA484), None);
        assert_eq!(parse_udp_table("h\n  7: garbage\n", 0xA484), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_socket_with_unread_datagrams_shows_its_queue() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = receiver.local_addr().expect("address").port();
        for _ in 0..3 {
            sender.send_to(&[7u8; 1000], ("127.0.0.1", port)).expect("send");
        }
        let (queued, drops) = udp_socket_queue(port).expect("the socket is in /proc/self/net/udp");
        assert!(queued >= 3_000, "3 unread datagrams of 1,000 bytes, queue {queued}");
        assert_eq!(drops, 0);
    }
}
