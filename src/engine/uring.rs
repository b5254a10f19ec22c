//! The io_uring engine: one ring per session, driven by a fixed pool of worker threads.
//!
//! A worker owns the rings of the sessions it was given. Each turn it reaps completions,
//! asks each session's [`SenderState`](crate::session::SenderState) for datagrams to fill its
//! free send slots, and submits them with one `io_uring_enter` per ring: a batch of up to
//! [`SLOTS`] `sendmsg`s, each a 32-byte header plus a payload slice of the mmap'd file. Nothing
//! is allocated and no syscall is made per datagram. With nothing to send, a worker sleeps in
//! `epoll_wait` on an eventfd the control thread signals after ACKs, plus one eventfd per ring
//! (registered with the ring, for sends the kernel had to defer).
#![allow(unsafe_code)]

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::{CloseReason, Engine, Session};
use crate::session::Next;
use crate::stats::SendHists;
use crate::sys::addr::RawAddr;
use crate::wire::DATA_HEADER_LEN;

/// Send slots (and submission-queue entries) per session ring: the largest batch one
/// `io_uring_enter` submits for one session.
pub const SLOTS: usize = 64;
/// Longest a worker sleeps without a reason to wake, so shutdown is noticed.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// epoll data value of a worker's own wake-up eventfd.
const WAKE_TOKEN: u64 = u64::MAX;

/// One in-flight `sendmsg`: header, iovecs and msghdr at a fixed address until it completes.
#[repr(C)]
struct Slot {
    header: [u8; DATA_HEADER_LEN],
    iov: [libc::iovec; 2],
    msg: libc::msghdr,
    /// When its send was queued, for the completion-latency histogram.
    queued_at: Instant,
}

/// A session as a worker drives it.
struct RingSession {
    session: Arc<Session>,
    ring: IoUring,
    /// Boxed slice: the kernel holds pointers into it while sends are in flight.
    slots: Box<[Slot]>,
    /// Boxed: every slot's msghdr points at it (kept alive, never read from Rust).
    _dest: Box<RawAddr>,
    free: Vec<u16>,
    in_flight: usize,
    /// Reused to encode END markers: nothing is allocated per datagram.
    scratch: Vec<u8>,
    hists: SendHists,
    _completions: EventFd,
}

impl RingSession {
    fn new(session: Arc<Session>, epoll: &Epoll) -> io::Result<Self> {
        let ring = IoUring::new(SLOTS as u32)?;
        let completions = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        ring.submitter()
            .register_eventfd(completions.as_fd().as_raw_fd())?;
        epoll.add(
            completions.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, session.id as u64),
        )?;
        let dest = Box::new(RawAddr::new(&session.peer));
        let mut slots: Box<[Slot]> = (0..SLOTS)
            .map(|_| Slot {
                header: [0; DATA_HEADER_LEN],
                // SAFETY: iovec and msghdr are plain old data; zero is valid (null, 0).
                iov: unsafe { std::mem::zeroed() },
                msg: unsafe { std::mem::zeroed() },
                queued_at: Instant::now(),
            })
            .collect();
        for slot in slots.iter_mut() {
            slot.msg.msg_name = (&dest.storage as *const libc::sockaddr_storage)
                .cast_mut()
                .cast();
            slot.msg.msg_namelen = dest.len;
            slot.msg.msg_iov = slot.iov.as_mut_ptr();
        }
        Ok(RingSession {
            session,
            ring,
            slots,
            _dest: dest,
            free: (0..SLOTS as u16).rev().collect(),
            in_flight: 0,
            scratch: Vec::with_capacity(DATA_HEADER_LEN),
            hists: SendHists::default(),
            _completions: completions,
        })
    }

    fn reap(&mut self) {
        let mut errors = 0u64;
        let now = Instant::now();
        for cqe in self.ring.completion() {
            let slot = cqe.user_data() as u16;
            let waited = now.saturating_duration_since(self.slots[slot as usize].queued_at);
            self.hists.send_latency_us.record(waited.as_micros() as u64);
            self.free.push(slot);
            self.in_flight -= 1;
            if cqe.result() < 0 {
                errors += 1;
                if cqe.result() == -libc::EFAULT {
                    // The kernel found a page of the mapped file gone: it was truncated.
                    self.session.close(CloseReason::FileChanged);
                }
            }
        }
        if errors > 0 {
            self.session
                .send_errors
                .fetch_add(errors, Ordering::Relaxed);
        }
    }

    /// Fills free slots with what the session may send now and submits them.
    /// Returns how many sends were submitted; updates `deadline` with the session's timer.
    fn pump(&mut self, sock: RawFd, deadline: &mut Option<Instant>) -> usize {
        self.reap();
        // Read the clock here, not once per worker turn: the sessions before this one took
        // milliseconds to submit, and a stale send time makes data look lost too early.
        let now = Instant::now();
        if self.session.close_reason().is_some() {
            return 0;
        }
        let file = &self.session.file;
        let mut pushed = 0;
        {
            let mut state = self.session.state();
            while let Some(&slot_idx) = self.free.last() {
                let Some(next) = state.next(now) else { break };
                let slot = &mut self.slots[slot_idx as usize];
                match next {
                    Next::Data { index, retransmit } => {
                        let payload = file.payload(index as u64);
                        self.session
                            .data_header(index, retransmit, &mut slot.header);
                        slot.iov[0] = libc::iovec {
                            iov_base: slot.header.as_mut_ptr().cast(),
                            iov_len: DATA_HEADER_LEN,
                        };
                        slot.iov[1] = libc::iovec {
                            iov_base: payload.as_ptr().cast_mut().cast(),
                            iov_len: payload.len(),
                        };
                        slot.msg.msg_iovlen = 2;
                    }
                    Next::End => {
                        self.session.end_marker(&mut self.scratch);
                        let len = self.scratch.len().min(DATA_HEADER_LEN);
                        slot.header[..len].copy_from_slice(&self.scratch[..len]);
                        slot.iov[0] = libc::iovec {
                            iov_base: slot.header.as_mut_ptr().cast(),
                            iov_len: len,
                        };
                        slot.msg.msg_iovlen = 1;
                    }
                }
                slot.queued_at = now;
                let sqe = opcode::SendMsg::new(types::Fd(sock), &slot.msg)
                    .build()
                    .user_data(slot_idx as u64);
                // SAFETY: the SQE points at `slot.msg`, its iovecs, `self.dest` and a payload
                // inside the session's mmap. The slot is not reused until its completion is
                // reaped, `slots` and `dest` are boxed (fixed addresses) and dropped only when
                // nothing is in flight, and the session (holding the mmap's Arc) outlives this
                // RingSession. The queue has room: one entry per slot.
                unsafe {
                    self.ring
                        .submission()
                        .push(&sqe)
                        .expect("one SQE per free slot");
                }
                self.free.pop();
                pushed += 1;
            }
            if state.mode() == crate::wire::Mode::Reliable && state.is_complete() {
                self.session.close(CloseReason::Complete);
            }
            if let Some(d) = state.deadline() {
                *deadline = Some(deadline.map_or(d, |x| x.min(d)));
            }
        }
        if pushed > 0 {
            self.hists.batch.record(pushed as u64);
            self.in_flight += pushed;
            if let Err(e) = self.ring.submit() {
                tracing::warn!(
                    "[SESSION {:08x}] io_uring submit failed: {e}",
                    self.session.id
                );
                self.session.close(CloseReason::Failed);
            }
        }
        pushed
    }

    /// Closed and nothing in flight: the ring can go.
    fn finished(&self) -> bool {
        self.session.close_reason().is_some() && self.in_flight == 0
    }
}

impl Drop for RingSession {
    fn drop(&mut self) {
        // The kernel may still reference slots if we are dropped with sends in flight
        // (shutdown): wait for them before the memory goes.
        while self.in_flight > 0 {
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            self.reap();
        }
    }
}

struct Worker {
    sessions: Sender<Arc<Session>>,
    wake: Arc<EventFd>,
    load: Arc<AtomicUsize>,
}

/// The io_uring engine: a fixed pool of workers.
pub struct UringEngine {
    workers: Vec<Worker>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    shutdown: Arc<AtomicBool>,
}

/// Whether this kernel lets this process create an io_uring (it may be compiled out, or
/// disabled by `kernel.io_uring_disabled`); the error says why not.
pub fn available() -> io::Result<()> {
    IoUring::new(8).map(drop).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("io_uring is not available on this kernel: {e}"),
        )
    })
}

impl UringEngine {
    /// Starts `workers` threads that send through `sock` (the server's one port).
    pub fn new(sock: Arc<UdpSocket>, workers: usize) -> io::Result<Self> {
        // Fail early, with a clear message, where io_uring is unavailable.
        IoUring::new(8).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("io_uring is not available on this kernel: {e}"),
            )
        })?;
        let shutdown = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        let mut list = Vec::new();
        for n in 0..workers.max(1) {
            let (tx, rx) = mpsc::channel();
            let wake = Arc::new(EventFd::from_flags(
                EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
            )?);
            let load = Arc::new(AtomicUsize::new(0));
            let ctx = WorkerCtx {
                sock: sock.clone(),
                rx,
                wake: wake.clone(),
                load: load.clone(),
                shutdown: shutdown.clone(),
            };
            handles.push(
                std::thread::Builder::new()
                    .name(format!("uring-worker-{n}"))
                    .spawn(move || ctx.run())?,
            );
            list.push(Worker {
                sessions: tx,
                wake,
                load,
            });
        }
        Ok(UringEngine {
            workers: list,
            threads: Mutex::new(handles),
            shutdown,
        })
    }
}

impl Engine for UringEngine {
    fn start(&self, session: Arc<Session>) {
        let w = self
            .workers
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
            .expect("at least one worker");
        w.load.fetch_add(1, Ordering::Relaxed);
        session.set_waker(w.wake.clone());
        if w.sessions.send(session.clone()).is_err() {
            session.close(CloseReason::Failed);
            session.release(&SendHists::default());
            return;
        }
        let _ = w.wake.write(1);
    }

    fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        for w in &self.workers {
            let _ = w.wake.write(1);
        }
        let handles = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }

    fn threads(&self) -> usize {
        self.workers.len()
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct WorkerCtx {
    sock: Arc<UdpSocket>,
    rx: Receiver<Arc<Session>>,
    wake: Arc<EventFd>,
    load: Arc<AtomicUsize>,
    shutdown: Arc<AtomicBool>,
}

impl WorkerCtx {
    fn run(self) {
        let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("uring worker cannot create epoll: {e}");
                return;
            }
        };
        // Edge-triggered: every write to an eventfd is a new edge, so nothing is ever read
        // from them; a write that lands before epoll_wait still makes it return.
        if let Err(e) = epoll.add(
            self.wake.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, WAKE_TOKEN),
        ) {
            tracing::error!("uring worker cannot watch its eventfd: {e}");
            return;
        }
        let sock = self.sock.as_raw_fd();
        let mut sessions: Vec<RingSession> = Vec::new();
        let mut events = [EpollEvent::empty(); 64];
        loop {
            while let Ok(s) = self.rx.try_recv() {
                match RingSession::new(s.clone(), &epoll) {
                    Ok(rs) => sessions.push(rs),
                    Err(e) => {
                        tracing::error!("[SESSION {:08x}] cannot set up io_uring: {e}", s.id);
                        s.close(CloseReason::Failed);
                        s.release(&SendHists::default());
                        self.load.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
            let stopping = self.shutdown.load(Ordering::Acquire);
            if stopping {
                for rs in &sessions {
                    rs.session.close(CloseReason::Shutdown);
                }
            }
            let mut deadline = None;
            let mut sent = 0;
            for rs in sessions.iter_mut() {
                sent += rs.pump(sock, &mut deadline);
            }
            sessions.retain_mut(|rs| {
                if rs.finished() {
                    rs.session.release(&rs.hists);
                    self.load.fetch_sub(1, Ordering::Relaxed);
                    false
                } else {
                    true
                }
            });
            if stopping && sessions.is_empty() {
                return;
            }
            if sent > 0 {
                continue;
            }
            let wait = deadline
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(IDLE_POLL)
                .min(IDLE_POLL);
            // epoll counts milliseconds: round up, a 0 ms wait would spin.
            let ms = wait.as_micros().div_ceil(1000) as u16;
            let timeout = if sessions.iter().any(|s| s.in_flight > 0) && ms == 0 {
                EpollTimeout::ZERO
            } else {
                EpollTimeout::from(ms.max(1))
            };
            let _ = epoll.wait(&mut events, timeout);
        }
    }
}
