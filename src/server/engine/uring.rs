//! The io_uring engine: one ring per session, driven by a fixed pool of worker threads.
//!
//! A worker owns the rings of the sessions it was given. Each turn it reaps completions,
//! asks each session's [`SenderState`](crate::protocol::sender::SenderState) for datagrams to
//! fill its free send slots, and submits them with one `io_uring_enter` per ring: a batch of
//! `sendmsg`s. Each `sendmsg` carries one datagram, or with UDP GSO up to 64 (as many as fit a
//! 64 KiB GSO packet: 44 of 1472 bytes), each a 32-byte header plus a payload slice of the
//! mmap'd file: an iovec per header and per payload, no byte of the file copied in user space.
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
use super::{panic_text, Engine, SendPath};
use crate::protocol::sender::{NextDatagram, SenderState};
use crate::protocol::{Mode, DATA_HEADER_LEN};
use crate::report::hist::SendHists;
use crate::server::session::{CloseReason, Session};
use crate::server::stats::ServerStats;
use crate::sys::socket::{set_gso_cmsg, GSO_CMSG_WORDS};
use crate::sys::splice::{SpliceSocket, Spliced};

/// Send slots (and submission-queue entries) per session ring: the largest batch one
/// `io_uring_enter` submits for one session, one datagram per slot.
pub const SLOTS: usize = 64;
/// Slots per ring when each carries a GSO batch (up to 64 datagrams): 16 x 64 KiB per submit.
pub const GSO_SLOTS: usize = 16;
/// Most datagrams one GSO send carries (the kernel's `UDP_MAX_SEGMENTS`).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Most bytes one GSO send carries: one UDP packet's worth (IPv4's limit, the smaller).
pub(crate) const MAX_GSO_BYTES: usize = crate::protocol::MAX_DATAGRAM;
/// Datagrams a spliced session takes from its sender per lock.
const SPLICE_TAKE: usize = 8;
/// Index recorded for an END marker's segment (it is never resent).
const END_SEGMENT: u32 = u32::MAX;
/// Longest a worker sleeps without a reason to wake, so shutdown is noticed.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// epoll data value of a worker's own wake-up eventfd.
const WAKE_TOKEN: u64 = u64::MAX;

/// One in-flight `sendmsg` of one or more datagrams: headers, iovecs, the GSO control message
/// and the msghdr at fixed addresses until it completes.
struct Slot {
    headers: Box<[[u8; DATA_HEADER_LEN]]>,
    /// Two per datagram: its header, its payload (one for an END marker).
    iov: Box<[libc::iovec]>,
    /// The datagram index of each segment, to resend it if the send fails.
    indices: Box<[u32]>,
    segments: usize,
    cmsg: [u64; GSO_CMSG_WORDS],
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
    /// Boxed: every slot's msghdr points at it (and spliced sends read it).
    dest: Box<SockaddrStorage>,
    book: SlotBook,
    /// Datagrams per send: 1, or the GSO batch while GSO works.
    max_segments: usize,
    /// An END marker taken from the sender while a GSO batch was being filled: it goes next.
    pending_end: bool,
    /// Reused to encode END markers: nothing is allocated per datagram.
    scratch: Vec<u8>,
    /// Reused: the datagrams whose sends just completed.
    left: Vec<u32>,
    hists: SendHists,
    _completions: EventFd,
}

/// Datagrams one send may carry for a session of `datagram_size` bytes per datagram.
fn gso_segments(gso: bool, datagram_size: usize) -> usize {
    if gso {
        (MAX_GSO_BYTES / datagram_size.max(1)).clamp(1, MAX_GSO_SEGMENTS)
    } else {
        1
    }
}

impl SessionRing {
    fn new(session: Arc<Session>, epoll: &Epoll) -> io::Result<Self> {
        let datagram_size = session.datagram_size();
        let max_segments = gso_segments(session.gso_allowed(), datagram_size);
        let slot_count = if max_segments > 1 { GSO_SLOTS } else { SLOTS };
        let ring = IoUring::new(slot_count as u32)?;
        let completions = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        ring.submitter()
            .register_eventfd(completions.as_fd().as_raw_fd())?;
        epoll.add(
            completions.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, session.id as u64),
        )?;
        let dest = Box::new(SockaddrStorage::from(session.peer));
        let mut slots: Box<[Slot]> = (0..slot_count)
            .map(|_| Slot {
                headers: vec![[0; DATA_HEADER_LEN]; max_segments].into_boxed_slice(),
                iov: vec![
                    libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0
                    };
                    2 * max_segments
                ]
                .into_boxed_slice(),
                indices: vec![0; max_segments].into_boxed_slice(),
                segments: 0,
                cmsg: [0; GSO_CMSG_WORDS],
                // SAFETY: msghdr is plain old data; zero is valid (null pointers, 0 lengths).
                msg: unsafe { std::mem::zeroed() },
                queued_at: Instant::now(),
            })
            .collect();
        for slot in slots.iter_mut() {
            slot.msg.msg_name = dest.as_ptr().cast_mut().cast();
            slot.msg.msg_namelen = dest.len();
            slot.msg.msg_iov = slot.iov.as_mut_ptr();
            if max_segments > 1 {
                // The slot's cmsg words are boxed with it: they stay where msg points.
                set_gso_cmsg(&mut slot.msg, &mut slot.cmsg, datagram_size as u16);
            }
        }
        Ok(SessionRing {
            session,
            ring,
            slots,
            dest,
            book: SlotBook::new(slot_count),
            max_segments,
            pending_end: false,
            left: Vec::new(),
            scratch: Vec::with_capacity(DATA_HEADER_LEN),
            hists: SendHists::default(),
            _completions: completions,
        })
    }

    fn reap(&mut self) {
        let gso_failed = reap_into(
            &mut self.ring,
            &mut self.book,
            &self.slots,
            &mut self.hists,
            &self.session,
            &mut self.left,
        );
        if gso_failed {
            // The datagrams of the failed sends were queued again; from now on, one a send.
            self.max_segments = 1;
            for slot in self.slots.iter_mut() {
                slot.msg.msg_control = std::ptr::null_mut();
                slot.msg.msg_controllen = 0;
            }
        }
    }

    /// Sends what the session may send now by splice (see [`SpliceSocket`]): up to [`SLOTS`]
    /// datagrams, taken from the sender a few at a time so that its lock (which ACKs need) is
    /// never held across a send. Each send is over when its calls return; a datagram's send
    /// time is then moved to when its batch was sent (`left_at`, under the next lock): a
    /// worker descheduled between taking and sending must not make data look lost before it
    /// left. Returns what [`SessionRing::pump`] returns.
    fn pump_splice(&mut self, out: &SpliceSocket) -> (usize, Option<Instant>) {
        let session = self.session.clone();
        let file = &session.file;
        let mut pushed = 0;
        let mut taken: [(u32, usize); SPLICE_TAKE] = [(0, 0); SPLICE_TAKE];
        let mut headers = [[0u8; DATA_HEADER_LEN]; SPLICE_TAKE];
        loop {
            let now = Instant::now();
            let mut n = 0;
            let deadline;
            {
                let mut state = session.state();
                // What the last batch sent, timed from now (it has just left).
                state.left_at(&self.left, now);
                self.left.clear();
                if session.close_reason().is_some() {
                    return (pushed, None);
                }
                while n < SPLICE_TAKE && pushed + n < SLOTS {
                    // An END the copy path took but did not send yet (auto switches paths).
                    let Some(next) = next_datagram(&mut self.pending_end, &mut state, now) else {
                        break;
                    };
                    match next {
                        NextDatagram::Data {
                            index,
                            retransmit,
                            send_ts_ns,
                        } => {
                            let header = &mut headers[n];
                            let len = session.data_header(index, retransmit, send_ts_ns, header);
                            taken[n] = (index, len);
                        }
                        NextDatagram::End => {
                            session.end_marker(&mut self.scratch);
                            taken[n] = (END_SEGMENT, 0);
                        }
                    }
                    n += 1;
                }
                if state.mode() == Mode::Reliable && state.is_complete() {
                    session.close(CloseReason::Complete);
                }
                deadline = state.deadline();
            }
            if n == 0 {
                if pushed > 0 {
                    self.hists.batch.record(pushed as u64);
                }
                return (pushed, deadline);
            }
            let mut errors = 0;
            let mut spliced = 0;
            for (i, &(index, len)) in taken[..n].iter().enumerate() {
                let t = Instant::now();
                let sent = if index == END_SEGMENT {
                    self.hists.send_calls += 1;
                    out.send_plain(&self.dest, &self.scratch)
                        .map(|_| Spliced::Sent)
                } else {
                    self.hists.send_calls += 2;
                    let offset = index as u64 * file.payload_size as u64;
                    out.send(&self.dest, &headers[i], &file.file, offset, len)
                };
                self.hists
                    .send_latency_us
                    .record(t.elapsed().as_micros() as u64);
                match sent {
                    Ok(Spliced::Sent) if index == END_SEGMENT => {}
                    Ok(Spliced::Sent) => {
                        spliced += 1;
                        self.left.push(index);
                    }
                    Ok(Spliced::Short) => {
                        errors += 1;
                        session.close(CloseReason::FileChanged);
                    }
                    Err(e) => {
                        errors += 1;
                        if e.raw_os_error() == Some(libc::EMSGSIZE) {
                            session.fail(CloseReason::Failed, too_big(&session));
                        }
                    }
                }
            }
            if errors > 0 {
                session.send_errors.fetch_add(errors, Ordering::Relaxed);
            }
            session.spliced.fetch_add(spliced, Ordering::Relaxed);
            session.gso_segments.fetch_max(1, Ordering::Relaxed);
            session
                .stats()
                .spliced
                .fetch_add(spliced, Ordering::Relaxed);
            pushed += n;
            if pushed >= SLOTS {
                self.hists.batch.record(pushed as u64);
                session.state().left_at(&self.left, Instant::now());
                self.left.clear();
                // Come back after the worker's other sessions.
                return (pushed, None);
            }
        }
    }

    /// Fills free slots with what the session may send now and submits them. Returns how
    /// many sends went to the kernel, and the time at which this session can next send without
    /// an ACK or a completion (pacing, END spacing) if it has a free slot to send it from.
    fn pump(
        &mut self,
        sock: RawFd,
        splice: Option<&SpliceSocket>,
        busy: bool,
    ) -> (usize, Option<Instant>) {
        self.reap();
        #[cfg(test)]
        if self.session.fail_point.load(Ordering::Relaxed) {
            panic!("injected fault in session {:08x}", self.session.id);
        }
        let splice_now = match self.session.send_path {
            SendPath::Copy => false,
            SendPath::Splice => true,
            SendPath::Auto => busy,
        };
        if let Some(out) = splice.filter(|_| splice_now) {
            return self.pump_splice(out);
        }
        // Read the clock here, not once per worker turn: the sessions before this one took
        // milliseconds to submit, and a stale send time makes data look lost too early.
        let now = Instant::now();
        if self.session.close_reason().is_some() {
            // Entries queued by a failed submit still go, so their slots come back.
            return (self.submit(), None);
        }
        let file = &self.session.file;
        let datagram_size = self.session.datagram_size();
        let mut pushed = 0;
        let mut deadline = None;
        {
            let mut state = self.session.state();
            // What the reap found sent, timed from now (under the lock taken here anyway).
            state.left_at(&self.left, now);
            while let Some(slot_idx) = self.book.peek_free() {
                let slot = &mut self.slots[slot_idx as usize];
                let mut segments = 0;
                let mut iovs = 0;
                while segments < self.max_segments {
                    let Some(next) = next_datagram(&mut self.pending_end, &mut state, now) else {
                        break;
                    };
                    match next {
                        NextDatagram::Data {
                            index,
                            retransmit,
                            send_ts_ns,
                        } => {
                            let payload = file.payload(index as u64);
                            let header = &mut slot.headers[segments];
                            self.session
                                .data_header(index, retransmit, send_ts_ns, header);
                            slot.iov[iovs] = libc::iovec {
                                iov_base: header.as_mut_ptr().cast(),
                                iov_len: DATA_HEADER_LEN,
                            };
                            slot.iov[iovs + 1] = payload.iovec();
                            iovs += 2;
                            slot.indices[segments] = index;
                            segments += 1;
                            // A short datagram (the file's last) can only end a GSO batch.
                            if DATA_HEADER_LEN + payload.len() < datagram_size {
                                break;
                            }
                        }
                        NextDatagram::End if segments > 0 => {
                            self.pending_end = true;
                            break;
                        }
                        NextDatagram::End => {
                            self.session.end_marker(&mut self.scratch);
                            let len = self.scratch.len().min(DATA_HEADER_LEN);
                            let header = &mut slot.headers[0];
                            header[..len].copy_from_slice(&self.scratch[..len]);
                            slot.iov[0] = libc::iovec {
                                iov_base: header.as_mut_ptr().cast(),
                                iov_len: len,
                            };
                            iovs = 1;
                            slot.indices[0] = END_SEGMENT;
                            segments = 1;
                            break;
                        }
                    }
                }
                if segments == 0 {
                    break;
                }
                slot.segments = segments;
                slot.msg.msg_iovlen = iovs;
                // One datagram needs no segmentation: its send carries no UDP_SEGMENT.
                slot.msg.msg_controllen = if segments > 1 {
                    // SAFETY: computes a length only.
                    unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize }
                } else {
                    0
                };
                slot.queued_at = now;
                let sqe = opcode::SendMsg::new(types::Fd(sock), &slot.msg)
                    .build()
                    .user_data(slot_idx as u64);
                // SAFETY: the SQE points at `slot.msg`, its iovecs, headers and cmsg (all in
                // boxed slots at fixed addresses), `self.dest` and payloads inside the
                // session's mmap. The slot is not reused until its completion is reaped (the
                // SlotBook hands it out again only then), slots are freed only when nothing is
                // in flight, and the session (holding the mmap's Arc) outlives this ring. The
                // queue has room: one entry per slot.
                unsafe {
                    self.ring
                        .submission()
                        .push(&sqe)
                        .expect("one SQE per free slot");
                }
                self.book.take();
                self.hists.send_calls += 1;
                self.session
                    .gso_segments
                    .fetch_max(segments as u64, Ordering::Relaxed);
                pushed += segments;
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
        self.hists.enters += 1;
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

/// Takes every completion there is: frees its slot, records its latency, handles errors, and
/// puts the datagrams of the sends that completed in `left`.
/// Returns true when a GSO send failed the way a device without segmentation offload fails
/// (EIO, EINVAL, as quinn-udp found): its datagrams are queued to go again, one per send.
fn reap_into(
    ring: &mut IoUring,
    book: &mut SlotBook,
    slots: &[Slot],
    hists: &mut SendHists,
    session: &Session,
    left: &mut Vec<u32>,
) -> bool {
    let mut errors = 0u64;
    let mut gso_failed = false;
    let now = Instant::now();
    left.clear();
    for cqe in ring.completion() {
        let slot_idx = cqe.user_data() as u16;
        let slot = &slots[slot_idx as usize];
        let waited = now.saturating_duration_since(slot.queued_at);
        hists.send_latency_us.record(waited.as_micros() as u64);
        book.completed(slot_idx);
        #[allow(unused_mut)]
        let mut err = -cqe.result();
        #[cfg(test)]
        if slot.segments > 1 && session.fail_gso.swap(false, Ordering::Relaxed) {
            // As a device without checksum offload answers a GSO send.
            err = libc::EIO;
        }
        if err <= 0 {
            left.extend(
                slot.indices[..slot.segments]
                    .iter()
                    .filter(|&&i| i != END_SEGMENT),
            );
            continue;
        }
        errors += 1;
        match err {
            // The kernel found a page of the mapped file gone: it was truncated.
            libc::EFAULT => session.close(CloseReason::FileChanged),
            libc::EMSGSIZE => session.fail(CloseReason::Failed, too_big(session)),
            libc::EIO | libc::EINVAL if slot.segments > 1 => {
                let _ = session.gso_fallback.set(format!(
                    "a GSO send failed ({}): one datagram per send from then on",
                    io::Error::from_raw_os_error(err)
                ));
                gso_failed = true;
                let mut state = session.state();
                for &index in slot.indices[..slot.segments].iter().rev() {
                    if index != END_SEGMENT {
                        state.resend_now(index);
                    }
                }
            }
            _ => {}
        }
    }
    if errors > 0 {
        session.send_errors.fetch_add(errors, Ordering::Relaxed);
    }
    gso_failed
}

/// What a session sends next: an END marker held back from a full GSO batch (`pending_end`)
/// first, then whatever its sender says.
fn next_datagram(
    pending_end: &mut bool,
    state: &mut SenderState,
    now: Instant,
) -> Option<NextDatagram> {
    if std::mem::take(pending_end) {
        Some(NextDatagram::End)
    } else {
        state.next(now)
    }
}

/// Why a session whose datagrams the path refused failed.
fn too_big(session: &Session) -> String {
    format!(
        "{}-byte datagrams do not fit the path MTU to {}: use a smaller --datagram-size (or auto)",
        session.datagram_size(),
        session.peer
    )
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
        let mut left = Vec::new();
        let _ = reap_into(
            self.ring,
            book,
            self.slots,
            self.hists,
            self.session,
            &mut left,
        );
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
    /// Starts `workers` threads that send through `sock` (the server's one port); with
    /// `splice`, each also gets a [`SpliceSocket`] on that port for spliced sessions.
    pub fn new(
        sock: Arc<UdpSocket>,
        workers: usize,
        stats: Arc<ServerStats>,
        splice: bool,
    ) -> io::Result<Self> {
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
            let splice = match splice {
                true => Some(SpliceSocket::new(&sock)?),
                false => None,
            };
            let ctx = WorkerCtx {
                workers: workers.max(1) as u64,
                sock: sock.clone(),
                splice,
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
#[path = "uring_worker.rs"]
mod worker;
#[cfg(test)]
use worker::idle_timeout;
use worker::WorkerCtx;

#[cfg(test)]
#[path = "uring_tests.rs"]
mod tests;
