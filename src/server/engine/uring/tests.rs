//! The uring engine against real sockets: GSO fallback, panics, idle workers.

use std::time::Instant;

use nix::sys::epoll::EpollTimeout;

use super::*;
use crate::protocol::congestion::CcKind;
use crate::protocol::sender::{SenderConfig, SenderState};
use crate::protocol::unix_ns;
use crate::protocol::Mode;
use crate::server::catalog::Catalog;
use crate::server::engine::EngineKind;
use crate::server::session::SessionCtx;

fn blast(file_size: u64, payload_size: u32) -> SenderConfig {
    SenderConfig {
        mode: Mode::Blast,
        file_size,
        payload_size,
        window: 1,
        cc: CcKind::Fixed,
        rate_cap_bps: None,
        seed: 0,
        path: None,
    }
}

#[test]
fn a_worker_never_spins() {
    let now = Instant::now();
    // A deadline already past (work waiting for a free slot, say) still sleeps 1 ms.
    assert_eq!(
        idle_timeout(now, Some(now - Duration::from_secs(1))),
        EpollTimeout::from(1u16)
    );
    assert_eq!(idle_timeout(now, None), EpollTimeout::from(100u16));
    assert_eq!(
        idle_timeout(now, Some(now + Duration::from_micros(1500))),
        EpollTimeout::from(2u16)
    );
}

#[test]
fn a_gso_send_the_device_refuses_falls_back_to_one_datagram_a_send() {
    if let Err(e) = available() {
        return crate::skip(&e.to_string());
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), vec![3u8; 100 * 1440]).unwrap();
    let file = Catalog::new(dir.path()).scan("f", 1440).unwrap();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    crate::sys::socket::set_recv_buffer(&sink, 8 << 20).unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
    if !crate::sys::socket::gso_supported(&sock) {
        return crate::skip("no UDP GSO here");
    }
    let stats = Arc::new(ServerStats::default());
    let engine = UringEngine::new(sock, 1, stats.clone(), false).unwrap();
    let (tx, summaries) = mpsc::channel();
    let now = Instant::now();
    let state = SenderState::new(blast(file.size, 1440), now, unix_ns()).validated(now);
    let ctx = SessionCtx {
        stats,
        engine: EngineKind::Uring,
        summaries: tx,
        gso: true,
    };
    let (file2, ctx2) = (file.clone(), ctx.clone());
    let session = Arc::new(Session::new(
        7,
        sink.local_addr().unwrap(),
        file,
        state,
        ctx,
    ));
    session.fail_gso.store(true, Ordering::Relaxed);
    engine.start(session.clone());
    // Every datagram arrives once, including those of the refused GSO send.
    let mut seen = std::collections::BTreeSet::new();
    let mut buf = [0u8; 2048];
    // (A blocking receive can be interrupted here, EINTR: it is retried, as everywhere.)
    let recv = |buf: &mut [u8]| crate::sys::socket::retry_eintr(|| sink.recv(buf));
    while let Ok(n) = recv(&mut buf) {
        if let Ok((h, _)) = crate::protocol::DataHeader::parse(&buf[..n]) {
            seen.insert(h.offset / 1440);
        }
    }
    assert_eq!(seen.len(), 100, "{} of 100 datagrams arrived", seen.len());
    session.close(CloseReason::Complete);
    let s = summaries.recv_timeout(Duration::from_secs(5)).unwrap();
    let why = s.gso_fallback.expect("the fallback is reported");
    assert!(why.contains("GSO send failed"), "{why}");
    assert_eq!(s.send_errors, 1);
    // GSO is the socket's: a session that starts after the failure sends one datagram a
    // call from its first send, without paying a failed send of its own.
    let state = SenderState::new(blast(file2.size, 1440), now, unix_ns()).validated(now);
    let second = Arc::new(Session::new(
        8,
        sink.local_addr().unwrap(),
        file2,
        state,
        ctx2,
    ));
    engine.start(second.clone());
    let mut seen = 0;
    while recv(&mut buf).is_ok() {
        seen += 1;
    }
    second.close(CloseReason::Complete);
    let s = summaries.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (seen, s.send_errors, s.gso_segments),
        (100 + 3, 0, 1),
        "{s:?}"
    );
    engine.shutdown();
}

#[test]
fn a_panicking_session_fails_alone_and_the_worker_goes_on() {
    if let Err(e) = available() {
        return crate::skip(&e.to_string());
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), vec![7u8; 40_000]).unwrap();
    let catalog = Catalog::new(dir.path());
    let file = catalog.scan("f", 1000).unwrap();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
    let stats = Arc::new(ServerStats::default());
    // One worker, so both sessions share it.
    let engine = UringEngine::new(sock, 1, stats.clone(), false).unwrap();
    let (tx, summaries) = mpsc::channel();
    let session = |id| {
        let now = Instant::now();
        let state = SenderState::new(blast(file.size, 1000), now, unix_ns()).validated(now);
        let ctx = SessionCtx {
            stats: stats.clone(),
            engine: EngineKind::Uring,
            summaries: tx.clone(),
            gso: true,
        };
        Arc::new(Session::new(
            id,
            sink.local_addr().unwrap(),
            file.clone(),
            state,
            ctx,
        ))
    };
    let (bad, good) = (session(1), session(2));
    bad.fail_point.store(true, Ordering::Relaxed);
    engine.start(bad.clone());
    engine.start(good.clone());
    let ended = summaries.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(ended.session, "00000001");
    assert!(ended.problem.unwrap().contains("panicked"));
    assert_eq!(stats.panics.load(Ordering::Relaxed), 1);
    // The other session on the same worker sends its whole file and END markers.
    let t = Instant::now();
    while !good.state().is_complete() {
        assert!(t.elapsed() < Duration::from_secs(5), "the worker stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
    good.close(CloseReason::Complete);
    let ended = summaries.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (ended.session.as_str(), ended.outcome),
        ("00000002", "complete")
    );
    assert_eq!(ended.datagrams_sent, 40);
    engine.shutdown();
}

/// A wake (an ACK) for one session pumps that session, not every session of the worker: an
/// idle one, waiting for its client, is left alone.
#[test]
fn a_wake_pumps_its_own_session_only() {
    if let Err(e) = available() {
        return crate::skip(&e.to_string());
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), vec![3u8; 10 * 1000]).unwrap();
    let file = Catalog::new(dir.path()).scan("f", 1000).unwrap();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
    let stats = Arc::new(ServerStats::default());
    let engine = UringEngine::new(sock, 1, stats.clone(), false).unwrap();
    let (tx, summaries) = mpsc::channel();
    let ctx = SessionCtx {
        stats,
        engine: EngineKind::Uring,
        summaries: tx,
        gso: false,
    };
    // Neither has heard from its client: nothing to send, no deadline.
    let session = |id| {
        let state = SenderState::new(blast(file.size, 1000), Instant::now(), unix_ns());
        Arc::new(Session::new(
            id,
            sink.local_addr().unwrap(),
            file.clone(),
            state,
            ctx.clone(),
        ))
    };
    let (idle, woken) = (session(1), session(2));
    engine.start(idle.clone());
    engine.start(woken.clone());
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..200 {
        woken.wake();
        std::thread::sleep(Duration::from_micros(200));
    }
    std::thread::sleep(Duration::from_millis(50));
    let (p_idle, p_woken) = (
        idle.pumps.load(Ordering::Relaxed),
        woken.pumps.load(Ordering::Relaxed),
    );
    assert!(
        p_woken >= 20,
        "the woken session was pumped {p_woken} times"
    );
    assert!(p_idle <= 3, "the idle session was pumped {p_idle} times");
    idle.close(CloseReason::Shutdown);
    woken.close(CloseReason::Shutdown);
    for _ in 0..2 {
        summaries.recv_timeout(Duration::from_secs(5)).unwrap();
    }
    engine.shutdown();
}
