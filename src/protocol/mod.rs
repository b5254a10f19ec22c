//! The wire protocol and the socket-free logic both sides share.
//!
//! Everything here is pure: no sockets, no threads, no clocks except the ones callers pass in.
//! The server and the client are built from these pieces, so each can be tested alone:
//! - [`message`]: every control message and its exact layout; [`data`]: the data datagram header,
//!   its byte ranges named once in [`field`] (golden byte vectors pin every kind);
//! - [`limits`]: the numbers both sides agree on; [`layout`]: how a file maps onto datagrams;
//! - [`token`]: stateless address validation; [`sender`], [`congestion`] and [`pacer`]: what
//!   to send next, and when ([`train`]: the bottleneck's capacity from the ACKs); [`loss`]:
//!   the receiver's record of what arrived.
//!
//! Every datagram starts with the same 4 bytes; all integers are big-endian:
//!
//! ```text
//!  0      2        3      4
//!  +------+--------+------+
//!  | "RB" | ver=7  | kind |
//!  +------+--------+------+
//! ```

pub mod congestion;
pub mod data;
pub mod fec;
pub mod field;
pub mod generated;
#[cfg(test)]
mod golden_tests;
pub mod group_rx;
#[cfg(test)]
mod group_tests;
pub mod group_tx;
pub mod layout;
pub mod limits;
pub mod loss;
pub mod message;
pub mod noise;
pub mod pacer;
pub mod repair;
pub mod rtt;
pub mod seal;
pub mod sender;
#[cfg(test)]
pub mod sim;
pub mod token;
pub mod train;

use std::time::{SystemTime, UNIX_EPOCH};

/// Cases each property test of a network parser runs: 2000 in CI, `PROPTEST_CASES=N` for a long
/// fuzzing run (docs/RELIABILITY.md, "Fuzzing").
#[cfg(test)]
pub(crate) fn proptest_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

use thiserror::Error;

pub use data::{data_flags, DataHeader};
pub use limits::*;
pub use message::{
    ack_flags, get_flags, Ack, DoneStatus, ErrorCode, Feedback, Join, Lack, ListEntry, Message,
    Meta, NackRange, Status,
};
pub use repair::RepairHeader;

/// First two bytes of every ringblast datagram.
pub const MAGIC: [u8; 2] = *b"RB";
/// Protocol version carried in byte 2. A peer speaking another version is rejected, with a
/// message that says so (see [`foreign_version`]). Version 2: datagram size negotiated per
/// session (`GET` carries the receiver's limit), window in bytes. Version 3: `BUSY`. Version
/// 4: `LIST` padded like `HELLO` (its answer at most three times its size), data only after
/// the client's first `ACK` of the session, a token good for one `GET`, `ERROR` code 10.
/// Version 5: multicast (`GET` flags, `JOIN`, `FEEDBACK`, `GROUP_END`, `REPAIR`). Version 6:
/// the engine a `GET` asks for (flags bits 1-2), `ERROR` code 11. Version 7: authenticated,
/// encrypted connections (`HS_INIT`, `HS_REPLY`, `HS_FINISH`, `SEALED`, `GROUP_KEY`; `ERROR`
/// codes 12-14).
pub const VERSION: u8 = 7;

/// Message kinds (byte 3).
pub(crate) mod kind {
    pub const HELLO: u8 = 1;
    pub const RETRY: u8 = 2;
    pub const LIST: u8 = 3;
    pub const LISTING: u8 = 4;
    pub const GET: u8 = 5;
    pub const META: u8 = 6;
    pub const WAIT: u8 = 7;
    pub const ERROR: u8 = 8;
    pub const ACK: u8 = 9;
    pub const DONE: u8 = 10;
    pub const END: u8 = 11;
    pub const DATA: u8 = 12;
    pub const STATUS: u8 = 13;
    pub const BUSY: u8 = 14;
    pub const JOIN: u8 = 15;
    pub const FEEDBACK: u8 = 16;
    pub const GROUP_END: u8 = 17;
    pub const REPAIR: u8 = 18;
    /// A sealed (authenticated, encrypted) datagram: `seal.rs`.
    pub const SEALED: u8 = 19;
    /// The three messages of the handshake before sealed datagrams: `noise.rs`.
    pub const HS_INIT: u8 = 20;
    pub const HS_REPLY: u8 = 21;
    pub const HS_FINISH: u8 = 22;
    /// A sealed multicast transmission's key, sealed to each member.
    pub const GROUP_KEY: u8 = 23;
}

/// Why a datagram was rejected. Receivers count these and drop the datagram.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    #[error("datagram too short")]
    Truncated,
    #[error("bad magic number")]
    BadMagic,
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("malformed field: {0}")]
    Malformed(&'static str),
    #[error("trailing bytes after message")]
    Trailing,
    #[error("checksum mismatch (corrupted)")]
    BadChecksum,
}

/// Transfer mode requested by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Selective repeat + credit window: every byte arrives.
    Reliable,
    /// The lab's semantics: every datagram sent once, loss measured.
    Blast,
}

impl Mode {
    fn to_u8(self) -> u8 {
        match self {
            Mode::Reliable => 0,
            Mode::Blast => 1,
        }
    }
    fn from_u8(v: u8) -> Result<Self, WireError> {
        match v {
            0 => Ok(Mode::Reliable),
            1 => Ok(Mode::Blast),
            _ => Err(WireError::Malformed("mode")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Reliable => "reliable",
            Mode::Blast => "blast",
        }
    }
}
/// Checks the common 4-byte header and returns the message kind.
pub fn peek_kind(buf: &[u8]) -> Result<u8, WireError> {
    use field::common;
    if buf.len() < common::BODY {
        return Err(WireError::Truncated);
    }
    if buf[common::MAGIC] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if buf[common::VERSION] != VERSION {
        // Believed only when intact: a bit flipped on the way is corruption, not a peer of
        // another release (which would end the transfer).
        if !trailer_intact(buf) {
            return Err(WireError::BadChecksum);
        }
        return Err(WireError::BadVersion(buf[common::VERSION]));
    }
    Ok(buf[common::KIND])
}

/// Whether `buf` ends in the CRC32C of the rest, as every control message of every version
/// does (a DATA datagram carries its CRC in its header instead: it never passes).
fn trailer_intact(buf: &[u8]) -> bool {
    buf.len() >= field::common::BODY + 4 && {
        let (body, crc) = buf.split_at(buf.len() - 4);
        crc32c::crc32c(body).to_be_bytes() == crc
    }
}

/// The version an intact ringblast control message of another version claims (magic right,
/// CRC32C trailer right, version not ours): the peer runs another release of ringblast. A
/// datagram whose version byte was flipped on the way fails its CRC and is not one.
pub fn foreign_version(buf: &[u8]) -> Option<u8> {
    use field::common;
    let v = *buf.get(common::VERSION)?;
    (buf.len() >= common::BODY
        && buf[common::MAGIC] == MAGIC
        && v != VERSION
        && trailer_intact(buf))
    .then_some(v)
}

/// True when the datagram claims to be `DATA` (header checks only).
pub fn is_data(buf: &[u8]) -> bool {
    peek_kind(buf) == Ok(kind::DATA)
}
/// Nanoseconds since the Unix epoch: the clock of the data header's send timestamp, so a
/// receiver on another host with a synchronised clock can compute one-way delay.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
