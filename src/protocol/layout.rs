//! How a file maps onto datagrams, and what a valid file name is: arithmetic both sides must
//! agree on exactly, so it lives in one place.

use thiserror::Error;

use super::limits::{MAX_DATAGRAM, MAX_NAME_LEN, MIN_DATAGRAM};

/// The size of data datagrams on the wire, header included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramSize {
    /// The path's MTU less the IP and UDP headers, at most 65507: 65507 on loopback, 1472 on
    /// an Ethernet path, so nothing is ever fragmented.
    Auto,
    /// This many bytes, whatever the path (sends fail if the path cannot carry them whole).
    Fixed(usize),
}

impl std::str::FromStr for DatagramSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(DatagramSize::Auto);
        }
        let n: usize = s
            .parse()
            .map_err(|_| format!("bad datagram size {s:?}: \"auto\" or bytes, e.g. 1472"))?;
        if !(MIN_DATAGRAM..=MAX_DATAGRAM).contains(&n) {
            return Err(format!(
                "bad datagram size {n}: between {MIN_DATAGRAM} (a {} byte header and {} bytes of payload) and {MAX_DATAGRAM} (the largest UDP datagram)",
                super::DATA_HEADER_LEN,
                MIN_DATAGRAM - super::DATA_HEADER_LEN
            ));
        }
        Ok(DatagramSize::Fixed(n))
    }
}

impl std::fmt::Display for DatagramSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatagramSize::Auto => write!(f, "auto"),
            DatagramSize::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// The datagram sizes (header included) a server sends at when a client asks for a limit:
/// loopback's (the lab's 65507, and 61472 for spliced payloads), jumbo and Ethernet frames,
/// tunnels (PPPoE, WireGuard), IPv6's minimum MTU, IPv4's, and powers of two between.
pub const DATAGRAM_SIZE_CLASSES: [usize; 16] = [
    65_507, 61_472, 32_768, 16_384, 8_972, 8_952, 4_096, 2_048, 1_472, 1_464, 1_452, 1_392, 1_372,
    1_232, 1_024, 548,
];

/// `limit` snapped down to a size class ([`DATAGRAM_SIZE_CLASSES`]), at least
/// [`MIN_DATAGRAM`]: a client's limit selects among a few sizes, each of which needs an index
/// of the file, instead of one index per byte value a client may name.
pub fn snap_datagram_size(limit: usize) -> usize {
    DATAGRAM_SIZE_CLASSES
        .iter()
        .copied()
        .find(|&c| c <= limit)
        .unwrap_or(limit.min(MIN_DATAGRAM))
}

/// A file name that could escape the served directory, or that the wire cannot carry.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("bad file name {0:?}: names are plain file names inside the served directory")]
pub struct BadName(pub String);

/// Refuses anything but a plain name: no separators, no NUL, no `.`/`..`, not empty or huge.
pub fn validate_name(name: &str) -> Result<(), BadName> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0');
    if bad {
        Err(BadName(name.to_string()))
    } else {
        Ok(())
    }
}

/// Number of datagrams a file of `size` bytes takes at `payload_size` bytes each.
pub fn datagram_count(size: u64, payload_size: u32) -> u64 {
    size.div_ceil(payload_size as u64)
}

/// Payload length of datagram `index`.
pub fn payload_len(size: u64, payload_size: u32, index: u64) -> usize {
    let start = index * payload_size as u64;
    (size.saturating_sub(start)).min(payload_size as u64) as usize
}

/// BLAKE3 over the file's manifest: size, datagram payload size and every datagram's payload
/// CRC32C in order. Two files with the same manifest hash have the same size and, datagram by
/// datagram, the same CRC32C; receivers check every datagram's CRC on arrival.
pub fn manifest_hash(file_size: u64, payload_size: u32, crcs: &[u32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("ringblast 2026 manifest v1");
    h.update(&file_size.to_be_bytes());
    h.update(&payload_size.to_be_bytes());
    // A few KiB at a time: one update per 4-byte CRC made the hash of a 1 GiB file's 745 000
    // CRCs (1472-byte datagrams) take ~12 ms, at the end of every copy.
    let mut buf = [0u8; 4096];
    for run in crcs.chunks(buf.len() / 4) {
        for (b, c) in buf.chunks_exact_mut(4).zip(run) {
            b.copy_from_slice(&c.to_be_bytes());
        }
        h.update(&buf[..run.len() * 4]);
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The manifest hash is BLAKE3 (derived key) over size, payload size and the CRCs, all
    /// big-endian, however the bytes are fed to it.
    #[test]
    fn the_manifest_hash_is_of_the_bytes_in_order() {
        for n in [0usize, 1, 1023, 1024, 1025, 5000] {
            let crcs: Vec<u32> = (0..n as u32)
                .map(|i| i.wrapping_mul(2_654_435_761))
                .collect();
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&123_456_789u64.to_be_bytes());
            bytes.extend_from_slice(&1440u32.to_be_bytes());
            for c in &crcs {
                bytes.extend_from_slice(&c.to_be_bytes());
            }
            let want = blake3::Hasher::new_derive_key("ringblast 2026 manifest v1")
                .update(&bytes)
                .finalize();
            assert_eq!(
                manifest_hash(123_456_789, 1440, &crcs),
                *want.as_bytes(),
                "{n}"
            );
        }
    }

    #[test]
    fn names_that_escape_are_refused() {
        for bad in ["", ".", "..", "../etc/passwd", "/etc/passwd", "a/b", "a\0b"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_name(&"x".repeat(256)).is_err());
        for good in ["100mb.mp4", "..hidden", "a b", "ñ"] {
            assert!(validate_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn a_clients_limit_selects_one_of_a_few_sizes() {
        assert_eq!(snap_datagram_size(65_507), 65_507);
        assert_eq!(snap_datagram_size(1472), 1472);
        assert_eq!(snap_datagram_size(1471), 1464);
        assert_eq!(snap_datagram_size(9000), 8972);
        assert_eq!(snap_datagram_size(547), 544);
        assert_eq!(
            snap_datagram_size(300),
            300,
            "below the minimum: refused by the caller"
        );
        // Every value a GET can carry maps to one of at most 17 sizes.
        let sizes: std::collections::HashSet<usize> = (MIN_DATAGRAM..=MAX_DATAGRAM)
            .map(snap_datagram_size)
            .collect();
        assert!(sizes.len() <= DATAGRAM_SIZE_CLASSES.len() + 1, "{sizes:?}");
    }

    #[test]
    fn datagram_sizes_parse_with_their_limits() {
        assert_eq!("auto".parse(), Ok(DatagramSize::Auto));
        assert_eq!("1472".parse(), Ok(DatagramSize::Fixed(1472)));
        assert_eq!("65507".parse(), Ok(DatagramSize::Fixed(65_507)));
        for bad in ["33", "543", "65508", "big", "-1"] {
            let e = bad.parse::<DatagramSize>().unwrap_err();
            assert!(e.contains("544") || e.contains("auto"), "{bad}: {e}");
        }
        assert!("65508"
            .parse::<DatagramSize>()
            .unwrap_err()
            .contains("65507"));
    }

    #[test]
    fn datagram_arithmetic() {
        assert_eq!(datagram_count(0, 10), 0);
        assert_eq!(datagram_count(1, 10), 1);
        assert_eq!(datagram_count(10, 10), 1);
        assert_eq!(datagram_count(11, 10), 2);
        assert_eq!(payload_len(11, 10, 0), 10);
        assert_eq!(payload_len(11, 10, 1), 1);
        assert_eq!(payload_len(11, 10, 2), 0);
    }
}
