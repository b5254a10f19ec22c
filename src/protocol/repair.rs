//! The repair datagram of a multicast transmission: a 32-byte header laid out like the data
//! header's (same CRC placement and coverage), then one erasure-coded shard of a block
//! ([`super::fec`]). Any `k` of a block's sources and repairs rebuild it.

use super::data::{header_crc, u16_at, u32_at, u64_at};
use super::field::{common, repair as f};
use super::limits::DATA_HEADER_LEN;
use super::{kind, peek_kind, WireError, MAGIC, VERSION};

const _: () = assert!(f::HEADER_LEN == DATA_HEADER_LEN);

/// Header of a repair datagram, followed by `payload_len` bytes of shard.
///
/// ```text
///  0    2   3    4      5      6           8          12      16       20       22     24          32
///  +----+---+----+------+------+-----------+----------+-------+--------+--------+------+-----------+
///  | RB | 5 | 18 | flags| rsvd | payload   | group    | crc32c| block  | repair | k    | send_ts   |
///  |    |   |    |      |      | len u16   | u32      | u32   | u32    | u16    | u16  | ns u64    |
///  +----+---+----+------+------+-----------+----------+-------+--------+--------+------+-----------+
/// ```
///
/// `crc32c` = CRC32C(shard ‖ header bytes 0..12 ‖ header bytes 16..32), as for data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairHeader {
    pub flags: u8,
    pub payload_len: u16,
    pub group: u32,
    pub crc: u32,
    pub block: u32,
    /// Which of the block's repairs this is (`0..parity`).
    pub repair: u16,
    /// The block's source count (the last block may have fewer than the plan's `k`).
    pub k: u16,
    pub send_ts_ns: u64,
}

impl RepairHeader {
    /// Writes the header into `out[..32]`, the CRC chained from the shard's.
    pub fn emit(&self, shard_crc: u32, out: &mut [u8; DATA_HEADER_LEN]) {
        out[common::MAGIC].copy_from_slice(&MAGIC);
        out[common::VERSION] = VERSION;
        out[common::KIND] = kind::REPAIR;
        out[f::FLAGS] = self.flags;
        out[f::RESERVED] = 0;
        out[f::PAYLOAD_LEN].copy_from_slice(&self.payload_len.to_be_bytes());
        out[f::GROUP].copy_from_slice(&self.group.to_be_bytes());
        out[f::BLOCK].copy_from_slice(&self.block.to_be_bytes());
        out[f::REPAIR].copy_from_slice(&self.repair.to_be_bytes());
        out[f::K].copy_from_slice(&self.k.to_be_bytes());
        out[f::SEND_TS].copy_from_slice(&self.send_ts_ns.to_be_bytes());
        let crc = header_crc(shard_crc, out);
        out[f::CRC].copy_from_slice(&crc.to_be_bytes());
    }

    /// Parses and length-checks a repair datagram: the header and the shard. The CRC is
    /// checked by [`RepairHeader::crc_ok`].
    pub fn parse(buf: &[u8]) -> Result<(RepairHeader, &[u8]), WireError> {
        if peek_kind(buf)? != kind::REPAIR {
            return Err(WireError::Malformed("not REPAIR"));
        }
        if buf.len() < DATA_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let h = RepairHeader {
            flags: buf[f::FLAGS],
            payload_len: u16_at(buf, f::PAYLOAD_LEN),
            group: u32_at(buf, f::GROUP),
            crc: u32_at(buf, f::CRC),
            block: u32_at(buf, f::BLOCK),
            repair: u16_at(buf, f::REPAIR),
            k: u16_at(buf, f::K),
            send_ts_ns: u64_at(buf, f::SEND_TS),
        };
        let shard = &buf[DATA_HEADER_LEN..];
        if shard.len() != h.payload_len as usize {
            return Err(WireError::Malformed("payload length"));
        }
        if h.k == 0 {
            return Err(WireError::Malformed("k"));
        }
        Ok((h, shard))
    }

    /// True when `shard_crc` (CRC32C of the received shard) and the header bytes match the
    /// header's CRC.
    pub fn crc_ok(raw_header: &[u8], shard_crc: u32) -> bool {
        raw_header.len() >= DATA_HEADER_LEN
            && header_crc(shard_crc, raw_header).to_be_bytes() == raw_header[f::CRC]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::protocol::proptest_cases()))]

        #[test]
        fn repair_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut b = bytes.clone();
            if b.len() >= 4 { b[0] = b'R'; b[1] = b'B'; b[2] = VERSION; b[3] = kind::REPAIR; }
            if let Ok((h, p)) = RepairHeader::parse(&b) {
                prop_assert_eq!(h.payload_len as usize, p.len());
                prop_assert!(h.k > 0);
            }
            let _ = RepairHeader::crc_ok(&b, 0);
        }

        /// Every header emitted parses back whole, and any flipped bit of header or shard
        /// fails the CRC.
        #[test]
        fn repair_round_trip_and_crc(
            group in any::<u32>(), block in any::<u32>(), repair in any::<u16>(),
            k in 1u16.., ts in any::<u64>(), shard in proptest::collection::vec(any::<u8>(), 0..300),
            flip in any::<prop::sample::Index>(),
        ) {
            let h = RepairHeader { flags: 0, payload_len: shard.len() as u16, group, crc: 0, block, repair, k, send_ts_ns: ts };
            let mut out = [0u8; DATA_HEADER_LEN];
            h.emit(crc32c::crc32c(&shard), &mut out);
            let mut d = [&out[..], &shard].concat();
            let (back, body) = RepairHeader::parse(&d).unwrap();
            prop_assert_eq!(back, RepairHeader { crc: back.crc, ..h });
            prop_assert_eq!(body, &shard[..]);
            prop_assert!(RepairHeader::crc_ok(&d, crc32c::crc32c(&shard)));
            let at = flip.index(d.len());
            d[at] ^= 1;
            let ok = RepairHeader::crc_ok(&d, crc32c::crc32c(&d[DATA_HEADER_LEN..]));
            prop_assert!(!ok);
        }
    }
}
