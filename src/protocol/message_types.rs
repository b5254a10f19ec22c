//! The fields control messages carry, as types: error codes, a DONE's status, a listing's
//! entries, the receiver's ACK with its NACK ranges, the sender's STATUS, a file's META. The
//! layouts that carry them are `message.rs`'s.

use super::super::limits::MAX_NACK_RANGES;
use super::WireError;
use crate::protocol::Mode;

/// Error codes a server sends in `ERROR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotFound,
    BadName,
    BadToken,
    BadRequest,
    Internal,
    /// The session id in a client's message is unknown (expired or never existed).
    NoSession,
    /// The served file changed while it was being sent: the transfer is abandoned.
    FileChanged,
    /// The request came in another protocol version.
    BadVersion,
    /// The server gave the session's place to another client: it had made no progress for a
    /// while (its client silent or stalled) while the server was full.
    Evicted,
    /// The GET named a send engine this server does not offer (`serve --engines`).
    EngineNotOffered,
    /// This server authenticates its clients: a LIST or GET must come after a handshake
    /// (`get --identity`, `--psk`), sealed.
    AuthRequired,
    /// The client's key is not among the server's authorized keys, or may not read the file.
    NotAuthorized,
    /// This server does not authenticate (open mode): it has no key to handshake with.
    NoAuth,
}

impl ErrorCode {
    pub(super) fn to_u8(self) -> u8 {
        match self {
            ErrorCode::NotFound => 1,
            ErrorCode::BadName => 2,
            ErrorCode::BadToken => 3,
            ErrorCode::BadRequest => 5,
            ErrorCode::Internal => 6,
            ErrorCode::NoSession => 7,
            ErrorCode::FileChanged => 8,
            ErrorCode::BadVersion => 9,
            ErrorCode::Evicted => 10,
            ErrorCode::EngineNotOffered => 11,
            ErrorCode::AuthRequired => 12,
            ErrorCode::NotAuthorized => 13,
            ErrorCode::NoAuth => 14,
        }
    }
    pub(super) fn from_u8(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            1 => ErrorCode::NotFound,
            2 => ErrorCode::BadName,
            3 => ErrorCode::BadToken,
            5 => ErrorCode::BadRequest,
            6 => ErrorCode::Internal,
            7 => ErrorCode::NoSession,
            8 => ErrorCode::FileChanged,
            9 => ErrorCode::BadVersion,
            10 => ErrorCode::Evicted,
            11 => ErrorCode::EngineNotOffered,
            12 => ErrorCode::AuthRequired,
            13 => ErrorCode::NotAuthorized,
            14 => ErrorCode::NoAuth,
            _ => return Err(WireError::Malformed("error code")),
        })
    }
}

/// How a client ended a session (`DONE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoneStatus {
    /// Every byte arrived and the manifest verified.
    Complete,
    /// The client stopped without a verified copy (blast loss, user abort, failure).
    Incomplete,
}

/// One entry of a `LISTING`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListEntry<'a> {
    pub name: &'a str,
    pub size: u64,
}

/// Bits of an `ACK`'s flags.
pub mod ack_flags {
    /// The receiver's socket was empty when it sent this ACK: whatever it has not seen and
    /// was sent long enough ago is lost, not queued (lets the sender probe the tail).
    pub const IDLE: u8 = 1;
}

/// A run of missing datagram indices `[start, start + len)` reported by a receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NackRange {
    pub start: u32,
    pub len: u32,
}

/// The receiver's feedback, sent periodically during a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack<'a> {
    pub session: u32,
    /// Lowest datagram index not yet received: everything below it is in.
    pub recv_next: u32,
    /// The sender may send new datagrams with index below this (credit window).
    pub credit_limit: u32,
    /// Highest index received so far plus one (0: nothing yet).
    pub seen_end: u32,
    /// Distinct datagrams received so far: the sender's delivery count, for its rate samples.
    pub received: u32,
    /// Datagrams received more than once so far: a retransmission that arrives after its
    /// original shows the sender it judged a late datagram lost (a spurious retransmission).
    pub duplicates: u32,
    /// The latest send timestamp (ns) among the data datagrams received, echoed: the RTT, and
    /// for loss detection the send time of the most recent datagram known delivered.
    pub echo_ts_ns: u64,
    /// Time (µs) between that datagram's arrival and this ACK, subtracted from the RTT.
    pub echo_delay_us: u32,
    /// [`ack_flags`] bits.
    pub flags: u8,
    /// Missing ranges inside `[recv_next, seen_end)`, at most [`MAX_NACK_RANGES`]: set with
    /// [`Ack::with_ranges`], read with [`Ack::ranges`].
    pub nacks: NackRanges<'a>,
}

/// The encoded NACK ranges of an [`Ack`] (8 bytes each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NackRanges<'a>(pub(super) &'a [u8]);

impl Ack<'static> {
    /// An ACK for `session` with every field zero and no ranges; set the fields with struct
    /// update syntax, the ranges with [`Ack::with_ranges`].
    pub fn new(session: u32) -> Self {
        Ack {
            session,
            recv_next: 0,
            credit_limit: 0,
            seen_end: 0,
            received: 0,
            duplicates: 0,
            echo_ts_ns: 0,
            echo_delay_us: 0,
            flags: 0,
            nacks: NackRanges(&[]),
        }
    }
}

impl<'a> Ack<'a> {
    /// This ACK with `ranges` (at most [`MAX_NACK_RANGES`]) encoded into `scratch`.
    pub fn with_ranges<'b>(self, ranges: &[NackRange], scratch: &'b mut Vec<u8>) -> Ack<'b> {
        scratch.clear();
        for r in ranges.iter().take(MAX_NACK_RANGES) {
            scratch.extend_from_slice(&r.start.to_be_bytes());
            scratch.extend_from_slice(&r.len.to_be_bytes());
        }
        Ack {
            nacks: NackRanges(scratch),
            ..self
        }
    }

    /// The NACK ranges carried by this ACK.
    pub fn ranges(&self) -> impl Iterator<Item = NackRange> + 'a {
        self.nacks.0.chunks_exact(8).map(|c| NackRange {
            start: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
            len: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
        })
    }

    pub fn range_count(&self) -> usize {
        self.nacks.0.len() / 8
    }
}

/// The sender's congestion controller, as it reports itself (`STATUS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// In JSON as logs show it: 8 hex digits.
    #[serde(serialize_with = "session_hex", deserialize_with = "hex_session")]
    pub session: u32,
    /// The rate the sender paces at, bits/s.
    pub pacing_bps: u64,
    /// Its estimate of the path's delivery rate (bottleneck bandwidth), bits/s.
    pub delivery_bps: u64,
    pub srtt_us: u32,
    pub min_rtt_us: u32,
    /// Datagrams sent and not yet known delivered or lost.
    pub inflight: u32,
    /// The congestion window, datagrams.
    pub cwnd: u32,
    /// Rounds in which loss was detected.
    pub loss_events: u32,
    pub retransmitted: u32,
    /// Retransmissions that turned out unneeded (the original arrived).
    pub spurious: u32,
}

/// A session id as every report shows it: 8 hex digits.
fn session_hex<S: serde::Serializer>(id: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{id:08x}"))
}

/// A session id read back from its 8 hex digits (`ringblast trace` reads what `serve --trace`
/// wrote).
fn hex_session<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
    u32::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
}

/// File description sent by the server in answer to `GET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub request_id: u32,
    pub session: u32,
    pub file_size: u64,
    /// File bytes per data datagram (the last one may carry fewer).
    pub payload_size: u32,
    pub mode: Mode,
    /// BLAKE3 over the file's manifest (see `files::manifest_hash`).
    pub manifest_hash: [u8; 32],
    /// BLAKE3 of the file's content.
    pub content_hash: [u8; 32],
}

/// Bits of a `GET`'s flags.
pub mod get_flags {
    /// The client would take the file from a multicast group, where the server has one.
    pub const MULTICAST: u8 = 1;
    /// Bits 1-2: the send engine the client wants (both 0: the server's default).
    pub const ENGINE_MASK: u8 = 0b110;
    /// The io_uring engine.
    pub const ENGINE_URING: u8 = 0b010;
    /// The thread-per-client baseline.
    pub const ENGINE_THREADS: u8 = 0b100;
}

/// The server's answer, after `META`, to a `GET` it serves by multicast: the group to join and
/// how the file is cut into erasure-coded blocks ([`crate::protocol::fec::BlockPlan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Join {
    pub request_id: u32,
    /// The client's unicast session (for the repair of what the group did not deliver).
    pub session: u32,
    /// The group transmission: the `session` field of its datagrams.
    pub group: u32,
    /// Group address and port (IPv4 or IPv6).
    pub addr: std::net::SocketAddr,
    /// Source datagrams per block, and most repair datagrams per block.
    pub k: u16,
    pub parity: u16,
    /// The first block the transmission sends after this client joined: one that joins late
    /// gets the blocks before it by unicast.
    pub first_block: u32,
    /// Least time between two `FEEDBACK`s of this receiver, ms (grows with the group).
    pub feedback_ms: u16,
}

/// A group receiver's report: how far it got and what it still lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feedback<'a> {
    pub session: u32,
    pub group: u32,
    /// Every block from the receiver's first up to this one (excluded) is settled: whole, or
    /// given up to unicast (the receiver could hold no more of it).
    pub whole_below: u32,
    /// The newest block it has received anything of, plus one (0: nothing yet).
    pub seen_end: u32,
    /// Sources received of the blocks from its first to `seen_end - 1` (excluded, the block
    /// in progress): against how many those blocks have, the server measures its loss.
    pub sources_received: u64,
    /// Blocks the transmission has passed that still lack datagrams, at most
    /// [`MAX_FEEDBACK_BLOCKS`](super::super::limits::MAX_FEEDBACK_BLOCKS): set with
    /// [`Feedback::with_lacks`], read with [`Feedback::lacks`].
    pub lacks: LackList<'a>,
}

/// What a receiver lacks of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lack {
    pub block: u32,
    /// Datagrams it still needs to rebuild the block.
    pub missing: u16,
    /// 1 + the highest repair index of the block it has received (0: none): repairs the
    /// server sent after that one may still be on their way.
    pub repairs_seen: u16,
}

/// The encoded lacks of a [`Feedback`] (8 bytes each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LackList<'a>(pub(super) &'a [u8]);

impl<'a> Feedback<'a> {
    /// This feedback with `lacks` (at most [`MAX_FEEDBACK_BLOCKS`] of them) encoded into
    /// `scratch`.
    ///
    /// [`MAX_FEEDBACK_BLOCKS`]: super::super::limits::MAX_FEEDBACK_BLOCKS
    pub fn with_lacks<'b>(self, lacks: &[Lack], scratch: &'b mut Vec<u8>) -> Feedback<'b> {
        scratch.clear();
        for l in lacks.iter().take(super::super::limits::MAX_FEEDBACK_BLOCKS) {
            scratch.extend_from_slice(&l.block.to_be_bytes());
            scratch.extend_from_slice(&l.missing.to_be_bytes());
            scratch.extend_from_slice(&l.repairs_seen.to_be_bytes());
        }
        Feedback {
            lacks: LackList(scratch),
            ..self
        }
    }

    pub fn lacks(&self) -> impl Iterator<Item = Lack> + 'a {
        self.lacks.0.chunks_exact(8).map(|c| Lack {
            block: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
            missing: u16::from_be_bytes([c[4], c[5]]),
            repairs_seen: u16::from_be_bytes([c[6], c[7]]),
        })
    }

    pub fn lack_count(&self) -> usize {
        self.lacks.0.len() / 8
    }
}
