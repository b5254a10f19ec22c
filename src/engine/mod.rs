//! Engines push a session's datagrams onto the wire; the session logic (`session.rs`) decides
//! which. The control thread (`server.rs`) creates sessions and feeds them ACKs; an engine
//! drives each session until it is closed, then releases it.

pub mod threads;
pub mod uring;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::sys::eventfd::EventFd;

use crate::files::IndexedFile;
use crate::session::SenderState;
use crate::stats::{Percentiles, SendHists, ServerStats};
use crate::wire::{data_flags, DataHeader, Message, Mode, DATA_HEADER_LEN};

/// What every session of a server shares: where its counters go and how it reports.
#[derive(Debug, Clone)]
pub struct SessionCtx {
    pub stats: Arc<ServerStats>,
    pub engine: EngineKind,
    /// Print one JSON object per finished session on stdout (`serve --json`).
    pub json: bool,
}

/// One finished session, as `serve --json` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionSummary {
    pub session: String,
    pub peer: String,
    pub file: String,
    pub engine: &'static str,
    pub mode: &'static str,
    pub outcome: &'static str,
    pub bytes_sent: u64,
    pub datagrams_sent: u64,
    pub retransmitted: u64,
    pub duration_s: f64,
    pub throughput_bps: f64,
    pub send_latency_us: Percentiles,
    pub batch_size: Percentiles,
}

/// Which engine a server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// mmap + io_uring: one ring per session, batched sends, a bounded worker pool.
    Uring,
    /// The lab's baseline: one OS thread per session, read() then one blocking sendto() per
    /// datagram, no batching, no mmap.
    Threads,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Uring => "uring",
            EngineKind::Threads => "threads",
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// Reliable: the receiver confirmed every datagram. Blast: the client said DONE.
    Complete = 1,
    /// The client said DONE without a verified copy.
    ClientGaveUp = 2,
    /// Nothing heard from the client for the idle timeout.
    TimedOut = 3,
    /// The server is shutting down.
    Shutdown = 4,
    /// The engine could not send (setup or socket error).
    Failed = 5,
    /// The served file changed while it was being sent.
    FileChanged = 6,
}

impl CloseReason {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => CloseReason::Complete,
            2 => CloseReason::ClientGaveUp,
            3 => CloseReason::TimedOut,
            4 => CloseReason::Shutdown,
            5 => CloseReason::Failed,
            6 => CloseReason::FileChanged,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Complete => "complete",
            CloseReason::ClientGaveUp => "client gave up",
            CloseReason::TimedOut => "client silent, timed out",
            CloseReason::Shutdown => "server shutdown",
            CloseReason::Failed => "send failed",
            CloseReason::FileChanged => "file changed while sending",
        }
    }
}

/// Nanoseconds since the Unix epoch: the clock of the data header's send timestamp, so a
/// receiver on another host with a synchronised clock can compute one-way delay.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One client's transfer, shared between the control thread and the engine driving it.
pub struct Session {
    pub id: u32,
    pub peer: SocketAddr,
    pub file: Arc<IndexedFile>,
    pub mode: Mode,
    pub started: Instant,
    state: Mutex<SenderState>,
    close_reason: AtomicU8,
    released: AtomicBool,
    /// Milliseconds since `started` when the client was last heard.
    last_heard_ms: AtomicU64,
    pub send_errors: AtomicU64,
    waker: OnceLock<Arc<EventFd>>,
    ctx: SessionCtx,
    /// The client was told why the server ended the session.
    pub told_client: AtomicBool,
}

impl Session {
    pub fn new(
        id: u32,
        peer: SocketAddr,
        file: Arc<IndexedFile>,
        state: SenderState,
        ctx: SessionCtx,
    ) -> Self {
        ctx.stats.sessions_active.fetch_add(1, Ordering::Relaxed);
        ctx.stats.sessions_started.fetch_add(1, Ordering::Relaxed);
        Session {
            id,
            peer,
            mode: state.mode(),
            file,
            started: Instant::now(),
            state: Mutex::new(state),
            close_reason: AtomicU8::new(0),
            released: AtomicBool::new(false),
            last_heard_ms: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            waker: OnceLock::new(),
            ctx,
            told_client: AtomicBool::new(false),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, SenderState> {
        // A panic while holding the lock would be a bug; keep serving the other sessions.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the header of data datagram `index` (its payload is the file's bytes at its
    /// offset) into `out`, stamped now, CRC chained onto the payload CRC from the index.
    /// Returns the payload length. Both engines send exactly this.
    pub fn data_header(
        &self,
        index: u32,
        retransmit: bool,
        out: &mut [u8; DATA_HEADER_LEN],
    ) -> usize {
        let f = &self.file;
        let len = crate::files::payload_len(f.size, f.payload_size, index as u64);
        DataHeader {
            flags: if retransmit {
                data_flags::RETRANSMIT
            } else {
                0
            },
            payload_len: len as u16,
            session: self.id,
            crc: 0,
            offset: index as u64 * f.payload_size as u64,
            send_ts_ns: unix_ns(),
        }
        .emit(f.crcs[index as usize], out);
        len
    }

    /// Encodes this session's blast-mode END marker into `out` (cleared first).
    pub fn end_marker(&self, out: &mut Vec<u8>) {
        out.clear();
        Message::End {
            session: self.id,
            datagrams: self.file.datagrams() as u32,
        }
        .encode(out);
    }

    /// Records that the client was heard from now.
    pub fn heard(&self) {
        self.last_heard_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since the client was last heard.
    pub fn silent_for(&self) -> std::time::Duration {
        let last = std::time::Duration::from_millis(self.last_heard_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Asks the engine to stop sending; the first reason given sticks.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.close_reason.compare_exchange(
            0,
            reason as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.wake();
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.close_reason.load(Ordering::Acquire))
    }

    /// The engine sets the event it waits on; the control thread signals it after an ACK.
    pub fn set_waker(&self, waker: Arc<EventFd>) {
        let _ = self.waker.set(waker);
    }

    pub fn wake(&self) {
        if let Some(w) = self.waker.get() {
            // EAGAIN (counter saturated) still leaves the event readable: ignore.
            let _ = w.write(1);
        }
    }

    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// Called once by the engine when it has stopped sending and no send is in flight:
    /// reports the session (log, and JSON with `serve --json`) and frees its place.
    pub fn release(&self, hists: &SendHists) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        let reason = self.close_reason().unwrap_or(CloseReason::Shutdown);
        let secs = self.started.elapsed().as_secs_f64();
        let summary = {
            let st = self.state();
            SessionSummary {
                session: format!("{:08x}", self.id),
                peer: self.peer.to_string(),
                file: self.file.name.clone(),
                engine: self.ctx.engine.as_str(),
                mode: self.mode.as_str(),
                outcome: reason.as_str(),
                bytes_sent: st.bytes_sent,
                datagrams_sent: st.datagrams_sent,
                retransmitted: st.retransmitted,
                duration_s: secs,
                throughput_bps: st.bytes_sent as f64 * 8.0 / secs.max(1e-9),
                send_latency_us: hists.send_latency_us.summary(),
                batch_size: hists.batch.summary(),
            }
        };
        let stats = &self.ctx.stats;
        stats.sessions_active.fetch_sub(1, Ordering::Relaxed);
        stats
            .bytes_sent
            .fetch_add(summary.bytes_sent, Ordering::Relaxed);
        stats
            .datagrams_sent
            .fetch_add(summary.datagrams_sent, Ordering::Relaxed);
        stats
            .retransmitted
            .fetch_add(summary.retransmitted, Ordering::Relaxed);
        match reason {
            CloseReason::Complete => stats.sessions_completed.fetch_add(1, Ordering::Relaxed),
            CloseReason::TimedOut => stats.sessions_timed_out.fetch_add(1, Ordering::Relaxed),
            _ => stats.sessions_failed.fetch_add(1, Ordering::Relaxed),
        };
        tracing::info!(
            "[SESSION {}] {} {} {} -> {}: {} ({} bytes sent in {:.3} s, {:.1} MB/s, {} datagrams, {} retransmitted, {} send errors; send latency us {}; batch {})",
            summary.session,
            summary.engine,
            summary.mode,
            summary.file,
            summary.peer,
            summary.outcome,
            summary.bytes_sent,
            secs,
            summary.bytes_sent as f64 / secs.max(1e-9) / (1024.0 * 1024.0),
            summary.datagrams_sent,
            summary.retransmitted,
            self.send_errors.load(Ordering::Relaxed),
            summary.send_latency_us,
            summary.batch_size,
        );
        if self.ctx.json {
            if let Ok(line) = serde_json::to_string(&summary) {
                // One object per line; a closed stdout must not take the server down.
                use std::io::Write;
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            }
        }
    }
}

/// What the control thread needs from an engine.
pub trait Engine: Send + Sync {
    /// Starts driving `session` until it is closed; then the engine calls `release`.
    fn start(&self, session: Arc<Session>);
    /// Stops every worker after closing its sessions. Idempotent.
    fn shutdown(&self);
    /// Number of OS threads the engine runs (for reports: it must not grow with clients).
    fn threads(&self) -> usize;
}
