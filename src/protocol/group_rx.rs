//! A multicast receiver's view of the transmission, block by block: which blocks are whole,
//! what the incomplete ones hold (their sources and repairs, kept until the block can be
//! rebuilt), and the `FEEDBACK` that tells the server what is still lacking. Pure logic: the
//! client's receive path checks each datagram (CRC, offset, length) and writes sources to the
//! copy itself, then hands them here; rebuilt sources come back through a callback to be
//! written the same way.
//!
//! A block is reported lacking once the transmission has visibly passed it (a datagram of a
//! block two further on has arrived, or the transmission ended), at most once per
//! `repeat_after` (the server subtracts what it already sent after the repairs seen), and at
//! most [`MAX_FEEDBACK_BLOCKS`] blocks per `FEEDBACK`, the oldest first. What the receiver
//! holds is bounded: past `max_pending_bytes` the oldest incomplete block is given up (its
//! missing datagrams come by unicast at the end).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::fec::{BlockDecoder, BlockPlan};
use super::limits::MAX_FEEDBACK_BLOCKS;
use super::message::Lack;

/// What a group receiver counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct GroupRxStats {
    /// Source datagrams that arrived (first copies).
    pub sources: u64,
    /// Repair datagrams that arrived for a block still incomplete.
    pub repairs: u64,
    /// Repairs for blocks already whole (sent for other receivers).
    pub repairs_unneeded: u64,
    /// Sources rebuilt from repairs.
    pub rebuilt: u64,
    /// Blocks rebuilt (each needed at least one repair).
    pub blocks_rebuilt: u64,
    /// Datagrams received twice.
    pub duplicates: u64,
    /// Blocks given up to stay within memory (their gaps go to unicast).
    pub blocks_given_up: u64,
    /// `FEEDBACK`s produced, and lacks reported in them.
    pub feedback_sent: u64,
    pub lacks_reported: u64,
}

/// An incomplete block's datagrams.
struct Pending {
    sources: Vec<Option<Box<[u8]>>>,
    have_sources: usize,
    repairs: Vec<(usize, Box<[u8]>)>,
    /// 1 + the highest repair index received.
    repairs_seen: u16,
    bytes: usize,
}

/// The `FEEDBACK` fields a receiver sends (its session and the group are the caller's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackReport {
    pub whole_below: u32,
    pub seen_end: u32,
    /// Sources received of the blocks from the first to `seen_end - 1` (excluded): what the
    /// server measures this receiver's loss by.
    pub sources_received: u64,
    pub lacks: Vec<Lack>,
}

pub struct GroupReceiver {
    plan: BlockPlan,
    blocks: u32,
    first_block: u32,
    /// A bit per block: whole, or given up.
    settled: Vec<u64>,
    given_up: Vec<u64>,
    /// Every block in `[first_block, whole_below)` is settled.
    settled_below: u32,
    /// The newest block anything arrived for, plus one.
    seen_end: u32,
    pending: BTreeMap<u32, Pending>,
    pending_bytes: usize,
    max_pending_bytes: usize,
    ended: bool,
    last: bool,
    decoder: BlockDecoder,
    reported: HashMap<u32, Instant>,
    interval: Duration,
    repeat_after: Duration,
    next_feedback: Instant,
    last_sent: Option<Instant>,
    /// Sources received per block (first copies), and their sum over the blocks from the
    /// first to `counted_below`.
    source_counts: Vec<u16>,
    counted_below: u32,
    sources_counted: u64,
    pub stats: GroupRxStats,
}

/// How often a receiver with nothing lacking still reports its progress (liveness, and the
/// server's view of how far behind it is), in feedback intervals.
const PROGRESS_INTERVALS: u32 = 10;

impl GroupReceiver {
    /// A receiver that joined at `first_block`; `interval`: the least time between two
    /// feedbacks (`JOIN`'s `feedback_ms`).
    pub fn new(
        plan: BlockPlan,
        first_block: u32,
        interval: Duration,
        max_pending_bytes: usize,
        now: Instant,
    ) -> Self {
        let blocks = plan.blocks();
        let words = (blocks as usize).div_ceil(64);
        GroupReceiver {
            plan,
            blocks,
            first_block: first_block.min(blocks),
            settled: vec![0; words],
            given_up: vec![0; words],
            settled_below: first_block.min(blocks),
            seen_end: 0,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            max_pending_bytes,
            ended: false,
            last: false,
            decoder: BlockDecoder::new(),
            reported: HashMap::new(),
            interval,
            // A lack reported is not reported again before the server's repairs can have
            // come (the server counts them on their way as long).
            repeat_after: super::group_tx::repeat_after(interval),
            next_feedback: now + interval,
            last_sent: None,
            source_counts: vec![0; blocks as usize],
            counted_below: first_block.min(blocks),
            sources_counted: 0,
            stats: GroupRxStats::default(),
        }
    }

    pub fn plan(&self) -> &BlockPlan {
        &self.plan
    }

    /// Every block from the first this receiver was sent is whole (nothing given up).
    pub fn is_whole(&self) -> bool {
        (self.first_block..self.blocks).all(|b| self.is_whole_block(b))
    }

    /// The transmission said it will send no more repairs (`GROUP_END` with `last`).
    pub fn is_over(&self) -> bool {
        self.last
    }

    fn is_settled(&self, b: u32) -> bool {
        bit(&self.settled, b)
    }

    fn is_whole_block(&self, b: u32) -> bool {
        bit(&self.settled, b) && !bit(&self.given_up, b)
    }

    /// A source datagram (checked and written by the caller): `index`, its payload. Sources
    /// it lets be rebuilt go to `rebuilt(index, payload)`.
    pub fn on_source(&mut self, index: u64, payload: &[u8], rebuilt: impl FnMut(u64, &[u8])) {
        let block = self.plan.block_of(index);
        if block >= self.blocks {
            return;
        }
        self.seen(block);
        if self.is_settled(block) {
            self.stats.duplicates += 1;
            return;
        }
        let i = (index - self.plan.sources(block).start) as usize;
        let p = self.pending_for(block);
        if p.sources[i].is_some() {
            self.stats.duplicates += 1;
            return;
        }
        p.sources[i] = Some(payload.into());
        p.have_sources += 1;
        p.bytes += payload.len();
        self.pending_bytes += payload.len();
        self.source_counts[block as usize] += 1;
        self.stats.sources += 1;
        self.try_finish(block, rebuilt);
    }

    /// A repair datagram of `block` (its CRC checked by the caller): repair `repair`,
    /// `shard`. Ignored when its `k` disagrees with the plan's for the block.
    pub fn on_repair(
        &mut self,
        block: u32,
        repair: u16,
        k: u16,
        shard: &[u8],
        rebuilt: impl FnMut(u64, &[u8]),
    ) {
        let sources = self.plan.sources(block).count();
        if sources == 0
            || k as usize != sources
            || repair as u32 >= self.plan.parity
            || shard.len() != self.plan.shard_bytes()
        {
            return;
        }
        self.seen(block);
        if self.is_settled(block) {
            self.stats.repairs_unneeded += 1;
            return;
        }
        let p = self.pending_for(block);
        if p.repairs.iter().any(|&(j, _)| j == repair as usize) {
            self.stats.duplicates += 1;
            return;
        }
        p.repairs.push((repair as usize, shard.into()));
        p.repairs_seen = p.repairs_seen.max(repair + 1);
        p.bytes += shard.len();
        self.pending_bytes += shard.len();
        self.stats.repairs += 1;
        self.try_finish(block, rebuilt);
    }

    /// `GROUP_END`: the transmission has sent every block; `last`: no more repairs come.
    pub fn on_end(&mut self, last: bool, now: Instant) {
        if !self.ended {
            // Everything is passed now: report at once.
            self.next_feedback = now;
        }
        self.ended = true;
        self.last |= last;
    }

    fn seen(&mut self, block: u32) {
        self.seen_end = self.seen_end.max(block + 1);
    }

    fn pending_for(&mut self, block: u32) -> &mut Pending {
        let k = self.plan.sources(block).count();
        self.pending.entry(block).or_insert_with(|| Pending {
            sources: vec![None; k],
            have_sources: 0,
            repairs: Vec::new(),
            repairs_seen: 0,
            bytes: 0,
        })
    }

    /// Settles `block` if it is whole or can be rebuilt; then keeps what is held in bounds.
    fn try_finish(&mut self, block: u32, mut rebuilt: impl FnMut(u64, &[u8])) {
        let Some(p) = self.pending.get(&block) else {
            return;
        };
        let k = p.sources.len();
        if p.have_sources + p.repairs.len() >= k {
            if p.have_sources < k {
                let sources: Vec<(usize, &[u8])> = p
                    .sources
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| s.as_deref().map(|s| (i, s)))
                    .collect();
                let repairs: Vec<(usize, &[u8])> =
                    p.repairs.iter().map(|(j, s)| (*j, &s[..])).collect();
                let first = self.plan.sources(block).start;
                let mut n = 0;
                let decoded = self
                    .decoder
                    .decode(&self.plan, block, &sources, &repairs, |i, s| {
                        n += 1;
                        rebuilt(first + i as u64, s)
                    });
                if decoded.is_err() {
                    // Cannot happen with checked shards; the block is left to unicast.
                    self.give_up(block);
                    return;
                }
                self.stats.rebuilt += n;
                self.stats.blocks_rebuilt += 1;
            }
            self.settle(block, false);
        }
        while self.pending_bytes > self.max_pending_bytes {
            let Some(&oldest) = self.pending.keys().next() else {
                break;
            };
            self.give_up(oldest);
        }
    }

    fn give_up(&mut self, block: u32) {
        self.stats.blocks_given_up += 1;
        self.settle(block, true);
    }

    fn settle(&mut self, block: u32, given_up: bool) {
        if let Some(p) = self.pending.remove(&block) {
            self.pending_bytes -= p.bytes;
        }
        self.reported.remove(&block);
        set_bit(&mut self.settled, block);
        if given_up {
            set_bit(&mut self.given_up, block);
        }
        while self.settled_below < self.blocks && self.is_settled(self.settled_below) {
            self.settled_below += 1;
        }
    }

    /// When [`GroupReceiver::feedback`] next has something to say.
    pub fn next_deadline(&self) -> Instant {
        self.next_feedback
    }

    /// The `FEEDBACK` due at `now`, if any: the blocks passed and still lacking (not
    /// reported within `repeat_after`), oldest first; or, every ten intervals, progress alone.
    pub fn feedback(&mut self, now: Instant) -> Option<FeedbackReport> {
        if now < self.next_feedback {
            return None;
        }
        self.next_feedback = now + self.interval;
        // Passed: a block two further on has been seen, or the transmission ended.
        let passed_end = if self.ended {
            self.blocks
        } else {
            self.seen_end.saturating_sub(2)
        };
        let mut lacks = Vec::new();
        let mut b = self.settled_below;
        while b < passed_end && lacks.len() < MAX_FEEDBACK_BLOCKS {
            if !self.is_settled(b) {
                let recent = self
                    .reported
                    .get(&b)
                    .is_some_and(|&t| now.saturating_duration_since(t) < self.repeat_after);
                if !recent {
                    let k = self.plan.sources(b).count();
                    let (have, repairs_seen) = self.pending.get(&b).map_or((0, 0), |p| {
                        (p.have_sources + p.repairs.len(), p.repairs_seen)
                    });
                    lacks.push(Lack {
                        block: b,
                        missing: (k - have.min(k)) as u16,
                        repairs_seen,
                    });
                    self.reported.insert(b, now);
                }
            }
            b += 1;
        }
        let progress_due = self
            .last_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= self.interval * PROGRESS_INTERVALS);
        if lacks.is_empty() && !progress_due {
            return None;
        }
        self.last_sent = Some(now);
        let counted_end = self.seen_end.saturating_sub(1).min(self.blocks);
        while self.counted_below < counted_end {
            self.sources_counted += self.source_counts[self.counted_below as usize] as u64;
            self.counted_below += 1;
        }
        self.stats.feedback_sent += 1;
        self.stats.lacks_reported += lacks.len() as u64;
        Some(FeedbackReport {
            whole_below: self.settled_below,
            seen_end: self.seen_end,
            sources_received: self.sources_counted,
            lacks,
        })
    }
}

fn bit(bits: &[u64], i: u32) -> bool {
    bits.get(i as usize / 64)
        .is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn set_bit(bits: &mut [u64], i: u32) {
    if let Some(w) = bits.get_mut(i as usize / 64) {
        *w |= 1 << (i % 64);
    }
}
