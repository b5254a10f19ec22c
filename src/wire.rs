//! The wire protocol: every message ringblast puts in a UDP datagram, with its exact layout.
//!
//! Parsing is the first thing untrusted bytes meet, so every parser here checks lengths before
//! reading and returns a [`WireError`] instead of panicking; the property tests below and in
//! `tests/` feed it random and truncated input. docs/PROTOCOL.md describes the exchange.
//!
//! All integers are big-endian. Every message starts with the same 4 bytes:
//!
//! ```text
//!  0      2        3      4
//!  +------+--------+------+
//!  | "RB" | ver=1  | kind |
//!  +------+--------+------+
//! ```
//!
//! `DATA` has a fixed 32-byte header (see [`DataHeader`]); every other message is a control
//! message laid out field after field as documented on its [`Message`] variant.

use thiserror::Error;

/// First two bytes of every ringblast datagram.
pub const MAGIC: [u8; 2] = *b"RB";
/// Protocol version carried in byte 2. A peer speaking another version is rejected.
pub const VERSION: u8 = 1;
/// Largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP); the lab's datagram size.
pub const MAX_DATAGRAM: usize = 65_507;
/// Bytes of header in front of every data payload.
pub const DATA_HEADER_LEN: usize = 32;
/// Largest file payload one datagram carries at the default datagram size.
pub const MAX_PAYLOAD: usize = MAX_DATAGRAM - DATA_HEADER_LEN;
/// A `HELLO` must be at least this long, so that the `RETRY` it provokes is smaller than the
/// request: an unvalidated address can never get more bytes back than it sent.
pub const HELLO_MIN_LEN: usize = 1200;
/// Length of an address-validation token (see `token.rs`).
pub const TOKEN_LEN: usize = 24;
/// Longest file name carried on the wire.
pub const MAX_NAME_LEN: usize = 255;
/// Most NACK ranges carried in one `ACK`.
pub const MAX_NACK_RANGES: usize = 128;
/// Longest human-readable text in an `ERROR`.
pub const MAX_ERROR_TEXT: usize = 200;

/// Message kinds (byte 3).
mod kind {
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

/// Error codes a server sends in `ERROR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotFound,
    BadName,
    BadToken,
    Busy,
    BadRequest,
    Internal,
    /// The session id in a client's message is unknown (expired or never existed).
    NoSession,
    /// The served file changed while it was being sent: the transfer is abandoned.
    FileChanged,
}

impl ErrorCode {
    fn to_u8(self) -> u8 {
        match self {
            ErrorCode::NotFound => 1,
            ErrorCode::BadName => 2,
            ErrorCode::BadToken => 3,
            ErrorCode::Busy => 4,
            ErrorCode::BadRequest => 5,
            ErrorCode::Internal => 6,
            ErrorCode::NoSession => 7,
            ErrorCode::FileChanged => 8,
        }
    }
    fn from_u8(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            1 => ErrorCode::NotFound,
            2 => ErrorCode::BadName,
            3 => ErrorCode::BadToken,
            4 => ErrorCode::Busy,
            5 => ErrorCode::BadRequest,
            6 => ErrorCode::Internal,
            7 => ErrorCode::NoSession,
            8 => ErrorCode::FileChanged,
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
    /// Send timestamp (ns) of the newest data datagram received, echoed for RTT.
    pub echo_ts_ns: u64,
    /// Time (µs) between that datagram's arrival and this ACK, subtracted from the RTT.
    pub echo_delay_us: u32,
    /// [`ack_flags`] bits.
    pub flags: u8,
    /// Missing ranges inside `[recv_next, seen_end)`, at most [`MAX_NACK_RANGES`].
    ranges: &'a [u8],
}

impl<'a> Ack<'a> {
    /// Builds an ACK whose ranges are encoded from `ranges` into `scratch`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        session: u32,
        recv_next: u32,
        credit_limit: u32,
        seen_end: u32,
        echo_ts_ns: u64,
        echo_delay_us: u32,
        flags: u8,
        ranges: &[NackRange],
        scratch: &'a mut Vec<u8>,
    ) -> Self {
        scratch.clear();
        for r in ranges.iter().take(MAX_NACK_RANGES) {
            scratch.extend_from_slice(&r.start.to_be_bytes());
            scratch.extend_from_slice(&r.len.to_be_bytes());
        }
        Ack {
            session,
            recv_next,
            credit_limit,
            seen_end,
            echo_ts_ns,
            echo_delay_us,
            flags,
            ranges: scratch,
        }
    }

    /// The NACK ranges carried by this ACK.
    pub fn ranges(&self) -> impl Iterator<Item = NackRange> + 'a {
        self.ranges.chunks_exact(8).map(|c| NackRange {
            start: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
            len: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
        })
    }

    pub fn range_count(&self) -> usize {
        self.ranges.len() / 8
    }
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

/// Every control message. `DATA` has its own fast path, [`DataHeader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// C→S `HELLO nonce:u64 padding…` (total length >= [`HELLO_MIN_LEN`]): asks for a token.
    Hello { nonce: u64 },
    /// S→C `RETRY nonce:u64 token:[24]`: the address-validation token for the sender's address.
    Retry { nonce: u64, token: [u8; TOKEN_LEN] },
    /// C→S `LIST token:[24] start:u32`: asks for the file list from entry `start`.
    List { token: [u8; TOKEN_LEN], start: u32 },
    /// S→C `LISTING total:u32 start:u32 count:u16 {size:u64 name_len:u8 name}*`.
    Listing {
        total: u32,
        start: u32,
        entries: Vec<ListEntry<'a>>,
    },
    /// C→S `GET token:[24] request_id:u32 mode:u8 window:u32 name_len:u8 name`.
    Get {
        token: [u8; TOKEN_LEN],
        request_id: u32,
        mode: Mode,
        /// Receiver's window in datagrams (upper bound on the credit it will grant).
        window: u32,
        name: &'a str,
    },
    /// S→C `META request_id:u32 session:u32 file_size:u64 payload_size:u32 mode:u8
    /// manifest_hash:[32] content_hash:[32]`.
    Meta(Meta),
    /// S→C `WAIT request_id:u32`: the request is being prepared (file being indexed).
    Wait { request_id: u32 },
    /// S→C `ERROR request_id:u32 code:u8 text_len:u8 text`.
    Error {
        request_id: u32,
        code: ErrorCode,
        text: &'a str,
    },
    /// C→S `ACK session:u32 recv_next:u32 credit_limit:u32 seen_end:u32 echo_ts_ns:u64
    /// echo_delay_us:u32 flags:u8 count:u16 {start:u32 len:u32}*`.
    Ack(Ack<'a>),
    /// C→S `DONE session:u32 status:u8`: the client is finished with the session.
    Done { session: u32, status: DoneStatus },
    /// S→C `END session:u32 datagrams:u32`: blast mode, the server sent every datagram once.
    End { session: u32, datagrams: u32 },
}

/// Cursor over untrusted bytes: every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    /// A length-prefixed (u8) UTF-8 string.
    fn str8(&mut self, what: &'static str) -> Result<&'a str, WireError> {
        let len = self.u8()? as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| WireError::Malformed(what))
    }
    fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing)
        }
    }
}

/// Checks the common 4-byte header and returns the message kind.
pub fn peek_kind(buf: &[u8]) -> Result<u8, WireError> {
    if buf.len() < 4 {
        return Err(WireError::Truncated);
    }
    if buf[0..2] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if buf[2] != VERSION {
        return Err(WireError::BadVersion(buf[2]));
    }
    Ok(buf[3])
}

/// True when the datagram claims to be `DATA` (header checks only).
pub fn is_data(buf: &[u8]) -> bool {
    peek_kind(buf) == Ok(kind::DATA)
}

fn header(out: &mut Vec<u8>, k: u8) {
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(k);
}

fn put_str8(out: &mut Vec<u8>, s: &str, max: usize) {
    // Truncate on a char boundary so the receiver always sees valid UTF-8.
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

impl<'a> Message<'a> {
    /// Parses a control message. `DATA` is refused here: use [`DataHeader::parse`].
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        let k = peek_kind(buf)?;
        if k == kind::DATA {
            return Err(WireError::Malformed("DATA is not a control message"));
        }
        // Every control message ends with CRC32C(everything before it): a corrupted request,
        // ACK or META is dropped here, before any of its fields is believed.
        if buf.len() < 8 {
            return Err(WireError::Truncated);
        }
        let (body, trailer) = buf.split_at(buf.len() - 4);
        let want = u32::from_be_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        if crc32c::crc32c(body) != want {
            return Err(WireError::BadChecksum);
        }
        let buf = body;
        let mut r = Reader { buf: &buf[4..] };
        let msg = match k {
            kind::HELLO => {
                if buf.len() + 4 < HELLO_MIN_LEN {
                    return Err(WireError::Malformed("HELLO shorter than 1200 bytes"));
                }
                let nonce = r.u64()?;
                // The rest is padding, deliberately ignored.
                return Ok(Message::Hello { nonce });
            }
            kind::RETRY => Message::Retry {
                nonce: r.u64()?,
                token: r.array()?,
            },
            kind::LIST => Message::List {
                token: r.array()?,
                start: r.u32()?,
            },
            kind::LISTING => {
                let total = r.u32()?;
                let start = r.u32()?;
                let count = r.u16()? as usize;
                // Each entry takes at least 9 bytes: bound the allocation by what is there.
                if count > r.buf.len() / 9 {
                    return Err(WireError::Malformed("listing count"));
                }
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let size = r.u64()?;
                    let name = r.str8("file name")?;
                    entries.push(ListEntry { name, size });
                }
                Message::Listing {
                    total,
                    start,
                    entries,
                }
            }
            kind::GET => Message::Get {
                token: r.array()?,
                request_id: r.u32()?,
                mode: Mode::from_u8(r.u8()?)?,
                window: r.u32()?,
                name: r.str8("file name")?,
            },
            kind::META => {
                let m = Meta {
                    request_id: r.u32()?,
                    session: r.u32()?,
                    file_size: r.u64()?,
                    payload_size: r.u32()?,
                    mode: Mode::from_u8(r.u8()?)?,
                    manifest_hash: r.array()?,
                    content_hash: r.array()?,
                };
                if m.payload_size == 0 || m.payload_size as usize > MAX_PAYLOAD {
                    return Err(WireError::Malformed("payload size"));
                }
                Message::Meta(m)
            }
            kind::WAIT => Message::Wait {
                request_id: r.u32()?,
            },
            kind::ERROR => Message::Error {
                request_id: r.u32()?,
                code: ErrorCode::from_u8(r.u8()?)?,
                text: r.str8("error text")?,
            },
            kind::ACK => {
                let session = r.u32()?;
                let recv_next = r.u32()?;
                let credit_limit = r.u32()?;
                let seen_end = r.u32()?;
                let echo_ts_ns = r.u64()?;
                let echo_delay_us = r.u32()?;
                let flags = r.u8()?;
                let count = r.u16()? as usize;
                if count > MAX_NACK_RANGES {
                    return Err(WireError::Malformed("too many NACK ranges"));
                }
                let ranges = r.take(count * 8)?;
                Message::Ack(Ack {
                    session,
                    recv_next,
                    credit_limit,
                    seen_end,
                    echo_ts_ns,
                    echo_delay_us,
                    flags,
                    ranges,
                })
            }
            kind::DONE => Message::Done {
                session: r.u32()?,
                status: match r.u8()? {
                    0 => DoneStatus::Complete,
                    1 => DoneStatus::Incomplete,
                    _ => return Err(WireError::Malformed("done status")),
                },
            },
            kind::END => Message::End {
                session: r.u32()?,
                datagrams: r.u32()?,
            },
            kind::DATA => return Err(WireError::Malformed("DATA is not a control message")),
            other => return Err(WireError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(msg)
    }

    /// Appends the encoded message, with its CRC32C trailer, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        self.encode_body(out);
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Message::Hello { nonce } => {
                let start = out.len();
                header(out, kind::HELLO);
                out.extend_from_slice(&nonce.to_be_bytes());
                // Padded so the whole datagram, trailer included, is HELLO_MIN_LEN bytes.
                out.resize(start + HELLO_MIN_LEN - 4, 0);
            }
            Message::Retry { nonce, token } => {
                header(out, kind::RETRY);
                out.extend_from_slice(&nonce.to_be_bytes());
                out.extend_from_slice(token);
            }
            Message::List { token, start } => {
                header(out, kind::LIST);
                out.extend_from_slice(token);
                out.extend_from_slice(&start.to_be_bytes());
            }
            Message::Listing {
                total,
                start,
                entries,
            } => {
                header(out, kind::LISTING);
                out.extend_from_slice(&total.to_be_bytes());
                out.extend_from_slice(&start.to_be_bytes());
                out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
                for e in entries {
                    out.extend_from_slice(&e.size.to_be_bytes());
                    put_str8(out, e.name, MAX_NAME_LEN);
                }
            }
            Message::Get {
                token,
                request_id,
                mode,
                window,
                name,
            } => {
                header(out, kind::GET);
                out.extend_from_slice(token);
                out.extend_from_slice(&request_id.to_be_bytes());
                out.push(mode.to_u8());
                out.extend_from_slice(&window.to_be_bytes());
                put_str8(out, name, MAX_NAME_LEN);
            }
            Message::Meta(m) => {
                header(out, kind::META);
                out.extend_from_slice(&m.request_id.to_be_bytes());
                out.extend_from_slice(&m.session.to_be_bytes());
                out.extend_from_slice(&m.file_size.to_be_bytes());
                out.extend_from_slice(&m.payload_size.to_be_bytes());
                out.push(m.mode.to_u8());
                out.extend_from_slice(&m.manifest_hash);
                out.extend_from_slice(&m.content_hash);
            }
            Message::Wait { request_id } => {
                header(out, kind::WAIT);
                out.extend_from_slice(&request_id.to_be_bytes());
            }
            Message::Error {
                request_id,
                code,
                text,
            } => {
                header(out, kind::ERROR);
                out.extend_from_slice(&request_id.to_be_bytes());
                out.push(code.to_u8());
                put_str8(out, text, MAX_ERROR_TEXT);
            }
            Message::Ack(a) => {
                header(out, kind::ACK);
                out.extend_from_slice(&a.session.to_be_bytes());
                out.extend_from_slice(&a.recv_next.to_be_bytes());
                out.extend_from_slice(&a.credit_limit.to_be_bytes());
                out.extend_from_slice(&a.seen_end.to_be_bytes());
                out.extend_from_slice(&a.echo_ts_ns.to_be_bytes());
                out.extend_from_slice(&a.echo_delay_us.to_be_bytes());
                out.push(a.flags);
                let n = a.range_count().min(MAX_NACK_RANGES);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                out.extend_from_slice(&a.ranges[..n * 8]);
            }
            Message::Done { session, status } => {
                header(out, kind::DONE);
                out.extend_from_slice(&session.to_be_bytes());
                out.push(match status {
                    DoneStatus::Complete => 0,
                    DoneStatus::Incomplete => 1,
                });
            }
            Message::End { session, datagrams } => {
                header(out, kind::END);
                out.extend_from_slice(&session.to_be_bytes());
                out.extend_from_slice(&datagrams.to_be_bytes());
            }
        }
    }

    /// Encodes into a fresh buffer (control path only).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        self.encode(&mut v);
        v
    }
}

/// Flags of a data datagram.
pub mod data_flags {
    /// This datagram is a retransmission.
    pub const RETRANSMIT: u8 = 1;
}

/// Header of a data datagram, followed by `payload_len` bytes of the file.
///
/// ```text
///  0    2   3    4      5      6           8          12      16           24          32
///  +----+---+----+------+------+-----------+----------+-------+------------+-----------+
///  | RB | 1 | 12 | flags| rsvd | payload   | session  | crc32c| offset     | send_ts   |
///  |    |   |    |      |      | len u16   | u32      | u32   | u64        | ns u64    |
///  +----+---+----+------+------+-----------+----------+-------+------------+-----------+
/// ```
///
/// `crc32c` = CRC32C(payload ‖ header bytes 0..12 ‖ header bytes 16..32): the payload's CRC is
/// computed once per file by the server's index and the header is appended to it, so the send
/// path never reads the payload; the receiver's payload CRC is reused for the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    pub flags: u8,
    pub payload_len: u16,
    pub session: u32,
    pub crc: u32,
    pub offset: u64,
    pub send_ts_ns: u64,
}

impl DataHeader {
    /// Writes the header into `out[..32]`, computing the CRC from the payload's CRC.
    pub fn emit(&self, payload_crc: u32, out: &mut [u8; DATA_HEADER_LEN]) {
        out[0..2].copy_from_slice(&MAGIC);
        out[2] = VERSION;
        out[3] = kind::DATA;
        out[4] = self.flags;
        out[5] = 0;
        out[6..8].copy_from_slice(&self.payload_len.to_be_bytes());
        out[8..12].copy_from_slice(&self.session.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..32].copy_from_slice(&self.send_ts_ns.to_be_bytes());
        let crc = header_crc(payload_crc, out);
        out[12..16].copy_from_slice(&crc.to_be_bytes());
    }

    /// Parses and length-checks a data datagram. Returns the header and the payload slice;
    /// the CRC is *not* checked here (see [`DataHeader::crc_ok`]).
    pub fn parse(buf: &[u8]) -> Result<(DataHeader, &[u8]), WireError> {
        if peek_kind(buf)? != kind::DATA {
            return Err(WireError::Malformed("not DATA"));
        }
        if buf.len() < DATA_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let h = DataHeader {
            flags: buf[4],
            payload_len: u16::from_be_bytes([buf[6], buf[7]]),
            session: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
            crc: u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]),
            offset: u64::from_be_bytes(buf[16..24].try_into().expect("8 bytes")),
            send_ts_ns: u64::from_be_bytes(buf[24..32].try_into().expect("8 bytes")),
        };
        let payload = &buf[DATA_HEADER_LEN..];
        if payload.len() != h.payload_len as usize {
            return Err(WireError::Malformed("payload length"));
        }
        Ok((h, payload))
    }

    /// True when `payload_crc` (CRC32C of the received payload) and the header bytes match
    /// the CRC the sender put in the header.
    pub fn crc_ok(raw_header: &[u8], payload_crc: u32) -> bool {
        if raw_header.len() < DATA_HEADER_LEN {
            return false;
        }
        let got = u32::from_be_bytes([
            raw_header[12],
            raw_header[13],
            raw_header[14],
            raw_header[15],
        ]);
        header_crc(payload_crc, raw_header) == got
    }
}

/// CRC32C of payload ‖ header-without-crc, chained from the payload's CRC.
fn header_crc(payload_crc: u32, header: &[u8]) -> u32 {
    let c = crc32c::crc32c_append(payload_crc, &header[0..12]);
    crc32c::crc32c_append(c, &header[16..32])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `body` with the CRC32C trailer a valid control message carries.
    fn with_crc(body: &[u8]) -> Vec<u8> {
        let mut v = body.to_vec();
        v.extend_from_slice(&crc32c::crc32c(body).to_be_bytes());
        v
    }

    fn roundtrip(m: Message<'_>) {
        let bytes = m.to_vec();
        let back = Message::parse(&bytes).expect("parses");
        assert_eq!(back, m);
        // Every strict prefix is rejected, never accepted as something else.
        let min = if matches!(m, Message::Hello { .. }) {
            HELLO_MIN_LEN
        } else {
            bytes.len()
        };
        for cut in 0..min.min(bytes.len()) {
            assert!(
                Message::parse(&bytes[..cut]).is_err(),
                "prefix {cut} accepted"
            );
        }
    }

    #[test]
    fn control_messages_round_trip() {
        let token = [7u8; TOKEN_LEN];
        roundtrip(Message::Hello { nonce: 42 });
        roundtrip(Message::Retry { nonce: 42, token });
        roundtrip(Message::List { token, start: 3 });
        roundtrip(Message::Listing {
            total: 2,
            start: 0,
            entries: vec![
                ListEntry {
                    name: "100mb.mp4",
                    size: 114_283_931,
                },
                ListEntry {
                    name: "ñandú.bin",
                    size: 0,
                },
            ],
        });
        roundtrip(Message::Get {
            token,
            request_id: 9,
            mode: Mode::Blast,
            window: 512,
            name: "250mb.mp4",
        });
        roundtrip(Message::Meta(Meta {
            request_id: 9,
            session: 77,
            file_size: 1 << 40,
            payload_size: MAX_PAYLOAD as u32,
            mode: Mode::Reliable,
            manifest_hash: [1; 32],
            content_hash: [2; 32],
        }));
        roundtrip(Message::Wait { request_id: 5 });
        roundtrip(Message::Error {
            request_id: 5,
            code: ErrorCode::Busy,
            text: "server busy: 64 sessions",
        });
        let mut scratch = Vec::new();
        let ranges = [
            NackRange { start: 10, len: 2 },
            NackRange { start: 20, len: 1 },
        ];
        let ack = Ack::new(
            77,
            10,
            600,
            25,
            123_456_789,
            17,
            ack_flags::IDLE,
            &ranges,
            &mut scratch,
        );
        assert_eq!(ack.ranges().collect::<Vec<_>>(), ranges);
        roundtrip(Message::Ack(ack));
        roundtrip(Message::Done {
            session: 77,
            status: DoneStatus::Incomplete,
        });
        roundtrip(Message::End {
            session: 77,
            datagrams: 1641,
        });
    }

    #[test]
    fn rejects_foreign_and_future_datagrams() {
        assert_eq!(Message::parse(b"LIST"), Err(WireError::BadMagic));
        assert_eq!(
            Message::parse(b"RB\x02\x01abcdefgh"),
            Err(WireError::BadVersion(2))
        );
        assert_eq!(
            Message::parse(&with_crc(b"RB\x01\xEE")),
            Err(WireError::UnknownKind(0xEE))
        );
        assert_eq!(
            Message::parse(b"RB\x01\x0A\x00\x00\x00\x01\x00"),
            Err(WireError::BadChecksum)
        );
        assert_eq!(Message::parse(b"R"), Err(WireError::Truncated));
        // A HELLO below the anti-amplification minimum is refused.
        let mut short = Message::Hello { nonce: 1 }.to_vec();
        short.truncate(HELLO_MIN_LEN - 1);
        assert!(Message::parse(&short).is_err());
        // Trailing junk after a fixed-size message is refused.
        let mut done = Message::Done {
            session: 1,
            status: DoneStatus::Complete,
        }
        .to_vec();
        done.push(0);
        assert_eq!(Message::parse(&done), Err(WireError::BadChecksum));
        // So is any single flipped bit, anywhere (the CRC trailer).
        let good = Message::Done {
            session: 1,
            status: DoneStatus::Complete,
        }
        .to_vec();
        for i in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(Message::parse(&bad).is_err(), "bit {i} flip accepted");
        }
    }

    #[test]
    fn unvalidated_answers_are_smaller_than_what_provokes_them() {
        // What the server sends to an address it has not validated, or for a session that
        // does not exist, must be smaller than the request: no amplification.
        let retry = Message::Retry {
            nonce: 1,
            token: [0; TOKEN_LEN],
        }
        .to_vec();
        assert!(retry.len() * 3 < HELLO_MIN_LEN);
        let mut scratch = Vec::new();
        let ack = Message::Ack(Ack::new(1, 0, 0, 0, 0, 0, 0, &[], &mut scratch)).to_vec();
        let no_session = Message::Error {
            request_id: 0,
            code: ErrorCode::NoSession,
            text: "no such session",
        }
        .to_vec();
        assert!(
            no_session.len() < ack.len(),
            "{} >= {}",
            no_session.len(),
            ack.len()
        );
        let get = Message::Get {
            token: [0; TOKEN_LEN],
            request_id: 0,
            mode: Mode::Reliable,
            window: 1,
            name: "",
        }
        .to_vec();
        let bad_token = Message::Error {
            request_id: 0,
            code: ErrorCode::BadToken,
            text: "bad token",
        }
        .to_vec();
        assert!(bad_token.len() < get.len());
    }

    #[test]
    fn error_text_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(300);
        let bytes = Message::Error {
            request_id: 1,
            code: ErrorCode::Internal,
            text: &long,
        }
        .to_vec();
        match Message::parse(&bytes).unwrap() {
            Message::Error { text, .. } => {
                assert!(text.len() <= MAX_ERROR_TEXT && text.chars().all(|c| c == 'é'))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn data_header_round_trip_and_crc() {
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let h = DataHeader {
            flags: data_flags::RETRANSMIT,
            payload_len: payload.len() as u16,
            session: 0xDEAD_BEEF,
            crc: 0,
            offset: 3 * 65_475,
            send_ts_ns: 1_700_000_000_123_456_789,
        };
        let mut hdr = [0u8; DATA_HEADER_LEN];
        h.emit(crc32c::crc32c(&payload), &mut hdr);
        let mut dgram = hdr.to_vec();
        dgram.extend_from_slice(&payload);
        let (back, body) = DataHeader::parse(&dgram).unwrap();
        assert_eq!(body, &payload[..]);
        assert_eq!(back.offset, h.offset);
        assert_eq!(back.session, h.session);
        assert_eq!(back.flags, h.flags);
        assert!(DataHeader::crc_ok(&dgram, crc32c::crc32c(body)));
        // The CRC covers the header: a flipped offset bit is caught.
        dgram[20] ^= 1;
        assert!(!DataHeader::crc_ok(
            &dgram,
            crc32c::crc32c(&dgram[DATA_HEADER_LEN..])
        ));
        dgram[20] ^= 1;
        // ...and the payload.
        dgram[DATA_HEADER_LEN + 10] ^= 0x80;
        assert!(!DataHeader::crc_ok(
            &dgram,
            crc32c::crc32c(&dgram[DATA_HEADER_LEN..])
        ));
        // A length that disagrees with the datagram is refused.
        assert!(DataHeader::parse(&dgram[..dgram.len() - 1]).is_err());
    }

    proptest! {
        // 2000 cases in CI; PROPTEST_CASES=N for a long fuzzing run (docs/RELIABILITY.md).
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
        ))]

        #[test]
        fn control_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = Message::parse(&bytes);
        }

        #[test]
        fn control_parser_never_panics_on_valid_prefix(kind in 1u8..=12, rest in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut body = vec![b'R', b'B', VERSION, kind];
            body.extend_from_slice(&rest);
            // A valid trailer, so the field parsers (not just the checksum) meet random bytes.
            let bytes = with_crc(&body);
            if let Ok(m) = Message::parse(&bytes) {
                // Whatever parses re-encodes to something that parses to the same message.
                let again = m.to_vec();
                prop_assert_eq!(Message::parse(&again).unwrap(), m);
            }
        }

        #[test]
        fn data_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut b = bytes.clone();
            if b.len() >= 4 { b[0] = b'R'; b[1] = b'B'; b[2] = VERSION; b[3] = kind::DATA; }
            if let Ok((h, p)) = DataHeader::parse(&b) {
                prop_assert_eq!(h.payload_len as usize, p.len());
            }
            let _ = DataHeader::crc_ok(&b, 0);
        }

        #[test]
        fn ack_round_trips(session: u32, next: u32, credit: u32, seen: u32, ts: u64, delay: u32,
                           raw in proptest::collection::vec((any::<u32>(), any::<u32>()), 0..200)) {
            let ranges: Vec<NackRange> = raw.iter().map(|&(start, len)| NackRange { start, len }).collect();
            let mut scratch = Vec::new();
            let ack = Ack::new(session, next, credit, seen, ts, delay, 0, &ranges, &mut scratch);
            let bytes = Message::Ack(ack).to_vec();
            match Message::parse(&bytes).unwrap() {
                Message::Ack(back) => {
                    let got: Vec<NackRange> = back.ranges().collect();
                    prop_assert_eq!(&got[..], &ranges[..ranges.len().min(MAX_NACK_RANGES)]);
                    prop_assert_eq!(back.recv_next, next);
                    prop_assert_eq!(back.credit_limit, credit);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
