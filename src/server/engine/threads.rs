//! The baseline engine: the lab's design, in Rust, for side-by-side comparison.
//!
//! One OS thread per session; for each datagram, a read of the next chunk of the file into a
//! buffer (positioned `pread`, since sessions share the open file), then one blocking
//! `sendto()`. No mmap, no batching: a syscall pair per datagram and a thread per client. The
//! session logic (what to send, what to resend, how fast) is the same `SenderState` the io_uring
//! engine uses, so reliable and blast modes both work and only the send path differs.

use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::{panic_text, Engine};
use crate::protocol::layout::payload_len;
use crate::protocol::seal::{SEALED_HEADER_LEN, SEAL_OVERHEAD};
use crate::protocol::sender::NextDatagram;
use crate::protocol::{Mode, DATA_HEADER_LEN, MAX_DATAGRAM};
use crate::report::hist::SendHists;
use crate::server::session::{CloseReason, Session};
use crate::server::stats::ServerStats;
use crate::sys::socket::retry_eintr;

/// Longest a session thread sleeps without a reason to wake, so shutdown is noticed.
const IDLE_POLL: Duration = Duration::from_millis(100);

pub struct ThreadsEngine {
    sock: Arc<UdpSocket>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    sessions: Mutex<Vec<std::sync::Weak<Session>>>,
    active: Arc<AtomicUsize>,
    shutdown: Arc<AtomicBool>,
    stats: Arc<ServerStats>,
}

impl ThreadsEngine {
    pub fn new(sock: Arc<UdpSocket>, stats: Arc<ServerStats>) -> Self {
        ThreadsEngine {
            stats,
            sock,
            handles: Mutex::new(Vec::new()),
            sessions: Mutex::new(Vec::new()),
            active: Arc::new(AtomicUsize::new(0)),
            shutdown: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Engine for ThreadsEngine {
    fn start(&self, session: Arc<Session>) {
        let wake = match EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC) {
            Ok(w) => Arc::new(w),
            Err(e) => {
                session.fail(
                    CloseReason::Failed,
                    format!("cannot create an eventfd: {e}"),
                );
                session.release(&SendHists::default());
                return;
            }
        };
        session.set_waker(wake.clone());
        let sock = self.sock.clone();
        let active = self.active.clone();
        let shutdown = self.shutdown.clone();
        let stats = self.stats.clone();
        let s = session.clone();
        active.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name(format!("session-{:08x}", session.id))
            .spawn(move || {
                let mut hists = SendHists::default();
                let run = catch_unwind(AssertUnwindSafe(|| {
                    run_session(&sock, &s, &wake, &shutdown, &mut hists)
                }));
                if let Err(panic) = run {
                    stats.panics.fetch_add(1, Ordering::Relaxed);
                    s.fail(
                        CloseReason::Failed,
                        format!("bug: the session's code panicked: {}", panic_text(&*panic)),
                    );
                }
                s.release(&hists);
                active.fetch_sub(1, Ordering::Relaxed);
            });
        match spawned {
            Ok(h) => {
                let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
                handles.retain(|h| !h.is_finished());
                handles.push(h);
                let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
                sessions.retain(|w| w.strong_count() > 0);
                sessions.push(Arc::downgrade(&session));
            }
            Err(e) => {
                self.active.fetch_sub(1, Ordering::Relaxed);
                session.fail(CloseReason::Failed, format!("cannot start a thread: {e}"));
                session.release(&SendHists::default());
            }
        }
    }

    fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        for s in self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|w| w.upgrade())
        {
            s.close(CloseReason::Shutdown);
        }
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }

    /// One per active session: this engine's thread count grows with its clients.
    fn threads(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

impl Drop for ThreadsEngine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Sends until the session is closed; the caller releases it.
fn run_session(
    sock: &UdpSocket,
    session: &Session,
    wake: &EventFd,
    shutdown: &AtomicBool,
    hists: &mut SendHists,
) {
    let file = &session.file;
    let mut wire = vec![0u8; MAX_DATAGRAM + SEAL_OVERHEAD];
    // A sealed session's message goes after the seal's header, and is sealed in place.
    let at = if session.sealer.is_some() {
        SEALED_HEADER_LEN
    } else {
        0
    };
    let mut end = Vec::with_capacity(DATA_HEADER_LEN);
    loop {
        if shutdown.load(Ordering::Acquire) {
            session.close(CloseReason::Shutdown);
        }
        if session.close_reason().is_some() {
            break;
        }
        let now = Instant::now();
        let (next, deadline) = {
            let mut state = session.state();
            let next = state.next(now);
            if next.is_none() && state.mode() == Mode::Reliable && state.is_complete() {
                session.close(CloseReason::Complete);
                continue;
            }
            (next, state.deadline())
        };
        let len = match next {
            Some(NextDatagram::Data {
                index,
                retransmit,
                send_ts_ns,
            }) => {
                let len = payload_len(file.size, file.payload_size, index as u64);
                let offset = index as u64 * file.payload_size as u64;
                let (header, payload) = wire[at..].split_at_mut(DATA_HEADER_LEN);
                // The lab's read(): the next chunk of the file into the send buffer.
                if let Err(e) = file.file.read_exact_at(&mut payload[..len], offset) {
                    let reason = if file.check_changed() {
                        CloseReason::FileChanged
                    } else {
                        CloseReason::Failed
                    };
                    session.fail(reason, format!("cannot read {}: {e}", file.name));
                    break;
                }
                session.data_header(
                    index,
                    retransmit,
                    send_ts_ns,
                    header.try_into().expect("32-byte header"),
                );
                DATA_HEADER_LEN + len
            }
            Some(NextDatagram::End) => {
                session.end_marker(&mut end);
                wire[at..at + end.len()].copy_from_slice(&end);
                end.len()
            }
            None => {
                let wait = deadline
                    .map(|d| d.saturating_duration_since(Instant::now()))
                    .unwrap_or(IDLE_POLL)
                    .min(IDLE_POLL);
                let ms = wait.as_micros().div_ceil(1000).max(1) as u16;
                let mut fds = [PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(ms));
                // Reset the event; EAGAIN when it was a timeout.
                let _ = wake.read();
                continue;
            }
        };
        let len = match &session.sealer {
            Some(sealer) => match sealer.seal_in_place(&mut wire, len) {
                Ok(n) => n,
                Err(e) => {
                    session.fail(
                        CloseReason::Failed,
                        format!("cannot seal: {e:?} (a new connection is due)"),
                    );
                    break;
                }
            },
            None => len,
        };
        // The lab's sendto(): one blocking call per datagram.
        let t = Instant::now();
        if retry_eintr(|| sock.send_to(&wire[..len], session.peer)).is_err() {
            session.send_errors.fetch_add(1, Ordering::Relaxed);
        }
        hists.send_latency_us.record(t.elapsed().as_micros() as u64);
        hists.batch.record(1);
        hists.send_calls += 1;
    }
}
