//! The sender's half of a session: what to send next, what to resend, how fast.
//!
//! Engine-independent (both engines ask it for the next datagram) and clock-free (callers pass
//! `now`), so it is tested here without sockets. Reliable mode is selective repeat driven by
//! the receiver: its `ACK`s carry a cumulative point, a credit limit (flow control) and NACK
//! ranges; the sender resends a NACKed datagram once it has been out for longer than the
//! retransmission timeout, and probes the tail when the receiver reports it is idle.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::congestion::{Aimd, RttEstimator};
use super::layout::{datagram_count, payload_len};
use super::pacer::Pacer;
use super::{Ack, Mode};

/// Blast mode repeats its END marker this many times, this far apart, against its loss.
pub const END_REPEATS: u32 = 3;
pub const END_SPACING: Duration = Duration::from_millis(5);

/// What the engine should put on the wire next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextDatagram {
    Data {
        index: u32,
        retransmit: bool,
    },
    /// Blast mode's end-of-file marker.
    End,
}

/// Sender state of one session.
#[derive(Debug)]
pub struct SenderState {
    mode: Mode,
    file_size: u64,
    payload_size: u32,
    total: u32,
    /// Next index never sent.
    next_new: u32,
    /// New data may be sent below this index (reliable mode's credit window).
    credit_limit: u32,
    /// Receiver has everything below this.
    acked_below: u32,
    retransmit_queue: VecDeque<u32>,
    queued: Vec<u64>,
    /// Last send time of each index, in 100 µs ticks since `epoch` (+1; 0 = never sent).
    sent_at: Vec<u32>,
    epoch: Instant,
    /// `epoch` on the clock of the data header's send timestamps (Unix ns).
    epoch_unix_ns: u64,
    rtt: RttEstimator,
    ends_sent: u32,
    next_end_at: Instant,
    pacer: Option<Pacer>,
    congestion: Aimd,
    /// Datagram indices examined for resending, over all ACKs (bounded per ACK by what is in
    /// flight: see [`SenderState::on_ack`]).
    pub resend_checks: u64,
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    pub retransmitted: u64,
}

fn ticks(since: Duration) -> u32 {
    (since.as_micros() / 100).min(u32::MAX as u128 - 1) as u32 + 1
}

impl SenderState {
    /// `window`: the receiver's initial credit, in datagrams. `now_unix_ns`: `now` on the
    /// clock of send timestamps, to place the ACKs' echoed timestamps.
    pub fn new(
        mode: Mode,
        file_size: u64,
        payload_size: u32,
        window: u32,
        pacer: Option<Pacer>,
        now: Instant,
        now_unix_ns: u64,
    ) -> Self {
        let total = datagram_count(file_size, payload_size) as u32;
        let credit_limit = match mode {
            Mode::Reliable => window.max(1).min(total),
            Mode::Blast => total,
        };
        SenderState {
            mode,
            file_size,
            payload_size,
            total,
            next_new: 0,
            credit_limit,
            acked_below: 0,
            retransmit_queue: VecDeque::new(),
            queued: vec![0; (total as usize).div_ceil(64)],
            sent_at: vec![
                0;
                if mode == Mode::Reliable {
                    total as usize
                } else {
                    0
                }
            ],
            epoch: now,
            epoch_unix_ns: now_unix_ns,
            rtt: RttEstimator::default(),
            ends_sent: 0,
            next_end_at: now,
            pacer,
            congestion: Aimd::new(window),
            resend_checks: 0,
            datagrams_sent: 0,
            bytes_sent: 0,
            retransmitted: 0,
        }
    }

    pub fn total(&self) -> u32 {
        self.total
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Reliable: the receiver has confirmed every datagram. Blast: every datagram and every
    /// END marker has been sent.
    pub fn is_complete(&self) -> bool {
        match self.mode {
            Mode::Reliable => self.acked_below >= self.total,
            Mode::Blast => self.next_new >= self.total && self.ends_sent >= END_REPEATS,
        }
    }

    /// Current retransmission timeout.
    pub fn rto(&self) -> Duration {
        self.rtt.rto()
    }

    pub fn srtt(&self) -> Duration {
        self.rtt.srtt()
    }

    fn is_queued(&self, i: u32) -> bool {
        self.queued[i as usize / 64] & (1 << (i % 64)) != 0
    }

    fn set_queued(&mut self, i: u32, on: bool) {
        let w = &mut self.queued[i as usize / 64];
        if on {
            *w |= 1 << (i % 64)
        } else {
            *w &= !(1 << (i % 64))
        }
    }

    /// Queues `i` for resending if its last send was at least `wait` before the ACK that
    /// reports it missing was written (`ack_ticks`): only then is the ACK evidence of loss.
    /// Returns whether it did.
    fn maybe_resend(&mut self, i: u32, ack_ticks: u32, wait_ticks: u32) -> bool {
        let sent = self.sent_at[i as usize];
        if sent != 0 && !self.is_queued(i) && ack_ticks.saturating_sub(sent) >= wait_ticks {
            self.set_queued(i, true);
            self.retransmit_queue.push_back(i);
            return true;
        }
        false
    }

    /// Datagram `index` never left: its send failed locally (a GSO send the device refused).
    /// It goes out again first, without waiting for the receiver to report it.
    pub fn resend_now(&mut self, index: u32) {
        if index < self.next_new && index >= self.acked_below && !self.is_queued(index) {
            self.set_queued(index, true);
            self.retransmit_queue.push_front(index);
        }
    }

    /// Current congestion window, datagrams.
    pub fn cwnd(&self) -> f64 {
        self.congestion.cwnd()
    }

    /// Times the congestion window was halved.
    pub fn backoffs(&self) -> u64 {
        self.congestion.backoffs()
    }

    /// Applies a receiver's `ACK`. `rtt`: the sample its echoed timestamp gives, if any.
    /// `receiver_idle`: the receiver's socket was empty when it sent this ACK, so anything
    /// sent long enough ago and still not seen is lost (the tail probe).
    pub fn on_ack(
        &mut self,
        ack: &Ack<'_>,
        rtt: Option<Duration>,
        receiver_idle: bool,
        now: Instant,
    ) {
        if self.mode != Mode::Reliable {
            return;
        }
        if let Some(rtt) = rtt {
            self.rtt.sample(rtt);
        }
        // Everything is clamped to what this sender actually sent: a confused or hostile
        // receiver cannot make it index out of range or resend what it never sent.
        let progress = ack
            .recv_next
            .min(self.next_new)
            .saturating_sub(self.acked_below);
        self.acked_below = self.acked_below.max(ack.recv_next.min(self.next_new));
        self.congestion.on_progress(progress);
        self.credit_limit = self.credit_limit.max(ack.credit_limit.min(self.total));
        // When the receiver wrote this ACK, on our clock: the echoed send timestamp plus the
        // time the receiver held it (a lower bound: the one-way delay is not added). Judging
        // by when the ACK is *processed* instead would call everything sent while it queued
        // lost, and resend it spuriously when the control thread lags.
        let ack_ticks = if ack.echo_ts_ns != 0 {
            let written_ns = ack
                .echo_ts_ns
                .saturating_add(ack.echo_delay_us as u64 * 1000);
            ticks(Duration::from_nanos(
                written_ns.saturating_sub(self.epoch_unix_ns),
            ))
            .min(ticks(now.saturating_duration_since(self.epoch)))
        } else {
            ticks(now.saturating_duration_since(self.epoch))
        };
        let rto_ticks = ticks(self.rto()) - 1;
        let seen_end = ack.seen_end.min(self.next_new);
        let mut lost = false;
        // A receiver lists its holes in increasing order, without overlap. Only that much is
        // believed: each range is clipped to start where the previous one ended, so one ACK
        // examines each in-flight index at most once, however its 128 ranges are drawn (a
        // hostile client repeating one huge range cost ~500k checks per ACK before).
        let mut floor = self.acked_below;
        for r in ack.ranges() {
            let start = r.start.max(floor);
            let end = r.start.saturating_add(r.len).min(seen_end);
            if start >= end {
                continue;
            }
            for i in start..end {
                lost |= self.maybe_resend(i, ack_ticks, rto_ticks);
            }
            self.resend_checks += (end - start) as u64;
            floor = end;
        }
        if receiver_idle {
            let start = seen_end.max(floor);
            for i in start..self.next_new {
                lost |= self.maybe_resend(i, ack_ticks, rto_ticks);
            }
            self.resend_checks += self.next_new.saturating_sub(start) as u64;
        }
        if lost {
            self.congestion.on_loss(now, self.srtt());
        }
    }

    /// The next datagram to send, if any may be sent now. Records it as sent.
    pub fn next(&mut self, now: Instant) -> Option<NextDatagram> {
        while let Some(&i) = self.retransmit_queue.front() {
            if i < self.acked_below {
                // Arrived meanwhile (a late original or an earlier resend).
                self.retransmit_queue.pop_front();
                self.set_queued(i, false);
                continue;
            }
            if !self.pace(i, now) {
                return None;
            }
            self.retransmit_queue.pop_front();
            self.set_queued(i, false);
            self.record(i, now);
            self.retransmitted += 1;
            return Some(NextDatagram::Data {
                index: i,
                retransmit: true,
            });
        }
        if self.next_new < self.send_limit() {
            let i = self.next_new;
            if !self.pace(i, now) {
                return None;
            }
            self.next_new += 1;
            self.record(i, now);
            return Some(NextDatagram::Data {
                index: i,
                retransmit: false,
            });
        }
        if self.mode == Mode::Blast
            && self.next_new >= self.total
            && self.ends_sent < END_REPEATS
            && now >= self.next_end_at
        {
            self.ends_sent += 1;
            self.next_end_at = now + END_SPACING;
            return Some(NextDatagram::End);
        }
        None
    }

    /// New data may be sent below this index: the receiver's credit, the congestion window.
    fn send_limit(&self) -> u32 {
        let congestion = self
            .acked_below
            .saturating_add(self.congestion.cwnd() as u32);
        let limit = match self.mode {
            Mode::Reliable => self.credit_limit.min(congestion),
            Mode::Blast => self.credit_limit,
        };
        limit.min(self.total)
    }

    fn pace(&mut self, i: u32, now: Instant) -> bool {
        let len = payload_len(self.file_size, self.payload_size, i as u64);
        match &mut self.pacer {
            Some(p) => p.take(len, now),
            None => true,
        }
    }

    fn record(&mut self, i: u32, now: Instant) {
        if let Some(slot) = self.sent_at.get_mut(i as usize) {
            *slot = ticks(now.saturating_duration_since(self.epoch));
        }
        self.datagrams_sent += 1;
        self.bytes_sent += payload_len(self.file_size, self.payload_size, i as u64) as u64;
    }

    /// When time alone (pacing, END spacing) will let [`SenderState::next`] return something;
    /// `None` if only an ACK can.
    pub fn deadline(&self) -> Option<Instant> {
        let has_work = !self.retransmit_queue.is_empty() || self.next_new < self.send_limit();
        if has_work {
            let i = self
                .retransmit_queue
                .front()
                .copied()
                .unwrap_or(self.next_new);
            return Some(match &self.pacer {
                Some(p) => p.ready_at(payload_len(self.file_size, self.payload_size, i as u64)),
                None => self.epoch,
            });
        }
        if self.mode == Mode::Blast && self.next_new >= self.total && self.ends_sent < END_REPEATS {
            return Some(self.next_end_at);
        }
        None
    }
}

#[cfg(test)]
#[path = "sender_tests.rs"]
mod tests;
