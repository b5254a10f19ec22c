//! Real servers and real clients on loopback: every byte compared, every failure bounded.

mod common;
use common::{engine, fake_server, fetch, files_in, random_bytes, server, RawClient};

use std::net::UdpSocket;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ringblast::client::{self, GetConfig, Verify, WritePath};
use ringblast::protocol::{is_data, ErrorCode, Message, Meta, Mode, DATA_HEADER_LEN, MAX_PAYLOAD};
use ringblast::server::engine::EngineKind;

/// Serves `data` as `name`, fetches it with `clients` sub-clients, compares every copy.
fn round_trip(data: &[u8], clients: usize, mode: Mode) {
    round_trip_with(engine(), data, clients, mode)
}

fn round_trip_with(engine: EngineKind, data: &[u8], clients: usize, mode: Mode) {
    let served = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("f.bin"), data).unwrap();
    let srv = server(served.path(), |c| c.engine = engine);
    let reports = fetch(srv.local_addr(), "f.bin", clients, out.path(), |c| {
        c.mode = mode
    });
    assert_eq!(reports.len(), clients);
    for r in &reports {
        assert!(
            r.ok(),
            "client {} of {clients} ({} bytes): {:?}",
            r.id,
            data.len(),
            r
        );
        assert_eq!(r.bytes_intact, data.len() as u64);
        assert_eq!(r.datagrams_lost, 0);
        let path = r.path.as_ref().expect("copy kept");
        let expect = if clients == 1 {
            out.path().join("f.bin")
        } else {
            out.path().join(format!("f.bin.{}", r.id))
        };
        assert_eq!(path, &expect);
        let got = std::fs::read(path).unwrap();
        assert!(
            got == data,
            "client {}: copy differs from the original",
            r.id
        );
    }
    // Nothing but the copies: no temporary files left behind.
    assert_eq!(files_in(out.path()), clients);
    srv.shutdown();
}

/// Sizes around one and two datagrams' payload, for the datagrams the server really sends:
/// auto's (61472 bytes on loopback where it may splice) and the copy path's (the lab's 65507).
#[test]
fn edge_sizes_arrive_intact() {
    use ringblast::server::engine::SendPath;
    for send_path in [SendPath::Auto, SendPath::Sendmsg] {
        let served = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let srv = server(served.path(), |c| c.send_path = send_path);
        // The payload per datagram, from a transfer: what the sizes below straddle.
        std::fs::write(served.path().join("probe"), b"x").unwrap();
        let probe = &fetch(srv.local_addr(), "probe", 1, out.path(), |_| {})[0];
        assert!(probe.ok(), "{probe:?}");
        let p = probe.datagram_size - DATA_HEADER_LEN;
        let expect = match (send_path, engine()) {
            (SendPath::Auto, EngineKind::Uring) => 61_472 - DATA_HEADER_LEN,
            _ => MAX_PAYLOAD,
        };
        assert_eq!(p, expect, "{send_path:?}");
        for size in [0, 1, p - 1, p, p + 1, 2 * p, 2 * p + 1] {
            let name = format!("f{size}");
            let data = random_bytes(size);
            std::fs::write(served.path().join(&name), &data).unwrap();
            let r = &fetch(srv.local_addr(), &name, 1, out.path(), |_| {})[0];
            assert!(r.ok(), "{send_path:?} {size}: {r:?}");
            assert_eq!(r.datagram_size, probe.datagram_size);
            let want_datagrams = size.div_ceil(p) as u64;
            assert_eq!(r.datagrams_expected, want_datagrams, "{send_path:?} {size}");
            let got = std::fs::read(r.path.as_ref().unwrap()).unwrap();
            assert!(got == data, "{send_path:?} {size}: copy differs");
        }
        srv.shutdown();
    }
}

#[test]
fn one_client_few_mib() {
    round_trip(&random_bytes(5 << 20), 1, Mode::Reliable);
}

#[test]
fn five_clients_few_mib() {
    round_trip(&random_bytes(3 << 20), 5, Mode::Reliable);
}

#[test]
fn twenty_clients_few_mib() {
    round_trip(&random_bytes(3 << 20), 20, Mode::Reliable);
}

#[test]
fn threads_engine_reliable_and_blast() {
    for size in [0, 1, MAX_PAYLOAD + 1] {
        round_trip_with(EngineKind::Threads, &random_bytes(size), 1, Mode::Reliable);
    }
    round_trip_with(
        EngineKind::Threads,
        &random_bytes(3 << 20),
        5,
        Mode::Reliable,
    );
    round_trip_with(
        EngineKind::Threads,
        &random_bytes(MAX_PAYLOAD * 3 + 5),
        2,
        Mode::Blast,
    );
}

#[test]
fn blast_without_loss_verifies_too() {
    // Small enough to fit the receive buffer: blast loses nothing and verifies like reliable.
    round_trip(&random_bytes(MAX_PAYLOAD * 3 + 17), 1, Mode::Blast);
}

#[test]
fn blast_counts_loss_exactly_and_keeps_no_partial_copy() {
    let served = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let data = random_bytes(200 * MAX_PAYLOAD);
    std::fs::write(served.path().join("big"), &data).unwrap();
    // Copied: datagrams of the lab's size, MAX_PAYLOAD bytes of payload each.
    let srv = server(served.path(), |c| {
        c.send_path = ringblast::server::engine::SendPath::Sendmsg
    });
    // A receive buffer of one datagram: most of a blast is dropped by the kernel.
    let reports = fetch(srv.local_addr(), "big", 1, out.path(), |c| {
        c.mode = Mode::Blast;
        c.recv_buffer = 4096;
    });
    let r = &reports[0];
    assert!(!r.ok());
    assert!(!r.complete && !r.hash_ok);
    assert!(r.datagrams_lost > 0, "{r:?}");
    assert_eq!(r.datagrams_expected, 200);
    // Exact accounting: what was not lost was received intact, byte for byte.
    let received = r.datagrams_expected - r.datagrams_lost;
    assert_eq!(r.bytes_intact, received * MAX_PAYLOAD as u64);
    assert_eq!(r.datagrams_received, received + r.duplicates + r.corrupt);
    assert!(r.error.as_deref().unwrap().contains("incomplete"), "{r:?}");
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "partial copy left behind"
    );
    srv.shutdown();
}

#[test]
fn discard_checks_everything_and_writes_nothing() {
    let served = tempfile::tempdir().unwrap();
    let data = random_bytes(4 << 20);
    std::fs::write(served.path().join("d"), &data).unwrap();
    let srv = server(served.path(), |_| {});
    let mut cfg = GetConfig::new(srv.local_addr(), "d");
    cfg.clients = 3;
    cfg.verify = Verify::Manifest;
    let reports = client::get(&cfg).unwrap();
    for r in &reports {
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.bytes_intact, data.len() as u64);
        assert!(r.path.is_none());
    }
}

#[test]
fn list_shows_regular_files_with_sizes() {
    let served = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("a"), b"12345").unwrap();
    std::fs::write(served.path().join("b"), b"").unwrap();
    std::fs::create_dir(served.path().join("sub")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", served.path().join("link")).unwrap();
    let srv = server(served.path(), |_| {});
    let files = client::list(srv.local_addr(), Duration::from_secs(2), None).unwrap();
    assert_eq!(files, vec![("a".into(), 5), ("b".into(), 0)]);
}

#[test]
fn missing_file_and_symlink_are_clear_errors() {
    let served = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/etc/passwd", served.path().join("link")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let srv = server(served.path(), |_| {});
    let r = &fetch(srv.local_addr(), "nope.bin", 1, out.path(), |_| {})[0];
    assert!(
        r.error.as_deref().unwrap().contains("no such file"),
        "{r:?}"
    );
    let r = &fetch(srv.local_addr(), "link", 1, out.path(), |_| {})[0];
    assert!(
        r.error.as_deref().unwrap().contains("not a regular file"),
        "{r:?}"
    );
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn server_refuses_bad_tokens_and_escaping_names() {
    let served = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("ok"), b"data").unwrap();
    let srv = server(served.path(), |_| {});
    let mut c = RawClient::new(srv.local_addr());
    let get = |token, name| Message::Get {
        token,
        request_id: 1,
        mode: Mode::Reliable,
        window_bytes: 8 * MAX_PAYLOAD as u32,
        max_datagram: 0,
        flags: 0,
        name,
    };
    c.send(&get([0; 24], "ok"));
    let d = c.recv_control().unwrap();
    let m = Message::parse(&d).unwrap();
    assert!(
        matches!(
            m,
            Message::Error {
                code: ErrorCode::BadToken,
                ..
            }
        ),
        "{m:?}"
    );
    let token = c.token();
    for name in ["../ok", "/etc/passwd", "a/b", "..", "x\0y"] {
        c.send(&get(token, name));
        let d = c.recv_control().unwrap();
        assert!(
            matches!(
                Message::parse(&d).unwrap(),
                Message::Error {
                    code: ErrorCode::BadName,
                    ..
                }
            ),
            "{name:?} not refused"
        );
    }
    // Garbage is dropped and counted; the server keeps serving.
    for g in [&b"LIST"[..], b"", b"RB\x01\x09", &[0xFF; 300]] {
        c.sock.send(g).unwrap();
    }
    let token = c.token();
    let d = c.get(&get(token, "ok"));
    let m = Message::parse(&d).unwrap();
    assert!(matches!(m, Message::Meta(_)), "{m:?}");
    assert!(srv.stats().malformed.load(Ordering::Relaxed) >= 4);
    assert!(srv.stats().bad_tokens.load(Ordering::Relaxed) >= 1);
}

#[test]
fn server_frees_the_session_of_a_client_that_vanishes() {
    let served = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("f"), random_bytes(50 * MAX_PAYLOAD)).unwrap();
    let srv = server(served.path(), |c| {
        c.idle_timeout = Duration::from_millis(500)
    });
    {
        let mut c = RawClient::new(srv.local_addr());
        let token = c.token();
        let meta = c.get(&Message::Get {
            token,
            request_id: 1,
            mode: Mode::Reliable,
            window_bytes: 8 * MAX_PAYLOAD as u32,
            max_datagram: 0,
            flags: 0,
            name: "f",
        });
        let Ok(Message::Meta(m)) = Message::parse(&meta) else {
            panic!("no META")
        };
        c.ack(m.session, 8);
        // Take a few datagrams, then vanish without a word.
        let mut data = 0;
        while data < 3 {
            if is_data(&c.recv().expect("data")) {
                data += 1;
            }
        }
        assert_eq!(srv.stats().sessions_active.load(Ordering::Relaxed), 1);
    }
    let t = Instant::now();
    while srv.stats().sessions_active.load(Ordering::Acquire) != 0 {
        assert!(t.elapsed() < Duration::from_secs(3), "session not freed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(srv.stats().sessions_timed_out.load(Ordering::Relaxed), 1);
    // And the server still serves.
    let out = tempfile::tempdir().unwrap();
    assert!(fetch(srv.local_addr(), "f", 2, out.path(), |_| {})
        .iter()
        .all(|r| r.ok()));
}

#[test]
fn client_fails_fast_and_clean_when_the_server_stops_mid_transfer() {
    let served = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("slow"), random_bytes(40 * MAX_PAYLOAD)).unwrap();
    // 10 Mbit/s: the 2.6 MB file would take 2 s.
    let srv = server(served.path(), |c| c.rate_bps = Some(10_000_000));
    let addr = srv.local_addr();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        srv.shutdown();
    });
    let t = Instant::now();
    let reports = fetch(addr, "slow", 3, out.path(), |c| {
        c.timeout = Duration::from_secs(1)
    });
    let took = t.elapsed();
    stopper.join().unwrap();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    for r in &reports {
        assert!(!r.ok());
        let e = r.error.as_deref().expect("a reason");
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(
            r.bytes_intact > 0 && r.bytes_intact < 40 * MAX_PAYLOAD as u64,
            "{r:?}"
        );
    }
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "partial copy left behind"
    );
}

#[test]
fn client_reports_a_server_that_never_answers() {
    // A bound socket that never answers: no ICMP, just silence.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let t = Instant::now();
    let mut cfg = GetConfig::new(silent.local_addr().unwrap(), "x");
    cfg.timeout = Duration::from_millis(600);
    let r = &client::get(&cfg).unwrap()[0];
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(r.error.as_deref().unwrap().contains("no answer"), "{r:?}");
    // Nothing listening at all: refused, at once (the kernel's ICMP port unreachable), not
    // after the timeout.
    let addr = silent.local_addr().unwrap();
    drop(silent);
    let mut cfg = GetConfig::new(addr, "x");
    cfg.timeout = Duration::from_secs(5);
    let t = Instant::now();
    let r = &client::get(&cfg).unwrap()[0];
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert!(r.error.as_deref().unwrap().contains("refused"), "{r:?}");
}

#[test]
fn client_refuses_a_meta_that_would_make_it_allocate_without_bound() {
    let addr = fake_server(|request_id| Meta {
        request_id,
        session: 1,
        file_size: 1 << 40,
        payload_size: 512,
        mode: Mode::Reliable,
        manifest_hash: [0; 32],
        content_hash: [0; 32],
    });
    let out = tempfile::tempdir().unwrap();
    let r = &fetch(addr, "x", 1, out.path(), |c| {
        c.timeout = Duration::from_secs(2)
    })[0];
    let e = r.error.as_deref().unwrap();
    assert!(e.contains("datagrams, over the"), "{e}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);

    let addr = fake_server(|request_id| Meta {
        request_id,
        session: 1,
        file_size: 10,
        payload_size: 100,
        mode: Mode::Reliable,
        manifest_hash: [0; 32],
        content_hash: [0; 32],
    });
    let r = &fetch(addr, "x", 1, out.path(), |c| {
        c.timeout = Duration::from_secs(2)
    })[0];
    assert!(r.error.as_deref().unwrap().contains("minimum"), "{r:?}");
}

/// At an Ethernet datagram size (1472) on loopback, the io_uring engine sends GSO batches and
/// the client receives coalesced buffers; with --no-gso / --no-gro, one datagram a call. Every
/// copy is intact either way.
#[test]
fn gso_and_gro_carry_ethernet_sized_datagrams() {
    use ringblast::protocol::layout::DatagramSize;
    let served = tempfile::tempdir().unwrap();
    let data = random_bytes(3 << 20);
    std::fs::write(served.path().join("f"), &data).unwrap();
    for (gso, gro) in [(true, true), (false, false), (true, false), (false, true)] {
        let srv = server(served.path(), |c| {
            c.datagram_size = DatagramSize::Fixed(1472);
            c.gso = gso;
        });
        let out = tempfile::tempdir().unwrap();
        let reports = fetch(srv.local_addr(), "f", 2, out.path(), |c| c.gro = gro);
        let datagrams = data.len().div_ceil(1440) as u64;
        for r in &reports {
            assert!(r.ok(), "gso {gso} gro {gro}: {r:?}");
            assert_eq!(std::fs::read(r.path.as_ref().unwrap()).unwrap(), data);
            assert_eq!(r.datagram_size, 1472);
            assert_eq!(r.datagrams_expected, datagrams);
            assert_eq!(r.gro, gro);
            // Coalesced: far fewer receive calls than datagrams (when the sender batched).
            if gro && gso && engine() == EngineKind::Uring {
                assert!(r.recv_calls * 4 < datagrams, "{} calls", r.recv_calls);
            }
        }
        srv.shutdown();
    }
}

/// The client's own limit lowers the server's datagram size; one the path cannot carry is
/// refused up front with the limit named.
#[test]
fn the_datagram_size_is_negotiated_down_to_the_client_s() {
    use ringblast::protocol::layout::DatagramSize;
    let served = tempfile::tempdir().unwrap();
    let data = random_bytes(200_000);
    std::fs::write(served.path().join("f"), &data).unwrap();
    let srv = server(served.path(), |_| {});
    let out = tempfile::tempdir().unwrap();
    let r = &fetch(srv.local_addr(), "f", 1, out.path(), |c| {
        c.datagram_size = DatagramSize::Fixed(9000)
    })[0];
    assert!(r.ok(), "{r:?}");
    // Snapped down to a size class: a jumbo frame's.
    assert_eq!(r.datagram_size, 8972);
    // On loopback (MTU 65536) auto means 61472 where the server may splice (16 pages of
    // payload at most), the lab's 65507 where it copies.
    let r = &fetch(srv.local_addr(), "f", 1, out.path(), |_| {})[0];
    let splices = engine() == EngineKind::Uring;
    assert_eq!(r.datagram_size, if splices { 61_472 } else { 65_507 });
    srv.shutdown();
    let srv = server(served.path(), |c| {
        c.send_path = ringblast::server::engine::SendPath::Sendmsg
    });
    let r = &fetch(srv.local_addr(), "f", 1, out.path(), |_| {})[0];
    assert_eq!(r.datagram_size, 65_507);
}

/// A client or server of another protocol version is told so, in one line, instead of timing
/// out on answers it cannot read.
#[test]
fn another_protocol_version_is_named_both_ways() {
    // An old client's HELLO (version 2) at a server of this version.
    let served = tempfile::tempdir().unwrap();
    let srv = server(served.path(), |_| {});
    let mut hello = Message::Hello { nonce: 1 }.to_vec();
    hello[2] = 2;
    let body = hello.len() - 4;
    let crc = crc32c::crc32c(&hello[..body]);
    hello[body..].copy_from_slice(&crc.to_be_bytes());
    let c = RawClient::new(srv.local_addr());
    // Patient: the other tests of this binary can keep 2 cores busy for seconds.
    c.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    c.sock.send(&hello).unwrap();
    let mut buf = [0u8; 2048];
    let n = c.sock.recv(&mut buf).unwrap();
    match Message::parse(&buf[..n]).unwrap() {
        Message::Error { code, text, .. } => {
            assert_eq!(code, ErrorCode::BadVersion);
            assert!(
                text.contains(&format!("version {}", ringblast::protocol::VERSION)),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(srv.stats().version_mismatch.load(Ordering::Relaxed), 1);

    // A newer server (version 8) answering this client.
    let future = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = future.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = future.recv_from(&mut buf) {
            let mut msg = b"RB\x08\x02future".to_vec();
            msg.extend_from_slice(&crc32c::crc32c(&msg).to_be_bytes());
            let _ = future.send_to(&msg, from);
        }
    });
    let mut cfg = GetConfig::new(addr, "f");
    cfg.timeout = Duration::from_secs(5);
    let t = Instant::now();
    let r = &client::get(&cfg).unwrap()[0];
    let e = r.error.as_deref().unwrap();
    assert!(
        e.contains("protocol version 8") && e.contains("speaks 7"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(2));
}

/// `UdpInCsumErrors` of this host: datagrams the kernel dropped for a bad UDP checksum.
fn udp_checksum_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap();
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "InCsumErrors")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Spliced payloads (page-cache pages attached to the datagram) arrive, every one: at page-
/// aligned offsets (auto's 61472-byte datagrams) and at odd ones crossing pages, where Linux
/// 6.18's software checksum of a spliced page is wrong (the splice path never uses it). Both
/// files end in a short, odd-sized last datagram.
#[test]
fn spliced_datagrams_all_arrive_at_any_offset() {
    use ringblast::protocol::layout::DatagramSize;
    use ringblast::server::engine::SendPath;
    if common::no_uring() {
        return;
    }
    let served = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    for (size, bytes) in [
        (DatagramSize::Auto, 40 * 61_440 + 4097),
        (DatagramSize::Fixed(4001), 700 * 3969 + 3001),
    ] {
        let data = random_bytes(bytes);
        std::fs::write(served.path().join("f"), &data).unwrap();
        let srv = server(served.path(), |c| {
            c.engine = EngineKind::Uring;
            c.send_path = SendPath::Splice;
            c.datagram_size = size;
            // Paced well below what loopback carries: a datagram lost now is one dropped.
            c.rate_bps = Some(400_000_000);
        });
        let csum_errors = udp_checksum_errors();
        let r = &fetch(srv.local_addr(), "f", 1, out.path(), |_| {})[0];
        assert!(r.ok(), "{size}: {r:?}");
        assert_eq!(std::fs::read(r.path.as_ref().unwrap()).unwrap(), data);
        let payload = r.datagram_size as u64 - 32;
        assert_eq!(
            r.datagram_size,
            match size {
                DatagramSize::Fixed(n) => n,
                DatagramSize::Auto => 61_472,
            }
        );
        let datagrams = (bytes as u64).div_ceil(payload);
        let spliced = srv.stats().spliced.load(Ordering::Relaxed);
        assert!(
            spliced >= datagrams,
            "{size}: {spliced} of {datagrams} spliced"
        );
        assert_eq!(udp_checksum_errors(), csum_errors, "{size}: bad checksums");
        srv.shutdown();
    }
}

/// `--send-path auto` on loopback: a lone session (fewer sessions than workers) is copied, a
/// busy server (as many sessions as workers) splices; both at 61472-byte datagrams.
/// `--send-path sendmsg` keeps the lab's 65507.
#[test]
fn auto_splices_when_busy_and_copies_when_cores_are_spare() {
    use ringblast::server::engine::SendPath;
    if common::no_uring() {
        return;
    }
    let served = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let data = random_bytes(5 << 20);
    std::fs::write(served.path().join("f"), &data).unwrap();
    for (workers, path, size, splices) in [
        (2, SendPath::Auto, 61_472, false),
        (1, SendPath::Auto, 61_472, true),
        (1, SendPath::Sendmsg, 65_507, false),
    ] {
        let srv = server(served.path(), |c| {
            c.engine = EngineKind::Uring;
            c.send_path = path;
            c.workers = workers;
        });
        let r = &fetch(srv.local_addr(), "f", 1, out.path(), |_| {})[0];
        assert!(r.ok(), "{r:?}");
        assert_eq!(std::fs::read(r.path.as_ref().unwrap()).unwrap(), data);
        assert_eq!(r.datagram_size, size, "{path:?}");
        let spliced = srv.stats().spliced.load(Ordering::Relaxed);
        assert_eq!(
            spliced > 0,
            splices,
            "{workers} workers, {path:?}: {spliced} spliced"
        );
        srv.shutdown();
    }
}

/// Both write paths give the same verified copies, edge sizes included, and say how much went
/// around the page cache: with O_DIRECT (where the file system takes it) almost all of a
/// large copy, with the buffered path none.
#[test]
fn both_write_paths_give_the_same_verified_copies() {
    let served = tempfile::tempdir().unwrap();
    let sizes = [0usize, 4095, (4 << 20) + 1, (13 << 20) + 12_345];
    for (i, size) in sizes.iter().enumerate() {
        std::fs::write(served.path().join(format!("f{i}")), random_bytes(*size)).unwrap();
    }
    let srv = server(served.path(), |_| {});
    for path in [WritePath::Direct, WritePath::Buffered] {
        let out = tempfile::tempdir().unwrap();
        let direct_ok = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .custom_flags(libc::O_DIRECT)
                .open(out.path().join("probe"))
                .is_ok()
        };
        let _ = std::fs::remove_file(out.path().join("probe"));
        if !direct_ok {
            ringblast::skip(&format!(
                "{} does not take O_DIRECT: only the fallback is tested",
                out.path().display()
            ));
        }
        for (i, size) in sizes.iter().enumerate() {
            let name = format!("f{i}");
            let dir = out.path().join(&name);
            let reports = fetch(srv.local_addr(), &name, 3, &dir, |c| c.write_path = path);
            let want = std::fs::read(served.path().join(&name)).unwrap();
            for r in &reports {
                assert!(r.ok(), "{path:?} {size}: {r:?}");
                let got = std::fs::read(r.path.as_ref().unwrap()).unwrap();
                assert!(got == want, "{path:?} {size}: client {} differs", r.id);
                assert!(r.written_direct <= *size as u64);
            }
            let direct: u64 = reports.iter().map(|r| r.written_direct).sum();
            match path {
                WritePath::Buffered => assert_eq!(direct, 0, "{size}"),
                // The 64 MiB of staging is the process's, shared with the tests running
                // beside this one: some of it, not all, is sure to come to these copies.
                WritePath::Direct if direct_ok && *size > 1 << 20 => {
                    assert!(direct > 0, "{size}: nothing written direct")
                }
                WritePath::Direct => {}
            }
            assert_eq!(files_in(&dir), 3, "no temporary files left");
        }
    }
    srv.shutdown();
}

/// A tmpfs of `size` mounted on a new directory, unmounted when dropped (even when the test
/// fails); `None` (after saying why) where this process may not mount.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            ringblast::skip("cannot mount a tmpfs here (needs root): the full-disk case");
            return None;
        }
        Some(SmallDisk(dir))
    }

    /// Remounts the disk read-only. The kernel refuses (busy) while a file removed from it is
    /// still open anywhere, so this also checks that the failed copy left no descriptor
    /// behind; it tries for a second, since a process another test is starting holds a copy
    /// of this process's descriptors until it runs its program.
    fn read_only(&self) {
        let t = Instant::now();
        loop {
            let out = std::process::Command::new("mount")
                .args(["-o", "remount,ro"])
                .arg(self.0.path())
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "cannot remount read-only: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// A copy that cannot be written, on a full disk or a read-only one, fails at once with the
/// path in its error, leaves nothing behind, and the server frees the session at once (the
/// client said DONE), not after its idle timeout.
#[test]
fn a_copy_that_cannot_be_written_fails_at_once_and_frees_the_session() {
    let Some(disk) = SmallDisk::mount("1m") else {
        return;
    };
    let served = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("f"), random_bytes(4 << 20)).unwrap();
    let srv = server(served.path(), |c| c.idle_timeout = Duration::from_secs(10));
    let out = disk.0.path().join("copies");
    for (case, what) in [
        ("full", "cannot write the copy"),
        ("read-only", "cannot create"),
    ] {
        if case == "read-only" {
            disk.read_only();
        }
        let t = Instant::now();
        let r = &fetch(srv.local_addr(), "f", 1, &out, |_| {})[0];
        assert!(!r.ok(), "{case}: {r:?}");
        let e = r.error.as_deref().unwrap();
        assert!(e.contains(what) && e.contains("copies"), "{case}: {e}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{case}: took {:?}",
            t.elapsed()
        );
        while srv.stats().sessions_active.load(Ordering::Acquire) > 0 {
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "{case}: the server kept the session"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        if out.exists() {
            assert_eq!(files_in(&out), 0, "{case}: a partial copy was left");
        }
    }
    srv.shutdown();
}
