//! Issue 23.4: who may reach an open server. `serve --allow CIDR` answers only those
//! addresses (ringblast's protocol and the lab's), and a server bound beyond loopback without
//! authentication says once, at start, what that means.

mod common;

use std::net::UdpSocket;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{run, serve_args, server};

/// Outside --allow: no answer at all (not even an error), counted; inside: served.
#[test]
fn only_allowed_addresses_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"hello").unwrap();
    let d = dir.path().to_str().unwrap();

    let mut outside = serve_args(
        &["--dir", d, "--allow", "10.0.0.0/8,2001:db8::/32"],
        Stdio::null(),
    );
    let o = run(&[
        "list",
        "--server",
        &outside.addr.to_string(),
        "--timeout",
        "1s",
    ]);
    assert!(!o.status.success(), "{o:?}");
    let log = outside.stop();
    assert!(log.contains("127.0.0.1"), "{log}");
    assert!(
        log.contains("is outside --allow: its datagrams are dropped unanswered"),
        "{log}"
    );

    let mut inside = serve_args(
        &[
            "--dir",
            d,
            "--allow",
            "10.0.0.0/8",
            "--allow",
            "127.0.0.0/8",
        ],
        Stdio::null(),
    );
    let o = run(&["list", "--server", &inside.addr.to_string()]);
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains(" f"));
    inside.stop();

    // The lab's protocol is filtered the same way, and the drops are counted.
    let srv = server(dir.path(), |c| {
        c.legacy = true;
        c.allow = vec!["192.0.2.0/24".parse().unwrap()];
    });
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s.send_to(b"LIST", srv.local_addr()).unwrap();
    let mut buf = [0u8; 1024];
    assert!(
        s.recv(&mut buf).is_err(),
        "a LIST from outside --allow was answered"
    );
    assert_eq!(srv.stats().not_allowed.load(Ordering::Relaxed), 1);

    // A bad prefix is refused before anything starts.
    let o = run(&["serve", "--dir", d, "--allow", "10.1.2.3/8"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("bits set past its /8 prefix"),
        "{err}"
    );
}

/// Bound beyond loopback without authentication: one warning at start saying who can read
/// what; on loopback, none.
#[test]
fn an_open_server_beyond_loopback_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut open = serve_args(&["--dir", d, "--bind", "0.0.0.0:0"], Stdio::null());
    let log = open.stop();
    assert_eq!(log.matches("[OPEN]").count(), 1, "{log}");
    assert!(
        log.contains("anyone who can reach this port can list and read every file served"),
        "{log}"
    );
    let mut limited = serve_args(
        &["--dir", d, "--bind", "0.0.0.0:0", "--allow", "10.0.0.0/8"],
        Stdio::null(),
    );
    let log = limited.stop();
    assert!(
        log.contains("any host in 10.0.0.0/8 can list and read every file served"),
        "{log}"
    );
    let mut local = serve_args(&["--dir", d], Stdio::null());
    let log = local.stop();
    assert!(!log.contains("[OPEN]"), "{log}");
}
