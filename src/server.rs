//! The server: one UDP port for every client and every message, one control thread.
//!
//! The control thread receives everything that arrives on the port (`recvmmsg` batches),
//! validates addresses with tokens, answers `LIST`, turns `GET`s into sessions handed to the
//! engine, applies `ACK`s to their sender state and wakes the engine, and times out silent
//! clients. Indexing a file (CRCs, hashes) takes time proportional to its size, so it runs on
//! an indexer thread; a client asking meanwhile is told to `WAIT`.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::engine::threads::ThreadsEngine;
use crate::engine::uring::UringEngine;
use crate::engine::{unix_ns, CloseReason, Engine, EngineKind, Session, SessionCtx};
use crate::files::{Catalog, FileError, IndexedFile};
use crate::legacy::Legacy;
use crate::session::{Pacer, SenderState};
use crate::stats::ServerStats;
use crate::sys::recvmmsg::{is_timeout, RecvBatch};
use crate::sys::socket;
use crate::token::{TokenKey, DEFAULT_TOKEN_LIFETIME};
use crate::wire::{
    ack_flags, Ack, DoneStatus, ErrorCode, ListEntry, Message, Meta, Mode, WireError,
    DATA_HEADER_LEN, MAX_DATAGRAM, TOKEN_LEN,
};

/// Everything `ringblast serve` can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub dir: PathBuf,
    pub bind: SocketAddr,
    pub engine: EngineKind,
    pub workers: usize,
    /// Datagram size on the wire, header included (65507: the lab's, the IPv4 maximum).
    pub datagram_size: usize,
    /// A session whose client is silent this long is dropped.
    pub idle_timeout: Duration,
    /// Per-session pacing, bits per second (`None`: as fast as credit allows).
    pub rate_bps: Option<u64>,
    pub max_sessions: usize,
    /// Cap on the window (datagrams) a client may ask for.
    pub max_window: u32,
    /// Print one JSON object per finished session on stdout.
    pub json: bool,
    /// Also answer the lab's text protocol (an amplifier: off by default).
    pub legacy: bool,
    /// Requests (HELLO, LIST, GET) per second one source IP may make, on average; twice
    /// that in a burst.
    pub requests_per_ip: f64,
    /// How long an address-validation token stays valid.
    pub token_lifetime: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            dir: PathBuf::from("files"),
            bind: "127.0.0.1:6969".parse().expect("literal address"),
            engine: EngineKind::Uring,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            datagram_size: MAX_DATAGRAM,
            idle_timeout: Duration::from_secs(10),
            rate_bps: None,
            max_sessions: 256,
            max_window: 4096,
            json: false,
            legacy: false,
            requests_per_ip: 500.0,
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
        }
    }
}

/// A running server. Dropping it shuts it down.
pub struct Server {
    local_addr: SocketAddr,
    stats: Arc<ServerStats>,
    stop: Arc<AtomicBool>,
    control: Option<JoinHandle<()>>,
    engine_threads: usize,
}

impl Server {
    /// Binds the port, starts the engine and the control thread.
    pub fn start(cfg: ServerConfig) -> anyhow::Result<Server> {
        use anyhow::Context;
        let min = DATA_HEADER_LEN + crate::client::MIN_PAYLOAD as usize;
        if !(min..=MAX_DATAGRAM).contains(&cfg.datagram_size) {
            anyhow::bail!("datagram size must be between {min} and {MAX_DATAGRAM} bytes");
        }
        if !cfg.dir.is_dir() {
            anyhow::bail!("{} is not a directory", cfg.dir.display());
        }
        let sock =
            UdpSocket::bind(cfg.bind).with_context(|| format!("cannot bind {}", cfg.bind))?;
        let local_addr = sock.local_addr()?;
        let rcvbuf = socket::set_recv_buffer(&sock, 8 << 20)?;
        let sndbuf = socket::set_send_buffer(&sock, 8 << 20)?;
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let sock = Arc::new(sock);
        let engine: Box<dyn Engine> = match cfg.engine {
            EngineKind::Uring => Box::new(UringEngine::new(sock.clone(), cfg.workers)?),
            EngineKind::Threads => Box::new(ThreadsEngine::new(sock.clone())),
        };
        let engine_threads = engine.threads();
        let stats = Arc::new(ServerStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let catalog = Arc::new(Catalog::new(
            cfg.dir.clone(),
            (cfg.datagram_size - DATA_HEADER_LEN) as u32,
        ));
        let (index_tx, index_jobs) = mpsc::channel::<String>();
        let (index_done_tx, index_done) = mpsc::channel();
        let indexer = {
            let catalog = catalog.clone();
            std::thread::Builder::new()
                .name("indexer".into())
                .spawn(move || {
                    for name in index_jobs {
                        let t = Instant::now();
                        let res = catalog.index(&name);
                        if let Ok(f) = &res {
                            tracing::info!(
                                "[INDEX] {} indexed: {} bytes, {} datagrams, in {:.3} s",
                                name,
                                f.size,
                                f.datagrams(),
                                t.elapsed().as_secs_f64()
                            );
                        }
                        if index_done_tx.send((name, res)).is_err() {
                            return;
                        }
                    }
                })?
        };
        let threads = match cfg.engine {
            EngineKind::Uring => format!("{engine_threads} workers"),
            EngineKind::Threads => "one thread per session".to_string(),
        };
        tracing::info!(
            "[LISTENING] Server is listening on {local_addr}, serving {} (engine {}, {threads}, recv buffer {} KiB, send buffer {} KiB)",
            cfg.dir.display(),
            cfg.engine.as_str(),
            rcvbuf / 1024,
            sndbuf / 1024
        );
        // Index what is there now, so the first client does not wait for it.
        let mut indexing = HashSet::new();
        if let Ok(list) = catalog.list() {
            for (name, _) in list {
                if index_tx.send(name.clone()).is_ok() {
                    indexing.insert(name);
                }
            }
        }
        let legacy = cfg
            .legacy
            .then(|| Legacy::new(sock.clone(), catalog.clone(), cfg.max_sessions));
        if legacy.is_some() {
            tracing::warn!("[LEGACY] answering the lab's LIST / !CONFIG / TRANSFER: unauthenticated, any source address can make this server send a whole file anywhere");
        }
        let tokens = TokenKey::random(cfg.token_lifetime);
        let control = Control {
            legacy,
            budgets: HashMap::new(),
            cfg,
            sock,
            catalog,
            engine,
            tokens,
            stats: stats.clone(),
            sessions: HashMap::new(),
            by_request: HashMap::new(),
            pending: Vec::new(),
            indexing,
            index_tx: Some(index_tx),
            index_done,
            indexer: Some(indexer),
            out: Vec::with_capacity(MAX_DATAGRAM),
        };
        let stop2 = stop.clone();
        let control = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || control.run(&stop2))?;
        Ok(Server {
            local_addr,
            stats,
            stop,
            control: Some(control),
            engine_threads,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Threads the engine runs (not counting the control and indexer threads).
    pub fn engine_threads(&self) -> usize {
        self.engine_threads
    }

    /// Blocks until the server stops (it runs until shut down or the process ends).
    pub fn wait(mut self) {
        if let Some(h) = self.control.take() {
            let _ = h.join();
        }
    }

    /// Stops accepting, closes every session and joins all threads.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.control.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// A GET waiting for its file to be indexed.
struct PendingGet {
    peer: SocketAddr,
    request_id: u32,
    name: String,
    mode: Mode,
    window: u32,
}

/// A source address's request budget (token bucket) and when it was last told to slow down.
struct Budget {
    tokens: f64,
    last: Instant,
    last_busy_reply: Option<Instant>,
}

struct Control {
    legacy: Option<Legacy>,
    budgets: HashMap<std::net::IpAddr, Budget>,
    cfg: ServerConfig,
    sock: Arc<UdpSocket>,
    catalog: Arc<Catalog>,
    engine: Box<dyn Engine>,
    tokens: TokenKey,
    stats: Arc<ServerStats>,
    sessions: HashMap<u32, Arc<Session>>,
    /// (peer, request id) -> session id: a repeated GET gets the same session's META again.
    by_request: HashMap<(SocketAddr, u32), u32>,
    pending: Vec<PendingGet>,
    indexing: HashSet<String>,
    index_tx: Option<Sender<String>>,
    index_done: Receiver<(String, Result<Arc<IndexedFile>, FileError>)>,
    indexer: Option<JoinHandle<()>>,
    out: Vec<u8>,
}

impl Control {
    fn run(mut self, stop: &AtomicBool) {
        let mut batch = RecvBatch::new();
        let mut last_sweep = Instant::now();
        while !stop.load(Ordering::Acquire) {
            match batch.recv(&self.sock) {
                Ok(n) => {
                    for i in 0..n {
                        let (Some(src), Some(dgram)) = (batch.source(i), batch.datagram(i)) else {
                            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        self.handle(src, dgram);
                    }
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => {
                    // ICMP errors from a vanished client surface here on some kernels.
                    tracing::debug!("recv on the server port: {e}");
                }
            }
            while let Ok((name, res)) = self.index_done.try_recv() {
                self.indexed(name, res);
            }
            if last_sweep.elapsed() >= Duration::from_millis(50) {
                self.sweep();
                last_sweep = Instant::now();
            }
        }
        for s in self.sessions.values() {
            s.close(CloseReason::Shutdown);
        }
        self.engine.shutdown();
        drop(self.index_tx.take());
        if let Some(h) = self.indexer.take() {
            let _ = h.join();
        }
        tracing::info!(
            "[STOPPED] server on {} stopped",
            self.sock
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
    }

    fn send(&mut self, to: SocketAddr, msg: &Message<'_>) {
        self.out.clear();
        msg.encode(&mut self.out);
        // A full socket buffer or an unreachable client is the client's problem: it retries.
        let _ = socket::retry_eintr(|| self.sock.send_to(&self.out, to));
    }

    fn error(&mut self, to: SocketAddr, request_id: u32, code: ErrorCode, text: &str) {
        self.send(
            to,
            &Message::Error {
                request_id,
                code,
                text,
            },
        );
    }

    fn token_ok(&mut self, src: SocketAddr, token: &[u8; TOKEN_LEN]) -> bool {
        if self.tokens.check(&src, token).is_ok() {
            return true;
        }
        self.stats.bad_tokens.fetch_add(1, Ordering::Relaxed);
        false
    }

    fn handle(&mut self, src: SocketAddr, dgram: &[u8]) {
        let msg = match Message::parse(dgram) {
            Ok(m) => m,
            Err(WireError::BadMagic) if self.legacy.is_some() => {
                let handled = self.legacy.as_mut().is_some_and(|l| l.handle(src, dgram));
                if !handled {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("dropped datagram from {src}: {e}");
                return;
            }
        };
        if matches!(
            msg,
            Message::Hello { .. } | Message::List { .. } | Message::Get { .. }
        ) && !self.within_budget(src)
        {
            return;
        }
        match msg {
            Message::Hello { nonce } => {
                let token = self.tokens.mint(&src);
                self.send(src, &Message::Retry { nonce, token });
            }
            Message::List { token, start } => {
                if !self.token_ok(src, &token) {
                    // Small on purpose: an unvalidated address gets less than it sent.
                    self.error(src, 0, ErrorCode::BadToken, "bad token");
                    return;
                }
                self.list(src, start);
            }
            Message::Get {
                token,
                request_id,
                mode,
                window,
                name,
            } => {
                if !self.token_ok(src, &token) {
                    self.error(src, request_id, ErrorCode::BadToken, "bad token");
                    return;
                }
                self.get(PendingGet {
                    peer: src,
                    request_id,
                    name: name.to_string(),
                    mode,
                    window,
                });
            }
            Message::Ack(ack) => self.ack(src, &ack),
            Message::Done { session, status } => {
                if let Some(s) = self.session_from(src, session) {
                    s.heard();
                    s.close(match status {
                        DoneStatus::Complete => CloseReason::Complete,
                        DoneStatus::Incomplete => CloseReason::ClientGaveUp,
                    });
                }
            }
            // Server-to-client messages arriving here are strays.
            _ => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Charges one request to `src`'s IP. Over budget, the request is dropped; the sender is
    /// told so with a short "busy" at most every 100 ms (so the answers cannot be a flood).
    fn within_budget(&mut self, src: SocketAddr) -> bool {
        let rate = self.cfg.requests_per_ip;
        let now = Instant::now();
        let b = self.budgets.entry(src.ip()).or_insert(Budget {
            tokens: 2.0 * rate,
            last: now,
            last_busy_reply: None,
        });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(2.0 * rate);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return true;
        }
        self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
        let reply = b
            .last_busy_reply
            .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(100));
        if reply {
            b.last_busy_reply = Some(now);
            self.error(
                src,
                0,
                ErrorCode::Busy,
                "too many requests from your address",
            );
        }
        false
    }

    /// The session `id`, if it exists and belongs to `src` (another address cannot steer it).
    fn session_from(&self, src: SocketAddr, id: u32) -> Option<Arc<Session>> {
        match self.sessions.get(&id) {
            Some(s) if s.peer == src && !s.is_released() => Some(s.clone()),
            _ => {
                self.stats.stray.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The error that explains why the server ended session `s`, if it was the server's doing.
    fn why_ended(s: &Session) -> Option<(ErrorCode, &'static str)> {
        match s.close_reason()? {
            CloseReason::FileChanged => Some((
                ErrorCode::FileChanged,
                "the file changed on the server while it was being sent",
            )),
            CloseReason::Failed => {
                Some((ErrorCode::Internal, "the server could not send the file"))
            }
            _ => None,
        }
    }

    fn ack(&mut self, src: SocketAddr, ack: &Ack<'_>) {
        // A session the server ended: say why, not just that it is gone.
        let ended = self
            .sessions
            .get(&ack.session)
            .filter(|s| s.peer == src)
            .and_then(|s| Self::why_ended(s));
        if let Some((code, text)) = ended {
            self.error(src, 0, code, text);
            return;
        }
        let Some(s) = self.session_from(src, ack.session) else {
            // Tell a client whose session is gone, so it fails fast instead of waiting out
            // its timeout. The answer is smaller than an ACK: no amplification.
            self.error(src, 0, ErrorCode::NoSession, "no such session");
            return;
        };
        s.heard();
        let rtt = (ack.echo_ts_ns != 0)
            .then(|| {
                unix_ns()
                    .checked_sub(ack.echo_ts_ns)?
                    .checked_sub(ack.echo_delay_us as u64 * 1000)
            })
            .flatten()
            .map(Duration::from_nanos);
        s.state()
            .on_ack(ack, rtt, ack.flags & ack_flags::IDLE != 0, Instant::now());
        s.wake();
    }

    fn list(&mut self, src: SocketAddr, start: u32) {
        let files = match self.catalog.list() {
            Ok(f) => f,
            Err(e) => {
                self.error(src, 0, ErrorCode::Internal, &format!("cannot list: {e}"));
                return;
            }
        };
        let mut entries = Vec::new();
        let mut room = MAX_DATAGRAM - 64;
        for (name, size) in files.iter().skip(start as usize) {
            let need = 9 + name.len();
            if need > room {
                break;
            }
            room -= need;
            entries.push(ListEntry { name, size: *size });
        }
        let msg = Message::Listing {
            total: files.len() as u32,
            start,
            entries,
        };
        self.send(src, &msg);
    }

    fn get(&mut self, req: PendingGet) {
        // A repeated GET (its META was lost): answer again, do not start a second session.
        if let Some(id) = self.by_request.get(&(req.peer, req.request_id)).copied() {
            if let Some(s) = self.sessions.get(&id).cloned() {
                s.heard();
                self.meta(&s, req.request_id);
            }
            return;
        }
        if self
            .pending
            .iter()
            .any(|p| p.peer == req.peer && p.request_id == req.request_id)
        {
            self.send(
                req.peer,
                &Message::Wait {
                    request_id: req.request_id,
                },
            );
            return;
        }
        match self.catalog.cached(&req.name) {
            Ok(Some(file)) => self.create_session(req, file),
            Ok(None) => {
                if !self.indexing.contains(&req.name) {
                    if let Some(tx) = &self.index_tx {
                        let _ = tx.send(req.name.clone());
                    }
                    self.indexing.insert(req.name.clone());
                }
                self.send(
                    req.peer,
                    &Message::Wait {
                        request_id: req.request_id,
                    },
                );
                self.pending.push(req);
            }
            Err(e) => self.file_error(&req, &e),
        }
    }

    fn file_error(&mut self, req: &PendingGet, e: &FileError) {
        let code = match e {
            FileError::BadName(_) | FileError::NotRegular(_) => ErrorCode::BadName,
            FileError::NotFound(_) => ErrorCode::NotFound,
            FileError::Io { .. } => ErrorCode::Internal,
            FileError::Changed(_) => ErrorCode::FileChanged,
        };
        tracing::info!("[REFUSED] {} asked for {:?}: {e}", req.peer, req.name);
        self.error(req.peer, req.request_id, code, &e.to_string());
    }

    fn indexed(&mut self, name: String, res: Result<Arc<IndexedFile>, FileError>) {
        self.indexing.remove(&name);
        let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.name == name);
        self.pending = rest;
        for req in ready {
            match &res {
                Ok(f) => self.create_session(req, f.clone()),
                Err(e) => self.file_error(&req, e),
            }
        }
    }

    fn create_session(&mut self, req: PendingGet, file: Arc<IndexedFile>) {
        let active = self.sessions.values().filter(|s| !s.is_released()).count();
        if active >= self.cfg.max_sessions {
            self.stats.busy.fetch_add(1, Ordering::Relaxed);
            let text = format!("server busy: {active} sessions, try again later");
            self.error(req.peer, req.request_id, ErrorCode::Busy, &text);
            return;
        }
        if file.datagrams() > u32::MAX as u64 {
            self.error(
                req.peer,
                req.request_id,
                ErrorCode::BadRequest,
                "file too large for this datagram size",
            );
            return;
        }
        let mut id: u32 = rand::random();
        while id == 0 || self.sessions.contains_key(&id) {
            id = rand::random();
        }
        let now = Instant::now();
        let pacer = self
            .cfg
            .rate_bps
            .map(|bps| Pacer::new(bps, 4 * self.cfg.datagram_size, now));
        let window = req.window.clamp(1, self.cfg.max_window);
        let state = SenderState::new(
            req.mode,
            file.size,
            file.payload_size,
            window,
            pacer,
            now,
            unix_ns(),
        );
        let ctx = SessionCtx {
            stats: self.stats.clone(),
            engine: self.cfg.engine,
            json: self.cfg.json,
        };
        let session = Arc::new(Session::new(id, req.peer, file, state, ctx));
        session.heard();
        tracing::info!(
            "[TRANSFER] session {:08x}: sending {} ({} bytes, {} mode, window {} datagrams) to {}",
            id,
            session.file.name,
            session.file.size,
            req.mode.as_str(),
            window,
            req.peer
        );
        self.sessions.insert(id, session.clone());
        self.by_request.insert((req.peer, req.request_id), id);
        // META first, then data: on one flow the kernel keeps them in order.
        self.meta(&session, req.request_id);
        self.engine.start(session);
    }

    fn meta(&mut self, s: &Session, request_id: u32) {
        let f = &s.file;
        let meta = Message::Meta(Meta {
            request_id,
            session: s.id,
            file_size: f.size,
            payload_size: f.payload_size,
            mode: s.mode,
            manifest_hash: f.manifest_hash,
            content_hash: f.content_hash,
        });
        self.send(s.peer, &meta);
    }

    /// Times out silent clients, stops sessions whose file changed, tells clients why the
    /// server ended their session, and forgets released sessions.
    fn sweep(&mut self) {
        let timeout = self.cfg.idle_timeout;
        let mut tell = Vec::new();
        for s in self.sessions.values() {
            if s.close_reason().is_none() {
                if s.silent_for() > timeout {
                    s.close(CloseReason::TimedOut);
                } else if s.file.changed() {
                    tracing::warn!(
                        "[SESSION {:08x}] {} changed on disk while being sent: transfer stopped",
                        s.id,
                        s.file.name
                    );
                    s.close(CloseReason::FileChanged);
                }
            }
            if let Some(why) = Self::why_ended(s) {
                if !s.told_client.swap(true, Ordering::AcqRel) {
                    tell.push((s.peer, why));
                }
            }
        }
        for (peer, (code, text)) in tell {
            self.error(peer, 0, code, text);
        }
        self.budgets
            .retain(|_, b| b.last.elapsed() < Duration::from_secs(10));
        let released: Vec<u32> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.is_released())
            .map(|(id, _)| *id)
            .collect();
        if !released.is_empty() {
            for id in &released {
                self.sessions.remove(id);
            }
            self.by_request.retain(|_, id| !released.contains(id));
        }
    }
}
