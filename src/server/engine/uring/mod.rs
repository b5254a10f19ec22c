//! The io_uring engine: one ring per session, driven by a fixed pool of worker threads.
//!
//! A worker (`worker.rs`) owns the rings of the sessions it was given. It reaps a session's
//! completions, asks its [`SenderState`](crate::protocol::sender::SenderState) for datagrams
//! to fill its free send slots, and submits them with one `io_uring_enter` per ring: a batch
//! of `sendmsg`s (`sendmsg.rs`). Each `sendmsg` carries one datagram, or with UDP GSO up to 64
//! (as many as fit a 64 KiB GSO packet: 44 of 1472 bytes), each a 32-byte header plus a
//! payload range of the mmap'd file: an iovec per header and per payload, no byte of the file
//! copied in user space. Nothing is allocated and no syscall is made per datagram. A loaded
//! server splices instead (`splice.rs`: header, then `sendfile()`, beside the ring). A worker
//! sleeps in `epoll_wait` on one eventfd per session, which the control thread signals after
//! an ACK and the ring after a completion, and pumps the sessions whose eventfd fired or whose
//! deadline came. `ring.rs` holds the engine's only unsafe code: the slots the kernel reads.
//!
//! A panic in one session's code fails that session only: the worker catches it, closes the
//! session with the reason in its summary, and goes on with its other sessions.

mod ring;
mod sendmsg;
mod session_ring;
pub mod slots;
mod splice;
mod worker;

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use io_uring::IoUring;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::{Engine, SendPath};
use crate::report::hist::SendHists;
use crate::server::session::{CloseReason, Session};
use crate::server::stats::ServerStats;
use crate::sys::splice::SpliceSocket;
#[cfg(test)]
use worker::idle_timeout;
use worker::WorkerCtx;

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
        let gso_works = Arc::new(AtomicBool::new(true));
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
                gso_works: gso_works.clone(),
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
        // The session's own waker is its ring's eventfd, set when the worker makes the ring;
        // the worker's own one tells it a new session came.
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
#[cfg(test)]
mod tests;
