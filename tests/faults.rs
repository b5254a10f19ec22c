//! Faults: the served file truncated or rewritten while it is being sent. The server must not
//! crash (a read of a truncated map is SIGBUS, which would kill this test process), must stop
//! the transfer and say why, and must keep serving.

mod common;
use common::no_uring;

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringblast::client::{self, GetConfig};
use ringblast::keys::{self, Authorized, ClientSecurity, ServerSecurity, ServerTrust};
use ringblast::protocol::noise::StaticKey;
use ringblast::protocol::MAX_PAYLOAD;
use ringblast::server::engine::{EngineKind, SendPath};

fn change_mid_transfer(engine: EngineKind, change: fn(&std::path::Path)) {
    change_mid_transfer_by(engine, SendPath::Auto, false, change)
}

/// A server of a file that `change` alters 0.4 s into its transfer (sealed: both sides with
/// keys, the server's pinned).
fn change_mid_transfer_by(
    engine: EngineKind,
    send_path: SendPath,
    sealed: bool,
    change: fn(&std::path::Path),
) {
    let served = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let path = served.path().join("moving");
    std::fs::write(&path, vec![7u8; 60 * MAX_PAYLOAD]).unwrap();
    std::fs::write(served.path().join("other"), vec![1u8; 3 * MAX_PAYLOAD]).unwrap();
    let (server_key, client_key) = (StaticKey::generate(), StaticKey::generate());
    let security = sealed.then(|| {
        let authorized = keys::public_line(&client_key.public);
        ServerSecurity {
            identity: server_key.clone(),
            authorized: Some(Authorized::parse(&authorized).unwrap()),
            psk: None,
        }
    });
    let client_security = sealed.then(|| {
        Arc::new(ClientSecurity {
            identity: client_key.clone(),
            psk: None,
            trust: ServerTrust::Pinned(server_key.public),
        })
    });
    // 20 Mbit/s: the 3.9 MB file takes ~1.6 s, time to change it underneath.
    let srv = common::server(served.path(), |c| {
        c.engine = engine;
        c.rate_bps = Some(20_000_000);
        c.send_path = send_path;
        c.security = security.map(Arc::new);
    });
    let changer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        change(&path);
    });
    let mut g = GetConfig::new(srv.local_addr(), "moving");
    g.out_dir = Some(out.path().into());
    g.timeout = Duration::from_secs(3);
    g.security = client_security.clone();
    let t = Instant::now();
    let r = &client::get(&g).unwrap()[0];
    changer.join().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "took {:?}",
        t.elapsed()
    );
    assert!(!r.ok());
    let e = r.error.as_deref().unwrap();
    assert!(e.contains("changed"), "{engine:?}: unclear reason: {e}");
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "partial copy kept"
    );
    // Still serving: another file, and the changed one afresh (re-scanned).
    let mut g = GetConfig::new(srv.local_addr(), "other");
    g.out_dir = Some(out.path().into());
    g.security = client_security;
    assert!(client::get(&g).unwrap()[0].ok());
}

fn truncate(p: &std::path::Path) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .set_len(1000)
        .unwrap();
}

fn rewrite_in_place(p: &std::path::Path) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(&[9u8; 4096], 50 * MAX_PAYLOAD as u64)
        .unwrap();
}

#[test]
fn file_truncated_while_sending_uring() {
    if no_uring() {
        return;
    }
    change_mid_transfer(EngineKind::Uring, truncate);
}

#[test]
fn file_truncated_while_sending_threads() {
    change_mid_transfer(EngineKind::Threads, truncate);
}

/// Sealed, the payloads are encrypted straight from the file's map, read in user space: a
/// truncation is a SIGBUS there, which the guard turns into the end of the session ("file
/// changed"); the server lives on and serves the file afresh.
#[test]
fn file_truncated_while_sealing_uring() {
    if no_uring() {
        return;
    }
    change_mid_transfer_by(EngineKind::Uring, SendPath::Auto, true, truncate);
}

#[test]
fn file_truncated_while_sealing_threads() {
    change_mid_transfer_by(EngineKind::Threads, SendPath::Auto, true, truncate);
}

#[test]
fn file_rewritten_while_sending() {
    if no_uring() {
        return;
    }
    change_mid_transfer(EngineKind::Uring, rewrite_in_place);
}

/// Spliced, a truncated file is a short `sendfile()` (or a changed identity): the session
/// ends with the reason, nothing half-sent is kept.
#[test]
fn file_truncated_while_splicing() {
    if no_uring() {
        return;
    }
    change_mid_transfer_by(EngineKind::Uring, SendPath::Splice, false, truncate);
}

/// Spliced, bytes rewritten in place would go out as they are now: the file's changed
/// identity ends the session, and any datagram that left with the new bytes fails its CRC
/// (computed at scanning) at the receiver.
#[test]
fn file_rewritten_while_splicing() {
    if no_uring() {
        return;
    }
    change_mid_transfer_by(EngineKind::Uring, SendPath::Splice, false, rewrite_in_place);
}
