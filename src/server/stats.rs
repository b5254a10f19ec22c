//! The server's counters: atomics written off the hot path (per batch, per session, per
//! control message) and read by reports, tests and `bench`.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use crate::report::hist::Hist;

#[derive(Debug, Default)]
pub struct ServerStats {
    /// The send latency of every session finished since it was last taken
    /// ([`ServerStats::take_finished_sessions`]): `bench` reads it per run.
    send_latency_us: Mutex<Option<Hist>>,
    /// The most datagrams one send carried (UDP GSO) in a session finished since it was last
    /// taken ([`ServerStats::take_finished_sessions`]).
    max_gso_segments: AtomicU64,
    pub sessions_active: AtomicU64,
    pub sessions_started: AtomicU64,
    pub sessions_completed: AtomicU64,
    pub sessions_timed_out: AtomicU64,
    pub sessions_failed: AtomicU64,
    /// Sessions that started from what an earlier one learned of the path to their host
    /// (`serve --path-memory`; the first RTT matched).
    pub paths_recalled: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Bytes sent to multicast groups (sources, repairs, end markers).
    pub group_bytes_sent: AtomicU64,
    pub datagrams_sent: AtomicU64,
    pub retransmitted: AtomicU64,
    /// Datagrams whose payload went by splice (the rest were copied).
    pub spliced: AtomicU64,
    /// Datagrams that were not ringblast messages, or not valid ones.
    pub malformed: AtomicU64,
    /// Requests with a missing, forged or expired token.
    pub bad_tokens: AtomicU64,
    /// Messages for a session that does not exist or from the wrong address.
    pub stray: AtomicU64,
    /// GETs refused because the server was at --max-sessions (or the address at
    /// --sessions-per-ip).
    pub busy: AtomicU64,
    /// Sessions that gave their place to a new request: no progress while the server was full.
    pub evicted: AtomicU64,
    /// Datagrams dropped unread because their source is outside `--allow`.
    pub not_allowed: AtomicU64,
    /// Requests dropped because their source IP was over its request rate.
    pub rate_limited: AtomicU64,
    /// ACKs applied to a session's sender state.
    pub acks: AtomicU64,
    /// ACKs dropped because their session sent more than its ACK rate allows.
    pub acks_rate_limited: AtomicU64,
    /// Datagram indices examined for resending, over all ACKs (the control thread's work).
    pub resend_checks: AtomicU64,
    /// Datagrams in another version of the ringblast protocol (also counted as malformed).
    pub version_mismatch: AtomicU64,
    /// Sealed datagrams dropped: unknown connection, wrong address, forged (altered, or
    /// another key), replayed or too old.
    pub unsealed_drops: AtomicU64,
    /// Of those, the ones that failed authentication (forged or another key).
    pub forged: AtomicU64,
    /// Of those, authentic ones seen before (replays) or older than the replay window.
    pub replayed: AtomicU64,
    /// Plaintext requests a server that authenticates refused, or plaintext session messages
    /// it dropped unread.
    pub unauthenticated: AtomicU64,
    /// Handshakes begun, connections made, keys refused.
    pub handshakes: AtomicU64,
    pub connections: AtomicU64,
    pub keys_refused: AtomicU64,
    /// Requests for a file the client's key may not read.
    pub files_refused: AtomicU64,
    /// Panics caught in one session's or one message's handling (a bug: the rest went on).
    pub panics: AtomicU64,
}

impl ServerStats {
    /// Adds a finished session's send latency histogram and its largest GSO batch.
    pub fn add_finished_session(&self, h: &Hist, gso_segments: u64) {
        self.max_gso_segments
            .fetch_max(gso_segments, std::sync::atomic::Ordering::Relaxed);
        let mut all = self
            .send_latency_us
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        all.get_or_insert_with(Hist::latency_us).merge(h);
    }

    /// What the sessions finished since the last call recorded: their send latency and the
    /// most datagrams one of their sends carried; and a fresh start.
    pub fn take_finished_sessions(&self) -> (Hist, u64) {
        let gso = self
            .max_gso_segments
            .swap(0, std::sync::atomic::Ordering::Relaxed);
        let h = self
            .send_latency_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(Hist::latency_us);
        (h, gso)
    }
}
