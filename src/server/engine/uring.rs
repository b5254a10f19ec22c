//! The io_uring engine: one ring per session, driven by a fixed pool of worker threads.
//!
//! A worker owns the rings of the sessions it was given. Each turn it reaps completions,
//! asks each session's [`SenderState`](crate::protocol::sender::SenderState) for datagrams to
//! fill its free send slots, and submits them with one `io_uring_enter` per ring: a batch of up
//! to [`SLOTS`] `sendmsg`s, each a 32-byte header plus a payload slice of the mmap'd file.
//! Nothing is allocated and no syscall is made per datagram. With nothing to send, a worker
//! sleeps in `epoll_wait` on an eventfd the control thread signals after ACKs, plus one eventfd
//! per ring (registered with the ring, so a completion wakes it).
//!
//! A panic in one session's code fails that session only: the worker catches it, closes the
//! session with the reason in its summary, and goes on with its other sessions.
#![allow(unsafe_code)]

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{SockaddrLike, SockaddrStorage};

use super::slots::{Completions, Drained, EnterError, SlotBook};
use super::{panic_text, Engine};
use crate::protocol::sender::NextDatagram;
use crate::protocol::{Mode, DATA_HEADER_LEN};
use crate::report::hist::SendHists;
use crate::server::session::{CloseReason, Session};
use crate::server::stats::ServerStats;

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

/// The io_uring ring of one session, with its send slots, as a worker drives it.
struct SessionRing {
    session: Arc<Session>,
    ring: IoUring,
    /// Boxed slice: the kernel holds pointers into it while sends are in flight.
    slots: Box<[Slot]>,
    /// Boxed: every slot's msghdr points at it (kept alive, never read from Rust).
    _dest: Box<SockaddrStorage>,
    book: SlotBook,
    /// Reused to encode END markers: nothing is allocated per datagram.
    scratch: Vec<u8>,
    hists: SendHists,
    _completions: EventFd,
}

impl SessionRing {
    fn new(session: Arc<Session>, epoll: &Epoll) -> io::Result<Self> {
        let ring = IoUring::new(SLOTS as u32)?;
        let completions = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        ring.submitter()
            .register_eventfd(completions.as_fd().as_raw_fd())?;
        epoll.add(
            completions.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, session.id as u64),
        )?;
        let dest = Box::new(SockaddrStorage::from(session.peer));
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
            slot.msg.msg_name = dest.as_ptr().cast_mut().cast();
            slot.msg.msg_namelen = dest.len();
            slot.msg.msg_iov = slot.iov.as_mut_ptr();
        }
        Ok(SessionRing {
            session,
            ring,
            slots,
            _dest: dest,
            book: SlotBook::new(SLOTS),
            scratch: Vec::with_capacity(DATA_HEADER_LEN),
            hists: SendHists::default(),
            _completions: completions,
        })
    }

    fn reap(&mut self) {
        reap_into(
            &mut self.ring,
            &mut self.book,
            &self.slots,
            &mut self.hists,
            &self.session,
        );
    }

    /// Fills free slots with what the session may send now and submits them. Returns how
    /// many sends went to the kernel, and the time at which this session can next send without
    /// an ACK or a completion (pacing, END spacing) if it has a free slot to send it from.
    fn pump(&mut self, sock: RawFd) -> (usize, Option<Instant>) {
        self.reap();
        #[cfg(test)]
        if self.session.fail_point.load(Ordering::Relaxed) {
            panic!("injected fault in session {:08x}", self.session.id);
        }
        // Read the clock here, not once per worker turn: the sessions before this one took
        // milliseconds to submit, and a stale send time makes data look lost too early.
        let now = Instant::now();
        if self.session.close_reason().is_some() {
            // Entries queued by a failed submit still go, so their slots come back.
            return (self.submit(), None);
        }
        let file = &self.session.file;
        let mut pushed = 0;
        let mut deadline = None;
        {
            let mut state = self.session.state();
            while self.book.has_free() {
                let Some(next) = state.next(now) else { break };
                let slot_idx = self.book.take().expect("a free slot");
                let slot = &mut self.slots[slot_idx as usize];
                match next {
                    NextDatagram::Data { index, retransmit } => {
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
                    NextDatagram::End => {
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
                // reaped (the SlotBook hands it out again only then), `slots` and `dest` are
                // boxed (fixed addresses) and freed only when nothing is in flight, and the
                // session (holding the mmap's Arc) outlives this ring. The queue has room: one
                // entry per slot.
                unsafe {
                    self.ring
                        .submission()
                        .push(&sqe)
                        .expect("one SQE per free slot");
                }
                pushed += 1;
            }
            if state.mode() == Mode::Reliable && state.is_complete() {
                self.session.close(CloseReason::Complete);
            }
            // With every slot in flight, a completion (its eventfd) wakes the worker: a
            // deadline now would only make it spin.
            if self.book.has_free() {
                deadline = state.deadline();
            }
        }
        if pushed > 0 {
            self.hists.batch.record(pushed as u64);
        }
        (self.submit(), deadline)
    }

    /// Submits whatever is queued; returns how many entries the kernel took.
    fn submit(&mut self) -> usize {
        if self.book.queued() == 0 {
            return 0;
        }
        match self.ring.submit() {
            Ok(n) => {
                self.book.submitted(n);
                n
            }
            Err(e) if EnterError::of(&e) == EnterError::Retry => 0,
            Err(e) => {
                self.session
                    .fail(CloseReason::Failed, format!("io_uring submit failed: {e}"));
                0
            }
        }
    }

    /// Closed and nothing in flight: the ring can go.
    fn finished(&self) -> bool {
        self.session.close_reason().is_some() && self.book.in_flight() == 0
    }
}

/// Takes every completion there is: frees its slot, records its latency, notes errors.
fn reap_into(
    ring: &mut IoUring,
    book: &mut SlotBook,
    slots: &[Slot],
    hists: &mut SendHists,
    session: &Session,
) {
    let mut errors = 0u64;
    let now = Instant::now();
    for cqe in ring.completion() {
        let slot = cqe.user_data() as u16;
        let waited = now.saturating_duration_since(slots[slot as usize].queued_at);
        hists.send_latency_us.record(waited.as_micros() as u64);
        book.completed(slot);
        if cqe.result() < 0 {
            errors += 1;
            if cqe.result() == -libc::EFAULT {
                // The kernel found a page of the mapped file gone: it was truncated.
                session.close(CloseReason::FileChanged);
            }
        }
    }
    if errors > 0 {
        session.send_errors.fetch_add(errors, Ordering::Relaxed);
    }
}

/// A session ring's parts that waiting for completions needs.
struct Draining<'a> {
    ring: &'a mut IoUring,
    slots: &'a [Slot],
    hists: &'a mut SendHists,
    session: &'a Session,
}

impl Completions for Draining<'_> {
    fn enter_and_wait(&mut self) -> io::Result<usize> {
        self.ring.submit_and_wait(1)
    }
    fn reap(&mut self, book: &mut SlotBook) {
        reap_into(self.ring, book, self.slots, self.hists, self.session);
    }
}

impl Drop for SessionRing {
    fn drop(&mut self) {
        // The kernel may still read slots that are in flight (shutdown, a failed session):
        // wait for them, retrying interruptions, before the memory goes.
        let mut draining = Draining {
            ring: &mut self.ring,
            slots: &self.slots,
            hists: &mut self.hists,
            session: &self.session,
        };
        if self.book.drain(&mut draining) == Drained::MustLeak {
            // Cannot wait, cannot know when the kernel is done: never free what it may read.
            // (Closing the ring is safe: its teardown cancels and waits for what is in
            // flight; it is the user memory those sends point at that must stay valid, the
            // slots and, through the session, the file's map.)
            std::mem::forget(std::mem::take(&mut self.slots));
            std::mem::forget(self.session.clone());
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
    pub fn new(sock: Arc<UdpSocket>, workers: usize, stats: Arc<ServerStats>) -> io::Result<Self> {
        // Fail early, with a clear message, where io_uring is unavailable.
        available()?;
        let shutdown = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        let mut list = Vec::new();
        for n in 0..workers.max(1) {
            let (tx, rx) = mpsc::channel();
            let wake = Arc::new(EventFd::from_flags(
                EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
            )?);
            // Created here, not in the worker: a failure is the caller's error, not a worker
            // that silently never runs.
            let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
            // Edge-triggered: every write to an eventfd is a new edge, so nothing is ever read
            // from them; a write that lands before epoll_wait still makes it return.
            epoll.add(
                wake.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, WAKE_TOKEN),
            )?;
            let load = Arc::new(AtomicUsize::new(0));
            let ctx = WorkerCtx {
                sock: sock.clone(),
                rx,
                epoll,
                load: load.clone(),
                shutdown: shutdown.clone(),
                stats: stats.clone(),
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
            w.load.fetch_sub(1, Ordering::Relaxed);
            session.fail(CloseReason::Failed, "the engine has stopped".into());
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
    epoll: Epoll,
    load: Arc<AtomicUsize>,
    shutdown: Arc<AtomicBool>,
    stats: Arc<ServerStats>,
}

/// How long a worker with nothing to submit may sleep: until the earliest deadline among its
/// sessions, at least 1 ms (epoll counts milliseconds: a 0 ms wait would spin), at most
/// [`IDLE_POLL`]. Completions and ACKs wake it earlier through their eventfds.
fn idle_timeout(now: Instant, deadline: Option<Instant>) -> EpollTimeout {
    let wait = deadline
        .map(|d| d.saturating_duration_since(now))
        .unwrap_or(IDLE_POLL)
        .min(IDLE_POLL);
    let ms = wait.as_micros().div_ceil(1000).max(1) as u16;
    EpollTimeout::from(ms)
}

impl WorkerCtx {
    fn run(self) {
        let sock = self.sock.as_raw_fd();
        let mut sessions: Vec<SessionRing> = Vec::new();
        let mut events = [EpollEvent::empty(); 64];
        loop {
            while let Ok(s) = self.rx.try_recv() {
                match SessionRing::new(s.clone(), &self.epoll) {
                    Ok(rs) => sessions.push(rs),
                    Err(e) => {
                        s.fail(CloseReason::Failed, format!("cannot set up io_uring: {e}"));
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
            let mut deadline: Option<Instant> = None;
            let mut sent = 0;
            for rs in sessions.iter_mut() {
                match catch_unwind(AssertUnwindSafe(|| rs.pump(sock))) {
                    Ok((n, d)) => {
                        sent += n;
                        deadline = match (deadline, d) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                    }
                    Err(panic) => {
                        self.stats.panics.fetch_add(1, Ordering::Relaxed);
                        rs.session.fail(
                            CloseReason::Failed,
                            format!("bug: the session's code panicked: {}", panic_text(&*panic)),
                        );
                    }
                }
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
            let _ = self
                .epoll
                .wait(&mut events, idle_timeout(Instant::now(), deadline));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::sender::SenderState;
    use crate::protocol::unix_ns;
    use crate::server::catalog::Catalog;
    use crate::server::engine::EngineKind;
    use crate::server::session::SessionCtx;

    #[test]
    fn a_worker_never_spins() {
        let now = Instant::now();
        // A deadline already past (work waiting for a free slot, say) still sleeps 1 ms.
        assert_eq!(
            idle_timeout(now, Some(now - Duration::from_secs(1))),
            EpollTimeout::from(1u16)
        );
        assert_eq!(idle_timeout(now, None), EpollTimeout::from(100u16));
        assert_eq!(
            idle_timeout(now, Some(now + Duration::from_micros(1500))),
            EpollTimeout::from(2u16)
        );
    }

    #[test]
    fn a_panicking_session_fails_alone_and_the_worker_goes_on() {
        if let Err(e) = available() {
            eprintln!("SKIPPED: {e}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![7u8; 40_000]).unwrap();
        let catalog = Catalog::new(dir.path(), 1000);
        let file = catalog.index("f").unwrap();
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let stats = Arc::new(ServerStats::default());
        // One worker, so both sessions share it.
        let engine = UringEngine::new(sock, 1, stats.clone()).unwrap();
        let (tx, summaries) = mpsc::channel();
        let session = |id| {
            let now = Instant::now();
            let state = SenderState::new(Mode::Blast, file.size, 1000, 1, None, now, unix_ns());
            let ctx = SessionCtx {
                stats: stats.clone(),
                engine: EngineKind::Uring,
                summaries: tx.clone(),
            };
            Arc::new(Session::new(
                id,
                sink.local_addr().unwrap(),
                file.clone(),
                state,
                ctx,
            ))
        };
        let (bad, good) = (session(1), session(2));
        bad.fail_point.store(true, Ordering::Relaxed);
        engine.start(bad.clone());
        engine.start(good.clone());
        let ended = summaries.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(ended.session, "00000001");
        assert!(ended.problem.unwrap().contains("panicked"));
        assert_eq!(stats.panics.load(Ordering::Relaxed), 1);
        // The other session on the same worker sends its whole file and END markers.
        let t = Instant::now();
        while !good.state().is_complete() {
            assert!(t.elapsed() < Duration::from_secs(5), "the worker stopped");
            std::thread::sleep(Duration::from_millis(5));
        }
        good.close(CloseReason::Complete);
        let ended = summaries.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            (ended.session.as_str(), ended.outcome),
            ("00000002", "complete")
        );
        assert_eq!(ended.datagrams_sent, 40);
        engine.shutdown();
    }
}
