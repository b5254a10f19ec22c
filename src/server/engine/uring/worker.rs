//! A uring worker thread: takes new sessions, pumps the ones that have something to do, and
//! sleeps in `epoll_wait` until a completion or an ACK (each session's eventfd, shared by its
//! ring and its waker) or the earliest pacing deadline among its sessions.
//!
//! Only the sessions whose eventfd fired, whose deadline came, or whose last pump sent (and
//! may have more) are pumped: an ACK for one session costs its own pump, not one of every
//! session on the worker.

use std::net::UdpSocket;
use std::os::fd::{AsFd, AsRawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use nix::sys::epoll::{Epoll, EpollEvent, EpollTimeout};

use super::session_ring::SessionRing;
use super::{IDLE_POLL, WAKE_TOKEN};
use crate::report::hist::SendHists;
use crate::server::engine::panic_text;
use crate::server::session::{CloseReason, Session};
use crate::server::stats::ServerStats;
use crate::sys::splice::SpliceSocket;

pub(super) struct WorkerCtx {
    pub(super) sock: Arc<UdpSocket>,
    /// Workers in the engine: with at least as many sessions the server is loaded, and
    /// `--send-path auto` sessions splice.
    pub(super) workers: u64,
    /// This worker's socket for spliced sessions (`--send-path auto|sendmsg|splice`).
    pub(super) splice: Option<SpliceSocket>,
    pub(super) rx: Receiver<Arc<Session>>,
    pub(super) epoll: Epoll,
    pub(super) load: Arc<AtomicUsize>,
    pub(super) shutdown: Arc<AtomicBool>,
    pub(super) stats: Arc<ServerStats>,
    /// Whether UDP GSO works on the engine's socket (shared by every worker).
    pub(super) gso_works: Arc<AtomicBool>,
}

/// How long a worker with nothing to submit may sleep: until the earliest deadline among its
/// sessions, at least 1 ms (epoll counts milliseconds: a 0 ms wait would spin), at most
/// [`IDLE_POLL`]. Completions and ACKs wake it earlier through their eventfds.
pub(super) fn idle_timeout(now: Instant, deadline: Option<Instant>) -> EpollTimeout {
    let wait = deadline
        .map(|d| d.saturating_duration_since(now))
        .unwrap_or(IDLE_POLL)
        .min(IDLE_POLL);
    let ms = wait.as_micros().div_ceil(1000).max(1) as u16;
    EpollTimeout::from(ms)
}

/// A session on this worker: its ring, whether it has something to do, its next deadline.
struct Entry {
    rs: SessionRing,
    ready: bool,
    deadline: Option<Instant>,
}

impl WorkerCtx {
    /// Sets up `s`'s ring in slot `i` of `entries` (its eventfd's epoll token is `i`), or
    /// fails the session.
    fn add(&self, entries: &mut [Option<Entry>], i: usize, s: Arc<Session>) -> bool {
        match SessionRing::new(s.clone(), &self.epoll, i as u64, self.gso_works.clone()) {
            Ok(rs) => {
                s.set_waker(rs.ring.waker());
                entries[i] = Some(Entry {
                    rs,
                    ready: true,
                    deadline: None,
                });
                true
            }
            Err(e) => {
                s.fail(CloseReason::Failed, format!("cannot set up io_uring: {e}"));
                s.release(&SendHists::default());
                self.load.fetch_sub(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub(super) fn run(self) {
        let sock = self.sock.as_raw_fd();
        let mut entries: Vec<Option<Entry>> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut events = [EpollEvent::empty(); 64];
        let mut any_ready = true;
        loop {
            while let Ok(s) = self.rx.try_recv() {
                let i = free.pop().unwrap_or_else(|| {
                    entries.push(None);
                    entries.len() - 1
                });
                if self.add(&mut entries, i, s) {
                    any_ready = true;
                } else {
                    free.push(i);
                }
            }
            let stopping = self.shutdown.load(Ordering::Acquire);
            if stopping {
                for e in entries.iter_mut().flatten() {
                    e.rs.session.close(CloseReason::Shutdown);
                    e.ready = true;
                }
                any_ready = true;
            }
            // What woke this turn (a completion, an ACK, a new session); without work in
            // hand, wait for it until the earliest deadline.
            let now = Instant::now();
            let timeout = if any_ready {
                EpollTimeout::ZERO
            } else {
                let deadline = entries.iter().flatten().filter_map(|e| e.deadline).min();
                idle_timeout(now, deadline)
            };
            let woke = self.epoll.wait(&mut events, timeout).unwrap_or(0);
            for ev in &events[..woke] {
                if ev.data() != WAKE_TOKEN {
                    if let Some(Some(e)) = entries.get_mut(ev.data() as usize) {
                        e.ready = true;
                    }
                }
            }
            let now = Instant::now();
            let loaded = self.stats.sessions_active.load(Ordering::Relaxed) >= self.workers;
            any_ready = false;
            for (i, slot) in entries.iter_mut().enumerate() {
                let Some(e) = slot else { continue };
                if !(e.ready || e.deadline.is_some_and(|d| d <= now)) {
                    continue;
                }
                e.ready = false;
                let rs = &mut e.rs;
                match catch_unwind(AssertUnwindSafe(|| {
                    rs.pump(sock, self.splice.as_ref(), loaded)
                })) {
                    Ok((sent, deadline)) => {
                        e.deadline = deadline;
                        // It sent: it may have more (its slots were full), so look again
                        // next turn without waiting.
                        e.ready = sent > 0;
                    }
                    Err(panic) => {
                        self.stats.panics.fetch_add(1, Ordering::Relaxed);
                        e.rs.session.fail(
                            CloseReason::Failed,
                            format!("bug: the session's code panicked: {}", panic_text(&*panic)),
                        );
                        e.ready = true;
                    }
                }
                let finished = e.rs.finished();
                any_ready |= e.ready;
                if finished {
                    let e = slot.take().expect("present");
                    let _ = self.epoll.delete(e.rs.ring.waker().as_fd());
                    e.rs.session.release(&e.rs.hists);
                    self.load.fetch_sub(1, Ordering::Relaxed);
                    free.push(i);
                }
            }
            if stopping && entries.iter().all(Option::is_none) {
                return;
            }
        }
    }
}
