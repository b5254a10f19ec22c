//! Control messages: every ringblast message except data, with its exact layout.
//!
//! Parsing is the first thing untrusted bytes meet, so every parser here checks lengths before
//! reading and returns a [`WireError`] instead of panicking; the property tests below feed it
//! random and truncated input. Every control message ends with a CRC32C trailer.
//! docs/PROTOCOL.md describes the exchange.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::limits::{
    HELLO_MIN_LEN, MAX_ERROR_TEXT, MAX_FEEDBACK_BLOCKS, MAX_NACK_RANGES, MAX_NAME_LEN, MAX_PAYLOAD,
    TOKEN_LEN,
};
use super::{kind, peek_kind, Mode, WireError, MAGIC, VERSION};

#[path = "message_types.rs"]
mod types;
pub use types::*;

/// Every control message. `DATA` has its own fast path, [`DataHeader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// C→S `HELLO nonce:u64 padding…` (total length >= [`HELLO_MIN_LEN`]): asks for a token.
    Hello { nonce: u64 },
    /// S→C `RETRY nonce:u64 token:[24]`: the address-validation token for the sender's address.
    Retry { nonce: u64, token: [u8; TOKEN_LEN] },
    /// C→S `LIST token:[24] start:u32 padding…` (total length >= [`HELLO_MIN_LEN`]): asks
    /// for the file list from entry `start`. The answer is at most three times as long as the
    /// request, so the padding is what pays for a page (a replayed token cannot amplify).
    List { token: [u8; TOKEN_LEN], start: u32 },
    /// S→C `LISTING total:u32 start:u32 count:u16 {size:u64 name_len:u8 name}*`.
    Listing {
        total: u32,
        start: u32,
        entries: Vec<ListEntry<'a>>,
    },
    /// C→S `GET token:[24] request_id:u32 mode:u8 window_bytes:u32 max_datagram:u16 flags:u8
    /// name_len:u8 name`.
    Get {
        token: [u8; TOKEN_LEN],
        request_id: u32,
        mode: Mode,
        /// Receiver's window in bytes of payload (upper bound on the credit it will grant).
        window_bytes: u32,
        /// Largest datagram (header included) the receiver takes: its path MTU less the IP
        /// and UDP headers, or what its user set. 0: no limit of its own.
        max_datagram: u16,
        /// [`get_flags`] bits.
        flags: u8,
        name: &'a str,
    },
    /// S→C `META request_id:u32 session:u32 file_size:u64 payload_size:u32 mode:u8
    /// manifest_hash:[32] content_hash:[32]`.
    Meta(Meta),
    /// S→C `WAIT request_id:u32`: the request is being prepared (file being scanned).
    Wait { request_id: u32 },
    /// S→C `BUSY request_id:u32 retry_after_ms:u32 text_len:u8 text`: no room now (the
    /// server's session limits, or this address's request budget); ask again in
    /// `retry_after_ms` or later. `request_id` is the refused GET's, the low 32 bits of a
    /// refused HELLO's nonce, or 0 (a LIST).
    Busy {
        request_id: u32,
        retry_after_ms: u32,
        text: &'a str,
    },
    /// S→C `ERROR request_id:u32 code:u8 text_len:u8 text`.
    Error {
        request_id: u32,
        code: ErrorCode,
        text: &'a str,
    },
    /// C→S `ACK session:u32 recv_next:u32 credit_limit:u32 seen_end:u32 received:u32
    /// duplicates:u32 echo_ts_ns:u64 echo_delay_us:u32 flags:u8 count:u16 {start:u32 len:u32}*`.
    Ack(Ack<'a>),
    /// S→C `STATUS session:u32 pacing_bps:u64 delivery_bps:u64 srtt_us:u32 min_rtt_us:u32
    /// inflight:u32 cwnd:u32 loss_events:u32 retransmitted:u32 spurious:u32`: the sender's
    /// view of the path, every 100 ms during a transfer (for `get -i` and `--json`).
    Status(Status),
    /// C→S `DONE session:u32 status:u8`: the client is finished with the session.
    Done { session: u32, status: DoneStatus },
    /// S→C `END session:u32 datagrams:u32`: blast mode, the server sent every datagram once.
    End { session: u32, datagrams: u32 },
    /// S→C `JOIN request_id:u32 session:u32 group:u32 family:u8 addr:[4 or 16] port:u16 k:u16
    /// parity:u16 first_block:u32 feedback_ms:u16` (family 4: a 4-byte address; 6: 16 bytes):
    /// before `META`, the group that carries the file.
    Join(Join),
    /// C→S `FEEDBACK session:u32 group:u32 whole_below:u32 seen_end:u32 sources_received:u64
    /// count:u16 {block:u32 missing:u16 repairs_seen:u16}*`: a group receiver's progress and
    /// the blocks it still lacks.
    Feedback(Feedback<'a>),
    /// S→group `GROUP_END group:u32 blocks:u32 last:u8`: the transmission has sent all its
    /// blocks; with `last`, no more repairs come by multicast (what is missing is fetched by
    /// unicast).
    GroupEnd { group: u32, blocks: u32, last: bool },
    /// C→S `HS_INIT token:[24] nonce:u64 noise_len:u16 noise padding…` (total length >=
    /// [`HELLO_MIN_LEN`]): the first Noise handshake message (`protocol/noise.rs`), sent with
    /// a token like a GET.
    HandshakeInit {
        token: [u8; TOKEN_LEN],
        nonce: u64,
        noise: &'a [u8],
    },
    /// S→C `HS_REPLY nonce:u64 conn:u32 noise_len:u16 noise`: the second, with the connection
    /// the server gave the client (its sealed datagrams' `conn`).
    HandshakeReply {
        nonce: u64,
        conn: u32,
        noise: &'a [u8],
    },
    /// C→S `HS_FINISH conn:u32 noise_len:u16 noise`: the third (the client's static key).
    HandshakeFinish { conn: u32, noise: &'a [u8] },
    /// S→C `GROUP_KEY group:u32 key:[16] iv:[12]`, only ever sealed, before the `JOIN` of a
    /// sealed multicast transmission: the AES-128-GCM key and IV its group datagrams are
    /// sealed with (connection id: the group).
    GroupKey {
        group: u32,
        key: [u8; 16],
        iv: [u8; 12],
    },
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
    /// Length-prefixed (u16) bytes, at most [`MAX_HANDSHAKE_MESSAGE`] of them.
    ///
    /// [`MAX_HANDSHAKE_MESSAGE`]: super::noise::MAX_HANDSHAKE_MESSAGE
    fn bytes16(&mut self, what: &'static str) -> Result<&'a [u8], WireError> {
        let len = self.u16()? as usize;
        if len > super::noise::MAX_HANDSHAKE_MESSAGE {
            return Err(WireError::Malformed(what));
        }
        self.take(len)
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

fn header(out: &mut Vec<u8>, k: u8) {
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(k);
}

/// `noise` with its u16 length (at most [`super::noise::MAX_HANDSHAKE_MESSAGE`] bytes: the
/// handshake writes no more).
fn put_bytes16(out: &mut Vec<u8>, noise: &[u8]) {
    let n = noise.len().min(super::noise::MAX_HANDSHAKE_MESSAGE);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&noise[..n]);
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
        if k == kind::DATA || k == kind::REPAIR {
            return Err(WireError::Malformed(
                "DATA and REPAIR are not control messages",
            ));
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
            kind::LIST => {
                if buf.len() + 4 < HELLO_MIN_LEN {
                    return Err(WireError::Malformed("LIST shorter than 1200 bytes"));
                }
                let token = r.array()?;
                let start = r.u32()?;
                // The rest is padding, deliberately ignored.
                return Ok(Message::List { token, start });
            }
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
                window_bytes: r.u32()?,
                max_datagram: r.u16()?,
                flags: r.u8()?,
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
            kind::BUSY => Message::Busy {
                request_id: r.u32()?,
                retry_after_ms: r.u32()?,
                text: r.str8("busy text")?,
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
                let received = r.u32()?;
                let duplicates = r.u32()?;
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
                    received,
                    duplicates,
                    echo_ts_ns,
                    echo_delay_us,
                    flags,
                    nacks: NackRanges(ranges),
                })
            }
            kind::STATUS => Message::Status(Status {
                session: r.u32()?,
                pacing_bps: r.u64()?,
                delivery_bps: r.u64()?,
                srtt_us: r.u32()?,
                min_rtt_us: r.u32()?,
                inflight: r.u32()?,
                cwnd: r.u32()?,
                loss_events: r.u32()?,
                retransmitted: r.u32()?,
                spurious: r.u32()?,
            }),
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
            kind::JOIN => {
                let (request_id, session, group) = (r.u32()?, r.u32()?, r.u32()?);
                let ip = match r.u8()? {
                    4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
                    6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
                    _ => return Err(WireError::Malformed("group address")),
                };
                if !ip.is_multicast() {
                    return Err(WireError::Malformed("group address"));
                }
                Message::Join(Join {
                    request_id,
                    session,
                    group,
                    addr: SocketAddr::new(ip, r.u16()?),
                    k: r.u16()?,
                    parity: r.u16()?,
                    first_block: r.u32()?,
                    feedback_ms: r.u16()?,
                })
            }
            kind::FEEDBACK => {
                let (session, group, whole_below, seen_end) =
                    (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
                let sources_received = r.u64()?;
                let count = r.u16()? as usize;
                if count > MAX_FEEDBACK_BLOCKS {
                    return Err(WireError::Malformed("too many blocks in FEEDBACK"));
                }
                Message::Feedback(Feedback {
                    session,
                    group,
                    whole_below,
                    seen_end,
                    sources_received,
                    lacks: LackList(r.take(count * 8)?),
                })
            }
            kind::GROUP_END => Message::GroupEnd {
                group: r.u32()?,
                blocks: r.u32()?,
                last: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::Malformed("GROUP_END last")),
                },
            },
            kind::GROUP_KEY => Message::GroupKey {
                group: r.u32()?,
                key: r.take(16)?.try_into().expect("16 bytes"),
                iv: r.take(12)?.try_into().expect("12 bytes"),
            },
            kind::HS_INIT => {
                if buf.len() + 4 < HELLO_MIN_LEN {
                    return Err(WireError::Malformed("HS_INIT shorter than 1200 bytes"));
                }
                let token = r.array()?;
                let nonce = r.u64()?;
                let noise = r.bytes16("handshake message")?;
                // The rest is padding, deliberately ignored.
                return Ok(Message::HandshakeInit {
                    token,
                    nonce,
                    noise,
                });
            }
            kind::HS_REPLY => Message::HandshakeReply {
                nonce: r.u64()?,
                conn: r.u32()?,
                noise: r.bytes16("handshake message")?,
            },
            kind::HS_FINISH => Message::HandshakeFinish {
                conn: r.u32()?,
                noise: r.bytes16("handshake message")?,
            },
            kind::DATA | kind::REPAIR => {
                return Err(WireError::Malformed(
                    "DATA and REPAIR are not control messages",
                ))
            }
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
            Message::List {
                token,
                start: first,
            } => {
                let start = out.len();
                header(out, kind::LIST);
                out.extend_from_slice(token);
                out.extend_from_slice(&first.to_be_bytes());
                out.resize(start + HELLO_MIN_LEN - 4, 0);
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
                window_bytes,
                max_datagram,
                flags,
                name,
            } => {
                header(out, kind::GET);
                out.extend_from_slice(token);
                out.extend_from_slice(&request_id.to_be_bytes());
                out.push(mode.to_u8());
                out.extend_from_slice(&window_bytes.to_be_bytes());
                out.extend_from_slice(&max_datagram.to_be_bytes());
                out.push(*flags);
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
            Message::Busy {
                request_id,
                retry_after_ms,
                text,
            } => {
                header(out, kind::BUSY);
                out.extend_from_slice(&request_id.to_be_bytes());
                out.extend_from_slice(&retry_after_ms.to_be_bytes());
                put_str8(out, text, MAX_ERROR_TEXT);
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
                out.extend_from_slice(&a.received.to_be_bytes());
                out.extend_from_slice(&a.duplicates.to_be_bytes());
                out.extend_from_slice(&a.echo_ts_ns.to_be_bytes());
                out.extend_from_slice(&a.echo_delay_us.to_be_bytes());
                out.push(a.flags);
                let n = a.range_count().min(MAX_NACK_RANGES);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                out.extend_from_slice(&a.nacks.0[..n * 8]);
            }
            Message::Status(st) => {
                header(out, kind::STATUS);
                out.extend_from_slice(&st.session.to_be_bytes());
                out.extend_from_slice(&st.pacing_bps.to_be_bytes());
                out.extend_from_slice(&st.delivery_bps.to_be_bytes());
                for v in [
                    st.srtt_us,
                    st.min_rtt_us,
                    st.inflight,
                    st.cwnd,
                    st.loss_events,
                    st.retransmitted,
                    st.spurious,
                ] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
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
            Message::Join(j) => {
                header(out, kind::JOIN);
                for v in [j.request_id, j.session, j.group] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                match j.addr.ip() {
                    IpAddr::V4(a) => {
                        out.push(4);
                        out.extend_from_slice(&a.octets());
                    }
                    IpAddr::V6(a) => {
                        out.push(6);
                        out.extend_from_slice(&a.octets());
                    }
                }
                for v in [j.addr.port(), j.k, j.parity] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                out.extend_from_slice(&j.first_block.to_be_bytes());
                out.extend_from_slice(&j.feedback_ms.to_be_bytes());
            }
            Message::Feedback(f) => {
                header(out, kind::FEEDBACK);
                for v in [f.session, f.group, f.whole_below, f.seen_end] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                out.extend_from_slice(&f.sources_received.to_be_bytes());
                let n = f.lack_count().min(MAX_FEEDBACK_BLOCKS);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                out.extend_from_slice(&f.lacks.0[..n * 8]);
            }
            Message::GroupEnd {
                group,
                blocks,
                last,
            } => {
                header(out, kind::GROUP_END);
                out.extend_from_slice(&group.to_be_bytes());
                out.extend_from_slice(&blocks.to_be_bytes());
                out.push(*last as u8);
            }
            Message::HandshakeInit {
                token,
                nonce,
                noise,
            } => {
                let start = out.len();
                header(out, kind::HS_INIT);
                out.extend_from_slice(token);
                out.extend_from_slice(&nonce.to_be_bytes());
                put_bytes16(out, noise);
                // Padded like HELLO: the reply stays within three times the request.
                if out.len() < start + HELLO_MIN_LEN - 4 {
                    out.resize(start + HELLO_MIN_LEN - 4, 0);
                }
            }
            Message::HandshakeReply { nonce, conn, noise } => {
                header(out, kind::HS_REPLY);
                out.extend_from_slice(&nonce.to_be_bytes());
                out.extend_from_slice(&conn.to_be_bytes());
                put_bytes16(out, noise);
            }
            Message::HandshakeFinish { conn, noise } => {
                header(out, kind::HS_FINISH);
                out.extend_from_slice(&conn.to_be_bytes());
                put_bytes16(out, noise);
            }
            Message::GroupKey { group, key, iv } => {
                header(out, kind::GROUP_KEY);
                out.extend_from_slice(&group.to_be_bytes());
                out.extend_from_slice(key);
                out.extend_from_slice(iv);
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

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
