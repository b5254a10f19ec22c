//! How a file maps onto datagrams, and what a valid file name is: arithmetic both sides must
//! agree on exactly, so it lives in one place.

use thiserror::Error;

use super::limits::MAX_NAME_LEN;

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
    for c in crcs {
        h.update(&c.to_be_bytes());
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

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
