//! A multicast transmission's sender, without sockets or clocks: what goes to the group next
//! (a source datagram, a repair of some block, the end marker), paced, and what receivers'
//! `FEEDBACK` changes.
//!
//! - Sources go out once, in order. After each block, `proactive` repairs follow at once: as
//!   many as the most lossy member kept is likely to lack of it (its measured loss rate, plus
//!   one and a half standard deviations), so most blocks are whole without waiting for a round
//!   of feedback.
//! - A lack (block, missing, repairs seen) from a receiver asks for `missing` less the repairs
//!   sent after the ones it saw and so recently that they may still be on their way. The
//!   server sends a block the most any receiver still needs, not the sum: each repair heals a
//!   different loss at each receiver. No block gets more than the plan's `parity` repairs;
//!   a receiver that lacks more finishes by unicast.
//! - Feedback is bounded by its receivers (one per member per half interval is read, the rest
//!   dropped and counted); a lack for a block the transmission has not passed, or before the
//!   member joined, is ignored: a hostile member can make a block get at most its `parity`.
//! - The pace: the configured rate at most; each member's loss is measured over windows of
//!   50 ms (the group's datagrams sent against what its feedback says it received). Above 5%
//!   at the median member the group slows by a fifth per window, below it speeds up again by
//!   a sixteenth of the configured rate: random loss of a few percent is repaired, not taken
//!   for congestion. A member losing more than 8% and three times the median, three windows in
//!   a row (a slow or lossy path), is no longer served: its repairs would slow everyone; it
//!   keeps what the group brings and fetches the rest by unicast after the group.
//! - When every source is sent, `GROUP_END` goes out; repairs continue while lacks come; after
//!   `linger` without one, `GROUP_END last` ends the transmission (three times).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::fec::BlockPlan;
use super::message::Feedback;
use super::pacer::Pacer;
use super::DATA_HEADER_LEN;

/// What to send next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSend {
    /// Source datagram `index` (a DATA with the group flag).
    Source(u64),
    /// Repair `repair` of `block`.
    Repair { block: u32, repair: u16 },
    /// `GROUP_END`; `last`: no more repairs follow.
    End { last: bool },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct GroupTxStats {
    pub sources_sent: u64,
    /// Repairs sent right after their block, and in answer to feedback.
    pub proactive_repairs: u64,
    pub reactive_repairs: u64,
    /// Members that joined (some may have left since), and those moved to unicast because
    /// they lost far more than the rest.
    pub members_joined: u64,
    pub members_evicted: u64,
    /// Repairs sent (proactive and reactive ones that went out).
    pub repairs_sent: u64,
    pub feedback_received: u64,
    /// Feedback read too soon after the member's previous one, or from no member.
    pub feedback_dropped: u64,
    /// Lacks ignored: blocks not yet passed or before the member joined.
    pub lacks_ignored: u64,
    /// Repairs a block was asked for beyond its `parity` (left to unicast).
    pub repairs_refused: u64,
}

#[derive(Debug, Clone)]
struct Member {
    first_block: u32,
    last_feedback: Option<Instant>,
    whole_below: u32,
    seen_end: u32,
    /// The start of the member's current loss window: when, the sources of the blocks it had
    /// passed, and how many of them it had received.
    window: Option<(Instant, u64, u64)>,
    /// Its share of the group's datagrams lost, smoothed over windows (`None`: not measured).
    loss: Option<f64>,
    /// Windows in a row in which it lost far more than the group.
    bad_windows: u32,
}

/// How long a member's loss is measured over.
const LOSS_WINDOW: Duration = Duration::from_millis(50);
/// The group slows down when its median member loses more than this (random loss of a few
/// percent is repaired, not a sign of congestion), and speeds up again below it.
const CONGESTION_LOSS: f64 = 0.05;
/// A member losing more than this, and more than [`EVICT_FACTOR`] times the group's median,
/// for [`EVICT_WINDOWS`] windows in a row is moved to unicast: its path is too slow or too
/// lossy for the group's pace, and its repairs would slow everyone.
const EVICT_LOSS: f64 = 0.08;
const EVICT_FACTOR: f64 = 3.0;
const EVICT_WINDOWS: u32 = 3;
/// The slowest the group goes, as a share of its configured rate.
const MIN_RATE_SHARE: f64 = 1.0 / 32.0;

/// The least time between two feedbacks of one receiver, for a group of `members`: 10 ms,
/// and 0.1 ms more per member past 100, so the server reads at most ~10,000 feedbacks a
/// second however large the group (each covers up to 128 blocks), up to a second.
pub fn feedback_interval(members: usize) -> Duration {
    Duration::from_micros(100 * members as u64)
        .clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// The group's pacing burst: [`GROUP_BURST_TIME`] of sending. A group transmission runs on a
/// thread of its own that sleeps between bursts; on a host busy with its receivers' traffic it
/// may wake a millisecond late, and with the unicast sessions' 2 ms of burst it would lose that
/// much of its rate each time. The sender's own link (a NIC's queue) takes the burst.
pub fn group_burst(bps: u64, datagram: usize) -> usize {
    let burst = (bps as f64 / 8.0 * GROUP_BURST_TIME.as_secs_f64()) as usize;
    burst.max(super::pacer::burst_for(bps, datagram))
}

pub const GROUP_BURST_TIME: Duration = Duration::from_millis(10);

/// How long a receiver waits before it reports a lack again, and so how long the server
/// counts the repairs it sent as still on their way: four feedback intervals, at least 50 ms
/// (a receiver thread on a loaded host may take tens of milliseconds to read what came).
pub fn repeat_after(interval: Duration) -> Duration {
    (interval * 4).max(Duration::from_millis(50))
}

#[derive(Debug, Clone, Copy, Default)]
struct BlockTx {
    /// Repairs sent (the next repair index), and when the last went.
    repairs_sent: u16,
    last_repair_at: Option<Instant>,
}

pub struct GroupSender {
    plan: BlockPlan,
    blocks: u32,
    datagrams: u64,
    next_source: u64,
    per_block: Vec<BlockTx>,
    /// Repairs to send, per block, oldest block first.
    wanted: BTreeMap<u32, u32>,
    /// Repairs sent with each block unasked.
    proactive: u32,
    members: HashMap<u32, Member>,
    pacer: Pacer,
    datagram_bytes: usize,
    interval: Duration,
    linger: Duration,
    sources_done_at: Option<Instant>,
    last_lack_at: Option<Instant>,
    ends_sent: u32,
    next_end_at: Option<Instant>,
    /// Blast mode sends every source once and repairs nothing.
    repairs: bool,
    /// The configured pace, and the one the group's loss allows now (bits/s).
    max_rate_bps: u64,
    rate_bps: u64,
    last_adapt: Instant,
    /// Members moved to unicast, for the caller to tell.
    evicted: Vec<u32>,
    pub stats: GroupTxStats,
}

impl GroupSender {
    /// A transmission of `plan` paced at `rate_bps` (bits per second on the wire, headers
    /// included); receivers report every `interval`.
    pub fn new(plan: BlockPlan, rate_bps: u64, interval: Duration, now: Instant) -> Self {
        let blocks = plan.blocks();
        let datagram_bytes = plan.payload_size as usize + DATA_HEADER_LEN;
        GroupSender {
            plan,
            blocks,
            datagrams: plan.datagrams(),
            next_source: 0,
            per_block: vec![BlockTx::default(); blocks as usize],
            wanted: BTreeMap::new(),
            proactive: 0,
            members: HashMap::new(),
            pacer: Pacer::new(rate_bps, group_burst(rate_bps, datagram_bytes), now),
            datagram_bytes,
            interval,
            // Long enough for a receiver to have reported twice after the last repairs.
            linger: (interval * 6).max(Duration::from_millis(100)),
            sources_done_at: None,
            last_lack_at: None,
            ends_sent: 0,
            next_end_at: None,
            repairs: true,
            max_rate_bps: rate_bps,
            rate_bps,
            last_adapt: now,
            evicted: Vec::new(),
            stats: GroupTxStats::default(),
        }
    }

    /// The pace now, bits/s.
    pub fn rate_bps(&self) -> u64 {
        self.rate_bps
    }

    /// Members no longer served since the last call (for the log): their feedback is no
    /// longer read, so their lacks cost the group nothing; they keep what the group brings
    /// and fetch the rest by unicast once it ends.
    pub fn take_evicted(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.evicted)
    }

    /// Measures member `fb.session`'s loss over its window, once the window is long enough:
    /// the sources of the blocks it has passed against those it says it received (sources go
    /// once each; what is still on its way or in its socket is not counted as lost).
    fn measure(&mut self, session: u32, fb: &Feedback<'_>, now: Instant) {
        let Some(m) = self.members.get_mut(&session) else {
            return;
        };
        let passed = fb
            .seen_end
            .saturating_sub(1)
            .clamp(m.first_block, self.blocks);
        let expected = self.plan.sources(passed).start - self.plan.sources(m.first_block).start;
        let got = fb.sources_received.min(expected);
        let Some((since, expected0, got0)) = m.window else {
            m.window = Some((now, expected, got));
            return;
        };
        if now.saturating_duration_since(since) < LOSS_WINDOW || expected < expected0 + 64 {
            return;
        }
        let loss = 1.0 - got.saturating_sub(got0) as f64 / (expected - expected0) as f64;
        let loss = loss.clamp(0.0, 1.0);
        m.loss = Some(match m.loss {
            Some(l) => 0.5 * l + 0.5 * loss,
            None => loss,
        });
        m.window = Some((now, expected, got));
    }

    /// Repairs to send with each full block unasked when the most lossy member kept loses
    /// `p`: its expected losses of the block and one and a half standard deviations more.
    fn proactive_for(&self, p: f64) -> u32 {
        if !self.repairs || p <= 0.0 {
            return 0;
        }
        let k = self.plan.k as f64;
        let need = k * p + 1.5 * (k * p * (1.0 - p)).sqrt();
        (need.ceil() as u32).min(self.plan.parity)
    }

    /// Every [`LOSS_WINDOW`]: the pace follows the median member's loss (down by a fifth above
    /// [`CONGESTION_LOSS`], up by a sixteenth of the configured rate below it), and a member
    /// losing far more than the rest is moved to unicast.
    fn adapt(&mut self, now: Instant) {
        // Blast mode keeps its pace and its members, whatever they lose: that is its measure.
        if !self.repairs || now.saturating_duration_since(self.last_adapt) < LOSS_WINDOW {
            return;
        }
        self.last_adapt = now;
        let mut losses: Vec<f64> = self.members.values().filter_map(|m| m.loss).collect();
        if losses.is_empty() {
            return;
        }
        losses.sort_by(f64::total_cmp);
        let median = losses[losses.len() / 2];
        let floor = ((self.max_rate_bps as f64 * MIN_RATE_SHARE) as u64).max(1_000_000);
        let rate = if median > CONGESTION_LOSS {
            ((self.rate_bps as f64 * 0.8) as u64).max(floor)
        } else {
            (self.rate_bps + self.max_rate_bps / 16).min(self.max_rate_bps)
        };
        if rate != self.rate_bps {
            self.rate_bps = rate;
            self.pacer
                .set_rate(rate, group_burst(rate, self.datagram_bytes), now);
        }
        if self.members.len() >= 2 {
            self.evict_lossy(median);
        }
        let worst = self
            .members
            .values()
            .filter_map(|m| m.loss)
            .fold(0.0, f64::max);
        self.proactive = self.proactive_for(worst);
    }

    /// Moves to unicast the members that lost more than [`EVICT_LOSS`] and [`EVICT_FACTOR`]
    /// times the `median` member, [`EVICT_WINDOWS`] windows in a row.
    fn evict_lossy(&mut self, median: f64) {
        let mut out = Vec::new();
        for (&s, m) in self.members.iter_mut() {
            let Some(l) = m.loss else { continue };
            if l > EVICT_LOSS && l > EVICT_FACTOR * median {
                m.bad_windows += 1;
                if m.bad_windows >= EVICT_WINDOWS {
                    out.push(s);
                }
            } else {
                m.bad_windows = 0;
            }
        }
        for s in out {
            self.members.remove(&s);
            self.stats.members_evicted += 1;
            self.evicted.push(s);
        }
    }

    /// Blast mode's transmission: every source once, no repairs, lacks ignored; `GROUP_END
    /// last` as soon as the sources are out.
    pub fn without_repairs(mut self) -> Self {
        self.repairs = false;
        self
    }

    /// The least time between a receiver's feedbacks, as the group grows (see
    /// [`feedback_interval`]).
    pub fn set_interval(&mut self, interval: Duration) {
        self.interval = interval;
        self.linger = (interval * 6).max(Duration::from_millis(100));
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn plan(&self) -> &BlockPlan {
        &self.plan
    }

    /// The block the next source belongs to: a receiver joining now is sent everything from
    /// there on (and fetches the blocks before it by unicast).
    pub fn next_block(&self) -> u32 {
        self.plan.block_of(self.next_source).min(self.blocks)
    }

    /// Adds unicast session `session` to the group; returns its first block.
    pub fn join(&mut self, session: u32) -> u32 {
        let first_block = self.next_block();
        self.stats.members_joined += 1;
        self.members.insert(
            session,
            Member {
                first_block,
                last_feedback: None,
                whole_below: first_block,
                seen_end: 0,
                window: None,
                loss: None,
                bad_windows: 0,
            },
        );
        first_block
    }

    pub fn leave(&mut self, session: u32) {
        self.members.remove(&session);
    }

    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// Every `GROUP_END last` has been sent: the transmission is over.
    pub fn is_done(&self) -> bool {
        self.ends_sent >= if self.repairs { 3 + 3 } else { 3 }
    }

    /// What to send now, if the pacer allows anything. Call until `None`, then wait until
    /// [`GroupSender::next_deadline`].
    pub fn next(&mut self, now: Instant) -> Option<GroupSend> {
        if self.is_done() {
            return None;
        }
        let has_work = !self.wanted.is_empty() || self.next_source < self.datagrams;
        if has_work {
            if !self.pacer.take(self.datagram_bytes, now) {
                return None;
            }
            if let Some((&block, n)) = self.wanted.iter_mut().next() {
                *n -= 1;
                if *n == 0 {
                    self.wanted.remove(&block);
                }
                let bt = &mut self.per_block[block as usize];
                let repair = bt.repairs_sent;
                bt.repairs_sent += 1;
                bt.last_repair_at = Some(now);
                self.stats.repairs_sent += 1;
                return Some(GroupSend::Repair { block, repair });
            }
            let index = self.next_source;
            self.next_source += 1;
            self.stats.sources_sent += 1;
            let block = self.plan.block_of(index);
            if self.plan.sources(block).end == self.next_source {
                let n = if self.repairs {
                    self.proactive.min(self.plan.parity)
                } else {
                    0
                };
                if n > 0 {
                    self.wanted.insert(block, n);
                    self.stats.proactive_repairs += n as u64;
                }
            }
            if self.next_source == self.datagrams {
                self.sources_done_at = Some(now);
            }
            return Some(GroupSend::Source(index));
        }
        // Every source sent, no repair waiting: GROUP_END, three times 5 ms apart; then,
        // once no lack has come for `linger`, GROUP_END last, three times.
        let done_at = *self.sources_done_at.get_or_insert(now);
        if self.next_end_at.is_some_and(|t| now < t) {
            return None;
        }
        let quiet_since = self.last_lack_at.map_or(done_at, |t| t.max(done_at));
        let last = self.ends_sent >= 3 || !self.repairs;
        if last && self.repairs && now.saturating_duration_since(quiet_since) < self.linger {
            self.next_end_at = Some(quiet_since + self.linger);
            return None;
        }
        if !self.is_done() {
            self.ends_sent += 1;
            self.next_end_at = Some(now + Duration::from_millis(5));
            return Some(GroupSend::End { last });
        }
        None
    }

    /// When [`GroupSender::next`] may have something again.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.is_done() {
            return None;
        }
        if !self.wanted.is_empty() || self.next_source < self.datagrams {
            return Some(self.pacer.ready_at(self.datagram_bytes));
        }
        self.next_end_at
    }

    /// A member's `FEEDBACK`.
    pub fn on_feedback(&mut self, fb: &Feedback<'_>, now: Instant) {
        let passed = self.next_block();
        let Some(m) = self.members.get_mut(&fb.session) else {
            self.stats.feedback_dropped += 1;
            return;
        };
        if m.last_feedback
            .is_some_and(|t| now.saturating_duration_since(t) < self.interval / 2)
        {
            self.stats.feedback_dropped += 1;
            return;
        }
        self.stats.feedback_received += 1;
        m.last_feedback = Some(now);
        m.whole_below = fb.whole_below.min(self.blocks);
        m.seen_end = fb.seen_end.min(self.blocks);
        let first_block = m.first_block;
        self.measure(fb.session, fb, now);
        self.adapt(now);
        if !self.members.contains_key(&fb.session) {
            // Moved to unicast just now: its lacks are unicast's.
            return;
        }
        if !self.repairs {
            return;
        }
        // How long a repair may be on its way: until the receiver would report again.
        let in_flight_for = repeat_after(self.interval);
        for lack in fb.lacks() {
            let b = lack.block;
            // Only blocks the transmission has passed (all sources sent), from the member's first.
            let passed_block = b < passed || self.next_source >= self.datagrams;
            if b >= self.blocks || b < first_block || !passed_block {
                self.stats.lacks_ignored += 1;
                continue;
            }
            let bt = self.per_block[b as usize];
            let sent = bt.repairs_sent as u32;
            let recent = bt
                .last_repair_at
                .is_some_and(|t| now.saturating_duration_since(t) < in_flight_for);
            let on_the_way = if recent {
                sent.saturating_sub(lack.repairs_seen as u32)
            } else {
                0
            };
            let queued = self.wanted.get(&b).copied().unwrap_or(0);
            let need = (lack.missing as u32).saturating_sub(on_the_way);
            let room = self.plan.parity.saturating_sub(sent);
            if need > room {
                self.stats.repairs_refused += (need - room) as u64;
            }
            let target = need.min(room);
            if target > 0 {
                // Repairs are still wanted and possible: the transmission is not over. (A
                // block at its parity no longer holds it open: that lack is unicast's.)
                self.last_lack_at = Some(now);
            }
            if target > queued {
                self.wanted.insert(b, target);
                self.stats.reactive_repairs += (target - queued) as u64;
            }
        }
    }
}
