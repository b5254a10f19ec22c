//! The sender's half of a session: what to send next, what to resend, how fast.
//!
//! Engine-independent (both engines ask it for the next datagram) and clock-free (callers pass
//! `now`), so it is tested here without sockets. Reliable mode is selective repeat driven by
//! the receiver's `ACK`s: a cumulative point, a credit limit (flow control), the count of
//! datagrams received (delivery-rate samples), the latest send time received, and NACK ranges.
//!
//! - Loss detection is time-based with a reordering window (RACK, RFC 8985): a NACKed datagram
//!   is lost when one sent more than `reo_wnd` after it has been delivered. A retransmission
//!   that turns out spurious (the receiver counts the duplicate) widens the window.
//! - A probe timeout (RFC 9002's PTO) resends the newest datagram in flight when ACKs stop, so
//!   no session waits on a lost tail or lost ACKs; an idle receiver's ACKs probe the tail too.
//! - How fast: the congestion controller ([`congestion`](super::congestion)) sets a pacing rate
//!   and a window; the receiver's credit caps both; `serve --rate` caps the rate.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::congestion::{CcKind, Controller, PathRecord, RttEstimator};
use super::layout::{datagram_count, payload_len};
use super::pacer::{burst_for, Pacer};
use super::train::Trains;
use super::{Ack, Mode, Status};

/// Blast mode repeats its END marker this many times, this far apart, against its loss.
pub const END_REPEATS: u32 = 3;
pub const END_SPACING: Duration = Duration::from_millis(5);
/// The clock of per-datagram send times: 10 µs ticks (a u32 lasts 11.9 hours).
const TICK_NS: u64 = 10_000;
/// The shortest [`SenderState::probe_base`].
const MIN_PROBE_BASE: Duration = Duration::from_millis(10);
/// Largest factor of min_rtt/4 the reordering window grows to after spurious retransmissions.
const MAX_REO_MULT: u32 = 16;
/// The reordering window may always reach this, whatever the RTT: reordering of a few
/// milliseconds (a relay, a bonded link) must not be taken for loss.
const REO_WND_CAP_FLOOR: Duration = Duration::from_millis(4);
/// The reordering window after the first spurious retransmission, at least; it doubles with
/// each further one (towards [`REO_WND_CAP_FLOOR`], or the SRTT if longer).
const REO_WND_STEP: Duration = Duration::from_micros(250);
/// Loss recoveries without a spurious retransmission after which the window shrinks back.
const REO_DECAY_RECOVERIES: u32 = 16;
/// New datagrams a probe timeout sends past the congestion window (RFC 9002: up to two).
const PROBE_DATAGRAMS: u32 = 2;
/// An echoed delay longer than this is not believed (a confused or hostile receiver).
const MAX_ECHO_DELAY: Duration = Duration::from_secs(10);
/// A datagram resent this many times (and again at each doubling) is a suspect: either the
/// path loses it again and again, or the file no longer holds what its CRC says (written in
/// place), so the receiver drops every copy. The server re-reads it to tell which.
const SUSPECT_RESENDS: u8 = 4;
/// Suspects kept until the server looks at them; more in between are not needed to tell.
const MAX_SUSPECTS: usize = 8;

/// What the engine should put on the wire next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextDatagram {
    Data {
        index: u32,
        retransmit: bool,
        /// The send timestamp to stamp in its header (Unix ns, unique per send).
        send_ts_ns: u64,
    },
    /// Blast mode's end-of-file marker.
    End,
}

/// One transmission, kept until an ACK echoes a later one: what a delivery-rate sample needs.
#[derive(Debug, Clone, Copy)]
struct SendRecord {
    sent_ns: u64,
    sent_at: Instant,
    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
    app_limited: bool,
    /// The pacer's rate when it was sent (bits/s; 0: not paced).
    paced_bps: u64,
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
    /// Last send time of each index, in ticks since `epoch` (+1; 0 = never sent): not an
    /// `Instant` (as a [`SendRecord`]'s `sent_at` is) to keep 4 bytes a datagram.
    sent_tick: Vec<u32>,
    epoch: Instant,
    /// `epoch` on the clock of the data header's send timestamps (Unix ns).
    epoch_unix_ns: u64,
    last_send_ns: u64,
    rtt: RttEstimator,
    cc: Controller,
    /// Paces the controller's rate (and `serve --rate`); `None`: unpaced.
    pacer: Option<Pacer>,
    /// `serve --rate`, bits/s.
    rate_cap_bps: Option<u64>,
    records: VecDeque<SendRecord>,
    /// Trains in the ACKs: the bottleneck's capacity.
    trains: Trains,
    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
    /// Sends are app-limited (credit, end of file) until this much is delivered.
    app_limited_until: u64,
    /// RACK: the reordering window is `reo_mult` x min_rtt / 4, or after spurious
    /// retransmissions at least [`REO_WND_STEP`] doubled `reo_mult - 2` times.
    reo_mult: u32,
    recoveries_clean: u32,
    duplicates_seen: u32,
    /// Round (delivery count) of the last loss event, to count one per round trip.
    loss_round_end: u64,
    last_ack_at: Instant,
    pto_count: u32,
    ends_sent: u32,
    next_end_at: Instant,
    /// Datagram indices examined for resending, over all ACKs (bounded per ACK by what is in
    /// flight: see [`SenderState::on_ack`]).
    pub resend_checks: u64,
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    pub retransmitted: u64,
    /// Rounds with loss.
    pub loss_events: u64,
    /// Retransmissions that were not needed.
    pub spurious: u64,
    /// Probe timeouts that fired.
    pub probes: u64,
    /// ACKs whose timestamps or delays were not believed.
    pub bad_acks: u64,
    /// New datagrams a fired probe timeout may still send past the congestion window.
    probe_new: u32,
    /// How long the receiver has lately held an ACK (see [`SenderState::pto_at`]).
    ack_delay: Duration,
    /// The same, over the ACKs of a receiver that was not idle.
    busy_hold: Duration,
    /// The receiver has shown it receives at the session's address (its first ACK): until
    /// then nothing is sent, so a GET in someone else's name (a replayed token) gets that
    /// address no more than the META answer.
    validated: bool,
    /// When the META first went: the wait from it to the first ACK seeds the timeout before
    /// the first RTT sample.
    meta_at: Option<Instant>,
    /// When the receiver last reported new data (or, in blast mode, when sending ended):
    /// what "no progress" is measured from.
    last_progress: Instant,
    /// Times each datagram was resent (saturating), reliable mode.
    resends: Vec<u8>,
    /// Datagrams resent [`SUSPECT_RESENDS`] times or more (see [`SenderState::take_suspects`]).
    suspects: Vec<u32>,
    /// The receiver takes the file from a multicast group first: its first ACK says what
    /// the group delivered (see [`SenderState::join_group`]).
    after_group: bool,
    /// What an earlier session learned of the path, until the first ACK says whether this
    /// session may start from it ([`SenderState::settle_path`]).
    path_pending: Option<PathRecord>,
    /// Whether the session was the only one to its host at its first ACK (`None`: not told).
    started_alone: Option<bool>,
}

/// What a session is told at creation.
#[derive(Debug, Clone, Copy)]
pub struct SenderConfig {
    pub mode: Mode,
    pub file_size: u64,
    pub payload_size: u32,
    /// The receiver's initial credit, datagrams.
    pub window: u32,
    pub cc: CcKind,
    /// `serve --rate`, bits/s.
    pub rate_cap_bps: Option<u64>,
    /// Seeds the controller's randomness (its probing phases).
    pub seed: u64,
    /// What an earlier session learned of the path to this receiver (`serve` keeps them per
    /// host), for the controller to start from if the path is the same and the session alone
    /// to its host ([`SenderState::settle_path`]).
    pub path: Option<PathRecord>,
}

impl SenderState {
    /// `now_unix_ns`: `now` on the clock of send timestamps, to place the ACKs' echoes.
    pub fn new(cfg: SenderConfig, now: Instant, now_unix_ns: u64) -> Self {
        let total = datagram_count(cfg.file_size, cfg.payload_size) as u32;
        let credit_limit = match cfg.mode {
            Mode::Reliable => cfg.window.max(1).min(total),
            Mode::Blast => total,
        };
        // Blast mode is the lab's: as fast as it goes (or at --rate), no control loop.
        let cc = match cfg.mode {
            Mode::Reliable => Controller::new(cfg.cc, cfg.payload_size, now, cfg.seed),
            Mode::Blast => Controller::Fixed,
        };
        let datagram = cfg.payload_size as usize + super::DATA_HEADER_LEN;
        let pacer = match (cc.pacing_rate(), cfg.rate_cap_bps) {
            (None, None) => None,
            (rate, cap) => {
                let bps = rate
                    .map_or(u64::MAX, |r| (r * 8.0) as u64)
                    .min(cap.unwrap_or(u64::MAX));
                Some(Pacer::new(bps, burst_for(bps, datagram), now))
            }
        };
        SenderState {
            mode: cfg.mode,
            file_size: cfg.file_size,
            payload_size: cfg.payload_size,
            total,
            next_new: 0,
            credit_limit,
            acked_below: 0,
            retransmit_queue: VecDeque::new(),
            queued: vec![0; (total as usize).div_ceil(64)],
            sent_tick: vec![
                0;
                if cfg.mode == Mode::Reliable {
                    total as usize
                } else {
                    0
                }
            ],
            epoch: now,
            epoch_unix_ns: now_unix_ns,
            last_send_ns: 0,
            rtt: RttEstimator::default(),
            cc,
            pacer,
            rate_cap_bps: cfg.rate_cap_bps,
            records: VecDeque::new(),
            trains: Trains::default(),
            delivered: 0,
            delivered_time: now,
            first_sent_time: now,
            app_limited_until: 0,
            reo_mult: 1,
            recoveries_clean: 0,
            duplicates_seen: 0,
            loss_round_end: 0,
            last_ack_at: now,
            pto_count: 0,
            ends_sent: 0,
            next_end_at: now,
            resend_checks: 0,
            datagrams_sent: 0,
            bytes_sent: 0,
            retransmitted: 0,
            loss_events: 0,
            spurious: 0,
            probes: 0,
            probe_new: 0,
            ack_delay: Duration::ZERO,
            busy_hold: Duration::ZERO,
            bad_acks: 0,
            validated: false,
            meta_at: None,
            last_progress: now,
            resends: if cfg.mode == Mode::Reliable {
                vec![0; total as usize]
            } else {
                Vec::new()
            },
            suspects: Vec::new(),
            after_group: false,
            path_pending: cfg.path,
            started_alone: None,
        }
    }

    /// The receiver is a member of a multicast transmission of the file: this session sends
    /// nothing until the receiver's first ACK (as any session), and then only what that ACK
    /// and the later ones show missing: everything below the ACK's `seen_end` counts as
    /// sent long ago (the group sent it), the ranges it lists go out at once, holes it lists
    /// later are found lost as usual, and what lies past `seen_end` is sent as new.
    pub fn join_group(&mut self) {
        self.after_group = true;
    }

    /// The receiver showed progress some other way (multicast feedback): it is not stalled.
    pub fn progressed(&mut self, now: Instant) {
        self.last_progress = self.last_progress.max(now);
    }

    /// The first ACK after a multicast transmission (see [`SenderState::join_group`]).
    fn resume_after_group(&mut self, ack: &Ack<'_>) {
        self.after_group = false;
        if self.mode != Mode::Reliable {
            return;
        }
        let seen_end = ack.seen_end.min(self.total);
        if seen_end > self.next_new {
            for t in &mut self.sent_tick[self.next_new as usize..seen_end as usize] {
                // Sent at the epoch: as long ago as the session is old.
                *t = (*t).max(1);
            }
            self.next_new = seen_end;
        }
        self.delivered = self.delivered.max((ack.received.min(seen_end)) as u64);
        let mut floor = ack.recv_next.min(seen_end);
        for r in ack.ranges() {
            let start = r.start.max(floor);
            let end = r.start.saturating_add(r.len).min(seen_end);
            for i in start..end {
                if !self.is_queued(i) {
                    self.set_queued(i, true);
                    self.retransmit_queue.push_back(i);
                }
            }
            floor = floor.max(end);
        }
    }

    /// The receiver's first ACK came from the session's address: data may flow.
    /// The META answering the GET went at `now`. The first one counts: whichever copy the
    /// first ACK answers, the wait from the first is an upper bound of the path's RTT (on a
    /// long path the client's GET is resent before the first META is back, and a later copy's
    /// wait would be too short).
    pub fn meta_sent(&mut self, now: Instant) {
        self.meta_at.get_or_insert(now);
    }

    pub fn validate(&mut self, now: Instant) {
        if !self.validated {
            self.validated = true;
            // A path's RTT at most (the receiver answers META at once, unless busy): the
            // timeout before the first sample is never shorter than it takes.
            if let Some(at) = self.meta_at {
                self.rtt.seed_timeout(now.saturating_duration_since(at));
            }
            self.last_progress = now;
            // Timing starts when sending can: the wait for the ACK is not a path's RTT.
            self.last_ack_at = now;
            self.delivered_time = now;
            self.first_sent_time = now;
        }
    }

    /// This state, validated at `now` after a handshake of `rtt` (its META sent `rtt` before:
    /// the simulator's sessions, whose first timeout is seeded as a server's are).
    pub fn handshaken(mut self, now: Instant, rtt: Duration) -> Self {
        self.meta_sent(now.checked_sub(rtt).unwrap_or(now));
        self.validated(now)
    }

    /// This state, validated at `now` (a sender whose receiver needs no proof: tests, tools).
    pub fn validated(mut self, now: Instant) -> Self {
        self.validate(now);
        self
    }

    /// Every datagram of the file has been sent at least once.
    pub fn sent_everything(&self) -> bool {
        self.next_new >= self.total
    }

    pub fn is_validated(&self) -> bool {
        self.validated
    }

    /// Since when the session has made no progress: the receiver's last new data (reliable;
    /// the session's start until it validated), or the end of sending (blast); `now` while a
    /// blast session is still sending.
    pub fn stalled_since(&self, now: Instant) -> Instant {
        match self.mode {
            Mode::Reliable => self.last_progress,
            Mode::Blast if !self.validated => self.last_progress,
            Mode::Blast if self.is_complete() => self.last_progress.max(self.next_end_at),
            Mode::Blast => now,
        }
    }

    /// Datagrams resent so often that the file may no longer match their CRCs: the caller
    /// re-reads them (see `ScannedFile::payload_matches`).
    pub fn take_suspects(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.suspects)
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

    /// Current congestion window, datagrams (`u64::MAX`: none).
    pub fn cwnd(&self) -> u64 {
        self.cc.cwnd()
    }

    /// Datagrams sent and not known delivered, less those known lost and waiting to go again.
    pub fn inflight(&self) -> u64 {
        (self.next_new as u64)
            .saturating_sub(self.delivered)
            .saturating_sub(self.retransmit_queue.len() as u64)
    }

    /// The controller's view, for `STATUS` and reports.
    pub fn status(&self, session: u32) -> Status {
        let us = |d: Duration| d.as_micros().min(u32::MAX as u128) as u32;
        Status {
            session,
            pacing_bps: self.pacer.as_ref().map_or(0, |p| p.rate_bps()),
            delivery_bps: (self.cc.delivery_rate() * 8.0) as u64,
            srtt_us: us(self.rtt.srtt()),
            min_rtt_us: us(self.rtt.min_rtt().unwrap_or_default()),
            inflight: self.inflight().min(u32::MAX as u64) as u32,
            cwnd: self.cc.cwnd().min(u32::MAX as u64) as u32,
            loss_events: self.loss_events.min(u32::MAX as u64) as u32,
            retransmitted: self.retransmitted.min(u32::MAX as u64) as u32,
            spurious: self.spurious.min(u32::MAX as u64) as u32,
        }
    }

    /// Datagrams known delivered.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Whether this session is the only one to its host, asked at its first ACK (`alone` is
    /// called then, and never again). Only a session alone starts from the record of its
    /// path it was given (the record is one session's rate: N sessions that all started from
    /// it would start N times as fast and overflow what a cold start would not), and only one
    /// that started alone leaves a record ([`SenderState::path_record`]: a share is not the
    /// path's rate).
    pub fn settle_path(&mut self, alone: impl FnOnce() -> bool) {
        if self.started_alone.is_some() {
            return;
        }
        let alone = alone();
        self.started_alone = Some(alone);
        if let Some(p) = self.path_pending.take().filter(|_| alone) {
            self.cc.recall(p);
        }
    }

    /// The rate (bytes/s) of an earlier session's record of the path that this one started
    /// from, if its first RTT matched.
    pub fn recalled_rate(&self) -> Option<f64> {
        self.cc.recalled_rate()
    }

    /// What the session learned of its path, for the next session to the same host
    /// ([`PathRecord`]), if it started alone to its host.
    pub fn path_record(&self) -> Option<PathRecord> {
        self.cc
            .path_record()
            .filter(|_| self.started_alone == Some(true))
    }

    /// The bottleneck capacity the session's packet trains measured lately (or the rate of a
    /// remembered path it started from), bits/s.
    pub fn capacity_bps(&self) -> Option<u64> {
        let c = self.cc.capacity();
        (c > 0.0).then_some((c * 8.0) as u64)
    }

    /// The controller's state name (`startup`, `probe_bw`, ...).
    pub fn cc_state(&self) -> &'static str {
        self.cc.state()
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

    fn tick(&self, t: Instant) -> u32 {
        ticks_of(t.saturating_duration_since(self.epoch).as_nanos() as u64)
    }

    /// `unix_ns` on the tick clock (saturating at the epoch and at `now`).
    fn tick_of_unix(&self, unix_ns: u64, now: Instant) -> u32 {
        ticks_of(unix_ns.saturating_sub(self.epoch_unix_ns)).min(self.tick(now))
    }

    /// Datagrams `indices` left the host at `now` (their sends completed): loss detection
    /// times them from here, not from when they were queued. An engine that keeps many
    /// sends in flight may hold a datagram for milliseconds (behind the other sessions'
    /// sends on one socket); timed from the queue, an idle receiver's ACK would make it look
    /// lost before it had even left.
    pub fn departed_at(&mut self, indices: &[u32], now: Instant) {
        let tick = self.tick(now);
        for &i in indices {
            if let Some(sent) = self.sent_tick.get_mut(i as usize) {
                if *sent != 0 && i >= self.acked_below {
                    *sent = (*sent).max(tick);
                }
            }
        }
    }

    /// Datagram `index` never left: its send failed locally (a GSO send the device refused).
    /// It goes out again first, without waiting for the receiver to report it.
    pub fn resend_now(&mut self, index: u32) {
        if index < self.next_new && index >= self.acked_below && !self.is_queued(index) {
            self.set_queued(index, true);
            self.retransmit_queue.push_front(index);
        }
    }

    /// The next datagram to send, if any may be sent now. Records it as sent.
    pub fn next(&mut self, now: Instant) -> Option<NextDatagram> {
        if !self.validated {
            return None;
        }
        if self.pto_at().is_some_and(|t| now >= t) {
            // No ACK for a PTO: probe. With credit for new data, new data (past the
            // congestion window: RFC 9002 lets probes exceed it), which costs nothing if the
            // receiver was only slow; otherwise the newest datagram in flight (the likeliest
            // lost tail). Its ACK, or the lack of one, tells the rest.
            if self.next_new < self.credit_limit.min(self.total) {
                self.probe_new = PROBE_DATAGRAMS;
            } else {
                let probe = (self.next_new - 1).max(self.acked_below);
                if !self.is_queued(probe) {
                    self.set_queued(probe, true);
                    self.retransmit_queue.push_front(probe);
                }
            }
            self.pto_count += 1;
            self.probes += 1;
            self.last_ack_at = now;
            self.cc.on_timeout();
        }
        let cwnd_room = self.inflight() < self.cc.cwnd() || self.probe_new > 0;
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
            self.retransmitted += 1;
            if let Some(n) = self.resends.get_mut(i as usize) {
                *n = n.saturating_add(1);
                if *n >= SUSPECT_RESENDS
                    && n.is_power_of_two()
                    && self.suspects.len() < MAX_SUSPECTS
                {
                    self.suspects.push(i);
                }
            }
            return Some(self.record(i, true, now));
        }
        if self.next_new < self.credit_limit.min(self.total) && cwnd_room {
            let i = self.next_new;
            if !self.pace(i, now) {
                return None;
            }
            self.next_new += 1;
            self.probe_new = self.probe_new.saturating_sub(1);
            return Some(self.record(i, false, now));
        }
        if self.next_new < self.total && cwnd_room {
            // Credit, not the network, is what stops us: samples taken now say little.
            self.app_limited_until = self.delivered + self.inflight();
        }
        if self.mode == Mode::Blast
            && self.next_new >= self.total
            && self.ends_sent < END_REPEATS
            && now >= self.next_end_at
        {
            self.ends_sent += 1;
            self.next_end_at = now + END_SPACING;
            self.last_progress = now;
            return Some(NextDatagram::End);
        }
        None
    }

    fn pace(&mut self, i: u32, now: Instant) -> bool {
        let len = payload_len(self.file_size, self.payload_size, i as u64);
        match &mut self.pacer {
            Some(p) => p.take(len, now),
            None => true,
        }
    }

    fn record(&mut self, i: u32, retransmit: bool, now: Instant) -> NextDatagram {
        let unix = self.epoch_unix_ns + now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let send_ts_ns = unix.max(self.last_send_ns + 1);
        self.last_send_ns = send_ts_ns;
        let tick = self.tick(now);
        if let Some(slot) = self.sent_tick.get_mut(i as usize) {
            *slot = tick;
        }
        if self.mode == Mode::Reliable {
            // `inflight()` already counts this datagram (the caller advanced `next_new` or
            // took it off the retransmission queue).
            if self.inflight() <= 1 {
                // Nothing else in flight: the sampling interval starts now, not at the last
                // delivery (the sender was idle, or paced, in between). Counting from the last
                // delivery would measure the pacer's own gaps, and a flow that paces in small
                // bursts would never see more than the rate it already has.
                self.first_sent_time = now;
                self.delivered_time = now;
            }
            self.records.push_back(SendRecord {
                sent_ns: send_ts_ns,
                sent_at: now,
                delivered: self.delivered,
                delivered_time: self.delivered_time,
                first_sent_time: self.first_sent_time,
                app_limited: self.delivered < self.app_limited_until,
                paced_bps: self.pacer.as_ref().map_or(0, |p| p.rate_bps()),
            });
        }
        self.datagrams_sent += 1;
        self.bytes_sent += payload_len(self.file_size, self.payload_size, i as u64) as u64;
        NextDatagram::Data {
            index: i,
            retransmit,
            send_ts_ns,
        }
    }

    /// When time alone (pacing, END spacing, a probe timeout) will let
    /// [`SenderState::next`] return something; `None` if only an ACK can.
    pub fn deadline(&self) -> Option<Instant> {
        if !self.validated {
            return None;
        }
        let pto = self.pto_at();
        let cwnd_room = self.inflight() < self.cc.cwnd();
        let has_work = !self.retransmit_queue.is_empty()
            || (self.next_new < self.credit_limit.min(self.total) && cwnd_room);
        let work = if has_work {
            let i = self
                .retransmit_queue
                .front()
                .copied()
                .unwrap_or(self.next_new);
            Some(match &self.pacer {
                Some(p) => p.ready_at(payload_len(self.file_size, self.payload_size, i as u64)),
                None => self.epoch,
            })
        } else if self.mode == Mode::Blast
            && self.next_new >= self.total
            && self.ends_sent < END_REPEATS
        {
            Some(self.next_end_at)
        } else {
            None
        };
        match (work, pto) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Ticks of a duration in ns, +1 (0 means never), saturating.
fn ticks_of(ns: u64) -> u32 {
    (ns / TICK_NS).min(u32::MAX as u64 - 1) as u32 + 1
}

#[path = "sender_ack.rs"]
mod ack;
#[path = "sender_rack.rs"]
mod rack;

#[cfg(test)]
#[path = "sender_tests.rs"]
mod tests;
