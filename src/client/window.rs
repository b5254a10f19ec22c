//! Window policy: how many bytes past its first missing datagram a sub-client lets the server
//! send (its credit), from the number of sub-clients and the receive buffer the kernel grants.
//! Kept in bytes, so it means the same whatever the datagram size the path allows.

use std::time::Duration;

use crate::protocol::DATA_HEADER_LEN;

/// Largest default window: 32 MiB (512 datagrams of 64 KiB, 23,000 of 1472 bytes). Measured
/// on loopback (1 GiB, one client, median of 5, 64 KiB datagrams): 4 MiB -> 3.0, 8 MiB -> 3.0,
/// 16 MiB -> 3.2, 32 MiB -> 3.4, 64 MiB -> 3.7 GiB/s; fewer stalls waiting for credit, more
/// kernel memory.
pub const DEFAULT_WINDOW_BYTES: u64 = 32 << 20;
/// The default windows of all sub-clients together stay under this (socket buffers).
pub const DEFAULT_TOTAL_WINDOW_BYTES: u64 = 256 << 20;
/// No default window is smaller than this.
pub const MIN_DEFAULT_WINDOW_BYTES: u64 = 4 << 20;

/// The default windows of all sub-clients together may grow to this once the sender reports
/// the path's bandwidth-delay product: a window is only credit (the receiver's memory does not
/// grow with it, and a paced sender does not burst it into the socket buffer), and a long lossy
/// path needs several BDPs of it (1 Gbit/s x 200 ms is 25 MB in flight, and a hole holds the
/// window's start for two round trips while it is repaired).
pub const AUTO_TOTAL_WINDOW_BYTES: u64 = 1 << 30;
/// No sub-client's window grows past this.
pub const AUTO_MAX_WINDOW_BYTES: u64 = 256 << 20;
/// The window grows to this many times the bandwidth-delay product the sender reports.
pub const WINDOW_BDPS: f64 = 4.0;

/// How far each of `clients` sub-clients' default window may grow, bytes.
pub fn auto_window_max_bytes(clients: usize) -> u64 {
    (AUTO_TOTAL_WINDOW_BYTES / clients.max(1) as u64)
        .clamp(default_window_bytes(clients), AUTO_MAX_WINDOW_BYTES)
}

/// The window (datagrams of `payload_size`) a path of `delivery_bps` and `srtt` needs:
/// [`WINDOW_BDPS`] bandwidth-delay products, at most `max` datagrams.
pub fn window_for_path(delivery_bps: u64, srtt: Duration, payload_size: u32, max: u32) -> u32 {
    let bdp = delivery_bps as f64 / 8.0 * srtt.as_secs_f64();
    let want = WINDOW_BDPS * bdp / payload_size.max(1) as f64;
    want.min(max as f64) as u32
}

/// The default window for each of `clients` sub-clients, bytes.
pub fn default_window_bytes(clients: usize) -> u64 {
    (DEFAULT_TOTAL_WINDOW_BYTES / clients.max(1) as u64)
        .clamp(MIN_DEFAULT_WINDOW_BYTES, DEFAULT_WINDOW_BYTES)
}

/// The kernel's charge for one datagram of `payload_size` in a receive buffer: measured on
/// loopback, a 65507-byte datagram costs about 66.6 KB, a 1472-byte one about 2.3 KB (its
/// bookkeeping), hence payload + header + 2 KiB. (Coalesced by GRO they cost less.)
fn charge(payload_size: u32) -> u64 {
    payload_size as u64 + DATA_HEADER_LEN as u64 + 2048
}

/// The window (datagrams of `payload_size`) a receive buffer of `granted` bytes can hold
/// without dropping, at most `requested_bytes` worth: three quarters of what fits, so the
/// ACK's round trip does not overflow it.
pub fn window_for_buffer(granted: usize, payload_size: u32, requested_bytes: u64) -> u32 {
    let fits = (granted as u64 / charge(payload_size) * 3 / 4).max(4);
    let requested = (requested_bytes / payload_size.max(1) as u64).max(1);
    requested.min(fits).min(u32::MAX as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MAX_PAYLOAD;

    #[test]
    fn window_fits_the_granted_buffer() {
        let big = MAX_PAYLOAD as u32;
        // 8 MiB granted (rmem_max 4 MiB, unprivileged): holds 126 full datagrams.
        let w = window_for_buffer(8 << 20, big, 8 << 20);
        assert!((64..=126 * 3 / 4 + 1).contains(&w), "{w}");
        assert_eq!(window_for_buffer(64 << 20, big, 128 * big as u64), 128);
        assert_eq!(window_for_buffer(1, big, 8 << 20), 4);
        assert_eq!(window_for_buffer(64 << 20, big, 0), 1);
        // The same bytes are many more datagrams on an Ethernet path.
        assert_eq!(window_for_buffer(96 << 20, 1440, 32 << 20), 21_447);
        assert_eq!(window_for_buffer(48 << 20, 1440, 32 << 20), 10_723);
    }

    #[test]
    fn a_window_grows_with_the_path_up_to_its_most() {
        // 1 Gbit/s x 200 ms = 25 MB; four of them in 64 KiB datagrams.
        let w = window_for_path(1_000_000_000, Duration::from_millis(200), 65_475, 100_000);
        assert_eq!(w, 1527);
        assert_eq!(
            window_for_path(1_000_000_000, Duration::from_millis(200), 65_475, 1000),
            1000
        );
        // Loopback: microseconds, a window far below the default.
        assert!(window_for_path(40_000_000_000, Duration::from_micros(30), 65_475, 4096) < 10);
        assert_eq!(auto_window_max_bytes(1), 256 << 20);
        assert_eq!(auto_window_max_bytes(10), (1 << 30) / 10);
        assert_eq!(auto_window_max_bytes(1000), 4 << 20);
    }

    #[test]
    fn default_windows_share_a_budget() {
        assert_eq!(default_window_bytes(1), 32 << 20);
        assert_eq!(default_window_bytes(10), 26_843_545);
        assert_eq!(default_window_bytes(20), 13_421_772);
        assert_eq!(default_window_bytes(1000), 4 << 20);
    }
}
