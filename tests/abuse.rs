//! Abuse: nobody can use the server as an amplifier, flood it, or crash it with garbage; a
//! hostile server cannot make a client write outside its file.

mod common;
use common::{server, RawClient};

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ringblast::client::{self, GetConfig};
use ringblast::protocol::{
    Ack, DataHeader, DoneStatus, ErrorCode, Message, Meta, Mode, NackRange, DATA_HEADER_LEN,
    MAX_NACK_RANGES, MAX_PAYLOAD,
};
use ringblast::tools::relay::{Impairments, Relay, RelayConfig};

/// Everything an unvalidated address can send, and the bytes it gets back.
#[test]
fn an_unvalidated_address_gets_less_than_it_sends() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big"), vec![0u8; 100 * MAX_PAYLOAD]).unwrap();
    let srv = server(dir.path(), |_| {});
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(srv.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let forged = [0x42u8; 24];
    let mut scratch = Vec::new();
    let requests: Vec<Vec<u8>> = vec![
        Message::Hello { nonce: 1 }.to_vec(),
        Message::List {
            token: forged,
            start: 0,
        }
        .to_vec(),
        Message::Get {
            token: forged,
            request_id: 1,
            mode: Mode::Blast,
            window_bytes: 4096 * MAX_PAYLOAD as u32,
            max_datagram: 0,
            flags: 0,
            name: "big",
        }
        .to_vec(),
        Message::Ack(
            Ack {
                credit_limit: 100_000,
                ..Ack::new(12345)
            }
            .with_ranges(&[], &mut scratch),
        )
        .to_vec(),
        Message::Done {
            session: 12345,
            status: DoneStatus::Complete,
        }
        .to_vec(),
        b"TRANSFER".to_vec(),
        b"LIST".to_vec(),
        vec![0xAB; 60_000],
    ];
    let (mut sent, mut got) = (0usize, 0usize);
    for _ in 0..20 {
        for r in &requests {
            s.send(r).unwrap();
            sent += r.len();
        }
    }
    let mut buf = vec![0u8; 70_000];
    while let Ok(n) = ringblast::sys::socket::retry_eintr(|| s.recv(&mut buf)) {
        got += n;
        assert!(
            !ringblast::protocol::is_data(&buf[..n]),
            "data sent to an unvalidated address"
        );
    }
    assert!(
        got * 3 <= sent,
        "amplification: sent {sent} bytes, got {got}"
    );
    assert!(srv.stats().bad_tokens.load(Ordering::Relaxed) >= 40);
    assert_eq!(srv.stats().sessions_started.load(Ordering::Relaxed), 0);
}

#[test]
fn a_busy_server_is_asked_again_until_it_has_room() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), vec![3u8; 30 * MAX_PAYLOAD]).unwrap();
    // Slow sessions (16 Mbit/s: ~1 s each), at most 2 at a time.
    let srv = server(dir.path(), |c| {
        c.max_sessions = 2;
        c.rate_bps = Some(16_000_000);
    });
    let mut g = GetConfig::new(srv.local_addr(), "f");
    g.clients = 4;
    g.timeout = Duration::from_secs(20);
    let reports = client::get(&g).unwrap();
    assert!(reports.iter().all(|r| r.ok()), "{reports:?}");
    // Two were refused at first and came back when the first two were done.
    let retried = reports.iter().filter(|r| r.busy_retries > 0).count();
    assert_eq!(retried, 2, "{reports:?}");
    assert!(srv.stats().busy.load(Ordering::Relaxed) >= 2);
}

#[test]
fn a_server_busy_for_the_whole_timeout_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), vec![3u8; 30 * MAX_PAYLOAD]).unwrap();
    // One slow session (4 Mbit/s: ~4 s) holds the only place.
    let srv = server(dir.path(), |c| {
        c.max_sessions = 1;
        c.rate_bps = Some(4_000_000);
    });
    let mut g = GetConfig::new(srv.local_addr(), "f");
    g.clients = 2;
    g.timeout = Duration::from_secs(1);
    let t = Instant::now();
    let reports = client::get(&g).unwrap();
    let refused: Vec<_> = reports
        .iter()
        .filter_map(|r| r.error.as_deref())
        .filter(|e| e.contains("busy"))
        .collect();
    assert_eq!(refused.len(), 1, "{reports:?}");
    assert!(
        refused[0].contains("stayed busy for") && refused[0].contains("tries"),
        "unclear refusal: {}",
        refused[0]
    );
    // The refused one gave up after its timeout, not at once and not never.
    let r = reports.iter().find(|r| r.error.is_some()).unwrap();
    assert!(r.busy_retries >= 2, "{r:?}");
    assert!(r.duration_s >= 1.0 && r.duration_s < 5.0, "{r:?}");
    drop(reports);
    assert!(t.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_request_flood_is_limited_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), vec![5u8; 10 * MAX_PAYLOAD]).unwrap();
    let srv = server(dir.path(), |c| c.requests_per_ip = 200.0);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(srv.local_addr()).unwrap();
    let hello = Message::Hello { nonce: 9 }.to_vec();
    let t = Instant::now();
    for _ in 0..3000 {
        s.send(&hello).unwrap();
    }
    let flood_s = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    let limited = srv.stats().rate_limited.load(Ordering::Relaxed);
    // At most the burst (400) plus 200/s of the flood got through.
    assert!(
        limited >= 3000 - 400 - (200.0 * (flood_s + 0.2)) as u64 - 50,
        "only {limited} limited"
    );
    // A legitimate client (same IP: loopback) is served once the budget refills.
    std::thread::sleep(Duration::from_millis(100));
    let out = tempfile::tempdir().unwrap();
    let mut g = GetConfig::new(srv.local_addr(), "f");
    g.out_dir = Some(out.path().into());
    assert!(client::get(&g).unwrap()[0].ok());
}

#[test]
fn many_ports_and_hosts_cannot_push_out_a_session_and_their_silent_sessions_expire() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..40 * MAX_PAYLOAD).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("f"), &data).unwrap();
    // Room for 20 sessions; sessions that never ACK are dropped after 400 ms; a legitimate
    // transfer paced to take ~1.5 s runs meanwhile.
    let srv = server(dir.path(), |c| {
        c.max_sessions = 20;
        c.idle_timeout = Duration::from_millis(400);
        c.rate_bps = Some(14_000_000);
    });
    let addr = srv.local_addr();
    let out = tempfile::tempdir().unwrap();
    let out_path = out.path().to_path_buf();
    let legit = std::thread::spawn(move || {
        let mut g = GetConfig::new(addr, "f");
        g.out_dir = Some(out_path);
        client::get(&g).unwrap().remove(0)
    });
    let t = Instant::now();
    while srv.stats().sessions_active.load(Ordering::Relaxed) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the transfer did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // 60 sources (30 ports of this host, one each of 30 other loopback addresses) each
    // validate their address and ask for the file, and never ACK.
    let (mut metas, mut busy) = (0, 0);
    let mut flooders = Vec::new();
    for port in 0..60u32 {
        let ip = if port % 2 == 0 {
            "127.0.0.1".to_string()
        } else {
            format!("127.0.1.{}", port / 2 + 1)
        };
        let mut c = RawClient::from_ip(addr, &ip);
        let token = c.token();
        let answer = c.get(&Message::Get {
            token,
            request_id: port + 1,
            mode: Mode::Reliable,
            window_bytes: 4 * MAX_PAYLOAD as u32,
            max_datagram: 0,
            flags: 0,
            name: "f",
        });
        match Message::parse(&answer).unwrap() {
            Message::Meta(_) => metas += 1,
            Message::Busy { retry_after_ms, .. } => {
                assert!(retry_after_ms > 0);
                busy += 1
            }
            other => panic!("{other:?}"),
        }
        flooders.push(c);
    }
    // The limit holds with the legitimate session in it: nobody was pushed out.
    assert!(metas <= 19, "{metas} sessions beside the legitimate one");
    assert!(busy > 0, "the flood never reached the limit");
    assert_eq!(metas + busy, 60);
    assert!(srv.stats().sessions_active.load(Ordering::Relaxed) <= 20);
    let r = legit.join().unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!(std::fs::read(out.path().join("f")).unwrap(), data);
    // The silent sessions are gone after the idle timeout.
    let t = Instant::now();
    while srv.stats().sessions_active.load(Ordering::Acquire) != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "silent sessions were kept"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(flooders);
}

#[test]
fn garbage_both_ways_during_a_transfer_is_counted_and_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..80 * MAX_PAYLOAD).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(dir.path().join("f"), &data).unwrap();
    let srv = server(dir.path(), |_| {});
    let relay = Relay::start(RelayConfig {
        impair: Impairments {
            garbage: 1.0,
            ..Impairments::default()
        },
        seed: 11,
        ..RelayConfig::new("127.0.0.1:0".parse().unwrap(), srv.local_addr())
    })
    .unwrap();
    // Random and truncated datagrams straight at the server's port too.
    let flood = {
        let addr = srv.local_addr();
        std::thread::spawn(move || {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            for i in 0..5000usize {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let len = (x % 1400) as usize;
                let mut d: Vec<u8> = (0..len).map(|j| (x >> (j % 56)) as u8).collect();
                if i % 2 == 0 && len >= 4 {
                    d[..4].copy_from_slice(&[b'R', b'B', 1, (x % 13) as u8]);
                }
                let _ = s.send_to(&d, addr);
            }
        })
    };
    let out = tempfile::tempdir().unwrap();
    let mut g = GetConfig::new(relay.local_addr(), "f");
    g.clients = 3;
    g.out_dir = Some(out.path().into());
    let reports = client::get(&g).unwrap();
    flood.join().unwrap();
    let st = relay.stop();
    for r in &reports {
        assert!(r.ok(), "{r:?}");
        assert_eq!(std::fs::read(r.path.as_ref().unwrap()).unwrap(), data);
    }
    let client_rejected: u64 = reports.iter().map(|r| r.malformed + r.corrupt).sum();
    // One garbage datagram beside each real one (garbage: 1.0), both ways.
    assert!(st.down.garbage >= 240 && st.up.garbage >= 10, "{st}");
    assert!(
        client_rejected > 100,
        "garbage at the clients not counted: {client_rejected}"
    );
    assert!(srv.stats().malformed.load(Ordering::Relaxed) > 2000);
}

/// A server that answers the handshake, then sends data that does not fit the file it
/// announced: offsets past the end, misaligned, wrong lengths, another session.
#[test]
fn a_hostile_server_cannot_make_a_client_write_outside_its_file() {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = sock.local_addr().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let payload = 1000u32;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 70_000];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            match Message::parse(&buf[..n]) {
                Ok(Message::Hello { nonce }) => {
                    let _ = sock.send_to(
                        &Message::Retry {
                            nonce,
                            token: [1; 24],
                        }
                        .to_vec(),
                        from,
                    );
                }
                Ok(Message::Get { request_id, .. }) => {
                    let meta = Meta {
                        request_id,
                        session: 7,
                        file_size: 3 * payload as u64,
                        payload_size: payload,
                        mode: Mode::Reliable,
                        manifest_hash: [0; 32],
                        content_hash: [0; 32],
                    };
                    let _ = sock.send_to(&Message::Meta(meta).to_vec(), from);
                    let bad = [
                        (3 * payload as u64, payload as usize, 7),
                        (1 << 40, payload as usize, 7),
                        (17, payload as usize, 7),
                        (0, 5, 7),
                        (0, payload as usize, 8),
                        (u64::MAX - 10, payload as usize, 7),
                    ];
                    for (offset, len, session) in bad {
                        let body = vec![0xEEu8; len];
                        let mut hdr = [0u8; DATA_HEADER_LEN];
                        DataHeader {
                            flags: 0,
                            payload_len: len as u16,
                            session,
                            crc: 0,
                            offset,
                            send_ts_ns: 1,
                        }
                        .emit(crc32c::crc32c(&body), &mut hdr);
                        let mut d = hdr.to_vec();
                        d.extend_from_slice(&body);
                        for _ in 0..5 {
                            let _ = sock.send_to(&d, from);
                        }
                    }
                }
                _ => {}
            }
        }
    });
    let out = tempfile::tempdir().unwrap();
    let mut g = GetConfig::new(addr, "x");
    g.out_dir = Some(out.path().into());
    g.timeout = Duration::from_secs(1);
    let r = &client::get(&g).unwrap()[0];
    assert!(!r.ok());
    assert_eq!(r.bytes_intact, 0);
    assert!(r.malformed >= 30, "hostile data not rejected: {r:?}");
    // Nothing written anywhere: the temporary copy is gone, no other file appeared.
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn an_expired_token_is_refused_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), vec![1u8; 1000]).unwrap();
    let srv = server(dir.path(), |c| {
        c.token_lifetime = Duration::from_millis(300)
    });
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(srv.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = vec![0u8; 70_000];
    let mut ask = |m: &Message<'_>| -> Vec<u8> {
        s.send(&m.to_vec()).unwrap();
        loop {
            let n = ringblast::sys::socket::retry_eintr(|| s.recv(&mut buf)).expect("an answer");
            if !ringblast::protocol::is_data(&buf[..n]) {
                return buf[..n].to_vec();
            }
        }
    };
    let token = match Message::parse(&ask(&Message::Hello { nonce: 5 })).unwrap() {
        Message::Retry { token, .. } => token,
        other => panic!("{other:?}"),
    };
    // Fresh: accepted (the listing comes back).
    assert!(matches!(
        Message::parse(&ask(&Message::List { token, start: 0 })).unwrap(),
        Message::Listing { .. }
    ));
    std::thread::sleep(Duration::from_millis(500));
    // Expired: refused, and no session is created from it.
    let get = Message::Get {
        token,
        request_id: 1,
        mode: Mode::Reliable,
        window_bytes: 8 * MAX_PAYLOAD as u32,
        max_datagram: 0,
        flags: 0,
        name: "f",
    };
    match Message::parse(&ask(&get)).unwrap() {
        Message::Error { code, .. } => assert_eq!(code, ErrorCode::BadToken),
        other => panic!("expired token accepted: {other:?}"),
    }
    assert_eq!(srv.stats().sessions_started.load(Ordering::Relaxed), 0);
}

/// A validated client that sends ACKs whose 128 NACK ranges each cover everything in flight,
/// as fast as it can. Each ACK used to cost the shared control thread ~500k resend checks.
#[test]
fn a_hostile_ack_storm_costs_bounded_work_and_is_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), vec![9u8; 300 * MAX_PAYLOAD]).unwrap();
    let srv = server(dir.path(), |c| {
        c.acks_per_session = 200.0;
        c.max_window_bytes = 256 * MAX_PAYLOAD as u64;
    });
    let mut c = RawClient::new(srv.local_addr());
    let token = c.token();
    let meta = c.get(&Message::Get {
        token,
        request_id: 1,
        mode: Mode::Reliable,
        window_bytes: 256 * MAX_PAYLOAD as u32,
        max_datagram: 0,
        flags: 0,
        name: "f",
    });
    let session = match Message::parse(&meta).unwrap() {
        Message::Meta(m) => m.session,
        other => panic!("{other:?}"),
    };
    // Let the first window go out, so there is something in flight to examine.
    std::thread::sleep(Duration::from_millis(200));
    let hostile = [NackRange {
        start: 0,
        len: u32::MAX,
    }; MAX_NACK_RANGES];
    let mut scratch = Vec::new();
    let ack = Message::Ack(
        Ack {
            credit_limit: 256,
            seen_end: 256,
            flags: 1,
            ..Ack::new(session)
        }
        .with_ranges(&hostile, &mut scratch),
    )
    .to_vec();
    for i in 0..2000 {
        let _ = c.sock.send(&ack);
        if i % 100 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let st = srv.stats();
    let (acks, limited, checks) = (
        st.acks.load(Ordering::Relaxed),
        st.acks_rate_limited.load(Ordering::Relaxed),
        st.resend_checks.load(Ordering::Relaxed),
    );
    // Most of the storm was dropped unread (200 per second, 20 at once)...
    assert!(
        limited >= 1000,
        "only {limited} of 2000 ACKs rate-limited ({acks} applied)"
    );
    assert!(acks <= 500, "{acks} ACKs applied");
    // ...and what was applied examined each in-flight datagram at most once.
    assert!(checks <= acks * 256, "{checks} checks for {acks} ACKs");
    // A well-behaved client is served meanwhile.
    let out = tempfile::tempdir().unwrap();
    let mut g = GetConfig::new(srv.local_addr(), "f");
    g.out_dir = Some(out.path().into());
    assert!(client::get(&g).unwrap()[0].ok());
}
