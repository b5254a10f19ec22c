//! `serve --legacy` against a client that speaks exactly the lab's protocol (its Python
//! client's messages and reads, in Rust).

mod common;
use common::server;

use std::net::UdpSocket;
use std::time::Duration;

fn ask(sock: &UdpSocket, msg: &str) -> Option<String> {
    sock.send(msg.as_bytes()).unwrap();
    let mut buf = [0u8; 1024]; // the lab's client reads 1024 bytes
    let n = ringblast::sys::socket::retry_eintr(|| sock.recv(&mut buf)).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A socket like the lab client's. `patience`: how long an answer may take (generous: a busy
/// CI machine can delay any thread; the lab's own client waited 5 s).
fn lab_socket(server: std::net::SocketAddr, patience: Duration) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(server).unwrap();
    s.set_read_timeout(Some(patience)).unwrap();
    // The lab's raw TRANSFER has no flow control: with the default ~208 KiB buffer a busy
    // machine drops datagrams, which is the lab's loss, not what this test checks.
    ringblast::sys::socket::set_recv_buffer(&s, 4 << 20).unwrap();
    s
}

#[test]
fn the_labs_client_works_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(dir.path().join("100mb.mp4"), &data).unwrap();
    std::fs::write(dir.path().join("250mb.mp4"), b"x").unwrap();
    let srv = server(dir.path(), |c| c.legacy = true);
    let main = lab_socket(srv.local_addr(), Duration::from_secs(5));
    assert_eq!(ask(&main, "LIST").unwrap(), "['100mb.mp4', '250mb.mp4']");
    assert_eq!(
        ask(&main, "!CONFIG").unwrap(),
        "Invalid config format (Empty config). Please use the following format: !CONFIG <file>"
    );
    assert_eq!(
        ask(&main, "!CONFIG :100mb.mp4").unwrap(),
        "Invalid config format! !CONFIG  100mb.mp4 . Please use the following format: !CONFIG <file> :<num_clients>"
    );
    assert_eq!(
        ask(&main, "!CONFIG :nope.mp4 :2").unwrap(),
        "File nope.mp4 does not exist"
    );
    assert_eq!(ask(&main, "!CONFIG :100mb.mp4 :2").unwrap(), "Config set");

    // Two sub-clients, each on its own socket: TRANSFER, then read until 500 ms of silence
    // (the lab used 5 s), writing what arrives.
    for _ in 0..2 {
        let sub = lab_socket(srv.local_addr(), Duration::from_secs(5));
        sub.send(b"TRANSFER").unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65_507];
        // The lab's protocol ends a transfer by silence (its client waited 5 s); stop early
        // once the whole file is in, so a busy machine only slows the test.
        while got.len() < data.len() {
            match ringblast::sys::socket::retry_eintr(|| sub.recv(&mut buf)) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => {
                    eprintln!("sub-client recv after {} bytes: {e}", got.len());
                    break;
                }
            }
        }
        assert_eq!(got.len(), data.len());
        assert!(got == data, "raw transfer differs");
    }
}

#[test]
fn legacy_is_off_by_default() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), b"x").unwrap();
    let srv = server(dir.path(), |_| {});
    // A late answer would fail this test, never pass it: a short wait is enough.
    let s = lab_socket(srv.local_addr(), Duration::from_millis(500));
    assert_eq!(
        ask(&s, "LIST"),
        None,
        "answered the lab protocol without --legacy"
    );
    assert_eq!(ask(&s, "TRANSFER"), None);
    assert!(
        srv.stats()
            .malformed
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
}

/// `TRANSFER` before any `!CONFIG` gets nothing back (the lab's server sent nothing: a reply
/// would land in its client's output file), and `serve --rate` paces legacy transfers so the
/// lab's slower conditions can be reproduced.
#[test]
fn transfer_before_config_is_silent_and_rate_paces_raw_transfers() {
    let dir = tempfile::tempdir().unwrap();
    // 10 datagrams of 65507 bytes: 5.2 Mbit, 0.66 s at 8 Mbit/s.
    let data = vec![7u8; 10 * 65_507];
    std::fs::write(dir.path().join("f.bin"), &data).unwrap();
    let srv = server(dir.path(), |c| {
        c.legacy = true;
        c.rate_bps = Some(8_000_000);
    });
    let early = lab_socket(srv.local_addr(), Duration::from_millis(300));
    assert_eq!(
        ask(&early, "TRANSFER"),
        None,
        "a reply to TRANSFER before !CONFIG"
    );
    let main = lab_socket(srv.local_addr(), Duration::from_secs(5));
    assert_eq!(ask(&main, "!CONFIG :f.bin :1").unwrap(), "Config set");
    let sub = lab_socket(srv.local_addr(), Duration::from_secs(5));
    let t = std::time::Instant::now();
    sub.send(b"TRANSFER").unwrap();
    let mut got = 0;
    let mut buf = vec![0u8; 65_507];
    while got < data.len() {
        got += ringblast::sys::socket::retry_eintr(|| sub.recv(&mut buf)).unwrap();
    }
    let took = t.elapsed();
    // 9 datagrams wait for the ones before them: at least 9 x 65507 x 8 / 8 Mbit/s = 0.59 s.
    assert!(took >= Duration::from_millis(550), "not paced: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// The lab's own Python client (tests/lab/lab_client.py: its select() with a 5 s timeout,
/// here 1 s, recvfrom(65507), the kernel's default receive buffer) against
/// `serve --legacy --rate`: every sub-client's file arrives whole. Skipped, with a message,
/// without python3.
#[test]
fn the_labs_python_client_gets_whole_files_from_a_paced_legacy_server() {
    if !common::python3() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(dir.path().join("100mb.mp4"), &data).unwrap();
    let srv = server(dir.path(), |c| {
        c.legacy = true;
        c.rate_bps = Some(50_000_000);
    });
    let out = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lab/lab_client.py");
    let got = std::process::Command::new("python3")
        .env("LAB_SILENCE", "1")
        .arg(script)
        .arg("127.0.0.1")
        .arg(srv.local_addr().port().to_string())
        .args(["100mb.mp4", "2"])
        .arg(out.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&got.stdout);
    assert!(got.status.success(), "{got:?}");
    assert!(text.contains("['100mb.mp4']"), "{text}");
    common::lab_copies_whole(&text, out.path(), 2, &data);
}
