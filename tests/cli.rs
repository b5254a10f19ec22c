//! The `ringblast` binary as a user runs it: exit codes, output, one-line errors.

mod common;
use common::no_uring;

use std::net::UdpSocket;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ringblast");

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ringblast serve` on `port`, with `extra` arguments; killed when dropped.
fn serve(dir: &std::path::Path, port: u16, extra: &[&str]) -> Serve {
    let child = Command::new(BIN)
        .args(["serve", "--dir"])
        .arg(dir)
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Serve(child)
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// Waits until `list` answers (the server is up).
fn wait_up(server: &str) -> Output {
    let t = Instant::now();
    loop {
        let out = run(&["list", "--server", server, "--timeout", "0.5"]);
        if out.status.success() || t.elapsed() > Duration::from_secs(10) {
            return out;
        }
    }
}

#[test]
fn serve_list_get_and_failures() {
    if no_uring() {
        return;
    }
    let served = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(served.path().join("seed.bin"), &data).unwrap();
    let port = free_port();
    let server = format!("127.0.0.1:{port}");
    let srv = serve(served.path(), port, &[]);

    let listed = wait_up(&server);
    assert!(listed.status.success(), "{listed:?}");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("seed.bin") && text.contains("300000"),
        "{text}"
    );

    let got = run(&[
        "get",
        "seed.bin",
        "--server",
        &server,
        "--clients",
        "2",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(got.status.success(), "{got:?}");
    let table = String::from_utf8_lossy(&got.stdout);
    assert!(table.contains("2/2 copies intact and verified"), "{table}");
    for i in 1..=2 {
        assert_eq!(
            std::fs::read(out.path().join(format!("seed.bin.{i}"))).unwrap(),
            data
        );
    }

    // Interval reports, per client and in sum.
    let iv = run(&[
        "get",
        "seed.bin",
        "--server",
        &server,
        "--discard",
        "--clients",
        "2",
        "-i",
        "0.01",
    ]);
    assert!(iv.status.success(), "{iv:?}");
    let text = String::from_utf8_lossy(&iv.stdout);
    assert!(text.contains("[SUM]") && text.contains("[  2]"), "{text}");

    // JSON for scripts: one object with the fields DESIGN.md lists.
    let js = run(&[
        "get",
        "seed.bin",
        "--server",
        &server,
        "--discard",
        "--clients",
        "2",
        "--json",
        "-",
    ]);
    assert!(js.status.success(), "{js:?}");
    let v: serde_json::Value = serde_json::from_slice(&js.stdout).expect("valid JSON on stdout");
    assert_eq!(v["file"], "seed.bin");
    assert_eq!(v["size"], 300_000);
    assert_eq!(v["mode"], "reliable");
    let c = &v["clients"][1];
    for key in [
        "id",
        "local_port",
        "bytes_received",
        "bytes_intact",
        "complete",
        "hash_ok",
        "duration_s",
        "goodput_bps",
        "datagrams_received",
        "datagrams_lost",
        "retransmitted",
        "duplicates",
    ] {
        assert!(!c[key].is_null(), "{key} missing: {c}");
    }
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(c["latency_us"][p].is_u64(), "latency_us.{p} missing: {c}");
    }
    assert_eq!(c["bytes_intact"], 300_000);
    assert!(v["goodput_bps"].as_f64().unwrap() > 0.0);

    let missing = run(&["get", "nope.bin", "--server", &server, "--discard"]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("no such file"), "{err}");

    let traversal = run(&["get", "../etc/passwd", "--server", &server, "--discard"]);
    assert!(!traversal.status.success());
    assert!(String::from_utf8_lossy(&traversal.stderr).contains("bad file name"));

    let bad = run(&["get", "seed.bin", "--discard", "--verify", "content"]);
    assert!(
        !bad.status.success(),
        "--discard with --verify content must be refused"
    );

    drop(srv);
    let t = Instant::now();
    let gone = run(&[
        "get",
        "seed.bin",
        "--server",
        &server,
        "--discard",
        "--timeout",
        "1",
    ]);
    assert!(!gone.status.success());
    assert!(t.elapsed() < Duration::from_secs(5));
    let err = String::from_utf8_lossy(&gone.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn help_explains_every_command() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "list", "get", "demo"] {
        assert!(text.contains(cmd), "{cmd} missing from --help");
    }
    let get = String::from_utf8_lossy(&run(&["get", "--help"]).stdout).to_string();
    for flag in [
        "--clients",
        "--out",
        "--discard",
        "--mode",
        "--timeout",
        "--window",
    ] {
        assert!(get.contains(flag), "{flag} missing from get --help");
    }
}

#[test]
fn a_server_killed_mid_transfer_fails_the_client_fast_and_clean() {
    if no_uring() {
        return;
    }
    let served = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("slow.bin"), vec![1u8; 4_000_000]).unwrap();
    let port = free_port();
    let server = format!("127.0.0.1:{port}");
    // 16 Mbit/s: the 4 MB file takes 2 s.
    let mut srv = serve(served.path(), port, &["--rate", "16M"]);
    assert!(wait_up(&server).status.success());
    let get = Command::new(BIN)
        .args([
            "get",
            "slow.bin",
            "--server",
            &server,
            "--clients",
            "3",
            "--timeout",
            "2",
            "--out",
        ])
        .arg(out.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    srv.0.kill().unwrap(); // SIGKILL: no goodbye
    let _ = srv.0.wait();
    let t = Instant::now();
    let got = get.wait_with_output().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "client took {:?} to give up",
        t.elapsed()
    );
    assert!(!got.status.success());
    let err = String::from_utf8_lossy(&got.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("3 of 3 copies failed"), "{err}");
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "partial copies left behind"
    );
}
