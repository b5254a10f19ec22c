//! The receive threads of `get`: a bounded pool (default: one per core) among which the
//! sub-clients are dealt out, each thread driving its share with one `recvmmsg` buffer. A
//! thread owns its sub-clients' sockets: it feeds each sub-client's logic what its socket
//! received and the deadlines it named, with the time it read, and sends what the logic
//! queued (the logic itself never touches a socket or a clock).
//!
//! A thread with one sub-client receives as a thread per sub-client did: a blocking
//! `recvmmsg` with a short receive timeout, one call per batch, nothing in between. A thread
//! with several waits in `epoll` for any of their sockets (level-triggered), takes at most
//! [`DRAIN_BATCHES`] batches from a ready one before serving the next (so one fast sender
//! cannot starve the rest), and runs the deadlines (resends, ACKs, silence) of those whose
//! time has come.

use std::io;
use std::net::UdpSocket;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use super::subclient::{SocketFacts, SubClient};
use super::{ClientError, GetConfig};
use crate::protocol::layout::DatagramSize;
use crate::protocol::{unix_ns, MAX_DATAGRAM};
use crate::report::copy::CopyReport;
use crate::report::cpu::cpu_time;
use crate::sys::recvmmsg::{enable_timestamps, is_timeout, RecvBatch, BATCH};
use crate::sys::{multicast, socket};

/// Opens a sub-client's socket, connected to the server, and sets it up: the receive buffer,
/// kernel timestamps, GRO. What it found is the logic's to know (a failure to set it up fails
/// that copy when it starts); only a socket that cannot be had at all is an error here.
pub(super) fn open_socket(
    cfg: &GetConfig,
) -> io::Result<(UdpSocket, Result<SocketFacts, ClientError>)> {
    let sock = socket::connected(cfg.server)?;
    let facts = (|| {
        let rcvbuf = socket::set_recv_buffer(&sock, cfg.recv_buffer)?;
        let max_datagram = max_datagram(cfg, &sock)?;
        // Kernel receive timestamps make delay and gaps per datagram; without them (an old
        // kernel) the batch's return time stands in.
        let _ = enable_timestamps(&sock);
        let gro = cfg.gro && socket::enable_gro(&sock);
        Ok(SocketFacts {
            rcvbuf,
            max_datagram,
            gro,
        })
    })();
    Ok((sock, facts))
}

/// The largest datagram this client takes from the server: its path MTU to the server less
/// the IP and UDP headers (auto), or `--datagram-size` if the path carries that whole.
fn max_datagram(cfg: &GetConfig, sock: &UdpSocket) -> Result<usize, ClientError> {
    let mtu = socket::path_mtu(sock)?;
    let path_max = socket::datagram_size_for_mtu(mtu, &cfg.server);
    match cfg.datagram_size {
        DatagramSize::Auto => Ok(path_max.min(MAX_DATAGRAM)),
        DatagramSize::Fixed(n) if n <= path_max => Ok(n),
        DatagramSize::Fixed(n) => Err(ClientError::AbovePathMtu {
            asked: n,
            server: cfg.server,
            mtu,
            max: path_max,
        }),
    }
}

/// A sub-client as its receive thread drives it: its socket and its logic, and the socket
/// of the multicast group it was put in while it takes the file from there.
pub(super) struct Driven {
    pub(super) sock: UdpSocket,
    pub(super) sub: SubClient,
    pub(super) group: Option<UdpSocket>,
    /// `group` was opened and is not yet watched.
    group_new: bool,
}

impl Driven {
    pub(super) fn new(sock: UdpSocket, sub: SubClient) -> Driven {
        Driven {
            sock,
            sub,
            group: None,
            group_new: false,
        }
    }

    fn id(&self) -> usize {
        self.sub.id
    }

    /// Opens the group socket the logic asked for (bound to the group, joined on the
    /// interface this host reaches the server from), or tells it why not.
    fn open_group(&mut self) {
        let Some(group) = self.sub.take_group_request() else {
            return;
        };
        let opened = self.sock.local_addr().and_then(|local| {
            let g = multicast::group_receiver(group, local.ip())?;
            let _ = socket::set_recv_buffer(&g, GROUP_RECV_BUFFER);
            let _ = enable_timestamps(&g);
            let _ = socket::enable_gro(&g);
            Ok(g)
        });
        let r = opened.map(|g| {
            self.group = Some(g);
            self.group_new = true;
        });
        self.sub.group_opened(r, Instant::now());
    }

    /// Sends what the logic queued, then lets a copy whose data phase ended close. A datagram
    /// the socket has no room for is lost (the logic resends requests and ACKs on its own);
    /// any other failure is the copy's.
    fn flush(&mut self) {
        loop {
            // First the group socket the logic may have asked for: if it cannot be had, what
            // the logic queues instead (its first ACK) goes out with the rest below.
            self.open_group();
            while let Some(buf) = self.sub.outbox.pop() {
                match socket::retry_eintr(|| self.sock.send(&buf)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => self.sub.on_socket_error(e, Instant::now()),
                }
                self.sub.outbox.recycle(buf);
            }
            // The server has what the copy's last step queued (its last ACK, then DONE):
            // the next step, until the copy has ended.
            if !self.sub.is_closing() {
                return;
            }
            self.sub.close(Instant::now());
        }
    }

    /// A batch arrived in `batch` (`group`: on the group socket).
    fn on_batch(&mut self, batch: &mut RecvBatch, group: bool) {
        let (now, read_ns) = (Instant::now(), unix_ns());
        self.sub.on_received(batch, group, read_ns, now);
        self.flush();
    }

    /// The deadline came (`empty_at`: see [`SubClient::on_timer`]).
    fn on_timer(&mut self, empty_at: Option<u64>) {
        let (now, now_ns) = (Instant::now(), unix_ns());
        self.sub.on_timer(empty_at, now_ns, now);
        self.flush();
    }

    fn on_socket_error(&mut self, e: io::Error) {
        self.sub.on_socket_error(e, Instant::now());
        self.flush();
    }

    fn start(&mut self, now: Instant) {
        self.sub.start(now);
        self.flush();
    }

    fn interrupt(&mut self, now: Instant) {
        self.sub.interrupt(now);
        self.flush();
    }
}

/// The receive buffer of a group socket: a group does not wait for a slow member.
const GROUP_RECV_BUFFER: usize = 32 << 20;
/// Most batches taken from one ready socket before the thread looks at the others.
const DRAIN_BATCHES: usize = 8;
/// The receive timeout of a thread that serves one sub-client: how late a deadline may be
/// noticed (the data phase's ACK spacing is 200 us, its idle ACK 2 ms).
const SINGLE_RECV_TIMEOUT: Duration = Duration::from_millis(1);
/// Longest an idle thread sleeps without looking at its deadlines (and at a stop request).
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// Runs `subs` on `threads` receive threads (at least one, at most one per sub-client; the
/// calling thread is the first) and returns their reports in sub-client order. A thread that
/// cannot be started leaves its share to the calling thread, after its own.
pub(super) fn run(subs: Vec<Driven>, threads: usize) -> Vec<CopyReport> {
    let threads = threads.clamp(1, subs.len().max(1));
    let mut shares: Vec<Vec<Driven>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, s) in subs.into_iter().enumerate() {
        shares[i % threads].push(s);
    }
    let mut here = vec![shares.remove(0)];
    let mut handles = Vec::with_capacity(threads);
    for (t, share) in shares.into_iter().enumerate() {
        // The share goes over a channel once the thread runs, so it is not lost if the
        // thread cannot be made.
        let (tx, rx) = mpsc::channel::<Vec<Driven>>();
        let spawned = thread::Builder::new()
            .name(format!("receive-{}", t + 2))
            .spawn(move || rx.recv().map(drive).unwrap_or_default());
        match spawned {
            Ok(h) => {
                let ids: Vec<usize> = share.iter().map(Driven::id).collect();
                let _ = tx.send(share);
                handles.push((ids, h));
            }
            Err(e) => {
                tracing::warn!("cannot start a receive thread ({e}); its sub-clients wait");
                here.push(share);
            }
        }
    }
    let mut reports = Vec::new();
    for share in here {
        // A bug in one copy's code fails that thread's copies, never the whole `get`.
        let ids: Vec<usize> = share.iter().map(Driven::id).collect();
        match catch_unwind(AssertUnwindSafe(|| drive(share))) {
            Ok(r) => reports.extend(r),
            Err(_) => reports.extend(panicked(ids)),
        }
    }
    for (ids, h) in handles {
        match h.join() {
            Ok(r) => reports.extend(r),
            Err(_) => reports.extend(panicked(ids)),
        }
    }
    reports.sort_by_key(|r| r.id);
    reports
}

/// The reports of the copies a panicking thread was driving.
fn panicked(ids: Vec<usize>) -> impl Iterator<Item = CopyReport> {
    ids.into_iter().map(|id| CopyReport {
        id,
        error: Some("bug: the receive thread panicked".into()),
        ..Default::default()
    })
}

/// One receive thread: its sub-clients from start to end.
fn drive(mut subs: Vec<Driven>) -> Vec<CopyReport> {
    let cpu_start = cpu_time(true);
    let mut batch = RecvBatch::new();
    let now = Instant::now();
    for s in subs.iter_mut() {
        s.start(now);
    }
    // A group member has two sockets: epoll watches both.
    let mut reports = if subs.len() == 1 && !subs[0].sub.wants_multicast() {
        drive_one(subs.pop().expect("one"), &mut batch)
    } else {
        match drive_many(subs, &mut batch) {
            Ok(r) => r,
            Err((e, left)) => left
                .into_iter()
                .map(|mut s| {
                    s.sub.report.error = Some(format!("cannot wait for datagrams: {e}"));
                    s.sub.take_report()
                })
                .collect(),
        }
    };
    share_cpu(&mut reports, cpu_time(true).saturating_sub(cpu_start));
    reports
}

/// The thread's CPU time, shared among its sub-clients by the bytes each received (equally
/// if none received any).
fn share_cpu(reports: &mut [CopyReport], cpu: Duration) {
    let total: u64 = reports.iter().map(|r| r.bytes_received).sum();
    let n = reports.len().max(1) as f64;
    for r in reports.iter_mut() {
        r.cpu_s = if total > 0 {
            cpu.as_secs_f64() * r.bytes_received as f64 / total as f64
        } else {
            cpu.as_secs_f64() / n
        };
    }
}

fn drive_one(mut s: Driven, batch: &mut RecvBatch) -> Vec<CopyReport> {
    if let Err(e) = s.sock.set_read_timeout(Some(SINGLE_RECV_TIMEOUT)) {
        s.on_socket_error(e);
    }
    while !s.sub.is_ended() {
        if s.sub.stop_asked() {
            s.interrupt(Instant::now());
            break;
        }
        let empty_at = match batch.recv(&s.sock) {
            Ok(_) => {
                s.on_batch(batch, false);
                None
            }
            Err(e) if is_timeout(&e) => Some(unix_ns()),
            Err(e) => {
                s.on_socket_error(e);
                None
            }
        };
        if s.sub.deadline().is_some_and(|d| d <= Instant::now()) {
            s.on_timer(empty_at);
        }
    }
    vec![s.sub.take_report()]
}

/// Receives up to [`DRAIN_BATCHES`] batches for `s` (from its group socket with `group`).
/// Returns whether the socket was found empty: a receive came back with nothing, or with
/// less than a full batch (it took all there was; asking again would cost a call to hear
/// `EAGAIN`).
fn drain(s: &mut Driven, batch: &mut RecvBatch, group: bool) -> bool {
    for _ in 0..DRAIN_BATCHES {
        if s.sub.is_ended() {
            return false;
        }
        let r = match (group, &s.group) {
            (false, _) => batch.recv_nowait(&s.sock),
            (true, Some(g)) => batch.recv_nowait(g),
            (true, None) => return false,
        };
        match r {
            Ok(n) => {
                s.on_batch(batch, group);
                if n < BATCH {
                    return true;
                }
            }
            Err(e) if is_timeout(&e) => return true,
            Err(e) => s.on_socket_error(e),
        }
    }
    false
}

/// Sub-clients left when waiting itself failed.
type Stranded = (io::Error, Vec<Driven>);

fn drive_many(subs: Vec<Driven>, batch: &mut RecvBatch) -> Result<Vec<CopyReport>, Stranded> {
    let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
        Ok(e) => e,
        Err(e) => return Err((e.into(), subs)),
    };
    let mut slots: Vec<Option<Driven>> = Vec::with_capacity(subs.len());
    let mut reports = Vec::with_capacity(subs.len());
    for (i, s) in subs.into_iter().enumerate() {
        if let Err(e) = epoll.add(&s.sock, EpollEvent::new(EpollFlags::EPOLLIN, 2 * i as u64)) {
            let mut left: Vec<Driven> = slots.into_iter().flatten().collect();
            left.push(s);
            return Err((e.into(), left));
        }
        slots.push(Some(s));
    }
    let mut live = slots.len();
    let mut events = vec![EpollEvent::empty(); 256];
    // When (Unix ns) this turn found each socket empty.
    let mut emptied: Vec<Option<u64>> = Vec::with_capacity(slots.len());
    while live > 0 {
        // One flag for all: the first sub-client left asks for everyone.
        if slots
            .iter()
            .flatten()
            .next()
            .is_some_and(|s| s.sub.stop_asked())
        {
            let now = Instant::now();
            for s in slots.iter_mut().flatten() {
                s.interrupt(now);
            }
        }
        // Finished ones leave; the rest name their next deadline.
        let mut next: Option<Instant> = None;
        for slot in slots.iter_mut() {
            if slot.as_ref().is_some_and(|s| s.sub.is_ended()) {
                let mut s = slot.take().expect("checked");
                let _ = epoll.delete(&s.sock);
                if let Some(g) = s.group.take() {
                    let _ = epoll.delete(&g);
                }
                reports.push(s.sub.take_report());
                live -= 1;
            } else if let Some(d) = slot.as_ref().and_then(|s| s.sub.deadline()) {
                next = Some(next.map_or(d, |n: Instant| n.min(d)));
            }
        }
        if live == 0 {
            break;
        }
        // Group sockets opened since the last turn are watched; those no longer needed go.
        for (i, s) in slots.iter_mut().enumerate() {
            let Some(s) = s.as_mut() else { continue };
            if s.group_new {
                s.group_new = false;
                let g = s.group.as_ref().expect("opened");
                let ev = EpollEvent::new(EpollFlags::EPOLLIN, 2 * i as u64 + 1);
                if let Err(e) = epoll.add(g, ev) {
                    s.group = None;
                    s.sub.group_opened(Err(e.into()), Instant::now());
                    s.flush();
                }
            } else if s.group.is_some() && s.sub.group_finished() {
                let g = s.group.take().expect("checked");
                let _ = epoll.delete(&g);
            }
        }
        let wait = next.map_or(MAX_SLEEP, |d| {
            d.saturating_duration_since(Instant::now()).min(MAX_SLEEP)
        });
        // epoll counts milliseconds: round up, so a deadline is never run early and then
        // waited for again in a spin.
        let ms = wait.as_micros().div_ceil(1000) as u16;
        let ready = match epoll.wait(&mut events, EpollTimeout::from(ms)) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err((e.into(), slots.into_iter().flatten().collect())),
        };
        // Which sockets this turn found empty (they need no second look for their timers).
        emptied.clear();
        emptied.resize(slots.len(), None);
        for ev in &events[..ready] {
            let (i, group) = ((ev.data() / 2) as usize, ev.data() % 2 == 1);
            if let Some(s) = slots.get_mut(i).and_then(Option::as_mut) {
                let empty = drain(s, batch, group);
                if !group {
                    emptied[i] = empty.then(unix_ns);
                }
            }
        }
        let now = Instant::now();
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(s) = slot.as_mut() else { continue };
            if s.sub.deadline().is_some_and(|d| d <= now) {
                // What is queued comes first: its deadline may be an ACK it answers, and an
                // idle ACK may only go from a socket seen empty, written as of then (this
                // thread may have spent milliseconds on other sockets since).
                let empty_at = emptied[i].or_else(|| drain(s, batch, false).then(unix_ns));
                s.on_timer(empty_at);
            }
        }
    }
    Ok(reports)
}
