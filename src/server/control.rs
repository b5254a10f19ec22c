//! The control thread: everything that arrives on the server's port, and every decision.
//!
//! It owns the session table. It receives in `recvmmsg` batches, admits requests, answers
//! `HELLO`/`LIST`/`GET`, applies `ACK`s to a session's sender state and wakes its engine,
//! sweeps for silent clients and changed files, and is where finished sessions are logged and
//! printed (`serve --json`): engine threads send their summaries here and never write output.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admission::{Admit, RateBudget, RequestBudgets, Spent, SpentTokens};
use super::catalog::{Catalog, FileError, ScannedFile};
use super::engine::{panic_text, EngineKind, Engines, SendPath};
use super::group::{log_summary, GroupSummary, Groups};
use super::legacy::Legacy;
use super::log_budget::LogBudget;
use super::paths::PathMemory;
use super::scanner::{ScanJob, Scanned, Scanner};
use super::secure::{client_name, FinishOutcome, InitOutcome, SealedDrop, Secure};
use super::session::{CloseReason, Session, SessionCtx, SessionSummary};
use super::stats::ServerStats;
use super::table::{Entry, SessionTable};
use super::trace::{Sample, Tracer};
use super::ServerConfig;
use crate::protocol::layout::{snap_datagram_size, DatagramSize};
use crate::protocol::seal::{OpenError, Opener, Sealer, SEALED_HEADER_LEN, SEAL_OVERHEAD};
use crate::protocol::sender::{SenderConfig, SenderState};
use crate::protocol::token::TokenKey;
use crate::protocol::{
    ack_flags, get_flags, unix_ns, Ack, DoneStatus, ErrorCode, Feedback, ListEntry, Message, Meta,
    Mode, WireError, DATA_HEADER_LEN, MAX_DATAGRAM, MIN_DATAGRAM, TOKEN_LEN, VERSION,
};
use crate::sys::recvmmsg::{is_timeout, RecvBatch};
use crate::sys::socket;

/// How often silent clients and changed files are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(50);
/// Sweeps between two reports of load shed (a second).
const SHED_LOG_SWEEPS: u64 = 20;
/// When a client refused for the session limit should ask again (it backs off from there).
const BUSY_RETRY_AFTER: Duration = Duration::from_millis(200);
/// A full server gives the place of a session that has made no progress this long (its
/// client silent, stalled, or never validated) to a new request.
const STALL_YIELD: Duration = Duration::from_secs(1);
/// After a search for a stalled session found none, GETs to a full server are refused busy
/// for this long without searching again.
const STALL_SEARCH_EVERY: Duration = Duration::from_millis(100);
/// Sweeps between two looks for cached scans of deleted or changed files (a second).
const EVICT_SWEEPS: u64 = 20;

/// A GET, while its file is (being) scanned at the datagram size chosen for its path.
struct PendingGet {
    peer: SocketAddr,
    request_id: u32,
    name: String,
    mode: Mode,
    window_bytes: u32,
    /// File bytes per datagram for this client.
    payload_size: u32,
    /// How its payloads go ([`SendPath::for_datagram`]).
    send_path: SendPath,
    /// The client would take the file from the multicast group.
    multicast: bool,
    /// The engine that sends it (the one the GET named, or the server's default).
    engine: EngineKind,
    /// The GET's length: its answer (JOIN and META) may be at most three times as long.
    request_len: usize,
    /// The authenticated connection it came on (sealed), if any.
    conn: Option<u32>,
}

pub(super) struct Control {
    legacy: Option<Legacy>,
    requests: RequestBudgets,
    /// Tokens already used by a GET: each is good for one.
    spent: SpentTokens,
    /// Refusals logged, a few a second in detail and the rest summed up.
    refusals: LogBudget,
    /// When a search for a stalled session last found none.
    no_stalled_at: Option<Instant>,
    cfg: ServerConfig,
    sock: Arc<UdpSocket>,
    catalog: Arc<Catalog>,
    engines: Engines,
    tokens: TokenKey,
    stats: Arc<ServerStats>,
    sessions: SessionTable,
    pending: Vec<PendingGet>,
    scanning: HashSet<ScanJob>,
    scanner: Scanner,
    summaries: Receiver<SessionSummary>,
    summaries_tx: Sender<SessionSummary>,
    /// Sessions of the uring engine may use UDP GSO.
    gso: bool,
    /// How the uring engine's sessions send payloads ([`SendPath::Sendmsg`] where splicing is
    /// not available); the threads engine's always copy.
    send_path: SendPath,
    sweeps: u64,
    /// What was shed (requests over budget, ACKs over budget, GETs refused busy) when it was
    /// last logged.
    shed_logged: [u64; 3],
    out: Vec<u8>,
    /// Multicast transmissions (`serve --multicast`).
    groups: Option<Groups>,
    /// Authenticated connections (`serve --authorized`, `--psk`); `None`: open mode.
    secure: Option<Secure>,
    /// `serve --trace`: each session's sender state over time.
    tracer: Option<Tracer>,
    /// What sessions learned of the paths to their hosts (`None`: `--path-memory 0`).
    paths: Option<PathMemory>,
}

#[path = "control_get.rs"]
mod get;
#[path = "control_sweep.rs"]
mod sweep;

impl Control {
    pub(super) fn new(
        cfg: ServerConfig,
        sock: Arc<UdpSocket>,
        engines: Engines,
        stats: Arc<ServerStats>,
        gso: bool,
        send_path: SendPath,
    ) -> anyhow::Result<Control> {
        let catalog = Arc::new(Catalog::with(cfg.dir.clone(), cfg.generated));
        let scanner = Scanner::spawn(catalog.clone())?;
        // Index what is there now, so the first client does not wait for it: at the fixed
        // size, or with auto at loopback's (other paths are scanned when first asked for).
        let send_path_default = match engines.default_kind() {
            EngineKind::Uring => send_path,
            EngineKind::Threads => SendPath::Sendmsg,
        };
        let payload_size = match cfg.datagram_size {
            DatagramSize::Fixed(n) => n,
            DatagramSize::Auto => send_path_default.auto_datagram(),
        } - DATA_HEADER_LEN;
        let payload_size = payload_size as u32;
        let mut scanning = HashSet::new();
        // (Generated files are made when first asked for: nothing to scan ahead.)
        if let Ok(list) = catalog.list_files() {
            for (name, _) in list {
                let job = ScanJob { name, payload_size };
                if scanner.request(job.clone()) {
                    scanning.insert(job);
                }
            }
        }
        let legacy = cfg.legacy.then(|| {
            Legacy::new(
                sock.clone(),
                catalog.clone(),
                cfg.max_sessions,
                cfg.rate_bps,
                stats.clone(),
            )
        });
        if legacy.is_some() {
            tracing::warn!("[LEGACY] answering the lab's LIST / !CONFIG / TRANSFER: unauthenticated, any source address can make this server send a whole file anywhere");
        }
        let groups = match cfg.multicast.clone() {
            Some(m) => {
                let g = Groups::new(m, stats.clone(), cfg.security.is_some()).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot send to multicast group {}: {e}",
                        cfg.multicast
                            .as_ref()
                            .map(|m| m.group.to_string())
                            .unwrap_or_default()
                    )
                })?;
                let m = g.config();
                tracing::info!(
                    "[MULTICAST] GETs that ask for it go by multicast to {} (ttl {}, interface {}, {:.0} Mbit/s, gathering {} ms)",
                    m.group,
                    m.ttl,
                    m.interface.map_or("by route".to_string(), |i| i.to_string()),
                    m.rate_bps as f64 / 1e6,
                    m.gather.as_millis()
                );
                Some(g)
            }
            None => None,
        };
        let (summaries_tx, summaries) = mpsc::channel();
        let tracer = match &cfg.trace {
            Some((path, every)) => Some(
                Tracer::create(path, *every)
                    .map_err(|e| anyhow::anyhow!("cannot write the trace: {e}"))?,
            ),
            None => None,
        };
        Ok(Control {
            paths: (!cfg.path_memory.is_zero()).then(|| PathMemory::new(cfg.path_memory)),
            tracer,
            secure: cfg.security.clone().map(Secure::new),
            groups,
            legacy,
            requests: RequestBudgets::new(cfg.requests_per_ip),
            spent: SpentTokens::default(),
            refusals: LogBudget::new("[REFUSED]", "requests refused", Instant::now()),
            no_stalled_at: None,
            tokens: TokenKey::random(cfg.token_lifetime),
            cfg,
            sock,
            catalog,
            engines,
            stats,
            sessions: SessionTable::default(),
            pending: Vec::new(),
            scanning,
            scanner,
            summaries,
            summaries_tx,
            gso,
            send_path,
            sweeps: 0,
            shed_logged: [0; 3],
            out: Vec::with_capacity(MAX_DATAGRAM),
        })
    }

    pub(super) fn run(mut self, stop: &AtomicBool) {
        let mut batch = RecvBatch::new();
        let mut last_sweep = Instant::now();
        while !stop.load(Ordering::Acquire) {
            match batch.recv(&self.sock) {
                Ok(n) => {
                    for i in 0..n {
                        let src = batch.source(i);
                        let (Some(src), Some(dgram)) = (src, batch.datagram_mut(i)) else {
                            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        // A bug in handling one message must not take the server down.
                        let handled = catch_unwind(AssertUnwindSafe(|| self.handle(src, dgram)));
                        if let Err(panic) = handled {
                            self.stats.panics.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(
                                "bug: handling a datagram from {src} panicked: {}",
                                panic_text(&*panic)
                            );
                        }
                    }
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => {
                    // ICMP errors from a vanished client surface here on some kernels.
                    tracing::debug!("recv on the server port: {e}");
                }
            }
            while let Ok(done) = self.scanner.done.try_recv() {
                self.scanned(done);
            }
            self.report_finished();
            if last_sweep.elapsed() >= SWEEP_EVERY {
                self.sweep();
                last_sweep = Instant::now();
            }
        }
        // Clients are told, so they fail at once with the reason instead of a timeout.
        let active: Vec<SocketAddr> = self
            .sessions
            .sessions()
            .filter(|s| s.close_reason().is_none())
            .map(|s| s.peer)
            .collect();
        for peer in &active {
            self.error(*peer, 0, ErrorCode::Internal, "the server is shutting down");
        }
        for s in self.sessions.sessions() {
            s.close(CloseReason::Shutdown);
        }
        self.engines.shutdown();
        self.report_finished();
        if let Some(g) = &mut self.groups {
            let done = g.shutdown();
            self.report_groups(done);
        }
        self.report_settled();
        self.scanner.stop();
        if let Some(t) = self.tracer.take() {
            match t.finish() {
                Ok((written, 0)) => tracing::info!("[TRACE] {written} samples written"),
                Ok((written, dropped)) => tracing::warn!(
                    "[TRACE] {written} samples written, {dropped} dropped (the writer fell behind: a longer --trace-every)"
                ),
                Err(e) => tracing::warn!("[TRACE] the trace could not be written: {e}"),
            }
        }
        let st = &self.stats;
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        tracing::info!(
            "[STOPPED] server on {} stopped: {} sessions, {} complete, {} timed out, {} ended otherwise (a client that gave up, a failure, or this shutdown: {} cut short); {} bytes sent, {} datagrams resent, {} GETs refused busy",
            self.sock
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            n(&st.sessions_started),
            n(&st.sessions_completed),
            n(&st.sessions_timed_out),
            n(&st.sessions_failed),
            active.len(),
            n(&st.bytes_sent),
            n(&st.retransmitted),
            n(&st.busy),
        );
    }

    /// Sends `msg` to `to`: sealed with its connection's key where it has one (all but the
    /// handshake's own plaintext answers).
    fn send(&mut self, to: SocketAddr, msg: &Message<'_>) {
        let sealer = match msg {
            Message::Retry { .. } | Message::HandshakeReply { .. } => None,
            _ => self.secure.as_ref().and_then(|s| s.sealer_of(to)).cloned(),
        };
        match sealer {
            Some(sealer) => self.send_sealed(to, msg, &sealer),
            None => {
                self.out.clear();
                msg.encode(&mut self.out);
                self.send_out(to);
            }
        }
    }

    fn send_sealed(&mut self, to: SocketAddr, msg: &Message<'_>, sealer: &Sealer) {
        self.out.clear();
        self.out.resize(SEALED_HEADER_LEN, 0);
        msg.encode(&mut self.out);
        if sealer.seal_vec(&mut self.out).is_ok() {
            self.send_out(to);
        }
    }

    /// Sends bytes encoded already (a handshake reply), as they are.
    fn send_bytes(&mut self, to: SocketAddr, bytes: &[u8]) {
        self.out.clear();
        self.out.extend_from_slice(bytes);
        self.send_out(to);
    }

    fn send_out(&mut self, to: SocketAddr) {
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

    /// Tells `to` there is no room now, and when to ask again.
    pub(super) fn busy(
        &mut self,
        to: SocketAddr,
        request_id: u32,
        retry_after: Duration,
        text: &str,
    ) {
        let retry_after_ms = retry_after.as_millis().clamp(1, u32::MAX as u128) as u32;
        self.send(
            to,
            &Message::Busy {
                request_id,
                retry_after_ms,
                text,
            },
        );
    }

    fn token_ok(&mut self, src: SocketAddr, token: &[u8; TOKEN_LEN]) -> bool {
        if self.tokens.check(&src, token, unix_ns() / 1000).is_ok() {
            return true;
        }
        self.stats.bad_tokens.fetch_add(1, Ordering::Relaxed);
        false
    }

    fn handle(&mut self, src: SocketAddr, dgram: &mut [u8]) {
        // Outside --allow: not read, not answered (the lab's protocol included).
        if !self.cfg.allow.is_empty() && !self.cfg.allow.iter().any(|c| c.contains(src.ip())) {
            self.stats.not_allowed.fetch_add(1, Ordering::Relaxed);
            self.refusals
                .log("from addresses outside --allow", Instant::now(), || {
                    format!("{src} is outside --allow: its datagrams are dropped unanswered")
                });
            return;
        }
        if Opener::connection_of(dgram).is_some() {
            return self.sealed(src, dgram);
        }
        let dgram: &[u8] = dgram;
        let msg = match Message::parse(dgram) {
            Ok(m) => m,
            Err(WireError::BadMagic) if self.legacy.is_some() => {
                // The lab's commands draw on the same per-address budget as ours: a LIST
                // answer is larger than its request.
                if !self.admit(src, None) {
                    return;
                }
                let handled = self.legacy.as_mut().is_some_and(|l| l.handle(src, dgram));
                if !handled {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            Err(WireError::BadVersion(v)) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                self.stats.version_mismatch.fetch_add(1, Ordering::Relaxed);
                self.other_version(src, v, dgram.len());
                return;
            }
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("dropped datagram from {src}: {e}");
                return;
            }
        };
        // A refused request is told with its own id, so the client backs off instead of
        // waiting out its timeout: a GET's id, a HELLO's nonce (low 32 bits).
        let request_id = match &msg {
            Message::Hello { nonce } => Some(*nonce as u32),
            Message::List { .. } => Some(0),
            Message::Get { request_id, .. } => Some(*request_id),
            Message::HandshakeInit { nonce, .. } => Some(*nonce as u32),
            _ => None,
        };
        if request_id.is_some() && !self.admit(src, request_id) {
            return;
        }
        match msg {
            Message::Hello { nonce } => {
                let token = self.tokens.mint(&src, unix_ns() / 1000);
                self.send(src, &Message::Retry { nonce, token });
            }
            Message::HandshakeInit {
                token,
                nonce,
                noise,
            } => self.handshake_init(src, token, nonce, noise),
            Message::HandshakeFinish { conn, noise } => self.handshake_finish(src, conn, noise),
            // A server that authenticates reads nothing else in plaintext: a request is told
            // how to ask, the rest (ACK, DONE, FEEDBACK: a session's) is dropped unread.
            _ if self.secure.is_some() => {
                self.stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
                if let Some(id) = request_id {
                    self.error(
                        src,
                        id,
                        ErrorCode::AuthRequired,
                        "this server authenticates its clients: ask with get --identity KEY (ringblast keygen; the server must list its public key in --authorized) or --psk FILE",
                    );
                }
            }
            msg => self.dispatch(src, msg, dgram.len(), None),
        }
    }

    /// A sealed datagram: opened with its connection's key (or dropped and counted), then
    /// handled as the message it carries, on behalf of that connection's client.
    fn sealed(&mut self, src: SocketAddr, dgram: &mut [u8]) {
        let Some(secure) = self.secure.as_mut() else {
            // Open mode has no connections.
            self.stats.unsealed_drops.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let opened = match secure.open(src, dgram, Instant::now()) {
            Ok(o) => o,
            Err(why) => {
                let st = &self.stats;
                st.unsealed_drops.fetch_add(1, Ordering::Relaxed);
                match why {
                    SealedDrop::Open(OpenError::Forged) => {
                        st.forged.fetch_add(1, Ordering::Relaxed);
                    }
                    SealedDrop::Open(OpenError::Replayed | OpenError::TooOld) => {
                        st.replayed.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                return;
            }
        };
        let inner = &dgram[SEALED_HEADER_LEN..SEALED_HEADER_LEN + opened.len];
        let msg = match Message::parse(inner) {
            Ok(m) => m,
            Err(_) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let request_id = match &msg {
            Message::List { .. } => Some(0),
            Message::Get { request_id, .. } => Some(*request_id),
            _ => None,
        };
        if request_id.is_some() && !self.admit(src, request_id) {
            return;
        }
        self.dispatch(src, msg, inner.len(), Some(opened.conn));
    }

    /// The first handshake message, from an address its token validates: one handshake per
    /// token; its reply is a tenth of the (padded) request.
    fn handshake_init(
        &mut self,
        src: SocketAddr,
        token: [u8; TOKEN_LEN],
        nonce: u64,
        noise: &[u8],
    ) {
        let id = nonce as u32;
        let Some(secure) = self.secure.as_mut() else {
            self.error(
                src,
                id,
                ErrorCode::NoAuth,
                "this server does not authenticate clients (open mode: anyone may read its files); ask without --identity or --psk",
            );
            return;
        };
        // Its reply was lost: the same reply again.
        if let Some(reply) = secure.repeated_init(src, nonce) {
            self.send_bytes(src, &reply);
            return;
        }
        if !self.token_ok(src, &token) {
            self.error(src, id, ErrorCode::BadToken, "bad token");
            return;
        }
        if self.spent.spend(&token, src, id).is_err() {
            self.stats.bad_tokens.fetch_add(1, Ordering::Relaxed);
            self.error(
                src,
                id,
                ErrorCode::BadToken,
                "token already used: ask for a new one",
            );
            return;
        }
        self.stats.handshakes.fetch_add(1, Ordering::Relaxed);
        let secure = self.secure.as_mut().expect("checked above");
        match secure.init(src, nonce, noise, Instant::now()) {
            InitOutcome::Reply(reply) => self.send_bytes(src, &reply),
            InitOutcome::Refused => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The third handshake message: the client's key, checked. A key not authorized is told
    /// so, sealed (the client can believe it), and gets nothing else.
    fn handshake_finish(&mut self, src: SocketAddr, conn: u32, noise: &[u8]) {
        let Some(secure) = self.secure.as_mut() else {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match secure.finish(src, conn, noise, Instant::now()) {
            FinishOutcome::Connected { id, new: true } => {
                self.stats.connections.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = secure.connection(id) {
                    tracing::debug!("[AUTH] {src}: key {} connected", client_name(&c.client));
                }
            }
            FinishOutcome::Connected { .. } => {}
            FinishOutcome::Unauthorized { key, sealer } => {
                self.stats.keys_refused.fetch_add(1, Ordering::Relaxed);
                let fp = crate::keys::fingerprint(&key);
                self.refusals
                    .log("for keys not authorized", Instant::now(), || {
                        format!("{src}: key {fp} is not in --authorized: refused")
                    });
                let text = format!(
                    "this server does not know your key {fp}: its operator must add your public key (FILE.pub of ringblast keygen) to its --authorized file"
                );
                let msg = Message::Error {
                    request_id: 0,
                    code: ErrorCode::NotAuthorized,
                    text: &text,
                };
                self.send_sealed(src, &msg, &sealer);
            }
            FinishOutcome::Dropped => {
                self.stats.unsealed_drops.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A message handled the same whether it came in plaintext (open mode) or sealed on
    /// connection `conn` (its client authenticated: no token needed, its key's files only).
    fn dispatch(&mut self, src: SocketAddr, msg: Message<'_>, len: usize, conn: Option<u32>) {
        match msg {
            Message::List { token, start } => {
                if conn.is_none() && !self.token_ok(src, &token) {
                    // Small on purpose: an unvalidated address gets less than it sent.
                    self.error(src, 0, ErrorCode::BadToken, "bad token");
                    return;
                }
                self.list(src, start, len, conn);
            }
            Message::Get {
                token,
                request_id,
                mode,
                window_bytes,
                max_datagram,
                flags,
                name,
            } => {
                if let Some(c) = conn {
                    if !self.may_read(src, c, request_id, name) {
                        return;
                    }
                } else if !self.token_ok(src, &token) {
                    self.error(src, request_id, ErrorCode::BadToken, "bad token");
                    return;
                }
                // One token, one request: a token seen on the wire and replayed in its
                // owner's name (a spoofed source) starts nothing. (A sealed GET needs none:
                // its connection was validated, and its replays never open.)
                let spent = match conn {
                    Some(_) => Ok(()),
                    None => self.spent.spend(&token, src, request_id),
                };
                if let Err(why) = spent {
                    self.stats.bad_tokens.fetch_add(1, Ordering::Relaxed);
                    let text = match why {
                        Spent::Used => "token already used: ask for a new one",
                        Spent::Forgotten => "token too old: ask for a new one",
                    };
                    self.error(src, request_id, ErrorCode::BadToken, text);
                    return;
                }
                let engine = match flags & get_flags::ENGINE_MASK {
                    0 => self.engines.default_kind(),
                    get_flags::ENGINE_URING => EngineKind::Uring,
                    get_flags::ENGINE_THREADS => EngineKind::Threads,
                    _ => {
                        self.error(src, request_id, ErrorCode::BadRequest, "unknown engine");
                        return;
                    }
                };
                if self.engines.get(engine).is_none() {
                    let text = format!(
                        "this server does not offer the {} engine (it offers {}: serve --engines)",
                        engine.as_str(),
                        self.engines.names()
                    );
                    self.error(src, request_id, ErrorCode::EngineNotOffered, &text);
                    return;
                }
                // A sealed session's payloads are copied (to be encrypted): never spliced, so
                // its datagrams may be as large as the path takes.
                let engine_path = match conn {
                    Some(_) => SendPath::Sendmsg,
                    None => self.send_path_of(engine),
                };
                let (payload_size, send_path) =
                    match self.datagram_size_for(src, max_datagram, engine_path, conn.is_some()) {
                        Ok(size) => (
                            (size - DATA_HEADER_LEN) as u32,
                            engine_path.for_datagram(size),
                        ),
                        Err(text) => {
                            self.error(src, request_id, ErrorCode::BadRequest, &text);
                            return;
                        }
                    };
                self.get(PendingGet {
                    peer: src,
                    request_id,
                    name: name.to_string(),
                    mode,
                    window_bytes,
                    payload_size,
                    send_path,
                    // A server without a group serves by unicast: the client sees no JOIN
                    // and says so.
                    multicast: flags & get_flags::MULTICAST != 0 && self.groups.is_some(),
                    request_len: len,
                    engine,
                    conn,
                });
            }
            Message::Ack(ack) => self.ack(src, &ack),
            Message::Feedback(fb) => self.feedback(src, &fb),
            Message::Done { session, status } => {
                if let Some(s) = self.session_from(src, session) {
                    s.heard();
                    // A blast session that sent everything ended as blast mode ends, whatever
                    // the client lost: that loss is its measurement, not a failure.
                    let sent_all = s.mode == Mode::Blast && s.state().sent_everything();
                    s.close(match status {
                        DoneStatus::Complete => CloseReason::Complete,
                        DoneStatus::Incomplete if sent_all => CloseReason::Complete,
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

    /// A ringblast datagram of another protocol version: say so, in this version (a client of
    /// this release or a later one reads it as "other version"; older ones drop it), only to a
    /// request at least as large as the answer, and within the sender's request budget.
    fn other_version(&mut self, src: SocketAddr, theirs: u8, request_len: usize) {
        if !self.admit(src, Some(0)) {
            return;
        }
        self.refusals
            .log("in another protocol version", Instant::now(), || {
                format!("{src} speaks ringblast protocol version {theirs}; this server speaks {VERSION}")
            });
        let text = format!("this server speaks ringblast protocol version {VERSION}");
        let reply = Message::Error {
            request_id: 0,
            code: ErrorCode::BadVersion,
            text: &text,
        };
        self.out.clear();
        reply.encode(&mut self.out);
        if self.out.len() <= request_len {
            let _ = socket::retry_eintr(|| self.sock.send_to(&self.out, src));
        }
    }

    /// How `engine`'s sessions send payloads.
    fn send_path_of(&self, engine: EngineKind) -> SendPath {
        match engine {
            EngineKind::Uring => self.send_path,
            EngineKind::Threads => SendPath::Sendmsg,
        }
    }

    /// The datagram size for a client at `peer` whose own limit is `client_max` (0: none):
    /// the server's (fixed, or its path MTU to the peer), lowered to the client's.
    fn datagram_size_for(
        &self,
        peer: SocketAddr,
        client_max: u16,
        send_path: SendPath,
        sealed: bool,
    ) -> Result<usize, String> {
        let ours = match self.cfg.datagram_size {
            DatagramSize::Fixed(n) => n,
            DatagramSize::Auto => socket::route_datagram_size(peer).min(send_path.auto_datagram()),
        };
        // The client's limit is snapped down to one of a few sizes: each size a file is sent
        // at needs a scan of its own (a CRC per datagram), and a client asking for every
        // size in turn must not make the server scan the file again and again.
        let size = match client_max as usize {
            0 => ours,
            theirs => ours.min(snap_datagram_size(theirs)),
        };
        // A sealed datagram carries the seal's header and tag around the DATA datagram.
        let size = if sealed {
            size.saturating_sub(SEAL_OVERHEAD)
        } else {
            size
        };
        if size < MIN_DATAGRAM {
            return Err(format!(
                "datagrams of {size} bytes are below the {MIN_DATAGRAM}-byte minimum (the path MTU or --datagram-size is too small)"
            ));
        }
        Ok(size)
    }

    /// Charges one request to `src`'s IP (see [`RequestBudgets`]); one refused is told (at
    /// most every 100 ms per address) as a `BUSY` naming `request_id`, unless that is `None`
    /// (the lab's protocol: its client would take a BUSY for file data).
    fn admit(&mut self, src: SocketAddr, request_id: Option<u32>) -> bool {
        match self.requests.admit(src.ip(), Instant::now()) {
            Admit::Yes => true,
            Admit::No => {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                false
            }
            Admit::NoAndTell => {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                // When the budget has one request again.
                let refill = Duration::from_secs_f64(1.0 / self.cfg.requests_per_ip);
                if let Some(id) = request_id {
                    self.busy(src, id, refill, "too many requests from your address");
                }
                false
            }
        }
    }

    /// The session `id`, if it exists, is not released and belongs to `src`.
    fn session_from(&mut self, src: SocketAddr, id: u32) -> Option<Arc<Session>> {
        match self.sessions.of_peer(src, id) {
            Some(e) if !e.session.is_released() => Some(e.session.clone()),
            _ => {
                self.stats.stray.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Whether connection `conn`'s key may read `name`; if not, the client is told and the
    /// refusal logged.
    fn may_read(&mut self, src: SocketAddr, conn: u32, request_id: u32, name: &str) -> bool {
        let Some(c) = self.secure.as_ref().and_then(|s| s.connection(conn)) else {
            return false;
        };
        if c.client.may_read(name) {
            return true;
        }
        let who = client_name(&c.client);
        self.stats.files_refused.fetch_add(1, Ordering::Relaxed);
        self.refusals
            .log("for files a key may not read", Instant::now(), || {
                crate::report::escape(&format!(
                    "{src}: key {who} asked for {name:?}, which its files= do not name"
                ))
            });
        let text = format!(
            "your key may not read {name} (the server's --authorized names the files it may)"
        );
        self.error(src, request_id, ErrorCode::NotAuthorized, &text);
        false
    }

    /// A group member's `FEEDBACK`: from its session's address, it keeps the session alive
    /// and tells the transmission what the member lacks.
    fn feedback(&mut self, src: SocketAddr, fb: &Feedback<'_>) {
        let Some(s) = self.session_from(src, fb.session) else {
            return;
        };
        let now = Instant::now();
        s.heard();
        s.state().progressed(now);
        let evicted = match &mut self.groups {
            Some(g) => g.feedback(fb, now),
            None => return,
        };
        for session in evicted {
            let peer = self.sessions.of_session(session).map(|e| e.session.peer);
            tracing::info!(
                "[GROUP {:08x}] session {session:08x} ({}) loses far more than the rest of the group: no more repairs for it; it finishes by unicast after the group",
                fb.group,
                peer.map_or("gone".to_string(), |p| p.to_string())
            );
        }
    }

    /// Logs (and with `--json` prints) what finished transmissions did.
    fn report_groups(&mut self, done: Vec<GroupSummary>) {
        for s in done {
            log_summary(&s);
            if self.cfg.json {
                let line = serde_json::json!({ "group": s.json() });
                use std::io::Write;
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            }
        }
    }

    /// Logs (and with `--json` prints) what the members of each ended transmission fetched
    /// by unicast, once the last of them is done.
    pub(super) fn report_settled(&mut self) {
        let Some(g) = &mut self.groups else {
            return;
        };
        for (group, bytes, sessions) in g.take_settled() {
            tracing::info!(
                "[GROUP {group:08x}] every member done: {sessions} sessions repaired {bytes} bytes by unicast"
            );
            if self.cfg.json {
                let line = serde_json::json!({ "group_repair": {
                    "group": format!("{group:08x}"),
                    "sessions": sessions,
                    "unicast_bytes": bytes,
                }});
                use std::io::Write;
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            }
        }
    }

    fn ack(&mut self, src: SocketAddr, ack: &Ack<'_>) {
        let now = Instant::now();
        let entry = self.sessions.of_peer(src, ack.session);
        // A session the server ended: say why, not just that it is gone.
        if let Some((code, text)) = entry
            .as_ref()
            .and_then(|e| SessionTable::why_ended(&e.session))
        {
            self.error(src, 0, code, &text);
            return;
        }
        let Some(entry) = entry.filter(|e| !e.session.is_released()) else {
            self.stats.stray.fetch_add(1, Ordering::Relaxed);
            // Tell a client whose session is gone, so it fails fast instead of waiting out
            // its timeout. The answer is smaller than an ACK: no amplification.
            self.error(src, 0, ErrorCode::NoSession, "no such session");
            return;
        };
        let s = entry.session.clone();
        s.heard();
        if !entry.acks.take(now) {
            self.stats.acks_rate_limited.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let rtt = (ack.echo_ts_ns != 0)
            .then(|| {
                unix_ns()
                    .checked_sub(ack.echo_ts_ns)?
                    .checked_sub(ack.echo_delay_us as u64 * 1000)
            })
            .flatten()
            .map(Duration::from_nanos);
        let trace_due = self.tracer.as_ref().is_some_and(|t| {
            entry
                .traced_at
                .is_none_or(|at| now.saturating_duration_since(at) >= t.every)
        });
        if trace_due {
            entry.traced_at = Some(now);
        }
        let (checks, sample) = {
            let mut st = s.state();
            // The first ACK from the session's address shows the client receives there:
            // data may flow from now on.
            st.validate(now);
            // A remembered path is one session's: a session shares its host's with none
            // (asked at the first ACK only).
            st.settle_path(|| self.sessions.of_ip(src.ip()) <= 1);
            let before = st.resend_checks;
            st.on_ack(ack, rtt, ack.flags & ack_flags::IDLE != 0, now);
            let sample = trace_due.then(|| {
                (
                    st.status(s.id),
                    st.cc_state(),
                    st.datagrams_sent,
                    st.delivered(),
                    st.capacity_bps(),
                )
            });
            (st.resend_checks - before, sample)
        };
        if let (Some(t), Some((status, state, sent, acked, capacity_bps))) = (&self.tracer, sample)
        {
            t.record(Sample {
                t_ms: t.t_ms(now),
                state: match s.mode {
                    Mode::Blast => "blast",
                    Mode::Reliable => state,
                },
                sent,
                acked,
                status,
                capacity_bps,
                end: false,
            });
        }
        self.stats.acks.fetch_add(1, Ordering::Relaxed);
        self.stats
            .resend_checks
            .fetch_add(checks, Ordering::Relaxed);
        s.wake();
    }
}
