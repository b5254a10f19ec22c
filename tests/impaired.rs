//! Transfers through `ringblast relay`: loss, reordering, duplication and corruption in both
//! directions, and the loss of each control message. Every copy must arrive intact.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use ringblast::client::{self, GetConfig};
use ringblast::protocol::{Mode, MAX_PAYLOAD};
use ringblast::report::copy::CopyReport;
use ringblast::server::{Server, ServerConfig};
use ringblast::tools::relay::{Impairments, Relay, RelayConfig, RelayStats};

struct Setup {
    _served: tempfile::TempDir,
    out: tempfile::TempDir,
    data: Vec<u8>,
    server: Server,
}

fn setup(size: usize, tweak: impl FnOnce(&mut ServerConfig)) -> Setup {
    let served = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; size];
    rand::rngs::SmallRng::seed_from_u64(size as u64).fill_bytes(&mut data);
    std::fs::write(served.path().join("f"), &data).unwrap();
    let server = common::server(served.path(), tweak);
    Setup {
        _served: served,
        out: tempfile::tempdir().unwrap(),
        data,
        server,
    }
}

fn relay(s: &Setup, tweak: impl FnOnce(&mut Impairments)) -> Relay {
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), s.server.local_addr());
    tweak(&mut cfg.impair);
    Relay::start(cfg).unwrap()
}

fn fetch(
    s: &Setup,
    relay: &Relay,
    clients: usize,
    tweak: impl FnOnce(&mut GetConfig),
) -> Vec<CopyReport> {
    let mut g = GetConfig::new(relay.local_addr(), "f");
    g.clients = clients;
    g.out_dir = Some(s.out.path().into());
    g.timeout = Duration::from_secs(10);
    tweak(&mut g);
    client::get(&g).unwrap()
}

fn assert_intact(s: &Setup, reports: &[CopyReport], what: &str) {
    for r in reports {
        assert!(r.ok(), "{what}: client {} failed: {r:?}", r.id);
        let copy = std::fs::read(r.path.as_ref().unwrap()).unwrap();
        assert!(copy == s.data, "{what}: client {} copy differs", r.id);
    }
    let files = std::fs::read_dir(s.out.path()).unwrap().count();
    assert_eq!(files, reports.len(), "{what}: temporary files left behind");
}

fn clean(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
}

#[test]
fn reliable_survives_loss_reordering_duplication_and_corruption() {
    let s = setup(100 * MAX_PAYLOAD + 123, |_| {});
    let mut total = RelayStats::default();
    let mut total_corrupt = 0;
    for loss in [0.01, 0.05, 0.20] {
        for clients in [1, 10] {
            let what = format!("{}% loss, {clients} client(s)", loss * 100.0);
            let t = Instant::now();
            let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), s.server.local_addr());
            cfg.impair = Impairments {
                loss,
                reorder: 0.05,
                duplicate: 0.05,
                corrupt: 0.05,
                ..Impairments::default()
            };
            cfg.seed = 42 + clients as u64;
            let r = Relay::start(cfg).unwrap();
            let reports = fetch(&s, &r, clients, |_| {});
            let st: RelayStats = r.stop();
            assert_intact(&s, &reports, &what);
            let corrupt: u64 = reports.iter().map(|r| r.corrupt).sum();
            let retrans: u64 = reports.iter().map(|r| r.retransmitted).sum();
            eprintln!(
                "{what}: {:.2} s, {retrans} retransmitted, {corrupt} corrupt caught; relay {st}",
                t.elapsed().as_secs_f64()
            );
            if loss >= 0.05 {
                assert!(
                    st.down.dropped > 0 && retrans > 0,
                    "{what}: no loss to repair? {st}"
                );
            }
            total.down.dropped += st.down.dropped;
            total.down.reordered += st.down.reordered;
            total.down.duplicated += st.down.duplicated;
            total.down.corrupted += st.down.corrupted;
            total.up.dropped += st.up.dropped;
            total_corrupt += corrupt;
            clean(s.out.path());
        }
    }
    // Every impairment really happened, both ways, and corruption was caught by the CRC.
    let d = total.down;
    assert!(
        d.dropped > 0 && d.reordered > 0 && d.duplicated > 0 && d.corrupted > 0,
        "{total}"
    );
    assert!(total.up.dropped > 0, "{total}");
    assert!(total_corrupt > 0, "corrupted datagrams were not caught");
}

/// Message kinds (byte 3 of the header), as in wire.rs.
const HELLO: u8 = 1;
const RETRY: u8 = 2;
const GET: u8 = 5;
const META: u8 = 6;
const ACK: u8 = 9;
const DONE: u8 = 10;
const END: u8 = 11;

#[test]
fn losing_each_control_message_is_survived() {
    let s = setup(30 * MAX_PAYLOAD, |c| {
        c.idle_timeout = Duration::from_millis(700)
    });
    for (kind, n, name) in [
        (HELLO, 2, "HELLO (request for a token)"),
        (RETRY, 2, "RETRY (the token)"),
        (GET, 2, "GET (the request)"),
        (META, 2, "META (the answer)"),
        (ACK, 30, "ACK (NACKs and credit)"),
    ] {
        let r = relay(&s, |c| {
            c.drop_first = vec![(kind, n)];
            c.loss = if kind == ACK { 0.05 } else { 0.0 };
        });
        let reports = fetch(&s, &r, 2, |_| {});
        let st = r.stop();
        assert_eq!(
            st.up.targeted_drops + st.down.targeted_drops,
            n as u64,
            "{name}: not all dropped"
        );
        assert_intact(&s, &reports, name);
        clean(s.out.path());
    }
    // Every DONE lost: the clients still succeed, and the server frees the sessions at once:
    // a reliable session ends when the last ACK confirms everything, DONE or not.
    let stats = s.server.stats();
    // The sessions above end on the server a moment after their clients do (the last ACK
    // is handled by a worker): count from when none is left.
    let t = Instant::now();
    while stats.sessions_active.load(Ordering::Acquire) > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "sessions of the lossy fetches never ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let timed_out_before = stats.sessions_timed_out.load(Ordering::Relaxed);
    let completed_before = stats.sessions_completed.load(Ordering::Relaxed);
    let r = relay(&s, |c| c.drop_first = vec![(DONE, 1000)]);
    let reports = fetch(&s, &r, 2, |_| {});
    let t = Instant::now();
    assert_intact(&s, &reports, "DONE (end of transfer)");
    clean(s.out.path());
    while s.server.stats().sessions_active.load(Ordering::Acquire) > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "sessions not freed after DONE loss"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        t.elapsed() < Duration::from_millis(700),
        "freed after {:?}: by the idle timeout, not by the last ACK",
        t.elapsed()
    );
    assert_eq!(
        stats.sessions_timed_out.load(Ordering::Relaxed),
        timed_out_before
    );
    assert_eq!(
        stats.sessions_completed.load(Ordering::Relaxed),
        completed_before + 2
    );
    let st = r.stop();
    assert!(st.up.targeted_drops >= 2, "DONE not dropped: {st}");
}

#[test]
fn blast_without_end_marker_ends_by_timeout_and_counts_loss_exactly() {
    // Copied: datagrams of the lab's size, MAX_PAYLOAD bytes of payload each.
    let s = setup(200 * MAX_PAYLOAD, |c| {
        c.send_path = ringblast::server::engine::SendPath::Sendmsg
    });
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), s.server.local_addr());
    cfg.impair.loss = 0.1;
    cfg.impair.drop_first = vec![(END, 1000)];
    cfg.seed = 3;
    let r = Relay::start(cfg).unwrap();
    let t = Instant::now();
    let reports = fetch(&s, &r, 1, |g| {
        g.mode = Mode::Blast;
        g.timeout = Duration::from_secs(1);
    });
    let st = r.stop();
    let rep = &reports[0];
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!rep.ok() && !rep.complete);
    assert!(st.down.targeted_drops >= 3, "END markers not dropped: {st}");
    // Exact accounting: every datagram is either intact or lost, and the client lost what the
    // relay dropped downstream; the relay's count may also hold a few control messages (a
    // RETRY or META), which the client recovered by asking again.
    let lost = rep.datagrams_lost;
    assert!(
        lost > 0 && lost <= st.down.dropped && lost + 4 >= st.down.dropped,
        "{rep:?} {st}"
    );
    assert_eq!(rep.bytes_intact, (200 - lost) * MAX_PAYLOAD as u64);
    assert_eq!(
        std::fs::read_dir(s.out.path()).unwrap().count(),
        0,
        "incomplete copy kept"
    );
}

/// Issue 24: a second copy to the same host, over a path whose round trip matches the first
/// copy's, starts from what the first learned of it (`serve --path-memory`, on by default),
/// two copies at once do not; with `--path-memory 0` every copy starts cold. (What it changes
/// is the simulator's to show: `a_copy_that_remembers_the_path_does_not_overshoot_it`.)
#[test]
fn a_second_copy_alone_over_a_long_path_starts_from_what_the_first_learned() {
    for (keep, recalled) in [(Duration::from_secs(600), 1), (Duration::ZERO, 0)] {
        let s = setup(8 << 20, |c| c.path_memory = keep);
        // 100 Mbit/s and 30 ms: paths under 20 ms are not remembered.
        let r = relay(&s, |i| {
            i.rate_bps = Some(100_000_000);
            i.delay = Duration::from_millis(15);
        });
        // One copy, another, then two at once: a record is one session's rate, and sessions
        // that share their host's path start cold.
        for (clients, expect) in [(1, 0), (1, recalled), (2, recalled)] {
            let reports = fetch(&s, &r, clients, |_| {});
            assert_intact(&s, &reports, "through a 30 ms path");
            clean(s.out.path());
            common::wait_sessions_closed(&s.server);
            let n = s.server.stats().paths_recalled.load(Ordering::Relaxed);
            assert_eq!(n, expect, "keep {keep:?}, after {clients} more");
        }
    }
}
