//! The edge between a copy's logic and its socket. The logic (`subclient.rs`,
//! `handshake.rs`, `receive.rs`) never touches a socket or reads a clock: what arrived comes
//! in as a [`Batch`], with the times the driver read; what it wants sent goes into its
//! [`Outbox`], which the receive thread (`threads.rs`) empties onto the socket. Tests drive the
//! same logic with datagrams they build and simulated time, as quinn-proto's `Connection` is
//! driven by `handle_event` and `poll_transmit`.

use std::collections::VecDeque;

use crate::protocol::seal::{Opener, Sealer, SEALED_HEADER_LEN};
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
    /// Buffer `i`, to open sealed datagrams in place (`None`: truncated, or read-only).
    fn datagram_mut(&mut self, _i: usize) -> Option<&mut [u8]> {
        None
    }

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

    fn datagram_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        RecvBatch::datagram_mut(self, i)
    }
}

/// Where one opened datagram's plaintext lies in a batch: buffer, offset, length.
pub(super) type Plain = (u32, u32, u32);

/// Opens every sealed datagram of `batch` in place with `opener` (each GRO segment on its
/// own), noting where each plaintext lies in `into`. Returns how many were dropped: not
/// sealed (plaintext where only sealed datagrams are believed), forged, replayed, or for
/// another connection.
pub(super) fn unseal(opener: &mut Opener, batch: &mut dyn Batch, into: &mut Vec<Plain>) -> u64 {
    into.clear();
    let mut dropped = 0;
    for i in 0..batch.len() {
        let step = batch.segment_size(i).filter(|&s| s > 0);
        let Some(buf) = batch.datagram_mut(i) else {
            dropped += 1;
            continue;
        };
        let step = step.unwrap_or(buf.len().max(1));
        for (k, seg) in buf.chunks_mut(step).enumerate() {
            match opener.open_in_place(seg) {
                Ok(n) => into.push((i as u32, (k * step + SEALED_HEADER_LEN) as u32, n as u32)),
                Err(_) => dropped += 1,
            }
        }
    }
    dropped
}

/// A batch's opened datagrams, one per buffer ([`unseal`]).
pub(super) struct Unsealed<'a> {
    pub(super) batch: &'a dyn Batch,
    pub(super) plain: &'a [Plain],
}

impl Batch for Unsealed<'_> {
    fn len(&self) -> usize {
        self.plain.len()
    }
    fn datagram(&self, i: usize) -> Option<&[u8]> {
        let &(b, off, len) = self.plain.get(i)?;
        self.batch
            .datagram(b as usize)?
            .get(off as usize..(off + len) as usize)
    }
    fn segment_size(&self, _i: usize) -> Option<usize> {
        None
    }
    fn arrival_ns(&self, i: usize) -> Option<u64> {
        self.batch.arrival_ns(self.plain.get(i)?.0 as usize)
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
/// Once the copy's connection is authenticated ([`Outbox::seal_with`]), every message is
/// sealed as it is queued (a resend is a new packet number), but the handshake's own
/// plaintext third message ([`Outbox::push_plain`]).
#[derive(Default)]
pub(super) struct Outbox {
    queue: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    sealer: Option<Sealer>,
}

/// Spare buffers kept for reuse.
const SPARE: usize = 4;

impl Outbox {
    /// From now on, seal everything with `sealer`.
    pub(super) fn seal_with(&mut self, sealer: Sealer) {
        self.sealer = Some(sealer);
    }

    pub(super) fn is_sealing(&self) -> bool {
        self.sealer.is_some()
    }

    /// Queues `msg`, encoded (and sealed, once sealing).
    pub(super) fn push(&mut self, msg: &Message<'_>) {
        let mut buf = self.start();
        msg.encode(&mut buf);
        self.finish(buf);
    }

    /// Queues bytes already encoded (a request resent), sealed once sealing.
    pub(super) fn push_bytes(&mut self, bytes: &[u8]) {
        let mut buf = self.start();
        buf.extend_from_slice(bytes);
        self.finish(buf);
    }

    /// Queues bytes as they are, never sealed (the handshake's last message).
    pub(super) fn push_plain(&mut self, bytes: &[u8]) {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(bytes);
        self.queue.push_back(buf);
    }

    /// A spare buffer for the next message, with room for the seal's header where sealing.
    fn start(&mut self) -> Vec<u8> {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        if self.sealer.is_some() {
            buf.resize(SEALED_HEADER_LEN, 0);
        }
        buf
    }

    fn finish(&mut self, mut buf: Vec<u8>) {
        if let Some(s) = &self.sealer {
            if s.seal_vec(&mut buf).is_err() {
                // Out of packet numbers (2^62): nothing more goes on this connection.
                return;
            }
        }
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
    fn datagram_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        self.buffers.get_mut(i)?.0.as_deref_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::seal::{Cipher, DirectionKey, SEAL_OVERHEAD};
    use proptest::prelude::*;

    fn key() -> DirectionKey {
        DirectionKey {
            cipher: Cipher::Aes128Gcm,
            key: vec![9; 16],
            iv: [1; 12],
        }
    }

    fn sealed(s: &Sealer, msg: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; msg.len() + SEAL_OVERHEAD];
        b[SEALED_HEADER_LEN..SEALED_HEADER_LEN + msg.len()].copy_from_slice(msg);
        s.seal_in_place(&mut b, msg.len()).unwrap();
        b
    }

    proptest! {
        /// Buffers of sealed datagrams, some coalesced (GRO: equal segments, the last maybe
        /// shorter), some bits flipped, some plaintext: exactly the intact sealed ones open,
        /// in order, each as its own datagram; the rest are counted.
        #[test]
        fn unseal_opens_exactly_the_intact_segments(
            buffers in proptest::collection::vec(
                (1usize..5, 1usize..300, 0usize..300, any::<bool>(), proptest::collection::vec(any::<bool>(), 5)),
                1..8,
            ),
            seed in any::<u8>(),
        ) {
            let k = key();
            let sealer = Sealer::new(&k, 5, 0);
            let mut opener = Opener::new(&k, 5, 0);
            let mut batch = TestBatch::default();
            let mut want = Vec::new();
            let mut bad = 0u64;
            for (b, (count, len, last_len, plain, flips)) in buffers.iter().enumerate() {
                if *plain {
                    // A plaintext message: never believed.
                    let m = Message::Hello { nonce: b as u64 }.to_vec();
                    batch.buffers.push((Some(m), None, Some(1)));
                    bad += 1;
                    continue;
                }
                let mut buf = Vec::new();
                for (s, flip) in flips.iter().enumerate().take(*count) {
                    let l = if s + 1 == *count { (*last_len).min(*len) } else { *len };
                    let msg: Vec<u8> = (0..l).map(|i| (i as u8) ^ seed ^ (s as u8)).collect();
                    let mut d = sealed(&sealer, &msg);
                    if *flip {
                        let i = (seed as usize * 7 + s) % d.len();
                        d[i] ^= 0x10;
                        bad += 1;
                    } else {
                        want.push(msg);
                    }
                    buf.extend_from_slice(&d);
                }
                let seg = (*count > 1).then_some(len + SEAL_OVERHEAD);
                batch.buffers.push((Some(buf), seg, Some(b as u64)));
            }
            let mut plain = Vec::new();
            let dropped = unseal(&mut opener, &mut batch, &mut plain);
            prop_assert_eq!(dropped, bad);
            let view = Unsealed { batch: &batch, plain: &plain };
            prop_assert_eq!(view.len(), want.len());
            for (i, w) in want.iter().enumerate() {
                prop_assert_eq!(view.datagram(i).unwrap(), &w[..]);
                prop_assert_eq!(view.segment_size(i), None);
            }
            // Opened once: the same batch again opens nothing (replays).
            let mut again = Vec::new();
            prop_assert_eq!(unseal(&mut opener, &mut batch, &mut again), batch.buffers.iter().map(|b| {
                let d = b.0.as_ref().unwrap();
                match b.1 { Some(s) => d.len().div_ceil(s) as u64, None => 1 }
            }).sum::<u64>());
            prop_assert!(again.is_empty());
        }
    }

    #[test]
    fn once_sealing_every_message_is_sealed_but_the_handshake_finish() {
        let k = key();
        let mut out = Outbox::default();
        out.push(&Message::Hello { nonce: 1 });
        out.seal_with(Sealer::new(&k, 3, 0));
        out.push_plain(b"finish");
        out.push(&Message::Done {
            session: 9,
            status: crate::protocol::DoneStatus::Complete,
        });
        out.push_bytes(b"resent request");
        let sent = out.drain();
        assert!(Message::parse(&sent[0]).is_ok());
        assert_eq!(sent[1], b"finish");
        let mut o = Opener::new(&k, 3, 0);
        let mut d = sent[2].clone();
        let n = o.open_in_place(&mut d).unwrap();
        assert!(matches!(
            Message::parse(&d[SEALED_HEADER_LEN..SEALED_HEADER_LEN + n]),
            Ok(Message::Done { session: 9, .. })
        ));
        let mut d = sent[3].clone();
        let n = o.open_in_place(&mut d).unwrap();
        assert_eq!(
            &d[SEALED_HEADER_LEN..SEALED_HEADER_LEN + n],
            b"resent request"
        );
    }
}
