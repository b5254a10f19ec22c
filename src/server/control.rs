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

use super::admission::{Admit, RateBudget, RequestBudgets};
use super::catalog::{Catalog, FileError, IndexedFile};
use super::engine::{panic_text, Engine};
use super::indexer::{Indexed, Indexer};
use super::legacy::Legacy;
use super::session::{CloseReason, Session, SessionCtx, SessionSummary};
use super::stats::ServerStats;
use super::table::{Entry, SessionTable};
use super::ServerConfig;
use crate::protocol::pacer::Pacer;
use crate::protocol::sender::SenderState;
use crate::protocol::token::TokenKey;
use crate::protocol::{
    ack_flags, unix_ns, Ack, DoneStatus, ErrorCode, ListEntry, Message, Meta, Mode, WireError,
    DATA_HEADER_LEN, MAX_DATAGRAM, TOKEN_LEN,
};
use crate::sys::recvmmsg::{is_timeout, RecvBatch};
use crate::sys::socket;

/// How often silent clients and changed files are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(50);

/// A GET waiting for its file to be indexed.
struct PendingGet {
    peer: SocketAddr,
    request_id: u32,
    name: String,
    mode: Mode,
    window: u32,
}

pub(super) struct Control {
    legacy: Option<Legacy>,
    requests: RequestBudgets,
    cfg: ServerConfig,
    sock: Arc<UdpSocket>,
    catalog: Arc<Catalog>,
    engine: Box<dyn Engine>,
    tokens: TokenKey,
    stats: Arc<ServerStats>,
    sessions: SessionTable,
    pending: Vec<PendingGet>,
    indexing: HashSet<String>,
    indexer: Indexer,
    summaries: Receiver<SessionSummary>,
    summaries_tx: Sender<SessionSummary>,
    out: Vec<u8>,
}

impl Control {
    pub(super) fn new(
        cfg: ServerConfig,
        sock: Arc<UdpSocket>,
        engine: Box<dyn Engine>,
        stats: Arc<ServerStats>,
    ) -> anyhow::Result<Control> {
        let catalog = Arc::new(Catalog::new(
            cfg.dir.clone(),
            (cfg.datagram_size - DATA_HEADER_LEN) as u32,
        ));
        let indexer = Indexer::spawn(catalog.clone())?;
        // Index what is there now, so the first client does not wait for it.
        let mut indexing = HashSet::new();
        if let Ok(list) = catalog.list() {
            for (name, _) in list {
                if indexer.request(&name) {
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
        let (summaries_tx, summaries) = mpsc::channel();
        Ok(Control {
            legacy,
            requests: RequestBudgets::new(cfg.requests_per_ip),
            tokens: TokenKey::random(cfg.token_lifetime),
            cfg,
            sock,
            catalog,
            engine,
            stats,
            sessions: SessionTable::default(),
            pending: Vec::new(),
            indexing,
            indexer,
            summaries,
            summaries_tx,
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
                        let (Some(src), Some(dgram)) = (batch.source(i), batch.datagram(i)) else {
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
            while let Ok(done) = self.indexer.done.try_recv() {
                self.indexed(done);
            }
            self.report_finished();
            if last_sweep.elapsed() >= SWEEP_EVERY {
                self.sweep();
                last_sweep = Instant::now();
            }
        }
        for s in self.sessions.sessions() {
            s.close(CloseReason::Shutdown);
        }
        self.engine.shutdown();
        self.report_finished();
        self.indexer.stop();
        tracing::info!(
            "[STOPPED] server on {} stopped",
            self.sock
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
    }

    /// Logs every session the engines finished (and prints it with `serve --json`).
    fn report_finished(&mut self) {
        while let Ok(s) = self.summaries.try_recv() {
            tracing::info!(
                "[SESSION {}] {} {} {} -> {}: {} ({} bytes sent in {:.3} s, {:.1} MiB/s, {} datagrams, {} retransmitted, {} send errors; send latency us {}; batch {}){}",
                s.session,
                s.engine,
                s.mode,
                s.file,
                s.peer,
                s.outcome,
                s.bytes_sent,
                s.duration_s,
                s.bytes_sent as f64 / s.duration_s.max(1e-9) / (1024.0 * 1024.0),
                s.datagrams_sent,
                s.retransmitted,
                s.send_errors,
                s.send_latency_us,
                s.batch_size,
                s.problem.as_deref().map(|p| format!(": {p}")).unwrap_or_default(),
            );
            if self.cfg.json {
                if let Ok(line) = serde_json::to_string(&s) {
                    // One object per line; a closed stdout must not take the server down.
                    use std::io::Write;
                    let _ = writeln!(std::io::stdout().lock(), "{line}");
                }
            }
        }
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
        ) && !self.admit(src)
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

    /// Charges one request to `src`'s IP (see [`RequestBudgets`]).
    fn admit(&mut self, src: SocketAddr) -> bool {
        match self.requests.admit(src.ip(), Instant::now()) {
            Admit::Yes => true,
            Admit::No => {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                false
            }
            Admit::NoAndTell => {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                self.error(
                    src,
                    0,
                    ErrorCode::Busy,
                    "too many requests from your address",
                );
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

    fn ack(&mut self, src: SocketAddr, ack: &Ack<'_>) {
        let now = Instant::now();
        let entry = self.sessions.of_peer(src, ack.session);
        // A session the server ended: say why, not just that it is gone.
        if let Some((code, text)) = entry
            .as_ref()
            .and_then(|e| SessionTable::why_ended(&e.session))
        {
            self.error(src, 0, code, text);
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
        let checks = {
            let mut st = s.state();
            let before = st.resend_checks;
            st.on_ack(ack, rtt, ack.flags & ack_flags::IDLE != 0, now);
            st.resend_checks - before
        };
        self.stats.acks.fetch_add(1, Ordering::Relaxed);
        self.stats
            .resend_checks
            .fetch_add(checks, Ordering::Relaxed);
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
        if let Some(s) = self.sessions.for_request(req.peer, req.request_id) {
            s.heard();
            self.meta(&s, req.request_id);
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
                if !self.indexing.contains(&req.name) && self.indexer.request(&req.name) {
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

    fn indexed(&mut self, done: Indexed) {
        let Indexed { name, result, took } = done;
        if let Ok(f) = &result {
            tracing::info!(
                "[INDEX] {} indexed: {} bytes, {} datagrams, in {:.3} s",
                name,
                f.size,
                f.datagrams(),
                took.as_secs_f64()
            );
        }
        self.indexing.remove(&name);
        let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.name == name);
        self.pending = rest;
        for req in ready {
            match &result {
                Ok(f) => self.create_session(req, f.clone()),
                Err(e) => self.file_error(&req, e),
            }
        }
    }

    fn create_session(&mut self, req: PendingGet, file: Arc<IndexedFile>) {
        let active = self.sessions.active();
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
        let id = self.sessions.new_id();
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
            summaries: self.summaries_tx.clone(),
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
        let rate = self.cfg.acks_per_session;
        self.sessions.insert(
            Entry {
                session: session.clone(),
                acks: RateBudget::new(rate, rate / 10.0, now),
            },
            req.request_id,
        );
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

    /// Sweeps the session table and tells clients why the server ended their session.
    fn sweep(&mut self) {
        for (peer, code, text) in self.sessions.sweep(self.cfg.idle_timeout) {
            self.error(peer, 0, code, text);
        }
        self.requests.forget_idle(Instant::now());
    }
}
