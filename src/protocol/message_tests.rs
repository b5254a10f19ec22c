//! Round trips, rejections and property tests of the control-message codec.

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
    let min = if matches!(m, Message::Hello { .. } | Message::List { .. }) {
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
        window_bytes: 32 << 20,
        max_datagram: 1472,
        flags: 0,
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
        code: ErrorCode::NotFound,
        text: "no such file",
    });
    roundtrip(Message::Busy {
        request_id: 5,
        retry_after_ms: 250,
        text: "server busy: 64 sessions",
    });
    let mut scratch = Vec::new();
    let ranges = [
        NackRange { start: 10, len: 2 },
        NackRange { start: 20, len: 1 },
    ];
    let ack = Ack {
        recv_next: 10,
        credit_limit: 600,
        seen_end: 25,
        received: 22,
        duplicates: 3,
        echo_ts_ns: 123_456_789,
        echo_delay_us: 17,
        flags: ack_flags::IDLE,
        ..Ack::new(77)
    }
    .with_ranges(&ranges, &mut scratch);
    assert_eq!(ack.ranges().collect::<Vec<_>>(), ranges);
    roundtrip(Message::Ack(ack));
    roundtrip(Message::Status(Status {
        session: 77,
        pacing_bps: 1_000_000_000,
        delivery_bps: 950_000_000,
        srtt_us: 100_000,
        min_rtt_us: 99_000,
        inflight: 8000,
        cwnd: 17_000,
        loss_events: 4,
        retransmitted: 80,
        spurious: 1,
    }));
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
        Message::parse(&with_crc(b"RB\x08\x01abcdefgh")),
        Err(WireError::BadVersion(8))
    );
    // Version 6 (before authentication) is another.
    assert_eq!(
        Message::parse(&with_crc(b"RB\x06\x01abcdefgh")),
        Err(WireError::BadVersion(6))
    );
    assert_eq!(
        Message::parse(&with_crc(b"RB\x04\x01abcdefgh")),
        Err(WireError::BadVersion(4))
    );
    // Version 5 (before the engine in GET), 4 (before multicast), 3 (before padded LISTs), 2 (before BUSY) and 1 (before the datagram size was
    // negotiated) are others.
    assert_eq!(
        Message::parse(&with_crc(b"RB\x03\x01abcdefgh")),
        Err(WireError::BadVersion(3))
    );
    assert_eq!(
        Message::parse(&with_crc(b"RB\x02\x01abcdefgh")),
        Err(WireError::BadVersion(2))
    );
    assert_eq!(
        Message::parse(&with_crc(b"RB\x01\x01abcdefgh")),
        Err(WireError::BadVersion(1))
    );
    assert_eq!(
        crate::protocol::foreign_version(&with_crc(b"RB\x01\x01")),
        Some(1)
    );
    assert_eq!(
        crate::protocol::foreign_version(&with_crc(b"RB\x02\x01")),
        Some(2)
    );
    assert_eq!(
        crate::protocol::foreign_version(&with_crc(b"RB\x03\x01")),
        Some(3)
    );
    assert_eq!(
        crate::protocol::foreign_version(&with_crc(b"RB\x04\x01")),
        Some(4)
    );
    assert_eq!(
        crate::protocol::foreign_version(&with_crc(b"RB\x05\x01")),
        Some(5)
    );
    assert_eq!(
        crate::protocol::foreign_version(&with_crc(b"RB\x06\x01")),
        Some(6)
    );
    assert_eq!(
        crate::protocol::foreign_version(&with_crc(b"RB\x07\x01")),
        None
    );
    // A datagram of this version with its version byte flipped on the way: corruption, not
    // another release (its CRC fails).
    let mut flipped = with_crc(b"RB\x07\x01abcdefgh");
    flipped[2] ^= 0x20;
    assert_eq!(crate::protocol::foreign_version(&flipped), None);
    assert_eq!(Message::parse(&flipped), Err(WireError::BadChecksum));
    assert_eq!(crate::protocol::foreign_version(b"XX\x01\x01"), None);
    assert_eq!(
        Message::parse(&with_crc(b"RB\x07\xEE")),
        Err(WireError::UnknownKind(0xEE))
    );
    assert_eq!(
        Message::parse(b"RB\x06\x0A\x00\x00\x00\x01\x00"),
        Err(WireError::BadChecksum)
    );
    assert_eq!(Message::parse(b"R"), Err(WireError::Truncated));
    // A HELLO or a LIST below the anti-amplification minimum is refused, even with a valid
    // checksum.
    for m in [
        Message::Hello { nonce: 1 },
        Message::List {
            token: [3; TOKEN_LEN],
            start: 0,
        },
    ] {
        let mut short = m.to_vec();
        short.truncate(HELLO_MIN_LEN - 5);
        assert!(Message::parse(&short).is_err());
        assert!(Message::parse(&with_crc(&short)).is_err(), "{m:?}");
    }
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
    let ack = Message::Ack(Ack::new(1).with_ranges(&[], &mut scratch)).to_vec();
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
        window_bytes: 1,
        max_datagram: 0,
        flags: 0,
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

proptest! {
    // 2000 cases in CI; PROPTEST_CASES=N for a long fuzzing run (docs/RELIABILITY.md).
    #![proptest_config(ProptestConfig::with_cases(crate::protocol::proptest_cases()))]

    #[test]
    fn control_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let _ = Message::parse(&bytes);
    }

    #[test]
    fn control_parser_never_panics_on_valid_prefix(kind in 1u8..=23, rest in proptest::collection::vec(any::<u8>(), 0..600)) {
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

    /// The handshake's messages round-trip whatever they carry (up to the largest Noise
    /// message), the first is padded like HELLO, the reply fits three times it.
    #[test]
    fn handshake_messages_round_trip(nonce: u64, conn: u32,
                                     noise in proptest::collection::vec(any::<u8>(), 0..=crate::protocol::noise::MAX_HANDSHAKE_MESSAGE)) {
        let init = Message::HandshakeInit { token: [7; TOKEN_LEN], nonce, noise: &noise }.to_vec();
        prop_assert!(init.len() >= HELLO_MIN_LEN);
        prop_assert_eq!(Message::parse(&init).unwrap(), Message::HandshakeInit { token: [7; TOKEN_LEN], nonce, noise: &noise });
        let reply = Message::HandshakeReply { nonce, conn, noise: &noise }.to_vec();
        prop_assert!(reply.len() <= 3 * init.len());
        prop_assert_eq!(Message::parse(&reply).unwrap(), Message::HandshakeReply { nonce, conn, noise: &noise });
        let finish = Message::HandshakeFinish { conn, noise: &noise }.to_vec();
        prop_assert_eq!(Message::parse(&finish).unwrap(), Message::HandshakeFinish { conn, noise: &noise });
        let key: [u8; 16] = std::array::from_fn(|i| noise.get(i).copied().unwrap_or(i as u8));
        let iv: [u8; 12] = std::array::from_fn(|i| (nonce >> (i % 8)) as u8);
        let gk = Message::GroupKey { group: conn, key, iv };
        let bytes = gk.to_vec();
        prop_assert_eq!(Message::parse(&bytes).unwrap(), gk);
    }

    #[test]
    fn feedback_round_trips(session: u32, group: u32, whole: u32, seen: u32, received: u64,
                            raw in proptest::collection::vec((any::<u32>(), any::<u16>(), any::<u16>()), 0..200)) {
        let lacks: Vec<Lack> = raw.iter().map(|&(block, missing, repairs_seen)| Lack { block, missing, repairs_seen }).collect();
        let mut scratch = Vec::new();
        let f = Feedback { session, group, whole_below: whole, seen_end: seen, sources_received: received, lacks: Default::default() }
            .with_lacks(&lacks, &mut scratch);
        let bytes = Message::Feedback(f).to_vec();
        prop_assert!(bytes.len() <= HELLO_MIN_LEN);
        match Message::parse(&bytes).unwrap() {
            Message::Feedback(back) => {
                let got: Vec<Lack> = back.lacks().collect();
                prop_assert_eq!(&got[..], &lacks[..lacks.len().min(MAX_FEEDBACK_BLOCKS)]);
                prop_assert_eq!((back.session, back.group, back.whole_below, back.seen_end, back.sources_received), (session, group, whole, seen, received));
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn ack_round_trips(session: u32, next: u32, credit: u32, seen: u32, ts: u64, delay: u32,
                       raw in proptest::collection::vec((any::<u32>(), any::<u32>()), 0..200)) {
        let ranges: Vec<NackRange> = raw.iter().map(|&(start, len)| NackRange { start, len }).collect();
        let mut scratch = Vec::new();
        let ack = Ack {
            recv_next: next,
            credit_limit: credit,
            seen_end: seen,
            echo_ts_ns: ts,
            echo_delay_us: delay,
            ..Ack::new(session)
        }
        .with_ranges(&ranges, &mut scratch);
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

/// A META on the wire is the length the server's amplification check counts (93 bytes); a
/// JOIN of an IPv4 group 37, of an IPv6 one 49.
#[test]
fn meta_and_join_lengths() {
    let meta = Message::Meta(Meta {
        request_id: 1,
        session: 2,
        file_size: 3,
        payload_size: 1440,
        mode: Mode::Reliable,
        manifest_hash: [0; 32],
        content_hash: [0; 32],
    });
    assert_eq!(meta.to_vec().len(), crate::protocol::META_LEN);
    let join = |addr: &str| Join {
        request_id: 0,
        session: 0,
        group: 0,
        addr: addr.parse().unwrap(),
        k: 256,
        parity: 64,
        first_block: 0,
        feedback_ms: 10,
    };
    assert_eq!(Message::Join(join("239.1.2.3:7000")).to_vec().len(), 37);
    assert_eq!(Message::Join(join("[ff15::1]:7000")).to_vec().len(), 49);
}
