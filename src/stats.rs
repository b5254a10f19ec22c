//! Counters the server keeps. Plain atomics written off the hot path (per batch or per
//! session), read by reports and tests; histograms will sit beside them.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct ServerStats {
    pub sessions_active: AtomicU64,
    pub sessions_started: AtomicU64,
    pub sessions_completed: AtomicU64,
    pub sessions_timed_out: AtomicU64,
    pub sessions_failed: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub datagrams_sent: AtomicU64,
    pub retransmitted: AtomicU64,
    /// Datagrams that were not ringblast messages, or not valid ones.
    pub malformed: AtomicU64,
    /// Requests with a missing, forged or expired token.
    pub bad_tokens: AtomicU64,
    /// Messages for a session that does not exist or from the wrong address.
    pub stray: AtomicU64,
    /// GETs refused because the server was at --max-sessions.
    pub busy: AtomicU64,
}

impl ServerStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
