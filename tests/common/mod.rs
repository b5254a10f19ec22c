//! Helpers shared by the integration tests: a server on loopback, a fetch, a raw client that
//! speaks the wire protocol by hand, a fake server, and the `ringblast` binary.
//!
//! Tests that do not need io_uring run everywhere: [`engine`] picks the threads engine where
//! this kernel gives no io_uring. Tests of the io_uring engine itself call [`no_uring`] and
//! skip with a message. Every skip goes through `ringblast::skip`: under CI (`RINGBLAST_CI=1`,
//! set by .ci/run) it fails instead, so CI cannot skip silently.
#![allow(dead_code)]

pub mod netns;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use rand::RngCore;
use ringblast::client::{self, GetConfig};
use ringblast::protocol::{is_data, Message, Meta};
use ringblast::report::copy::CopyReport;
use ringblast::server::engine::EngineKind;
use ringblast::server::{Server, ServerConfig};

pub const BIN: &str = env!("CARGO_BIN_EXE_ringblast");

/// Whether io_uring can be used here; panics where CI requires it and it is missing.
pub fn uring_available() -> bool {
    match ringblast::server::engine::uring::available() {
        Ok(()) => true,
        Err(e) => {
            if ringblast::in_ci() {
                panic!("RINGBLAST_CI=1 but {e}");
            }
            false
        }
    }
}

/// True (after saying why) when io_uring is missing: a test of the io_uring engine itself is
/// skipped with a message rather than failed.
pub fn no_uring() -> bool {
    if uring_available() {
        return false;
    }
    ringblast::skip("io_uring is not available on this kernel (this test is about it)");
    true
}

/// The engine for tests that work with either: io_uring where there is one.
pub fn engine() -> EngineKind {
    static SAID: Once = Once::new();
    if uring_available() {
        EngineKind::Uring
    } else {
        SAID.call_once(|| eprintln!("NOTE: no io_uring here: testing with the threads engine"));
        EngineKind::Threads
    }
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

/// A server on 127.0.0.1 (any port) serving `dir` with [`engine`], 2 workers, then `tweak`.
pub fn server(dir: &Path, tweak: impl FnOnce(&mut ServerConfig)) -> Server {
    let mut cfg = ServerConfig {
        dir: Some(dir.to_path_buf()),
        bind: "127.0.0.1:0".parse().unwrap(),
        engine: engine(),
        workers: 2,
        ..ServerConfig::default()
    };
    tweak(&mut cfg);
    Server::start(cfg).expect("server starts")
}

/// `get` of `name` from `addr` by `clients` sub-clients into `out` (replacing what an earlier
/// fetch left there), 5 s timeout, then `tweak`.
pub fn fetch(
    addr: SocketAddr,
    name: &str,
    clients: usize,
    out: &Path,
    tweak: impl FnOnce(&mut GetConfig),
) -> Vec<CopyReport> {
    let mut cfg = GetConfig::new(addr, name);
    cfg.clients = clients;
    cfg.out_dir = Some(out.to_path_buf());
    cfg.timeout = Duration::from_secs(5);
    cfg.force = true;
    tweak(&mut cfg);
    client::get(&cfg).expect("get runs")
}

/// Files in `dir` (copies and anything left behind).
pub fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// A hand-driven client speaking the wire protocol directly.
pub struct RawClient {
    pub sock: UdpSocket,
    buf: Vec<u8>,
}

impl RawClient {
    pub fn new(server: SocketAddr) -> Self {
        Self::from_ip(server, "127.0.0.1")
    }

    /// From an address of its own (any 127.x.y.z is this host on loopback: many "hosts").
    pub fn from_ip(server: SocketAddr, ip: &str) -> Self {
        let sock = UdpSocket::bind((ip, 0)).unwrap();
        sock.connect(server).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        // Room for a window of data, so control messages are not crowded out.
        ringblast::sys::socket::set_recv_buffer(&sock, 4 << 20).unwrap();
        RawClient {
            sock,
            buf: vec![0; 70_000],
        }
    }

    pub fn send(&self, m: &Message<'_>) {
        self.sock.send(&m.to_vec()).unwrap();
    }

    pub fn recv(&mut self) -> Option<Vec<u8>> {
        let n = match ringblast::sys::socket::retry_eintr(|| self.sock.recv(&mut self.buf)) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("raw client recv: {e}");
                return None;
            }
        };
        Some(self.buf[..n].to_vec())
    }

    /// Next control message, skipping data.
    pub fn recv_control(&mut self) -> Option<Vec<u8>> {
        loop {
            let d = self.recv()?;
            if !is_data(&d) {
                return Some(d);
            }
        }
    }

    /// Sends a GET until the answer is not WAIT (the file may still be being scanned),
    /// resending on silence as a real client does.
    pub fn get(&mut self, m: &Message<'_>) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            self.send(m);
            match self.recv_control() {
                Some(d) if !matches!(Message::parse(&d), Ok(Message::Wait { .. })) => return d,
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        panic!("no answer to GET in 20 s");
    }

    /// The first ACK of `session`, granting `credit` datagrams: it shows the server this
    /// client receives at its address, and only then does data flow.
    pub fn ack(&self, session: u32, credit: u32) {
        let mut scratch = Vec::new();
        self.send(&Message::Ack(
            ringblast::protocol::Ack {
                credit_limit: credit,
                ..ringblast::protocol::Ack::new(session)
            }
            .with_ranges(&[], &mut scratch),
        ));
    }

    /// HELLO until a RETRY comes back (resent on silence, as a real client does).
    pub fn token(&mut self) -> [u8; 24] {
        for _ in 0..10 {
            self.send(&Message::Hello { nonce: 7 });
            if let Some(d) = self.recv_control() {
                match Message::parse(&d).unwrap() {
                    Message::Retry { nonce: 7, token } => return token,
                    other => panic!("{other:?}"),
                }
            }
        }
        panic!("no RETRY after 10 HELLOs");
    }
}

/// A fake server answering the handshake with whatever META `meta` builds.
pub fn fake_server(meta: impl Fn(u32) -> Meta + Send + 'static) -> SocketAddr {
    answering_server(move |m| match m {
        Message::Get { request_id, .. } => vec![Message::Meta(meta(*request_id)).to_vec()],
        _ => Vec::new(),
    })
}

/// A fake server that hands out tokens and answers every other message with the datagrams
/// `answer` makes of it, for as long as it is asked something every 20 s.
pub fn answering_server(
    mut answer: impl FnMut(&Message<'_>) -> Vec<Vec<u8>> + Send + 'static,
) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 70_000];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let replies = match Message::parse(&buf[..n]) {
                Ok(Message::Hello { nonce }) => vec![Message::Retry {
                    nonce,
                    token: [1; 24],
                }
                .to_vec()],
                Ok(m) => answer(&m),
                Err(_) => continue,
            };
            for r in replies {
                let _ = sock.send_to(&r, from);
            }
        }
    });
    addr
}

/// Checks the lab client's output (`text`) and its `clients` copies in `out`: each the whole
/// of `data`.
pub fn lab_copies_whole(text: &str, out: &Path, clients: usize, data: &[u8]) {
    for i in 1..=clients {
        assert!(
            text.contains(&format!("client {i} {} ", data.len())),
            "{text}"
        );
        let name = format!("Cliente{i}-Prueba{clients}.mp4");
        let copy = std::fs::read(out.join(name)).unwrap();
        assert!(copy == data, "sub-client {i}'s file differs");
    }
}

/// Whether python3 runs here (the lab's client needs it); says so when it does not.
pub fn python3() -> bool {
    let ok = Command::new("python3").arg("--version").output().is_ok();
    if !ok {
        ringblast::skip("no python3 on this machine");
    }
    ok
}

/// A UDP port free right now on 127.0.0.1: for an address where nothing listens (to give a
/// server, use [`serve`], which lets the kernel pick).
pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `ringblast serve` process on a port of its own choosing, its log in a file; killed when
/// dropped.
pub struct Serve {
    pub child: Child,
    /// Where it listens (it bound port 0 and said which port it got).
    pub addr: SocketAddr,
    log: tempfile::NamedTempFile,
}

impl Serve {
    /// Its address as `--server` takes it.
    pub fn server(&self) -> String {
        self.addr.to_string()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap()
    }

    /// Stops it (SIGKILL) and returns its whole log.
    pub fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }

    /// Stops it and returns what it printed on stdout (started with `Stdio::piped()`).
    pub fn stop_stdout(&mut self) -> String {
        self.stop();
        let mut text = String::new();
        let mut out = self.child.stdout.take().expect("stdout was piped");
        std::io::Read::read_to_string(&mut out, &mut text).unwrap();
        text
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ringblast serve` of `dir` with [`engine`] and `extra` arguments, on 127.0.0.1 and a port
/// the kernel picks (no race with another test for a port found free a moment before), once
/// it is listening.
pub fn serve(dir: &Path, extra: &[&str]) -> Serve {
    serve_with(dir, extra, Stdio::null())
}

/// Like [`serve`], with its stdout (`--json`) going to `stdout`.
pub fn serve_with(dir: &Path, extra: &[&str], stdout: Stdio) -> Serve {
    let dir = dir.to_str().expect("a UTF-8 temporary path");
    let mut args = vec!["--dir", dir, "--engine", engine_arg()];
    args.extend_from_slice(extra);
    serve_args(&args, stdout)
}

/// `ringblast serve --bind 127.0.0.1:0` (unless `args` binds elsewhere) with exactly `args`
/// (no --dir, no --engine), once it is listening.
pub fn serve_args(args: &[&str], stdout: Stdio) -> Serve {
    let log = tempfile::NamedTempFile::new().unwrap();
    let bind: &[&str] = if args.contains(&"--bind") {
        &[]
    } else {
        &["--bind", "127.0.0.1:0"]
    };
    let child = Command::new(BIN)
        .arg("serve")
        .args(bind)
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::from(log.reopen().unwrap()))
        .spawn()
        .unwrap();
    // The first log line says where it listens.
    let t = Instant::now();
    let addr = loop {
        let text = std::fs::read_to_string(log.path()).unwrap();
        if let Some(rest) = text.split("Server is listening on ").nth(1) {
            let addr = rest.split(',').next().unwrap_or("");
            break addr
                .parse()
                .unwrap_or_else(|_| panic!("listening on {addr:?}?"));
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "serve never said where it listens: {text}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    Serve { child, addr, log }
}

/// `--engine` value matching [`engine`].
pub fn engine_arg() -> &'static str {
    engine().as_str()
}

/// Runs the binary with `args` to completion.
pub fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// Waits until `list` answers (the server is up).
pub fn wait_up(server: &str) -> Output {
    let t = Instant::now();
    loop {
        let out = run(&["list", "--server", server, "--timeout", "0.5"]);
        if out.status.success() || t.elapsed() > Duration::from_secs(10) {
            return out;
        }
    }
}

/// Whether loopback carries multicast, turning it on if it may.
#[allow(dead_code)]
pub fn loopback_multicast() -> bool {
    let flags = |c: &mut Command| {
        c.output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("MULTICAST"))
            .unwrap_or(false)
    };
    let show = || {
        let mut c = Command::new("ip");
        c.args(["link", "show", "lo"]);
        c
    };
    if flags(&mut show()) {
        return true;
    }
    let _ = Command::new("ip")
        .args(["link", "set", "lo", "multicast", "on"])
        .output();
    if flags(&mut show()) {
        return true;
    }
    ringblast::skip(
        "loopback has no MULTICAST flag and it cannot be set (root: ip link set lo multicast on)",
    );
    false
}

/// Waits (up to 5 s) until `server` holds no session: a client is done when its copy is
/// whole, the server when the client's last acknowledgement reaches it, a moment later (or
/// when it ends the session itself). A session's counters (bytes sent, how it ended) are
/// added when it closes: final once it is no longer active (Release/Acquire).
pub fn wait_sessions_closed(server: &Server) {
    let t = std::time::Instant::now();
    while server
        .stats()
        .sessions_active
        .load(std::sync::atomic::Ordering::Acquire)
        > 0
    {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "sessions still open 5 s after their copies ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
