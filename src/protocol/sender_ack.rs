//! What an ACK tells the sender: the receiver's progress and credit, an RTT sample, a
//! delivery-rate sample (the send it echoes against what was delivered since), the losses
//! RACK finds (`sender_rack.rs`); all of it fed to the congestion controller and the pacer.

use std::time::{Duration, Instant};

use super::{SenderState, MAX_ECHO_DELAY, MAX_REO_MULT, REO_DECAY_RECOVERIES};
use crate::protocol::congestion::{AckEvent, RateSample};
use crate::protocol::pacer::burst_for;
use crate::protocol::{Ack, Mode};

/// A delivery-rate sample shows at most this much more than the pacer's rate when the
/// sample's datagram was sent. Over a span of whole pacing quanta a sender delivers no faster
/// than it sends; a sample that says otherwise spans a single burst (the first flight after
/// an idle stretch, ProbeRTT's end, or Startup's first rounds, a GSO batch at line rate): it
/// measures the link's line rate, or a token bucket's refilled burst, not the path's rate.
/// Taken whole, such a sample lifted the estimate behind `tbf rate 100mbit burst 256kb` from
/// 160 to 3300 Mbit/s after a ProbeRTT, and the window it sized overflowed the router's queue.
/// Growth stays possible (the bound rises with the pacing rate), a step at a time: ProbeBW's
/// probes send at 1.25x, Startup's at 2.89x.
const SAMPLE_PACE_BOUND: f64 = 1.25;

impl SenderState {
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
        if self.after_group {
            self.resume_after_group(ack);
        }
        if self.mode != Mode::Reliable {
            return;
        }
        let now_tick = self.tick(now);
        // An echo from before the session began, from the future, or held for ages is not
        // believed: no RTT, rate or loss decision rests on it.
        let echo_ok = ack.echo_ts_ns >= self.epoch_unix_ns
            && ack.echo_ts_ns <= self.last_send_ns
            && Duration::from_micros(ack.echo_delay_us as u64) <= MAX_ECHO_DELAY;
        if ack.echo_ts_ns != 0 && !echo_ok {
            self.bad_acks += 1;
        }
        if echo_ok {
            // The longest recent hold: up at once, down by an eighth of the gap per ACK.
            let held = Duration::from_micros(ack.echo_delay_us as u64);
            let decay = |d: Duration, by: u32| if held >= d { held } else { d - (d - held) / by };
            self.ack_delay = decay(self.ack_delay, 8);
            if !receiver_idle {
                // An idle receiver's delay is mostly the wait for data, not a hold. A busy
                // one's holds spike with the host's load: the longest is kept longer.
                self.busy_hold = decay(self.busy_hold, 64);
            }
        }
        let rtt = rtt.filter(|_| echo_ok);
        if let Some(rtt) = rtt {
            self.rtt.sample(rtt, now);
        }
        // Everything is clamped to what this sender actually sent: a confused or hostile
        // receiver cannot make it index out of range or resend what it never sent.
        let recv_next = ack.recv_next.min(self.next_new);
        if recv_next > self.acked_below {
            self.acked_below = recv_next;
            self.pto_count = 0;
            self.last_ack_at = now;
            self.last_progress = now;
        }
        self.credit_limit = self.credit_limit.max(ack.credit_limit.min(self.total));
        let received = (ack.received as u64).min(self.next_new as u64);
        let newly_delivered = received.saturating_sub(self.delivered);
        if newly_delivered > 0 {
            // Progress: the probe timer restarts (ACKs that bring none do not hold it off).
            self.delivered = received;
            self.delivered_time = now;
            self.pto_count = 0;
            self.last_ack_at = now;
            self.last_progress = now;
        }
        let sample = if echo_ok {
            self.rate_sample(ack.echo_ts_ns, now)
        } else {
            None
        };
        // The echoed datagram arrived the ACK's hold before the ACK left; the way back takes
        // about as long for every ACK, so arrival times compare.
        let capacity = (echo_ok && ack.echo_ts_ns != 0)
            .then(|| {
                let held = Duration::from_micros(ack.echo_delay_us as u64);
                let arrived = now.checked_sub(held)?;
                self.trains.on_echo(ack.echo_ts_ns, arrived, received)
            })
            .flatten()
            .map(|per_s| per_s * self.payload_size as f64);
        // Spurious retransmissions: every duplicate the receiver counted. Reordering was
        // taken for loss: widen the window.
        if ack.duplicates > self.duplicates_seen {
            self.spurious += (ack.duplicates - self.duplicates_seen) as u64;
            self.duplicates_seen = ack.duplicates;
            self.reo_mult = (self.reo_mult + 1).min(MAX_REO_MULT);
            self.recoveries_clean = 0;
        }
        let lost = self.detect_losses(ack, receiver_idle, echo_ok, now, now_tick);
        // One loss event per round trip, however many datagrams it lost.
        if lost > 0 && self.delivered >= self.loss_round_end {
            self.loss_events += 1;
            self.loss_round_end = self.delivered + self.inflight();
            self.recoveries_clean += 1;
            if self.recoveries_clean >= REO_DECAY_RECOVERIES {
                self.reo_mult = 1;
                self.recoveries_clean = 0;
            }
        }
        let ev = AckEvent {
            now,
            delivered: self.delivered,
            newly_delivered,
            newly_lost: lost,
            inflight: self.inflight(),
            sample,
            rtt,
            capacity,
        };
        self.cc.on_ack(&ev, &mut self.rtt);
        self.update_pacer(now);
    }

    /// The delivery-rate sample of the send the ACK echoes; forgets the sends before it.
    fn rate_sample(&mut self, echo_ns: u64, now: Instant) -> Option<RateSample> {
        let k = self.records.partition_point(|r| r.sent_ns <= echo_ns);
        if k == 0 {
            return None;
        }
        let r = self.records[k - 1];
        self.records.drain(..k);
        if r.sent_ns != echo_ns {
            return None;
        }
        self.first_sent_time = r.sent_at;
        let send_elapsed = r.sent_at.saturating_duration_since(r.first_sent_time);
        let ack_elapsed = now.saturating_duration_since(r.delivered_time);
        let interval = send_elapsed.max(ack_elapsed).as_secs_f64();
        let delivered = self.delivered.saturating_sub(r.delivered);
        if interval <= 0.0 || delivered == 0 {
            return None;
        }
        let mut delivery_rate = delivered as f64 * self.payload_size as f64 / interval;
        if r.paced_bps > 0 {
            delivery_rate = delivery_rate.min(SAMPLE_PACE_BOUND * r.paced_bps as f64 / 8.0);
        }
        Some(RateSample {
            delivery_rate,
            app_limited: r.app_limited,
            prior_delivered: r.delivered,
        })
    }

    fn update_pacer(&mut self, now: Instant) {
        let datagram = self.payload_size as usize + crate::protocol::DATA_HEADER_LEN;
        let rate = self.cc.pacing_rate().map(|r| (r * 8.0) as u64);
        let bps = match (rate, self.rate_cap_bps) {
            (None, None) => return,
            (r, c) => r.unwrap_or(u64::MAX).min(c.unwrap_or(u64::MAX)),
        };
        if let Some(p) = &mut self.pacer {
            p.set_rate(bps, burst_for(bps, datagram), now);
        }
    }
}
