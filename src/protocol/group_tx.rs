//! A multicast transmission's sender, without sockets or clocks: what goes to the group next
//! (a source datagram, a repair of some block, the end marker), paced, and what receivers'
//! `FEEDBACK` changes.
//!
//! - Sources go out once, in order. After each block, `proactive` repairs follow at once: as
//!   many as recent blocks turned out to need (the median of the most any receiver lacked),
//!   so most blocks are whole without waiting for a round of feedback.
//! - A lack (block, missing, repairs seen) from a receiver asks for `missing` less the repairs
//!   sent after the ones it saw and so recently that they may still be on their way. The
//!   server sends a block the most any receiver still needs, not the sum: each repair heals a
//!   different loss at each receiver. No block gets more than the plan's `parity` repairs;
//!   a receiver that lacks more finishes by unicast.
//! - Feedback is bounded by its receivers (one per member per half interval is read, the rest
//!   dropped and counted); a lack for a block the transmission has not passed, or before the
//!   member joined, is ignored: a hostile member can make a block get at most its `parity`.
//! - When every source is sent, `GROUP_END` goes out; repairs continue while lacks come; after
//!   `linger` without one, `GROUP_END last` ends the transmission (three times).

use std::collections::{BTreeMap, HashMap, VecDeque};
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
    /// Members that joined (some may have left since).
    pub members_joined: u64,
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
    received: u64,
}

/// The least time between two feedbacks of one receiver, for a group of `members`: 10 ms,
/// and 0.1 ms more per member past 100, so the server reads at most ~10,000 feedbacks a
/// second however large the group (each covers up to 128 blocks), up to a second.
pub fn feedback_interval(members: usize) -> Duration {
    Duration::from_micros(100 * members as u64)
        .clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// How long a receiver waits before it reports a lack again, and so how long the server
/// counts the repairs it sent as still on their way: four feedback intervals, at least 50 ms
/// (a receiver thread on a loaded host may take tens of milliseconds to read what came).
pub fn repeat_after(interval: Duration) -> Duration {
    (interval * 4).max(Duration::from_millis(50))
}

/// How many recent blocks' needs set the proactive repair count.
const NEED_HISTORY: usize = 16;
/// A block's need is sampled this many blocks after it (its lacks have come in by then).
const NEED_LAG: u32 = 8;

#[derive(Debug, Clone, Copy, Default)]
struct BlockTx {
    /// Repairs sent (the next repair index), and when the last went.
    repairs_sent: u16,
    last_repair_at: Option<Instant>,
    /// Repairs sent right after the sources.
    proactive: u16,
    /// The most repairs receivers asked for beyond the proactive ones.
    extra_asked: u16,
}

pub struct GroupSender {
    plan: BlockPlan,
    blocks: u32,
    datagrams: u64,
    next_source: u64,
    per_block: Vec<BlockTx>,
    /// Repairs to send, per block, oldest block first.
    wanted: BTreeMap<u32, u32>,
    /// The most any receiver lacked of recent blocks (after the proactive repairs).
    needs: VecDeque<u32>,
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
            needs: VecDeque::new(),
            proactive: 0,
            members: HashMap::new(),
            pacer: Pacer::new(
                rate_bps,
                super::pacer::burst_for(rate_bps, datagram_bytes),
                now,
            ),
            datagram_bytes,
            interval,
            // Long enough for a receiver to have reported twice after the last repairs.
            linger: (interval * 6).max(Duration::from_millis(100)),
            sources_done_at: None,
            last_lack_at: None,
            ends_sent: 0,
            next_end_at: None,
            repairs: true,
            stats: GroupTxStats::default(),
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
                received: 0,
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
                self.per_block[block as usize].proactive = n as u16;
                if n > 0 {
                    self.wanted.insert(block, n);
                    self.stats.proactive_repairs += n as u64;
                }
                if let Some(old) = block.checked_sub(NEED_LAG) {
                    self.sample_need(old);
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
        m.received = fb.received;
        let first_block = m.first_block;
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
            let extra = (sent + target).saturating_sub(bt.proactive as u32) as u16;
            let bt = &mut self.per_block[b as usize];
            bt.extra_asked = bt.extra_asked.max(extra);
        }
    }

    /// Learns from `block` (sent [`NEED_LAG`] blocks ago) how many repairs to send with each
    /// block: what it needed if receivers asked for more than its proactive repairs, one less
    /// than those if nobody asked (so an unneeded count decays); the median of recent blocks.
    fn sample_need(&mut self, block: u32) {
        let bt = self.per_block[block as usize];
        let need = if bt.extra_asked > 0 {
            bt.proactive as u32 + bt.extra_asked as u32
        } else {
            (bt.proactive as u32).saturating_sub(1)
        };
        self.needs.push_back(need.min(self.plan.parity));
        if self.needs.len() > NEED_HISTORY {
            self.needs.pop_front();
        }
        let mut v: Vec<u32> = self.needs.iter().copied().collect();
        v.sort_unstable();
        self.proactive = v[v.len() / 2];
    }
}
