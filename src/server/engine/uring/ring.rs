//! One session's io_uring and its send slots: the only unsafe code of the engine.
//!
//! A slot is one `sendmsg` of one or more datagrams: its msghdr, iovecs and control message
//! (UDP GSO), the 32-byte headers, and the datagram indices it carries. What the kernel reads,
//! and until when: the msghdr, the iovec array, the control message and the destination
//! address are copied by the kernel when `io_uring_enter` consumes the SQE (this ring is made
//! only where the kernel says so, `IORING_FEAT_SUBMIT_STABLE`); the bytes the iovecs point at
//! (the headers here, the payloads in the session's map) are read when the send runs, any time
//! until its completion. So a slot's headers stay put (boxed) and unused until its completion
//! is reaped ([`SlotBook`] hands a slot out again only then), the ring's memory is freed only
//! when nothing is in flight (or leaked if the kernel cannot be waited for), and the session,
//! whose file holds the map, outlives the ring.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{SockaddrLike, SockaddrStorage};

use super::slots::{Completions, Drained, EnterError, SlotBook};
use crate::protocol::DATA_HEADER_LEN;
use crate::server::session::Session;
use crate::sys::cmsg;
use crate::sys::mmap::MapRange;

/// One send slot as the pump fills it: up to `max_segments` datagrams, each a header (filled
/// here) and a payload range of the session's map.
pub(super) struct Slot {
    headers: Box<[[u8; DATA_HEADER_LEN]]>,
    /// Two per datagram: its header, its payload (one for an END marker).
    iov: Box<[libc::iovec]>,
    /// The datagram index of each segment (to resend it if the send fails).
    pub(super) indices: Box<[u32]>,
    pub(super) segments: usize,
    iovs: usize,
    cmsg: [u64; cmsg::GSO_WORDS],
    msg: libc::msghdr,
    /// When its send was queued, for the completion-latency histogram.
    queued_at: Instant,
    /// Sealed sessions: one whole sealed datagram per segment, `wire` bytes apart (the file's
    /// bytes are read into it and encrypted in place); empty for open sessions.
    sealed: Box<[u8]>,
    wire: usize,
}

impl Slot {
    /// Starts filling this slot afresh.
    pub(super) fn clear(&mut self) {
        self.segments = 0;
        self.iovs = 0;
    }

    /// Datagram `index` as the next segment: its header is written by `header` (into this
    /// slot's own bytes), its payload is `payload` of the session's map.
    pub(super) fn push_data(
        &mut self,
        index: u32,
        header: impl FnOnce(&mut [u8; DATA_HEADER_LEN]),
        payload: MapRange,
    ) {
        let h = &mut self.headers[self.segments];
        header(h);
        self.iov[self.iovs] = libc::iovec {
            iov_base: h.as_mut_ptr().cast(),
            iov_len: DATA_HEADER_LEN,
        };
        self.iov[self.iovs + 1] = payload.iovec();
        self.iovs += 2;
        self.indices[self.segments] = index;
        self.segments += 1;
    }

    /// A sealed datagram as the next segment: `fill` writes it into this slot's own bytes
    /// for that segment (at most `wire` of them) and returns its length, or `None` (nothing
    /// pushed: it could not be made).
    pub(super) fn push_sealed(
        &mut self,
        index: u32,
        fill: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Option<usize> {
        let seg = &mut self.sealed[self.segments * self.wire..(self.segments + 1) * self.wire];
        let len = fill(seg)?;
        self.iov[self.iovs] = libc::iovec {
            iov_base: seg.as_mut_ptr().cast(),
            iov_len: len,
        };
        self.iovs += 1;
        self.indices[self.segments] = index;
        self.segments += 1;
        Some(len)
    }

    /// The sealed segments pushed so far: each one's datagram index and its bytes (as long as
    /// the sealed datagram will be).
    pub(super) fn sealed_segments(&mut self) -> impl Iterator<Item = (u32, &mut [u8])> {
        let lens = self.iov[..self.iovs].iter().map(|v| v.iov_len);
        self.sealed
            .chunks_mut(self.wire.max(1))
            .zip(lens)
            .zip(self.indices[..self.segments].iter().copied())
            .map(|((seg, len), index)| (index, &mut seg[..len]))
    }

    /// A whole small datagram (an END marker, at most a header's length) as the only segment,
    /// recorded as datagram `index`.
    pub(super) fn push_small(&mut self, index: u32, bytes: &[u8]) {
        let len = bytes.len().min(DATA_HEADER_LEN);
        let h = &mut self.headers[0];
        h[..len].copy_from_slice(&bytes[..len]);
        self.iov[0] = libc::iovec {
            iov_base: h.as_mut_ptr().cast(),
            iov_len: len,
        };
        self.iovs = 1;
        self.indices[0] = index;
        self.segments = 1;
    }
}

/// A reaped completion: the datagrams its send carried, its error (0: none), how long it was
/// in flight.
pub(super) struct Reaped<'a> {
    pub(super) indices: &'a [u32],
    pub(super) error: i32,
    pub(super) waited: Duration,
}

/// A session's ring and its slots.
pub(super) struct Ring {
    ring: IoUring,
    /// Boxed slice: its headers must stay where the iovecs point while sends are in flight.
    slots: Box<[Slot]>,
    /// Boxed: every slot's msghdr points at it (and spliced sends read it).
    dest: Box<SockaddrStorage>,
    book: SlotBook,
    /// Datagrams per send: 1, or the GSO batch while GSO works.
    max_segments: usize,
    /// The session, held so that its file's map outlives every send in flight.
    session: Arc<Session>,
    /// Signalled by the kernel on each completion (registered with the ring), and by the
    /// control thread after an ACK (the session's waker): the worker's epoll watches it.
    completions: Arc<EventFd>,
}

impl Ring {
    /// A ring of `slot_count` slots of up to `max_segments` datagrams (UDP GSO if more than
    /// one) of `datagram_size` bytes each to `session`'s client; completions wake `epoll`
    /// with `token`.
    pub(super) fn new(
        session: Arc<Session>,
        slot_count: usize,
        max_segments: usize,
        epoll: &Epoll,
        token: u64,
    ) -> io::Result<Ring> {
        let ring = IoUring::new(slot_count as u32)?;
        if !ring.params().is_feature_submit_stable() {
            return Err(io::Error::other(
                "this kernel's io_uring does not copy submitted entries (IORING_FEAT_SUBMIT_STABLE)",
            ));
        }
        let completions = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
        )?);
        ring.submitter()
            .register_eventfd(completions.as_fd().as_raw_fd())?;
        epoll.add(
            completions.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, token),
        )?;
        let dest = Box::new(SockaddrStorage::from(session.peer));
        // GSO cuts a send into datagrams of this size: sealed ones are longer.
        let wire = session.wire_size();
        let sealed_bytes = if session.sealer.is_some() {
            wire * max_segments
        } else {
            0
        };
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
                iovs: 0,
                cmsg: [0; cmsg::GSO_WORDS],
                // SAFETY: msghdr is plain old data; zero is valid (null pointers, 0 lengths).
                msg: unsafe { std::mem::zeroed() },
                queued_at: Instant::now(),
                sealed: vec![0; sealed_bytes].into_boxed_slice(),
                wire,
            })
            .collect();
        for slot in slots.iter_mut() {
            slot.msg.msg_name = dest.as_ptr().cast_mut().cast();
            slot.msg.msg_namelen = dest.len();
            slot.msg.msg_iov = slot.iov.as_mut_ptr();
            if max_segments > 1 {
                cmsg::put_gso(&mut slot.msg, &mut slot.cmsg, wire as u16);
            }
        }
        Ok(Ring {
            ring,
            slots,
            dest,
            book: SlotBook::new(slot_count),
            max_segments,
            session,
            completions,
        })
    }

    /// The eventfd that wakes the worker for this ring: its completions, and (as the
    /// session's waker) the ACKs the control thread applies.
    pub(super) fn waker(&self) -> Arc<EventFd> {
        self.completions.clone()
    }

    pub(super) fn max_segments(&self) -> usize {
        self.max_segments
    }

    /// The client's address, for sends made outside the ring (splice).
    pub(super) fn dest(&self) -> &SockaddrStorage {
        &self.dest
    }

    pub(super) fn has_free(&self) -> bool {
        self.book.has_free()
    }

    pub(super) fn in_flight(&self) -> usize {
        self.book.in_flight()
    }

    /// The next free slot, emptied, to fill.
    pub(super) fn free_slot(&mut self) -> Option<&mut Slot> {
        let i = self.book.peek_free()?;
        let slot = &mut self.slots[i as usize];
        slot.clear();
        Some(slot)
    }

    /// Queues the send of the slot [`Ring::free_slot`] gave (if it holds anything) on `sock`;
    /// returns its index. Its bytes may still be written (sealed) until the next submit.
    pub(super) fn push(&mut self, sock: RawFd, now: Instant) -> Option<u16> {
        let i = self.book.peek_free()?;
        let slot = &mut self.slots[i as usize];
        if slot.segments == 0 {
            return None;
        }
        slot.msg.msg_iovlen = slot.iovs;
        // One datagram needs no segmentation: its send carries no UDP_SEGMENT.
        slot.msg.msg_controllen = if slot.segments > 1 && self.max_segments > 1 {
            cmsg::gso_space()
        } else {
            0
        };
        slot.queued_at = now;
        let sqe = opcode::SendMsg::new(types::Fd(sock), &slot.msg)
            .build()
            .user_data(i as u64);
        // SAFETY: the kernel copies the msghdr, the iovec array, the control message and the
        // address when it consumes the SQE (IORING_FEAT_SUBMIT_STABLE, checked in `new`; no
        // SQPOLL: only `io_uring_enter` consumes it, so a sealed slot's bytes are still ours to
        // write between this push and the submit); what
        // the iovecs point at must live until the completion: this slot's headers and sealed
        // datagrams (boxed, not
        // reused before the completion is reaped: the SlotBook hands the slot out only then,
        // and `Drop` frees slots only when nothing is in flight) and payloads in the session's
        // map (the ring holds the session, whose file holds the map). The queue has room: one
        // entry per slot, and this slot is free.
        unsafe {
            self.ring
                .submission()
                .push(&sqe)
                .expect("one SQE per free slot");
        }
        self.book.take();
        Some(i)
    }

    /// The sealed segments of the slots `which` (queued, not yet submitted): each one's
    /// datagram index and bytes, to read payloads into and seal.
    pub(super) fn sealed_segments_of(&mut self, which: &[u16]) -> Vec<(u32, &mut [u8])> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| which.contains(&(*i as u16)))
            .flat_map(|(_, s)| s.sealed_segments())
            .collect()
    }

    /// Submits whatever is queued: how many entries the kernel took, or why it took none
    /// (an interruption or a busy kernel is `Ok(0)`: they stay queued).
    pub(super) fn submit(&mut self) -> io::Result<usize> {
        if self.book.queued() == 0 {
            return Ok(0);
        }
        match self.ring.submit() {
            Ok(n) => {
                self.book.submitted(n);
                Ok(n)
            }
            Err(e) if EnterError::of(&e) == EnterError::Retry => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Entries pushed and not yet submitted.
    pub(super) fn queued(&self) -> usize {
        self.book.queued()
    }

    /// Takes every completion there is, its slot freed, and hands it to `each`.
    pub(super) fn reap(&mut self, now: Instant, mut each: impl FnMut(Reaped<'_>)) {
        reap(&mut self.ring, &mut self.book, &self.slots, now, &mut each);
    }

    /// One datagram per send from now on (GSO failed, or is known not to work).
    pub(super) fn without_gso(&mut self) {
        self.max_segments = 1;
        for slot in self.slots.iter_mut() {
            slot.msg.msg_control = std::ptr::null_mut();
            slot.msg.msg_controllen = 0;
        }
    }
}

fn reap(
    ring: &mut IoUring,
    book: &mut SlotBook,
    slots: &[Slot],
    now: Instant,
    each: &mut dyn FnMut(Reaped<'_>),
) {
    for cqe in ring.completion() {
        let i = cqe.user_data() as u16;
        let slot = &slots[i as usize];
        book.completed(i);
        each(Reaped {
            indices: &slot.indices[..slot.segments],
            error: (-cqe.result()).max(0),
            waited: now.saturating_duration_since(slot.queued_at),
        });
    }
}

/// What waiting for a ring's last completions needs.
struct Draining<'a> {
    ring: &'a mut IoUring,
    slots: &'a [Slot],
}

impl Completions for Draining<'_> {
    fn enter_and_wait(&mut self) -> io::Result<usize> {
        self.ring.submit_and_wait(1)
    }
    fn reap(&mut self, book: &mut SlotBook) {
        reap(self.ring, book, self.slots, Instant::now(), &mut |_| {});
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The kernel may still read slots that are in flight (shutdown, a failed session):
        // wait for them, retrying interruptions, before the memory goes.
        let mut draining = Draining {
            ring: &mut self.ring,
            slots: &self.slots,
        };
        if self.book.drain(&mut draining) == Drained::MustLeak {
            // Cannot wait, cannot know when the kernel is done: never free what it may read.
            // (Closing the ring is safe: its teardown cancels and waits for what is in
            // flight; it is the user memory those sends point at that must stay valid, the
            // headers and, through the session, the file's map.)
            std::mem::forget(std::mem::take(&mut self.slots));
            std::mem::forget(self.session.clone());
        }
    }
}
