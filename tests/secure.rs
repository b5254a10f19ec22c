//! Authenticated, sealed transfers (`serve --authorized`/`--psk`, `get --identity`/`--psk`)
//! and the hostile cases: a key the server does not know, a key that may not read the file,
//! a server whose key changed, bit flips on the way, datagrams of an earlier session replayed,
//! a flood of handshakes, and clients that speak in plaintext to a server that authenticates.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringblast::client::{self, GetConfig};
use ringblast::keys::{self, Authorized, ClientSecurity, ServerSecurity, ServerTrust};
use ringblast::protocol::noise::{Handshake, StaticKey, MAX_HANDSHAKE_MESSAGE};
use ringblast::protocol::{Message, MAX_PAYLOAD};
use ringblast::report::copy::CopyReport;
use ringblast::server::{Server, ServerConfig};
use ringblast::tools::relay::{Impairments, Relay, RelayConfig};

struct Setup {
    served: tempfile::TempDir,
    out: tempfile::TempDir,
    data: Vec<u8>,
    server: Server,
    server_key: StaticKey,
    /// May read every file.
    alice: StaticKey,
    /// May read `public*` only.
    bob: StaticKey,
}

/// A server of `f` (random bytes) and `public.txt`, authenticating alice (every file) and
/// bob (public* only).
fn setup(size: usize, tweak: impl FnOnce(&mut ServerConfig)) -> Setup {
    let served = tempfile::tempdir().unwrap();
    let data = common::random_bytes(size);
    std::fs::write(served.path().join("f"), &data).unwrap();
    std::fs::write(served.path().join("public.txt"), b"anyone with a key").unwrap();
    let (server_key, alice, bob) = (
        StaticKey::generate(),
        StaticKey::generate(),
        StaticKey::generate(),
    );
    let authorized = format!(
        "{} alice\n{} files=public* bob\n",
        keys::public_line(&alice.public),
        keys::public_line(&bob.public)
    );
    let security = ServerSecurity {
        identity: server_key.clone(),
        authorized: Some(Authorized::parse(&authorized).unwrap()),
        psk: None,
    };
    let server = common::server(served.path(), |c| {
        c.security = Some(Arc::new(security));
        tweak(c);
    });
    Setup {
        served,
        out: tempfile::tempdir().unwrap(),
        data,
        server,
        server_key,
        alice,
        bob,
    }
}

fn pinned(identity: &StaticKey, server: &StaticKey) -> Arc<ClientSecurity> {
    Arc::new(ClientSecurity {
        identity: identity.clone(),
        psk: None,
        trust: ServerTrust::Pinned(server.public),
    })
}

fn get(
    to: SocketAddr,
    file: &str,
    out: &Path,
    security: Option<Arc<ClientSecurity>>,
    tweak: impl FnOnce(&mut GetConfig),
) -> Vec<CopyReport> {
    let mut g = GetConfig::new(to, file);
    g.out_dir = Some(out.into());
    g.timeout = Duration::from_secs(5);
    g.force = true;
    g.security = security;
    tweak(&mut g);
    client::get(&g).unwrap()
}

fn error_of(reports: &[CopyReport]) -> String {
    assert!(
        reports.iter().all(|r| !r.ok()),
        "a copy succeeded: {reports:?}"
    );
    reports[0].error.clone().unwrap_or_default()
}

#[test]
fn an_authorized_key_gets_its_files_sealed_and_sees_only_those() {
    let s = setup(300 * MAX_PAYLOAD + 77, |_| {});
    let addr = s.server.local_addr();
    let reports = get(
        addr,
        "f",
        s.out.path(),
        Some(pinned(&s.alice, &s.server_key)),
        |g| g.clients = 3,
    );
    for r in &reports {
        assert!(r.ok(), "{r:?}");
        assert_eq!(std::fs::read(r.path.as_ref().unwrap()).unwrap(), s.data);
    }
    common::wait_sessions_closed(&s.server);
    let st = s.server.stats();
    assert_eq!(st.connections.load(Ordering::Relaxed), 3);
    assert_eq!(st.sessions_completed.load(Ordering::Relaxed), 3);
    // Alice lists both; bob only what his files= name.
    let list = |k: &StaticKey| {
        let names: Vec<String> = client::list(
            addr,
            Duration::from_secs(5),
            Some(&pinned(k, &s.server_key)),
        )
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
        names
    };
    assert_eq!(list(&s.alice), ["f", "public.txt"]);
    assert_eq!(list(&s.bob), ["public.txt"]);
    // Bob asking for f is refused; public.txt he gets.
    let e = error_of(&get(
        addr,
        "f",
        s.out.path(),
        Some(pinned(&s.bob, &s.server_key)),
        |_| {},
    ));
    assert!(e.contains("may not read f"), "{e}");
    assert_eq!(st.files_refused.load(Ordering::Relaxed), 1);
    let r = get(
        addr,
        "public.txt",
        s.out.path(),
        Some(pinned(&s.bob, &s.server_key)),
        |_| {},
    );
    assert!(r[0].ok(), "{r:?}");
    // In plaintext, nothing: not the list, not a file.
    let e = error_of(&get(addr, "f", s.out.path(), None, |_| {}));
    assert!(e.contains("authenticates its clients"), "{e}");
    let e = client::list(addr, Duration::from_secs(5), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("authenticates its clients"), "{e}");
    assert!(st.unauthenticated.load(Ordering::Relaxed) >= 2);
}

#[test]
fn unknown_keys_changed_server_keys_and_wrong_pre_shared_keys_are_refused() {
    let s = setup(10 * MAX_PAYLOAD, |_| {});
    let addr = s.server.local_addr();
    // A key the server does not know: told so, and nothing sent.
    let stranger = StaticKey::generate();
    let e = error_of(&get(
        addr,
        "f",
        s.out.path(),
        Some(pinned(&stranger, &s.server_key)),
        |_| {},
    ));
    assert!(e.contains("does not know your key"), "{e}");
    let st = s.server.stats();
    assert_eq!(st.keys_refused.load(Ordering::Relaxed), 1);
    assert_eq!(st.sessions_started.load(Ordering::Relaxed), 0);
    assert_eq!(st.bytes_sent.load(Ordering::Relaxed), 0);
    // The client's pin is another key (someone else answers for the server).
    let other = StaticKey::generate();
    let e = error_of(&get(
        addr,
        "f",
        s.out.path(),
        Some(pinned(&s.alice, &other)),
        |_| {},
    ));
    assert!(e.contains("not the pinned"), "{e}");
    // Known servers: first met, recorded; then the server's key changes: refused loudly.
    let dir = tempfile::tempdir().unwrap();
    let known = dir.path().join("known_servers");
    let trusting = |name: &str| {
        Arc::new(ClientSecurity {
            identity: s.alice.clone(),
            psk: None,
            trust: ServerTrust::known(known.clone(), name.to_string()).unwrap(),
        })
    };
    let r = get(
        addr,
        "f",
        s.out.path(),
        Some(trusting(&addr.to_string())),
        |_| {},
    );
    assert!(r[0].ok(), "{r:?}");
    let text = std::fs::read_to_string(&known).unwrap();
    assert!(
        text.contains(&keys::public_line(&s.server_key.public)),
        "{text}"
    );
    // Another server (another key) now answers at a name the file knows.
    let impostor = setup(10 * MAX_PAYLOAD, |_| {});
    let iaddr = impostor.server.local_addr();
    std::fs::write(
        &known,
        format!("{iaddr} {}\n", keys::public_line(&s.server_key.public)),
    )
    .unwrap();
    let e = error_of(&get(
        iaddr,
        "f",
        s.out.path(),
        Some(trusting(&iaddr.to_string())),
        |_| {},
    ));
    assert!(e.contains("HAS CHANGED"), "{e}");
    assert_eq!(
        impostor.server.stats().bytes_sent.load(Ordering::Relaxed),
        0
    );

    // Pre-shared keys: the same key gets the file, another does not finish the handshake.
    let psk_server = common::server(s.served.path(), |c| {
        c.security = Some(Arc::new(ServerSecurity {
            identity: StaticKey::generate(),
            authorized: None,
            psk: Some([3; 32]),
        }))
    });
    let with_psk = |k: [u8; 32]| {
        Arc::new(ClientSecurity {
            identity: StaticKey::generate(),
            psk: Some(k),
            trust: ServerTrust::Psk,
        })
    };
    let paddr = psk_server.local_addr();
    let r = get(paddr, "f", s.out.path(), Some(with_psk([3; 32])), |_| {});
    assert!(r[0].ok(), "{r:?}");
    let e = error_of(&get(
        paddr,
        "f",
        s.out.path(),
        Some(with_psk([4; 32])),
        |g| g.timeout = Duration::from_secs(2),
    ));
    assert!(e.contains("no answer") || e.contains("pre-shared"), "{e}");
    assert_eq!(
        psk_server.stats().sessions_started.load(Ordering::Relaxed),
        1
    );
    // An open server asked to authenticate says it does not.
    let open = common::server(s.served.path(), |_| {});
    let e = error_of(&get(
        open.local_addr(),
        "f",
        s.out.path(),
        Some(with_psk([3; 32])),
        |_| {},
    ));
    assert!(e.contains("does not authenticate"), "{e}");
}

#[test]
fn flipped_bits_are_dropped_by_the_seal_and_the_copy_still_arrives_whole() {
    let s = setup(200 * MAX_PAYLOAD + 5, |_| {});
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), s.server.local_addr());
    cfg.impair = Impairments {
        corrupt: 0.1,
        loss: 0.01,
        ..Impairments::default()
    };
    cfg.seed = 23;
    let relay = Relay::start(cfg).unwrap();
    let reports = get(
        relay.local_addr(),
        "f",
        s.out.path(),
        Some(pinned(&s.alice, &s.server_key)),
        |g| {
            g.clients = 2;
            g.timeout = Duration::from_secs(10);
        },
    );
    let rs = relay.stop();
    for r in &reports {
        assert!(r.ok(), "{r:?}");
        assert_eq!(std::fs::read(r.path.as_ref().unwrap()).unwrap(), s.data);
    }
    let caught_by_client: u64 = reports.iter().map(|r| r.unauthenticated).sum();
    let caught_by_server = s.server.stats().forged.load(Ordering::Relaxed);
    eprintln!("relay {rs}; forged caught: client {caught_by_client}, server {caught_by_server}");
    assert!(rs.down.corrupted > 0 && rs.up.corrupted > 0, "{rs}");
    assert!(
        caught_by_client > 0,
        "no flipped datagram was caught by the client"
    );
    // Corrupt data never reaches the copy: the CRC never had to catch one.
    assert_eq!(reports.iter().map(|r| r.corrupt).sum::<u64>(), 0);
}

/// A UDP forwarder for one client that records what the client sent.
struct Recorder {
    front: SocketAddr,
    back: Arc<UdpSocket>,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Recorder {
    fn start(server: SocketAddr) -> Recorder {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        back.connect(server).unwrap();
        ringblast::sys::socket::set_recv_buffer(&front, 8 << 20).unwrap();
        ringblast::sys::socket::set_recv_buffer(&back, 8 << 20).unwrap();
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let (sent, stop) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let up = {
            let (front, back, sent, stop, client) = (
                front.clone(),
                back.clone(),
                sent.clone(),
                stop.clone(),
                client.clone(),
            );
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = front.recv_from(&mut buf) {
                        *client.lock().unwrap() = Some(from);
                        sent.lock().unwrap().push(buf[..n].to_vec());
                        let _ = back.send(&buf[..n]);
                    }
                }
            })
        };
        let down = {
            let (front, back, stop) = (front.clone(), back.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = back.recv(&mut buf) {
                        if let Some(to) = *client.lock().unwrap() {
                            let _ = front.send_to(&buf[..n], to);
                        }
                    }
                }
            })
        };
        Recorder {
            front: front.local_addr().unwrap(),
            back,
            sent,
            stop,
            threads: vec![up, down],
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn datagrams_of_an_earlier_session_replayed_start_nothing_and_send_nothing() {
    let s = setup(50 * MAX_PAYLOAD, |_| {});
    let rec = Recorder::start(s.server.local_addr());
    let r = get(
        rec.front,
        "f",
        s.out.path(),
        Some(pinned(&s.alice, &s.server_key)),
        |_| {},
    );
    assert!(r[0].ok(), "{r:?}");
    let st = s.server.stats();
    common::wait_sessions_closed(&s.server);
    let (started, bytes) = (
        st.sessions_started.load(Ordering::Relaxed),
        st.bytes_sent.load(Ordering::Relaxed),
    );
    let recorded = rec.sent.lock().unwrap().clone();
    assert!(recorded.len() > 5, "{} recorded", recorded.len());
    // The whole conversation again, from the same address, twice.
    for _ in 0..2 {
        for d in &recorded {
            rec.back.send(d).unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(st.sessions_started.load(Ordering::Relaxed), started);
    assert_eq!(st.bytes_sent.load(Ordering::Relaxed), bytes);
    assert_eq!(st.sessions_active.load(Ordering::Relaxed), 0);
    assert!(
        st.replayed.load(Ordering::Relaxed) > 0,
        "no replay was counted"
    );
}

#[test]
fn a_flood_of_handshakes_from_many_ports_is_bounded_and_gets_no_file_byte() {
    let s = setup(20 * MAX_PAYLOAD, |c| c.requests_per_ip = 200.0);
    let addr = s.server.local_addr();
    let attacker = StaticKey::generate();
    let t = Instant::now();
    let mut sent = 0;
    // 64 source ports, each: a token, then handshake initiations (valid first messages), as
    // fast as it can for a second.
    let socks: Vec<common::RawClient> = (0..64).map(|_| common::RawClient::new(addr)).collect();
    let mut socks = socks;
    for c in &mut socks {
        c.sock
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
    }
    while t.elapsed() < Duration::from_secs(1) {
        for (i, c) in socks.iter_mut().enumerate() {
            c.send(&Message::Hello { nonce: i as u64 });
            let token = match c.recv().and_then(|d| {
                Message::parse(&d).ok().map(|m| match m {
                    Message::Retry { token, .. } => Some(token),
                    _ => None,
                })
            }) {
                Some(Some(t)) => t,
                _ => [0; 24],
            };
            let mut hs = Handshake::initiator(&attacker, b"ringblast 7", None).unwrap();
            let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
            let n = hs.write(&mut buf).unwrap();
            for k in 0..4 {
                c.send(&Message::HandshakeInit {
                    token,
                    nonce: k,
                    noise: &buf[..n],
                });
                sent += 1;
            }
        }
    }
    let st = s.server.stats();
    let handshakes = st.handshakes.load(Ordering::Relaxed);
    let limited = st.rate_limited.load(Ordering::Relaxed);
    eprintln!("{sent} initiations sent: {handshakes} handshakes begun, {limited} requests over budget, {} bad tokens", st.bad_tokens.load(Ordering::Relaxed));
    // One handshake per token at most, within the address's request budget: a burst of twice
    // its rate, and its rate for as long as the flood lasted.
    let budget = 2.0 * 200.0 + 200.0 * t.elapsed().as_secs_f64();
    assert!(
        (handshakes as f64) <= budget,
        "{handshakes} handshakes, budget {budget}"
    );
    assert!(limited > 0, "the flood was not limited");
    assert_eq!(st.bytes_sent.load(Ordering::Relaxed), 0);
    assert_eq!(st.sessions_started.load(Ordering::Relaxed), 0);
    assert_eq!(st.connections.load(Ordering::Relaxed), 0);
    // A client from another address is served meanwhile.
    let r = get(
        addr,
        "f",
        s.out.path(),
        Some(pinned(&s.alice, &s.server_key)),
        |_| {},
    );
    assert!(r[0].ok(), "{r:?}");
}

#[test]
fn the_command_line_makes_keys_and_serves_and_fetches_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    for name in ["server", "alice"] {
        let out = common::run(&["keygen", "--out", &d(name)]);
        assert!(out.status.success(), "{out:?}");
    }
    let out = common::run(&["keygen", "--psk", "--out", &d("psk")]);
    assert!(out.status.success(), "{out:?}");
    use std::os::unix::fs::PermissionsExt;
    for f in ["server", "alice", "psk"] {
        let mode = std::fs::metadata(d(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    // Never replaced.
    assert!(!common::run(&["keygen", "--out", &d("alice")])
        .status
        .success());
    std::fs::copy(d("alice.pub"), d("authorized")).unwrap();
    // Options that cannot go together, said at start.
    let refused = |args: &[&str], why: &str| {
        let out = common::run(args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success() && err.contains(why),
            "{args:?}: {err}"
        );
    };
    refused(
        &["serve", "--identity", &d("server"), "--bind", "127.0.0.1:0"],
        "needs --authorized",
    );
    refused(
        &[
            "serve",
            "--psk",
            &d("psk"),
            "--legacy",
            "--bind",
            "127.0.0.1:0",
        ],
        "--legacy cannot be combined",
    );
    std::fs::set_permissions(d("alice"), std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(
        &[
            "get",
            "f",
            "--identity",
            &d("alice"),
            "--server-key",
            &d("server.pub"),
        ],
        "too open",
    );
    std::fs::set_permissions(d("alice"), std::fs::Permissions::from_mode(0o600)).unwrap();

    let mut serve = common::serve_args(
        &[
            "--generated",
            "--identity",
            &d("server"),
            "--authorized",
            &d("authorized"),
        ],
        std::process::Stdio::null(),
    );
    let server = serve.server();
    let list = common::run(&[
        "list",
        "--server",
        &server,
        "--identity",
        &d("alice"),
        "--server-key",
        &d("server.pub"),
    ]);
    assert!(list.status.success(), "{list:?}");
    assert!(String::from_utf8_lossy(&list.stdout).contains("gen-1MiB"));
    let get = common::run(&[
        "get",
        "gen-3MiB",
        "--server",
        &server,
        "--identity",
        &d("alice"),
        "--known-servers",
        &d("known"),
        "--discard",
    ]);
    assert!(get.status.success(), "{get:?}");
    let err = String::from_utf8_lossy(&get.stderr);
    assert!(err.contains("first contact"), "{err}");
    // Without a key: told how to ask.
    let plain = common::run(&["get", "gen-3MiB", "--server", &server, "--discard"]);
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(
        !plain.status.success() && err.contains("--identity"),
        "{err}"
    );
    let log = serve.stop();
    assert!(log.contains("[AUTH]") && log.contains("sealed"), "{log}");
    assert!(!log.contains("[OPEN]"), "{log}");
}

/// The lab's baseline engine seals as the io_uring one does: the same copy, whole, from a
/// server offering both.
#[test]
fn both_engines_seal() {
    use ringblast::server::engine::EngineKind;
    if common::no_uring() {
        return;
    }
    let s = setup(40 * MAX_PAYLOAD + 9, |c| {
        c.engine = EngineKind::Uring;
        c.engines = vec![EngineKind::Uring, EngineKind::Threads];
    });
    for engine in [EngineKind::Threads, EngineKind::Uring] {
        let r = get(
            s.server.local_addr(),
            "f",
            s.out.path(),
            Some(pinned(&s.alice, &s.server_key)),
            |g| {
                g.engine = Some(engine);
                g.clients = 2;
            },
        );
        for c in &r {
            assert!(c.ok(), "{engine:?}: {c:?}");
            assert_eq!(std::fs::read(c.path.as_ref().unwrap()).unwrap(), s.data);
            assert_eq!(c.unauthenticated, 0);
        }
    }
    common::wait_sessions_closed(&s.server);
    assert_eq!(
        s.server.stats().sessions_completed.load(Ordering::Relaxed),
        4
    );
}
