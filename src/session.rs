//! The sender's half of a session: what to send next, what to resend, how fast.
//!
//! Engine-independent (both engines ask it for the next datagram) and clock-free (callers pass
//! `now`), so it is tested here without sockets. Reliable mode is selective repeat driven by
//! the receiver: its `ACK`s carry a cumulative point, a credit limit (flow control) and NACK
//! ranges; the sender resends a NACKed datagram once it has been out for longer than the
//! retransmission timeout, and probes the tail when the receiver reports it is idle.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::files::payload_len;
use crate::wire::{Ack, Mode};

/// Retransmission timeout floor: loopback RTTs are tens of microseconds, but a receiver
/// draining a full socket buffer takes milliseconds.
pub const MIN_RTO: Duration = Duration::from_millis(2);
/// Smallest congestion window (datagrams): the sender never backs off below it.
pub const MIN_CWND: f64 = 4.0;
/// Datagrams the congestion window grows by per window's worth of progress.
const CWND_GROWTH: f64 = 8.0;

/// Blast mode repeats its END marker this many times, this far apart, against its loss.
pub const END_REPEATS: u32 = 3;
pub const END_SPACING: Duration = Duration::from_millis(5);

/// What the engine should put on the wire next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Data {
        index: u32,
        retransmit: bool,
    },
    /// Blast mode's end-of-file marker.
    End,
}

/// Token-bucket pacing at a fixed rate (`serve --rate`).
#[derive(Debug, Clone)]
pub struct Pacer {
    bytes_per_s: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// `bits_per_s` as iperf3's `-b`; bursts of up to `burst_bytes`.
    pub fn new(bits_per_s: u64, burst_bytes: usize, now: Instant) -> Self {
        Pacer {
            bytes_per_s: bits_per_s as f64 / 8.0,
            burst: burst_bytes as f64,
            tokens: burst_bytes as f64,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.bytes_per_s).min(self.burst);
        self.last = now;
    }

    /// Takes `bytes` if available now.
    fn take(&mut self, bytes: usize, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }

    /// When `bytes` will be available.
    fn ready_at(&self, bytes: usize) -> Instant {
        let missing = (bytes as f64 - self.tokens).max(0.0);
        self.last + Duration::from_secs_f64(missing / self.bytes_per_s)
    }
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
    srtt_us: f64,
    rttvar_us: f64,
    ends_sent: u32,
    next_end_at: Instant,
    pacer: Option<Pacer>,
    /// Congestion window (datagrams beyond `acked_below`): halved on loss at most once per
    /// RTT, grown additively with progress. Starts at the receiver's window, so a clean path
    /// is not slowed; a lossy one is not flooded.
    cwnd: f64,
    max_cwnd: f64,
    last_backoff: Option<Instant>,
    pub backoffs: u64,
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
        let total = crate::files::datagram_count(file_size, payload_size) as u32;
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
            srtt_us: 0.0,
            rttvar_us: 0.0,
            ends_sent: 0,
            next_end_at: now,
            pacer,
            cwnd: window.max(1) as f64,
            max_cwnd: window.max(1) as f64,
            last_backoff: None,
            backoffs: 0,
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
        let us = if self.srtt_us == 0.0 {
            10_000.0
        } else {
            self.srtt_us + 4.0 * self.rttvar_us
        };
        Duration::from_micros(us as u64).max(MIN_RTO)
    }

    pub fn srtt(&self) -> Duration {
        Duration::from_micros(self.srtt_us as u64)
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

    /// Current congestion window, datagrams.
    pub fn cwnd(&self) -> f64 {
        self.cwnd
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
            let s = rtt.as_micros() as f64;
            if self.srtt_us == 0.0 {
                self.srtt_us = s;
                self.rttvar_us = s / 2.0;
            } else {
                self.rttvar_us = 0.75 * self.rttvar_us + 0.25 * (self.srtt_us - s).abs();
                self.srtt_us = 0.875 * self.srtt_us + 0.125 * s;
            }
        }
        // Everything is clamped to what this sender actually sent: a confused or hostile
        // receiver cannot make it index out of range or resend what it never sent.
        let progress = ack
            .recv_next
            .min(self.next_new)
            .saturating_sub(self.acked_below);
        self.acked_below = self.acked_below.max(ack.recv_next.min(self.next_new));
        self.cwnd = (self.cwnd + progress as f64 * CWND_GROWTH / self.cwnd).min(self.max_cwnd);
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
        for r in ack.ranges() {
            let start = r.start.max(self.acked_below);
            let end = r.start.saturating_add(r.len).min(seen_end);
            for i in start..end {
                lost |= self.maybe_resend(i, ack_ticks, rto_ticks);
            }
        }
        if receiver_idle {
            for i in seen_end.max(self.acked_below)..self.next_new {
                lost |= self.maybe_resend(i, ack_ticks, rto_ticks);
            }
        }
        // Loss: back off, at most once per round trip (one loss event, one halving).
        let rtt = self.srtt().max(MIN_RTO);
        if lost
            && self
                .last_backoff
                .is_none_or(|t| now.saturating_duration_since(t) >= rtt)
        {
            self.cwnd = (self.cwnd / 2.0).max(MIN_CWND);
            self.last_backoff = Some(now);
            self.backoffs += 1;
        }
    }

    /// The next datagram to send, if any may be sent now. Records it as sent.
    pub fn next(&mut self, now: Instant) -> Option<Next> {
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
            return Some(Next::Data {
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
            return Some(Next::Data {
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
            return Some(Next::End);
        }
        None
    }

    /// New data may be sent below this index: the receiver's credit, the congestion window.
    fn send_limit(&self) -> u32 {
        let congestion = self.acked_below.saturating_add(self.cwnd as u32);
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
mod tests {
    use super::*;
    use crate::wire::NackRange;

    const P: u32 = 1000;

    fn drain(s: &mut SenderState, now: Instant) -> Vec<Next> {
        std::iter::from_fn(|| s.next(now)).collect()
    }

    fn ack(
        s: &mut SenderState,
        next: u32,
        credit: u32,
        seen: u32,
        ranges: &[NackRange],
        idle: bool,
        now: Instant,
    ) {
        let mut scratch = Vec::new();
        let a = Ack::new(1, next, credit, seen, 0, 0, 0, ranges, &mut scratch);
        s.on_ack(&a, Some(Duration::from_micros(100)), idle, now);
    }

    #[test]
    fn credit_window_limits_new_data() {
        let t0 = Instant::now();
        let mut s = SenderState::new(Mode::Reliable, 10 * P as u64, P, 4, None, t0, 1_000_000_000);
        let sent = drain(&mut s, t0);
        assert_eq!(sent.len(), 4);
        assert_eq!(s.deadline(), None, "nothing to do until an ACK");
        ack(&mut s, 4, 8, 4, &[], false, t0);
        assert_eq!(drain(&mut s, t0).len(), 4);
        // A stale ACK cannot shrink the credit.
        ack(&mut s, 2, 3, 4, &[], false, t0);
        assert!(drain(&mut s, t0).is_empty());
        ack(&mut s, 10, 100, 10, &[], false, t0);
        assert_eq!(drain(&mut s, t0).len(), 2);
        assert!(s.is_complete() || s.acked_below == 8);
        ack(&mut s, 10, 100, 10, &[], false, t0);
        assert!(s.is_complete());
        assert_eq!(s.datagrams_sent, 10);
        assert_eq!(s.bytes_sent, 10 * P as u64);
    }

    #[test]
    fn nacked_datagrams_are_resent_once_per_rto() {
        let t0 = Instant::now();
        let mut s = SenderState::new(
            Mode::Reliable,
            10 * P as u64,
            P,
            10,
            None,
            t0,
            1_000_000_000,
        );
        assert_eq!(drain(&mut s, t0).len(), 10);
        let hole = [NackRange { start: 3, len: 2 }];
        // Too soon: the datagrams were just sent.
        ack(&mut s, 3, 20, 10, &hole, false, t0);
        assert!(drain(&mut s, t0).is_empty());
        let t1 = t0 + Duration::from_millis(20);
        ack(&mut s, 3, 20, 10, &hole, false, t1);
        assert_eq!(
            drain(&mut s, t1),
            vec![
                Next::Data {
                    index: 3,
                    retransmit: true
                },
                Next::Data {
                    index: 4,
                    retransmit: true
                }
            ]
        );
        // The same NACK again right away does not resend again.
        ack(&mut s, 3, 20, 10, &hole, false, t1);
        assert!(drain(&mut s, t1).is_empty());
        assert_eq!(s.retransmitted, 2);
        ack(&mut s, 10, 20, 10, &[], false, t1);
        assert!(s.is_complete());
    }

    #[test]
    fn tail_is_probed_only_when_receiver_is_idle() {
        let t0 = Instant::now();
        let mut s = SenderState::new(Mode::Reliable, 5 * P as u64, P, 5, None, t0, 1_000_000_000);
        drain(&mut s, t0);
        let t1 = t0 + Duration::from_millis(50);
        ack(&mut s, 3, 8, 3, &[], false, t1);
        assert!(
            drain(&mut s, t1).is_empty(),
            "busy receiver: tail may still be queued"
        );
        ack(&mut s, 3, 8, 3, &[], true, t1);
        assert_eq!(drain(&mut s, t1).len(), 2);
    }

    #[test]
    fn loss_is_judged_by_when_the_ack_was_written() {
        let t0 = Instant::now();
        let epoch_ns = 1_000_000_000u64;
        let mut s = SenderState::new(Mode::Reliable, 10 * P as u64, P, 4, None, t0, epoch_ns);
        drain(&mut s, t0);
        // 5 ms later the receiver (idle) has seen datagrams 0..2 only. It wrote the ACK right
        // away (echoing datagram 1's send time, t0): 2 and 3 had been out for under an RTO.
        let t1 = t0 + Duration::from_millis(50);
        let mut scratch = Vec::new();
        let a = Ack::new(
            1,
            2,
            6,
            2,
            epoch_ns,
            0,
            crate::wire::ack_flags::IDLE,
            &[],
            &mut scratch,
        );
        s.on_ack(&a, None, true, t1);
        assert!(drain(&mut s, t1).iter().all(|n| !matches!(n, Next::Data { retransmit: true, .. })),
            "an ACK written before an RTO passed is no evidence of loss, however late it is processed");
        // An ACK written 20 ms after the sends is.
        let a = Ack::new(
            1,
            2,
            6,
            2,
            epoch_ns,
            20_000,
            crate::wire::ack_flags::IDLE,
            &[],
            &mut scratch,
        );
        s.on_ack(&a, None, true, t1);
        let resent: Vec<_> = drain(&mut s, t1)
            .into_iter()
            .filter(|n| {
                matches!(
                    n,
                    Next::Data {
                        retransmit: true,
                        ..
                    }
                )
            })
            .collect();
        assert_eq!(resent.len(), 2);
    }

    #[test]
    fn loss_halves_the_window_once_per_rtt_and_progress_regrows_it() {
        let t0 = Instant::now();
        let mut s = SenderState::new(Mode::Reliable, 1000 * P as u64, P, 64, None, t0, 1);
        assert_eq!(drain(&mut s, t0).len(), 64);
        assert_eq!(s.cwnd(), 64.0);
        let t1 = t0 + Duration::from_millis(50);
        let hole = [NackRange { start: 10, len: 1 }];
        ack(&mut s, 10, 1000, 64, &hole, false, t1);
        // Growth is capped at the receiver's window (64), then the loss halves it.
        assert_eq!(s.cwnd(), 32.0);
        assert_eq!(s.backoffs, 1);
        // A second loss report within the same round trip is the same event.
        let hole2 = [NackRange { start: 20, len: 1 }];
        ack(&mut s, 10, 1000, 64, &hole2, false, t1);
        assert_eq!(s.backoffs, 1);
        // The window now limits new data, whatever the credit (1000).
        let sent = drain(&mut s, t1);
        let new = sent
            .iter()
            .filter(|n| {
                matches!(
                    n,
                    Next::Data {
                        retransmit: false,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(
            new,
            0,
            "cwnd {} from index 10 ends below the 64 already sent",
            s.cwnd()
        );
        // Progress regrows it, up to the receiver's window and no further.
        for k in 1..100u32 {
            ack(&mut s, (10 + k * 5).min(64), 1000, 64, &[], false, t1);
        }
        assert!(s.cwnd() > 32.0 && s.cwnd() <= 64.0, "{}", s.cwnd());
        // Many losses, round trips apart: never below the floor.
        for k in 0..20u64 {
            let t = t1 + Duration::from_millis(100 * (k + 1));
            let hole = [NackRange { start: 64, len: 1 }];
            ack(&mut s, 64, 1000, 65, &hole, false, t);
        }
        assert!(s.cwnd() >= MIN_CWND);
    }

    #[test]
    fn hostile_ack_is_clamped() {
        let t0 = Instant::now();
        let mut s = SenderState::new(Mode::Reliable, 5 * P as u64, P, 2, None, t0, 1_000_000_000);
        drain(&mut s, t0);
        let t1 = t0 + Duration::from_secs(1);
        ack(
            &mut s,
            u32::MAX,
            u32::MAX,
            u32::MAX,
            &[NackRange {
                start: 0,
                len: u32::MAX,
            }],
            true,
            t1,
        );
        // recv_next beyond what was sent is clamped: not complete, no index past the file.
        assert!(!s.is_complete());
        for n in drain(&mut s, t1) {
            if let Next::Data { index, .. } = n {
                assert!(index < 5);
            }
        }
    }

    #[test]
    fn blast_sends_everything_once_then_end_markers() {
        let t0 = Instant::now();
        let mut s = SenderState::new(Mode::Blast, 3 * P as u64 + 1, P, 1, None, t0, 1_000_000_000);
        let sent = drain(&mut s, t0);
        assert_eq!(sent.len(), 5, "4 datagrams and the first END");
        assert_eq!(sent[4], Next::End);
        assert_eq!(s.bytes_sent, 3 * P as u64 + 1);
        let t1 = t0 + END_SPACING;
        assert_eq!(s.deadline(), Some(t1));
        assert_eq!(drain(&mut s, t1), vec![Next::End]);
        let t2 = t1 + END_SPACING;
        assert_eq!(drain(&mut s, t2), vec![Next::End]);
        assert!(s.is_complete());
        assert_eq!(s.deadline(), None);
    }

    #[test]
    fn pacer_limits_rate() {
        let t0 = Instant::now();
        // 8 Mbit/s = 1 MB/s, burst of one datagram.
        let pacer = Pacer::new(8_000_000, P as usize, t0);
        let mut s = SenderState::new(
            Mode::Blast,
            100 * P as u64,
            P,
            1,
            Some(pacer),
            t0,
            1_000_000_000,
        );
        assert_eq!(drain(&mut s, t0).len(), 1);
        let ready = s.deadline().unwrap();
        assert!(ready > t0 && ready <= t0 + Duration::from_millis(2));
        // After 10 ms, about 10 more datagrams (1 MB/s * 10 ms / 1000 B), capped by burst.
        let mut n = 0;
        for ms in 1..=10 {
            n += drain(&mut s, t0 + Duration::from_millis(ms)).len();
        }
        assert!((9..=11).contains(&n), "{n}");
    }

    #[test]
    fn empty_file() {
        let t0 = Instant::now();
        let mut s = SenderState::new(Mode::Reliable, 0, P, 8, None, t0, 1_000_000_000);
        assert!(s.is_complete());
        assert!(drain(&mut s, t0).is_empty());
    }
}
