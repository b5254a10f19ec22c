//! The sender's loss detection: RACK (RFC 8985) over the receiver's NACK ranges, with a
//! reordering window that widens after spurious retransmissions, the idle receiver's tail,
//! and the probe timeout (RFC 9002) when ACKs stop.

use std::time::{Duration, Instant};

use super::{ticks_of, SenderState, MIN_PROBE_BASE, REO_WND_CAP_FLOOR, REO_WND_STEP};
use crate::protocol::{Ack, Mode};

impl SenderState {
    /// When the probe timeout fires (RFC 9002: SRTT + 4 RTTVAR + the receiver's ACK delay,
    /// doubling each time it fires without an answer), if anything is in flight. The ACK
    /// delay is the longest the receiver has lately held one (RFC 9002's max_ack_delay, which
    /// a receiver here does not promise: a thread among a thousand on two cores answers
    /// hundreds of milliseconds late, and RTT samples rightly leave that out).
    pub(super) fn pto_at(&self) -> Option<Instant> {
        if self.mode != Mode::Reliable || self.inflight() == 0 || self.is_complete() {
            return None;
        }
        let pto = self.probe_base() * (1 << self.pto_count.min(10));
        Some(self.last_ack_at + pto)
    }

    /// How long the path and the receiver may take to show a datagram: the RTO, plus the
    /// longest the receiver has lately held an ACK, at least [`MIN_PROBE_BASE`]. The probe
    /// timeout starts from it.
    pub(super) fn probe_base(&self) -> Duration {
        (self.rtt.rto() + self.ack_delay).max(MIN_PROBE_BASE)
    }

    /// How long ago a datagram must have left for an idle receiver's ACK to call it lost:
    /// the RTO plus the longest recent hold of a busy receiver's ACKs, at least
    /// [`MIN_PROBE_BASE`]. A receiver's hold runs from the kernel's arrival timestamp, and on
    /// a loaded host the kernel itself keeps datagrams for milliseconds after that stamp
    /// (softirq work deferred to ksoftirqd): longer than a microsecond path's RTO, with the
    /// receiver's socket empty meanwhile. (An idle receiver's own delay is its wait for
    /// data, and would put this off for ever.)
    pub(super) fn idle_loss_time(&self) -> Duration {
        (self.rtt.rto() + self.busy_hold).max(MIN_PROBE_BASE)
    }

    /// Queues `i` for resending. Returns whether it did (not already queued, sent at least
    /// once, not resent within the last round trip: a receiver cannot make the sender resend
    /// one datagram more than once per RTT).
    pub(super) fn mark_lost(&mut self, i: u32, now_tick: u32, min_gap_ticks: u32) -> bool {
        let sent = self.sent_tick[i as usize];
        if sent == 0 || self.is_queued(i) || now_tick.saturating_sub(sent) < min_gap_ticks {
            return false;
        }
        self.set_queued(i, true);
        self.retransmit_queue.push_back(i);
        true
    }

    /// The RACK reordering window.
    pub(super) fn reo_wnd(&self) -> Duration {
        let Some(min_rtt) = self.rtt.min_rtt() else {
            return Duration::ZERO;
        };
        let cap = self.rtt.srtt().max(REO_WND_CAP_FLOOR);
        // On a path of microseconds a multiple of min_rtt/4 never covers reordering of a
        // millisecond: after spurious retransmissions the window also doubles from
        // REO_WND_STEP, up to the cap.
        let doubled = match self.reo_mult {
            0 | 1 => Duration::ZERO,
            m => REO_WND_STEP * (1u32 << (m - 2).min(16)),
        };
        (min_rtt * self.reo_mult / 4).max(doubled).min(cap)
    }

    /// RACK over the NACKed ranges, and the idle receiver's tail. Returns how many datagrams
    /// were newly declared lost.
    pub(super) fn detect_losses(
        &mut self,
        ack: &Ack<'_>,
        receiver_idle: bool,
        echo_ok: bool,
        now: Instant,
        now_tick: u32,
    ) -> u64 {
        let min_gap = ticks_of(self.rtt.min_rtt().unwrap_or_default().as_nanos() as u64);
        let seen_end = ack.seen_end.min(self.next_new);
        let mut lost = 0u64;
        // When the receiver wrote this ACK, on our clock: the echoed send time plus the time it
        // held the ACK (a lower bound).
        let written = if echo_ok {
            self.tick_of_unix(
                ack.echo_ts_ns
                    .saturating_add(ack.echo_delay_us as u64 * 1000),
                now,
            )
        } else {
            now_tick
        };
        let rto = ticks_of(self.idle_loss_time().as_nanos() as u64);
        // RACK: lost when a datagram sent more than reo_wnd after it was delivered. The most
        // recent delivered send time is the echo (the receiver echoes the latest it has seen).
        // And when the receiver is idle (its socket empty), a hole sent more than
        // `idle_loss_time` before the ACK was written is lost whatever was sent after it: a
        // lost retransmission with nothing newer in flight (credit exhausted at the hole) is
        // found.
        let reo = ticks_of(self.reo_wnd().as_nanos() as u64);
        let rack_tick = if echo_ok {
            self.tick_of_unix(ack.echo_ts_ns, now)
        } else {
            0
        };
        // A receiver lists its holes in increasing order, without overlap. Only that much is
        // believed: each range is clipped to start where the previous one ended, so one ACK
        // examines each in-flight index at most once, however its 128 ranges are drawn.
        let mut floor = self.acked_below;
        for r in ack.ranges() {
            let start = r.start.max(floor);
            let end = r.start.saturating_add(r.len).min(seen_end);
            if start >= end {
                continue;
            }
            for i in start..end {
                let sent = self.sent_tick[i as usize];
                let by_rack = sent.saturating_add(reo) < rack_tick;
                let by_time = receiver_idle && sent.saturating_add(rto) <= written;
                if sent != 0 && (by_rack || by_time) && self.mark_lost(i, now_tick, min_gap) {
                    lost += 1;
                }
            }
            self.resend_checks += (end - start) as u64;
            floor = end;
        }
        // The tail: an idle receiver has seen nothing past `seen_end`; what was sent more than
        // `idle_loss_time` before the ACK was written is lost.
        if receiver_idle {
            let start = seen_end.max(self.acked_below);
            for i in start..self.next_new {
                let sent = self.sent_tick[i as usize];
                if sent != 0
                    && sent.saturating_add(rto) <= written
                    && self.mark_lost(i, now_tick, min_gap)
                {
                    lost += 1;
                }
            }
            self.resend_checks += self.next_new.saturating_sub(start) as u64;
        }
        lost
    }
}
