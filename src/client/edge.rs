//! The edge between a copy's logic and its socket. The logic (`subclient.rs`,
//! `handshake.rs`, `receive.rs`) never touches a socket or reads a clock: what arrived comes
//! in as a [`Batch`], with the times the driver read; what it wants sent goes into its
//! [`Outbox`], which the receive thread (`threads.rs`) empties onto the socket. Tests drive the
//! same logic with datagrams they build and simulated time, as quinn-proto's `Connection` is
//! driven by `handle_event` and `poll_transmit`.

use std::collections::VecDeque;

use crate::protocol::Message;
use crate::sys::recvmmsg::RecvBatch;

/// What one receive returned: buffers, each one datagram or (GRO) several back to back.
pub(super) trait Batch {
    /// Buffers in the batch.
    fn len(&self) -> usize;
    /// Buffer `i`; `None` if it was truncated (larger than any datagram can be).
    fn datagram(&self, i: usize) -> Option<&[u8]>;
    /// The size of each datagram in buffer `i` (the last may be shorter); `None`: one.
    fn segment_size(&self, i: usize) -> Option<usize>;
    /// When the kernel received buffer `i` (Unix ns), if it said.
    fn arrival_ns(&self, i: usize) -> Option<u64>;

    /// The datagrams of buffer `i` (none if it was truncated).
    fn segments(&self, i: usize) -> std::slice::Chunks<'_, u8> {
        let buf = self.datagram(i).unwrap_or(&[]);
        let step = self
            .segment_size(i)
            .filter(|&s| s > 0)
            .unwrap_or(buf.len().max(1));
        buf.chunks(step)
    }
}

impl Batch for RecvBatch {
    fn len(&self) -> usize {
        RecvBatch::len(self)
    }

    fn datagram(&self, i: usize) -> Option<&[u8]> {
        RecvBatch::datagram(self, i)
    }

    fn segment_size(&self, i: usize) -> Option<usize> {
        RecvBatch::segment_size(self, i)
    }

    fn arrival_ns(&self, i: usize) -> Option<u64> {
        self.timestamp_ns(i)
    }
}

/// The buffers of a batch after the first `skip`: what came behind the META in the batch
/// that ended a handshake belongs to the data phase.
pub(super) struct After<'a> {
    pub(super) batch: &'a dyn Batch,
    pub(super) skip: usize,
}

impl Batch for After<'_> {
    fn len(&self) -> usize {
        self.batch.len().saturating_sub(self.skip)
    }
    fn datagram(&self, i: usize) -> Option<&[u8]> {
        self.batch.datagram(i + self.skip)
    }
    fn segment_size(&self, i: usize) -> Option<usize> {
        self.batch.segment_size(i + self.skip)
    }
    fn arrival_ns(&self, i: usize) -> Option<u64> {
        self.batch.arrival_ns(i + self.skip)
    }
}

/// Encoded datagrams a copy wants sent to its server, oldest first. Buffers are reused.
#[derive(Default)]
pub(super) struct Outbox {
    queue: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
}

/// Spare buffers kept for reuse.
const SPARE: usize = 4;

impl Outbox {
    /// Queues `msg`, encoded.
    pub(super) fn push(&mut self, msg: &Message<'_>) {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        msg.encode(&mut buf);
        self.queue.push_back(buf);
    }

    /// Queues bytes already encoded (a request resent).
    pub(super) fn push_bytes(&mut self, bytes: &[u8]) {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(bytes);
        self.queue.push_back(buf);
    }

    /// The oldest datagram to send; hand it back with [`Outbox::recycle`] once sent.
    pub(super) fn pop(&mut self) -> Option<Vec<u8>> {
        self.queue.pop_front()
    }

    /// A buffer [`Outbox::pop`] gave out, sent (or dropped): kept for the next message.
    pub(super) fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < SPARE {
            self.spare.push(buf);
        }
    }

    #[cfg(test)]
    pub(super) fn drain(&mut self) -> Vec<Vec<u8>> {
        self.queue.drain(..).collect()
    }
}

/// One buffer of a [`TestBatch`]: its bytes (`None`: truncated), its GRO segment size, when
/// it arrived.
#[cfg(test)]
pub(super) type TestBuffer = (Option<Vec<u8>>, Option<usize>, Option<u64>);

/// Datagrams built by a test, received one per buffer (or, with a segment size, coalesced).
#[cfg(test)]
#[derive(Default)]
pub(super) struct TestBatch {
    pub(super) buffers: Vec<TestBuffer>,
}

#[cfg(test)]
impl TestBatch {
    /// One datagram per buffer, each with its arrival time.
    pub(super) fn of(datagrams: impl IntoIterator<Item = (Vec<u8>, u64)>) -> TestBatch {
        TestBatch {
            buffers: datagrams
                .into_iter()
                .map(|(d, at)| (Some(d), None, Some(at)))
                .collect(),
        }
    }
}

#[cfg(test)]
impl Batch for TestBatch {
    fn len(&self) -> usize {
        self.buffers.len()
    }
    fn datagram(&self, i: usize) -> Option<&[u8]> {
        self.buffers.get(i)?.0.as_deref()
    }
    fn segment_size(&self, i: usize) -> Option<usize> {
        self.buffers.get(i)?.1
    }
    fn arrival_ns(&self, i: usize) -> Option<u64> {
        self.buffers.get(i)?.2
    }
}
