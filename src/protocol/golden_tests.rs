//! Every message kind and the data header pinned to literal bytes, written from
//! docs/PROTOCOL.md's tables (not from the encoder): a field misplaced the same way in emit
//! and parse passes every round trip, but not these. The CRC32C trailer is the one thing
//! computed, over the literal bytes.

use super::*;

/// Bytes from hex (spaces and newlines ignored).
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    assert!(digits.len().is_multiple_of(2), "odd hex: {s}");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// A control message's bytes: `body` (from the magic on), zero-padded to `pad_to` bytes in
/// all if given, then the CRC32C of all that.
fn control(body: &str, pad_to: Option<usize>) -> Vec<u8> {
    let mut v = hex(body);
    if let Some(total) = pad_to {
        v.resize(total - 4, 0);
    }
    let crc = crc32c::crc32c(&v);
    v.extend_from_slice(&crc.to_be_bytes());
    v
}

/// `m` encodes to `want`, and `want` parses back to `m`.
fn pinned(m: Message<'_>, want: Vec<u8>) {
    assert_eq!(m.to_vec(), want, "{m:?} encodes differently");
    assert_eq!(
        Message::parse(&want).unwrap(),
        m,
        "the bytes parse differently"
    );
}

const TOKEN: [u8; TOKEN_LEN] = [0xA5; TOKEN_LEN];
const TOKEN_HEX: &str = "a5a5a5a5a5a5a5a5 a5a5a5a5a5a5a5a5 a5a5a5a5a5a5a5a5";

#[test]
fn hello_retry_list_listing() {
    pinned(
        Message::Hello {
            nonce: 0x0102_0304_0506_0708,
        },
        control("5242 07 01 0102030405060708", Some(1200)),
    );
    pinned(
        Message::Retry {
            nonce: 0x0102_0304_0506_0708,
            token: TOKEN,
        },
        control(&format!("5242 07 02 0102030405060708 {TOKEN_HEX}"), None),
    );
    pinned(
        Message::List {
            token: TOKEN,
            start: 0x0000_0102,
        },
        control(&format!("5242 07 03 {TOKEN_HEX} 00000102"), Some(1200)),
    );
    pinned(
        Message::Listing {
            total: 2,
            start: 1,
            entries: vec![
                ListEntry {
                    name: "ab",
                    size: 0x0102,
                },
                ListEntry { name: "", size: 7 },
            ],
        },
        control(
            "5242 07 04 00000002 00000001 0002 \
             0000000000000102 02 6162 \
             0000000000000007 00",
            None,
        ),
    );
}

#[test]
fn get_meta_wait_busy_error() {
    pinned(
        Message::Get {
            token: TOKEN,
            request_id: 0x0a0b_0c0d,
            mode: Mode::Blast,
            window_bytes: 0x0200_0000,
            max_datagram: 1472,
            flags: get_flags::MULTICAST,
            name: "f.bin",
        },
        control(
            &format!("5242 07 05 {TOKEN_HEX} 0a0b0c0d 01 02000000 05c0 01 05 662e62696e"),
            None,
        ),
    );
    // Bits 1-2: the engine wanted (2: threads).
    pinned(
        Message::Get {
            token: TOKEN,
            request_id: 1,
            mode: Mode::Reliable,
            window_bytes: 0,
            max_datagram: 0,
            flags: get_flags::ENGINE_THREADS | get_flags::MULTICAST,
            name: "gen-1GiB",
        },
        control(
            &format!("5242 07 05 {TOKEN_HEX} 00000001 00 00000000 0000 05 08 67656e2d31476942"),
            None,
        ),
    );
    pinned(
        Message::Meta(Meta {
            request_id: 0x0a0b_0c0d,
            session: 0x1122_3344,
            file_size: 0x0000_0001_0000_0000,
            payload_size: 61_440,
            mode: Mode::Reliable,
            manifest_hash: [0x11; 32],
            content_hash: [0x22; 32],
        }),
        control(
            &format!(
                "5242 07 06 0a0b0c0d 11223344 0000000100000000 0000f000 00 {} {}",
                "11".repeat(32),
                "22".repeat(32)
            ),
            None,
        ),
    );
    pinned(
        Message::Wait {
            request_id: 0x0a0b_0c0d,
        },
        control("5242 07 07 0a0b0c0d", None),
    );
    pinned(
        Message::Busy {
            request_id: 0x0a0b_0c0d,
            retry_after_ms: 200,
            text: "full",
        },
        control("5242 07 0e 0a0b0c0d 000000c8 04 66756c6c", None),
    );
    // Error codes: 1 not found ... 9 other version, 10 evicted, 11 engine not offered, 12-14
    // authentication (4 is unused: busy is BUSY).
    for (code, byte) in [
        (ErrorCode::NotFound, "01"),
        (ErrorCode::BadName, "02"),
        (ErrorCode::BadToken, "03"),
        (ErrorCode::BadRequest, "05"),
        (ErrorCode::Internal, "06"),
        (ErrorCode::NoSession, "07"),
        (ErrorCode::FileChanged, "08"),
        (ErrorCode::BadVersion, "09"),
        (ErrorCode::Evicted, "0a"),
        (ErrorCode::EngineNotOffered, "0b"),
        (ErrorCode::AuthRequired, "0c"),
        (ErrorCode::NotAuthorized, "0d"),
        (ErrorCode::NoAuth, "0e"),
    ] {
        pinned(
            Message::Error {
                request_id: 0x0a0b_0c0d,
                code,
                text: "no",
            },
            control(&format!("5242 07 08 0a0b0c0d {byte} 02 6e6f"), None),
        );
    }
    assert!(Message::parse(&control("5242 07 08 0a0b0c0d 04 00", None)).is_err());
}

#[test]
fn ack_done_end_status() {
    let ranges = [
        NackRange { start: 5, len: 2 },
        NackRange {
            start: 0x0100,
            len: 1,
        },
    ];
    let mut scratch = Vec::new();
    pinned(
        Message::Ack(
            Ack {
                recv_next: 5,
                credit_limit: 0x0000_1005,
                seen_end: 0x0101,
                received: 0x00f0,
                duplicates: 3,
                echo_ts_ns: 0x1122_3344_5566_7788,
                echo_delay_us: 0x0000_0400,
                flags: ack_flags::IDLE,
                ..Ack::new(0x1122_3344)
            }
            .with_ranges(&ranges, &mut scratch),
        ),
        control(
            "5242 07 09 11223344 00000005 00001005 00000101 000000f0 00000003 \
             1122334455667788 00000400 01 0002 \
             00000005 00000002 00000100 00000001",
            None,
        ),
    );
    pinned(
        Message::Done {
            session: 0x1122_3344,
            status: DoneStatus::Incomplete,
        },
        control("5242 07 0a 11223344 01", None),
    );
    pinned(
        Message::End {
            session: 0x1122_3344,
            datagrams: 0x0001_0000,
        },
        control("5242 07 0b 11223344 00010000", None),
    );
    pinned(
        Message::Status(Status {
            session: 0x1122_3344,
            pacing_bps: 1_000_000_000,
            delivery_bps: 0x0102,
            srtt_us: 1,
            min_rtt_us: 2,
            inflight: 3,
            cwnd: 4,
            loss_events: 5,
            retransmitted: 6,
            spurious: 7,
        }),
        control(
            "5242 07 0d 11223344 000000003b9aca00 0000000000000102 \
             00000001 00000002 00000003 00000004 00000005 00000006 00000007",
            None,
        ),
    );
}

/// The data header, byte for byte, and its CRC: CRC32C(payload ‖ header bytes 0..12 ‖
/// header bytes 16..32), computed here over the concatenation (the code chains it).
#[test]
fn the_data_header() {
    let payload = b"hello, ringblast";
    let h = DataHeader {
        flags: data_flags::RETRANSMIT,
        payload_len: payload.len() as u16,
        session: 0x1122_3344,
        crc: 0,
        offset: 0x0000_0001_0000_0000,
        send_ts_ns: 0x1122_3344_5566_7788,
    };
    let mut out = [0u8; DATA_HEADER_LEN];
    h.emit(crc32c::crc32c(payload), &mut out);
    let before = hex("5242 07 0c 01 00 0010 11223344");
    let after = hex("0000000100000000 1122334455667788");
    let crc = crc32c::crc32c(&[&payload[..], &before, &after].concat());
    let want = [before, crc.to_be_bytes().to_vec(), after].concat();
    assert_eq!(out.to_vec(), want);
    let datagram = [&want[..], payload].concat();
    let (back, body) = DataHeader::parse(&datagram).unwrap();
    assert_eq!(back, DataHeader { crc, ..h });
    assert_eq!(body, payload);
    assert!(DataHeader::crc_ok(&datagram, crc32c::crc32c(payload)));
}

#[test]
fn join_feedback_group_end() {
    pinned(
        Message::Join(Join {
            request_id: 0x0a0b_0c0d,
            session: 0x1122_3344,
            group: 0x5566_7788,
            addr: "239.255.77.1:7000".parse().unwrap(),
            k: 256,
            parity: 64,
            first_block: 3,
            feedback_ms: 20,
        }),
        control(
            "5242 07 0f 0a0b0c0d 11223344 55667788 04 efff4d01 1b58 0100 0040 00000003 0014",
            None,
        ),
    );
    pinned(
        Message::Join(Join {
            request_id: 1,
            session: 2,
            group: 3,
            addr: "[ff15::77]:7000".parse().unwrap(),
            k: 6,
            parity: 4,
            first_block: 0,
            feedback_ms: 100,
        }),
        control(
            "5242 07 0f 00000001 00000002 00000003 06 ff150000000000000000000000000077 \
             1b58 0006 0004 00000000 0064",
            None,
        ),
    );
    let mut scratch = Vec::new();
    pinned(
        Message::Feedback(
            Feedback {
                session: 0x1122_3344,
                group: 0x5566_7788,
                whole_below: 7,
                seen_end: 12,
                sources_received: 0x0102_0304_0506_0708,
                lacks: Default::default(),
            }
            .with_lacks(
                &[
                    Lack {
                        block: 7,
                        missing: 3,
                        repairs_seen: 0,
                    },
                    Lack {
                        block: 9,
                        missing: 1,
                        repairs_seen: 5,
                    },
                ],
                &mut scratch,
            ),
        ),
        control(
            "5242 07 10 11223344 55667788 00000007 0000000c 0102030405060708 0002 \
             00000007 0003 0000 00000009 0001 0005",
            None,
        ),
    );
    pinned(
        Message::GroupEnd {
            group: 0x5566_7788,
            blocks: 512,
            last: true,
        },
        control("5242 07 11 55667788 00000200 01", None),
    );
}

/// The handshake's three messages (issue 23; docs/PROTOCOL.md, "Authenticated connections").
#[test]
fn handshake_messages() {
    pinned(
        Message::HandshakeInit {
            token: TOKEN,
            nonce: 0x0102_0304_0506_0708,
            noise: b"e-key",
        },
        control(
            &format!("5242 07 14 {TOKEN_HEX} 0102030405060708 0005 652d6b6579"),
            Some(1200),
        ),
    );
    pinned(
        Message::HandshakeReply {
            nonce: 0x0102_0304_0506_0708,
            conn: 0x1122_3344,
            noise: b"e,ee,s,es",
        },
        control(
            "5242 07 15 0102030405060708 11223344 0009 652c65652c732c6573",
            None,
        ),
    );
    pinned(
        Message::HandshakeFinish {
            conn: 0x1122_3344,
            noise: b"s,se",
        },
        control("5242 07 16 11223344 0004 732c7365", None),
    );
    pinned(
        Message::GroupKey {
            group: 0x5566_7788,
            key: [0x11; 16],
            iv: [0x22; 12],
        },
        control(
            "5242 07 17 55667788 11111111111111111111111111111111 222222222222222222222222",
            None,
        ),
    );
}

/// A group's repair datagram: laid out like the data header, kind 18, its CRC computed the
/// same way.
#[test]
fn the_repair_header() {
    let shard = b"parity!!";
    let h = RepairHeader {
        flags: 0,
        payload_len: shard.len() as u16,
        group: 0x5566_7788,
        crc: 0,
        block: 0x0000_0102,
        repair: 3,
        k: 256,
        send_ts_ns: 0x1122_3344_5566_7788,
    };
    let mut out = [0u8; DATA_HEADER_LEN];
    h.emit(crc32c::crc32c(shard), &mut out);
    let before = hex("5242 07 12 00 00 0008 55667788");
    let after = hex("00000102 0003 0100 1122334455667788");
    let crc = crc32c::crc32c(&[&shard[..], &before, &after].concat());
    let want = [before, crc.to_be_bytes().to_vec(), after].concat();
    assert_eq!(out.to_vec(), want);
    let datagram = [&want[..], shard].concat();
    let (back, body) = RepairHeader::parse(&datagram).unwrap();
    assert_eq!(back, RepairHeader { crc, ..h });
    assert_eq!(body, shard);
}
