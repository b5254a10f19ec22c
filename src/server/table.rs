//! The session table: every session the control thread knows, by id and by the request that
//! created it, and the sweep that times out silent clients and stops sessions whose file
//! changed on disk.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admission::RateBudget;
use super::catalog::changed_among;
use super::session::{CloseReason, Session};
use crate::protocol::ErrorCode;

/// A session as the control thread keeps it.
pub(super) struct Entry {
    pub session: Arc<Session>,
    /// Its ACK budget: ACKs beyond it are dropped unread.
    pub acks: RateBudget,
    /// When it was last sampled for `serve --trace`.
    pub traced_at: Option<Instant>,
}

#[derive(Default)]
pub(super) struct SessionTable {
    entries: HashMap<u32, Entry>,
    /// (peer, request id) -> session id: a repeated GET gets the same session's META again.
    by_request: HashMap<(SocketAddr, u32), u32>,
    /// Sessions in the table per client IP (for `--sessions-per-ip`).
    per_ip: HashMap<IpAddr, usize>,
}

/// What a client is told when the server ended its session.
pub(super) type Telling = (SocketAddr, ErrorCode, String);

impl SessionTable {
    /// A fresh, non-zero session id.
    pub fn new_id(&self) -> u32 {
        loop {
            let id: u32 = rand::random();
            if id != 0 && !self.entries.contains_key(&id) {
                return id;
            }
        }
    }

    /// Sessions not yet released by their engine.
    pub fn active(&self) -> usize {
        self.entries
            .values()
            .filter(|e| !e.session.is_released())
            .count()
    }

    pub fn insert(&mut self, entry: Entry, request_id: u32) {
        let s = &entry.session;
        self.by_request.insert((s.peer, request_id), s.id);
        *self.per_ip.entry(s.peer.ip()).or_default() += 1;
        self.entries.insert(s.id, entry);
    }

    /// Sessions of client IP `ip` not yet released.
    pub fn of_ip(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }

    /// The open session that has made no progress for longest, if that is at least
    /// `min_stall` (of `ip` only, if given): the one that yields its place under pressure.
    pub fn most_stalled(
        &self,
        ip: Option<IpAddr>,
        min_stall: Duration,
        now: Instant,
    ) -> Option<(Arc<Session>, Duration)> {
        self.entries
            .values()
            .map(|e| &e.session)
            .filter(|s| s.close_reason().is_none() && ip.is_none_or(|ip| s.peer.ip() == ip))
            .map(|s| {
                (
                    s,
                    now.saturating_duration_since(s.state().stalled_since(now)),
                )
            })
            .filter(|(_, d)| *d >= min_stall)
            .max_by_key(|(_, d)| *d)
            .map(|(s, d)| (s.clone(), d))
    }

    /// The session a previous GET `(peer, request_id)` created, if any.
    pub fn for_request(&self, peer: SocketAddr, request_id: u32) -> Option<Arc<Session>> {
        let id = self.by_request.get(&(peer, request_id))?;
        self.entries.get(id).map(|e| e.session.clone())
    }

    /// Session `id` if it belongs to `src` (another address cannot steer it), released or not.
    pub fn of_peer(&mut self, src: SocketAddr, id: u32) -> Option<&mut Entry> {
        self.entries.get_mut(&id).filter(|e| e.session.peer == src)
    }

    /// Session `id`, whoever asks (the server's own decisions about it).
    pub fn of_session(&self, id: u32) -> Option<&Entry> {
        self.entries.get(&id)
    }

    pub fn sessions(&self) -> impl Iterator<Item = &Arc<Session>> {
        self.entries.values().map(|e| &e.session)
    }

    /// The error that explains why the server ended session `s`, if it was the server's doing.
    pub fn why_ended(s: &Session) -> Option<(ErrorCode, String)> {
        match s.close_reason()? {
            CloseReason::FileChanged => Some((
                ErrorCode::FileChanged,
                "the file changed on the server while it was being sent".into(),
            )),
            CloseReason::Evicted => Some((
                ErrorCode::Evicted,
                "the server was full and gave this session's place to another client: it had made no progress for over a second".into(),
            )),
            CloseReason::Failed => Some((
                ErrorCode::Internal,
                match s.problem() {
                    Some(p) => format!("the server could not send the file: {p}"),
                    None => "the server could not send the file".into(),
                },
            )),
            _ => None,
        }
    }

    /// Times out silent clients, stops sessions whose file changed (one fstat per file, not
    /// per session), forgets released sessions, and returns whom to tell that the server ended
    /// their session (each once).
    pub fn sweep(&mut self, idle_timeout: Duration) -> Vec<Telling> {
        let open = || {
            self.entries
                .values()
                .map(|e| &e.session)
                .filter(|s| s.close_reason().is_none())
        };
        for s in open() {
            if s.silent_for() > idle_timeout {
                s.close(CloseReason::TimedOut);
            }
        }
        let changed = changed_among(open().map(|s| &s.file));
        for s in open().filter(|s| changed.iter().any(|f| Arc::ptr_eq(f, &s.file))) {
            tracing::warn!(
                "[SESSION {:08x}] {} changed on disk while being sent: transfer stopped",
                s.id,
                s.file.name
            );
            s.close(CloseReason::FileChanged);
        }
        let mut tell = Vec::new();
        for s in self.sessions() {
            if let Some((code, text)) = Self::why_ended(s) {
                if !s.told_client.swap(true, Ordering::AcqRel) {
                    tell.push((s.peer, code, text));
                }
            }
        }
        let before = self.entries.len();
        let per_ip = &mut self.per_ip;
        self.entries.retain(|_, e| {
            let keep = !e.session.is_released();
            if !keep {
                let ip = e.session.peer.ip();
                if let Some(n) = per_ip.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        per_ip.remove(&ip);
                    }
                }
            }
            keep
        });
        if self.entries.len() != before {
            let entries = &self.entries;
            self.by_request.retain(|_, id| entries.contains_key(id));
        }
        tell
    }
}
