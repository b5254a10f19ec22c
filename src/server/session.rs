//! One client's transfer as the server keeps it: the [`Session`] the control thread creates,
//! feeds ACKs and times out, and an engine drives until it is closed.
//!
//! The sender logic itself (what to send next) is [`SenderState`], shared by both engines;
//! a session wraps it with what the server needs around it: peer, file, close reason, the
//! waker of the engine driving it, and the channel on which its summary goes back to the
//! control thread when it ends (engine threads never log or print: a slow stderr or stdout
//! pipe must not stall sending).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::eventfd::EventFd;
use serde::Serialize;

use super::catalog::ScannedFile;
use super::engine::{EngineKind, SendPath};
use super::stats::ServerStats;
use crate::protocol::layout::payload_len;
use crate::protocol::seal::{Sealer, SEAL_OVERHEAD};
use crate::protocol::sender::SenderState;
use crate::protocol::{data_flags, DataHeader, Message, Mode, Status, DATA_HEADER_LEN};
use crate::report::hist::{Percentiles, SendHists};

/// What every session of a server shares: where its counters go and how it reports.
#[derive(Clone)]
pub struct SessionCtx {
    pub stats: Arc<ServerStats>,
    pub engine: EngineKind,
    /// Where a finished session's summary goes: the control thread logs it (and prints it
    /// with `serve --json`).
    pub summaries: Sender<SessionSummary>,
    /// The engine may send several datagrams per call with UDP GSO (probed, and not
    /// `serve --no-gso`).
    pub gso: bool,
}

/// One finished session, as `serve --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    pub session: String,
    pub peer: String,
    pub file: String,
    pub engine: &'static str,
    pub mode: &'static str,
    pub outcome: &'static str,
    pub bytes_sent: u64,
    pub datagrams_sent: u64,
    /// Datagrams the client confirmed.
    pub datagrams_acked: u64,
    pub retransmitted: u64,
    pub send_errors: u64,
    /// Bytes per datagram on the wire, header included (and the seal's, where sealed).
    pub datagram_size: usize,
    /// Every datagram was sealed (an authenticated connection).
    pub sealed: bool,
    /// Most datagrams one send carried (UDP GSO; 1 without it).
    pub gso_segments: u64,
    /// `sendmsg`/`sendto` calls made.
    pub send_calls: u64,
    /// `io_uring_enter` calls that submitted sends (uring).
    pub io_uring_enters: u64,
    /// How payloads were to go: `splice` (page-cache pages attached, no copy), `copy`, or
    /// `auto` (splice while the server was busy).
    pub send_path: &'static str,
    /// Datagrams sent by splice.
    pub spliced_datagrams: u64,
    /// Why GSO was given up during the session, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gso_fallback: Option<String>,
    pub duration_s: f64,
    pub throughput_bps: f64,
    pub send_latency_us: Percentiles,
    pub batch_size: Percentiles,
    /// The congestion controller at the end: pacing rate, delivery-rate estimate, smoothed and
    /// minimum RTT, loss events, spurious retransmissions.
    pub congestion: Status,
    /// Its name and state (`bbr probe_bw`, `fixed`).
    pub controller: String,
    /// Probe timeouts that fired (ACKs stopped).
    pub probes: u64,
    /// ACKs whose timestamps or delays were not believed.
    pub bad_acks: u64,
    /// What went wrong, when the engine ended the session on an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The rate an earlier session to the same host had sustained, bits/s, which this one
    /// started from (`serve --path-memory`: its first RTT matched that session's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_recalled_bps: Option<f64>,
    /// What the session learned of the path to its client's host, for the next.
    #[serde(skip)]
    pub path: Option<(std::net::IpAddr, crate::protocol::congestion::PathRecord)>,
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
    /// The server was full and the session had made no progress: its place went to another.
    Evicted = 7,
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
            7 => CloseReason::Evicted,
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
            CloseReason::Evicted => "evicted: no progress while the server was full",
        }
    }
}

/// One client's transfer, shared between the control thread and the engine driving it.
pub struct Session {
    pub id: u32,
    pub peer: SocketAddr,
    pub file: Arc<ScannedFile>,
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
    /// Why the engine failed the session (first problem only).
    problem: OnceLock<String>,
    /// Most datagrams one send carried.
    pub gso_segments: AtomicU64,
    /// Why the engine stopped using GSO for this session.
    pub gso_fallback: OnceLock<String>,
    /// How payloads go: by `sendmsg`, by splice (header, then `sendfile()` of the file's pages), or
    /// `Auto`: by splice while the server is busy, by copy otherwise.
    pub send_path: SendPath,
    /// Datagrams that went by splice.
    pub spliced: AtomicU64,
    /// Tests set it to make the engine's code for this session panic.
    #[cfg(test)]
    pub(crate) fail_point: AtomicBool,
    /// Tests set it to make the engine see its next GSO send refused (EIO).
    #[cfg(test)]
    pub(crate) fail_gso: AtomicBool,
    /// Times an engine pumped this session (tests: only sessions with work are pumped).
    #[cfg(test)]
    pub(crate) pumps: AtomicU64,
    /// The client was told why the server ended the session.
    pub told_client: AtomicBool,
    /// The multicast transmission the client is a member of (`serve --multicast`).
    pub group: OnceLock<crate::protocol::Join>,
    /// Seals every datagram to the client (its authenticated connection's key); `None`: open.
    pub sealer: Option<Arc<Sealer>>,
}

impl Session {
    pub fn new(
        id: u32,
        peer: SocketAddr,
        file: Arc<ScannedFile>,
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
            problem: OnceLock::new(),
            gso_segments: AtomicU64::new(0),
            gso_fallback: OnceLock::new(),
            send_path: SendPath::Sendmsg,
            spliced: AtomicU64::new(0),
            #[cfg(test)]
            fail_point: AtomicBool::new(false),
            #[cfg(test)]
            fail_gso: AtomicBool::new(false),
            #[cfg(test)]
            pumps: AtomicU64::new(0),
            told_client: AtomicBool::new(false),
            group: OnceLock::new(),
            sealer: None,
        }
    }

    /// Seals the session's datagrams with `sealer` (its payloads then go by `sendmsg`: the
    /// kernel cannot splice what must be encrypted first).
    pub fn with_sealer(mut self, sealer: Option<Arc<Sealer>>) -> Self {
        if sealer.is_some() {
            self.send_path = SendPath::Sendmsg;
        }
        self.sealer = sealer;
        self
    }

    /// Bytes per datagram on the wire: [`Session::datagram_size`], sealed where it is.
    pub fn wire_size(&self) -> usize {
        self.datagram_size()
            + if self.sealer.is_some() {
                SEAL_OVERHEAD
            } else {
                0
            }
    }

    /// Sets how the session's payloads go (its payload size must suit it: `payload_size`).
    pub fn with_send_path(mut self, path: SendPath) -> Self {
        self.send_path = path;
        self
    }

    pub fn state(&self) -> MutexGuard<'_, SenderState> {
        // A panic while holding the lock would be a bug; keep serving the other sessions.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes per datagram on the wire, header included.
    pub fn datagram_size(&self) -> usize {
        self.file.payload_size as usize + DATA_HEADER_LEN
    }

    /// The server's counters.
    pub fn stats(&self) -> &ServerStats {
        &self.ctx.stats
    }

    /// Whether the engine may use UDP GSO for this session.
    pub fn gso_allowed(&self) -> bool {
        self.ctx.gso
    }

    /// Writes the header of data datagram `index` (its payload is the file's bytes at its
    /// offset) into `out`, stamped `send_ts_ns` (the sender's record of this send), CRC
    /// chained onto the payload CRC from the index.
    /// Returns the payload length. Both engines send exactly this.
    pub fn data_header(
        &self,
        index: u32,
        retransmit: bool,
        send_ts_ns: u64,
        out: &mut [u8; DATA_HEADER_LEN],
    ) -> usize {
        let f = &self.file;
        let len = payload_len(f.size, f.payload_size, index as u64);
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
            send_ts_ns,
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
    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_heard_ms.load(Ordering::Relaxed));
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

    /// Closes the session because the engine failed it, remembering why for its summary.
    pub fn fail(&self, reason: CloseReason, problem: String) {
        let _ = self.problem.set(problem);
        self.close(reason);
    }

    /// Why the engine failed the session, if it did.
    pub fn problem(&self) -> Option<&str> {
        self.problem.get().map(String::as_str)
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
    /// frees its place, counts it, and sends its summary to the control thread.
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
                datagrams_acked: st.delivered(),
                retransmitted: st.retransmitted,
                send_errors: self.send_errors.load(Ordering::Relaxed),
                datagram_size: self.wire_size(),
                sealed: self.sealer.is_some(),
                // One datagram per call where no GSO batch was recorded (threads).
                gso_segments: self
                    .gso_segments
                    .load(Ordering::Relaxed)
                    .max(u64::from(st.datagrams_sent > 0)),
                send_calls: hists.send_calls,
                io_uring_enters: hists.enters,
                send_path: self.send_path.as_str(),
                spliced_datagrams: self.spliced.load(Ordering::Relaxed),
                gso_fallback: self.gso_fallback.get().cloned(),
                duration_s: secs,
                throughput_bps: st.bytes_sent as f64 * 8.0 / secs.max(1e-9),
                send_latency_us: hists.send_latency_us.summary(),
                batch_size: hists.batch.summary(),
                congestion: st.status(self.id),
                controller: match self.mode {
                    // Blast mode has no control loop: it sends at --rate or as fast as it can.
                    Mode::Blast => "no congestion control (blast)".to_string(),
                    Mode::Reliable => st.cc_state().to_string(),
                },
                probes: st.probes,
                bad_acks: st.bad_acks,
                problem: self.problem.get().cloned(),
                path_recalled_bps: st.recalled_rate().map(|r| r * 8.0),
                // However it ended: a client that vanished had the path it had until then.
                path: st.path_record().map(|r| (self.peer.ip(), r)),
            }
        };
        let stats = &self.ctx.stats;
        stats.add_finished_session(&hists.send_latency_us, summary.gso_segments);
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
        if summary.path_recalled_bps.is_some() {
            stats.paths_recalled.fetch_add(1, Ordering::Relaxed);
        }
        // Last (Release), so whoever sees no session active (Acquire) also sees how each ended.
        stats.sessions_active.fetch_sub(1, Ordering::Release);
        // The control thread may be gone (shutdown): then nobody is listening.
        let _ = self.ctx.summaries.send(summary);
    }
}
