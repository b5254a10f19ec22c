//! Receiver-side loss tracking: which datagrams of a file have arrived, which are missing.
//!
//! One bit per datagram. `recv_next` (everything below is in) and `seen_end` (one past the
//! highest index seen) bound the region where holes can be; the NACK ranges of an `ACK` are
//! the zero runs inside it. [`RepairClock`] times how long each hole stays open. Pure logic,
//! no I/O: tested here, driven by the client's receive path.

use std::collections::BTreeMap;

use super::NackRange;

#[derive(Debug, Clone)]
pub struct LossTracker {
    total: u32,
    bits: Vec<u64>,
    received: u32,
    recv_next: u32,
    seen_end: u32,
}

impl LossTracker {
    /// A tracker for a file of `total` datagrams.
    pub fn new(total: u32) -> Self {
        LossTracker {
            total,
            bits: vec![0; (total as usize).div_ceil(64)],
            received: 0,
            recv_next: 0,
            seen_end: 0,
        }
    }

    pub fn total(&self) -> u32 {
        self.total
    }

    pub fn received(&self) -> u32 {
        self.received
    }

    /// Lowest index not yet received (== total when complete).
    pub fn recv_next(&self) -> u32 {
        self.recv_next
    }

    /// One past the highest index received.
    pub fn seen_end(&self) -> u32 {
        self.seen_end
    }

    pub fn is_complete(&self) -> bool {
        self.received == self.total
    }

    pub fn contains(&self, index: u32) -> bool {
        index < self.total && self.bits[index as usize / 64] & (1 << (index % 64)) != 0
    }

    /// Records `index`; returns false if it was already there (a duplicate) or out of range.
    pub fn insert(&mut self, index: u32) -> bool {
        if index >= self.total || self.contains(index) {
            return false;
        }
        self.bits[index as usize / 64] |= 1 << (index % 64);
        self.received += 1;
        self.seen_end = self.seen_end.max(index + 1);
        if index == self.recv_next {
            self.advance();
        }
        true
    }

    fn advance(&mut self) {
        let mut i = self.recv_next;
        while i < self.total {
            let word = self.bits[i as usize / 64] >> (i % 64);
            let ones = (!word).trailing_zeros().min(64 - i % 64);
            i += ones;
            if ones == 0 || !i.is_multiple_of(64) {
                break;
            }
        }
        self.recv_next = i.min(self.total);
    }

    /// Appends the missing runs inside `[recv_next, up_to)` to `out`, at most `max` of them.
    /// `up_to` is clamped to the file; the client passes `seen_end`, or `total` once the
    /// sender has said it sent everything.
    pub fn nack_ranges(&self, up_to: u32, max: usize, out: &mut Vec<NackRange>) {
        self.nack_ranges_from(self.recv_next, up_to, max, out);
    }

    /// The NACK ranges of a receiver's next ACK, into `out`: every hole up to `seen_end`,
    /// oldest first, in every ACK while they fit in `max` ranges. The sender declares a hole
    /// lost only once a datagram sent well after it has arrived, often several ACKs after
    /// the hole was first listed, so a hole must be listed until it is filled (listed once,
    /// then dropped while new data kept coming, it waited for a probe: repairs of 0.6 s on a
    /// 100 ms path). More holes than fit: `cursor` remembers where this ACK stopped and the
    /// next goes on from there, so all are heard of within a few ACKs.
    pub fn ack_ranges(&self, cursor: &mut u32, max: usize, out: &mut Vec<NackRange>) {
        let end = self.seen_end();
        let from = if *cursor >= end { 0 } else { *cursor };
        let stopped = self.nack_ranges_from(from, end, max, out);
        *cursor = if stopped >= end { 0 } else { stopped };
    }

    /// Like [`LossTracker::nack_ranges`], from `from` (at least `recv_next`) on. Returns where
    /// the scan stopped: `up_to` when it found fewer than `max`, else the end of the last run
    /// (where [`LossTracker::ack_ranges`] resumes in the next ACK).
    fn nack_ranges_from(&self, from: u32, up_to: u32, max: usize, out: &mut Vec<NackRange>) -> u32 {
        let end = up_to.min(self.total);
        let mut i = from.max(self.recv_next);
        let mut found = 0;
        while i < end && found < max {
            // Skip received datagrams a word at a time.
            let w = self.bits[i as usize / 64] >> (i % 64);
            let ones = (!w).trailing_zeros().min(64 - i % 64);
            if ones > 0 {
                i += ones;
                continue;
            }
            let start = i;
            while i < end && !self.contains(i) {
                let w = self.bits[i as usize / 64] >> (i % 64);
                let zeros = w.trailing_zeros().min(64 - i % 64);
                i += zeros.max(1);
            }
            let stop = i.min(end);
            out.push(NackRange {
                start,
                len: stop - start,
            });
            found += 1;
        }
        if found < max {
            end
        } else {
            i.min(end)
        }
    }

    /// Number of datagrams never received.
    pub fn missing(&self) -> u32 {
        self.total - self.received
    }
}

/// Times loss repair: from the arrival that revealed a hole (an index past the highest seen)
/// to the arrival that fills it. Holes are forgotten once everything below their end is in,
/// so its memory is bounded by the holes open at once, not by the file.
#[derive(Debug, Default)]
pub struct RepairClock {
    /// Open holes: start -> (end, when the arrival that revealed it came, ns). Disjoint and
    /// increasing: a new hole always starts at the highest index seen so far.
    holes: BTreeMap<u32, (u32, u64)>,
}

impl RepairClock {
    /// Call for each new intact datagram `index` arriving at `arrival_ns`, *before* it is
    /// recorded in `tracker`. Returns how long the hole it fills was open (ns), if it fills one.
    pub fn on_arrival(
        &mut self,
        tracker: &LossTracker,
        index: u32,
        arrival_ns: u64,
    ) -> Option<u64> {
        let seen_end = tracker.seen_end();
        if index > seen_end {
            self.holes.insert(seen_end, (index, arrival_ns));
            return None;
        }
        if index == seen_end {
            return None;
        }
        let (_, &(end, opened)) = self.holes.range(..=index).next_back()?;
        (index < end).then(|| arrival_ns.saturating_sub(opened))
    }

    /// Forgets every hole that lies wholly below `recv_next` (all of it has arrived).
    pub fn prune(&mut self, recv_next: u32) {
        while let Some(entry) = self.holes.first_entry() {
            if entry.get().0 > recv_next {
                break;
            }
            entry.remove();
        }
    }

    /// Holes still remembered.
    pub fn open_holes(&self) -> usize {
        self.holes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ranges(t: &LossTracker, up_to: u32) -> Vec<(u32, u32)> {
        let mut v = Vec::new();
        t.nack_ranges(up_to, usize::MAX, &mut v);
        v.iter().map(|r| (r.start, r.len)).collect()
    }

    #[test]
    fn in_order_advances_recv_next() {
        let mut t = LossTracker::new(200);
        for i in 0..130 {
            assert!(t.insert(i));
            assert_eq!(t.recv_next(), i + 1);
        }
        assert!(!t.insert(5), "duplicate accepted");
        assert!(!t.insert(200), "out of range accepted");
        assert_eq!(t.received(), 130);
    }

    #[test]
    fn holes_become_nack_ranges() {
        let mut t = LossTracker::new(300);
        for i in (0..300).filter(|i| !(10..13).contains(i) && *i != 70 && !(128..200).contains(i)) {
            t.insert(i);
        }
        assert_eq!(t.recv_next(), 10);
        assert_eq!(t.seen_end(), 300);
        assert_eq!(ranges(&t, t.seen_end()), vec![(10, 3), (70, 1), (128, 72)]);
        let mut few = Vec::new();
        t.nack_ranges(300, 2, &mut few);
        assert_eq!(few.len(), 2);
        for i in [10, 11, 12, 70] {
            t.insert(i);
        }
        assert_eq!(t.recv_next(), 128);
        for i in 128..200 {
            t.insert(i);
        }
        assert!(t.is_complete());
        assert_eq!(t.recv_next(), 300);
        assert!(ranges(&t, 300).is_empty());
    }

    #[test]
    fn many_holes_are_reported_a_window_at_a_time() {
        let mut t = LossTracker::new(1000);
        for i in (0..1000).filter(|i| i % 3 != 1) {
            t.insert(i);
        }
        // 333 holes, 128 per ACK: three ACKs cover them all, in order, then it starts over.
        let (mut from, mut seen) = (0, Vec::new());
        for _ in 0..3 {
            let mut out = Vec::new();
            from = t.nack_ranges_from(from, 1000, 128, &mut out);
            seen.extend(out.iter().map(|r| r.start));
        }
        assert_eq!(from, 1000);
        assert_eq!(seen, (0..1000).filter(|i| i % 3 == 1).collect::<Vec<u32>>());
    }

    #[test]
    fn a_hole_is_listed_in_every_ack_until_it_is_filled() {
        // One hole, then data keeps arriving: each ACK lists it again (it used to be listed
        // once, the cursor then moving past it).
        let mut t = LossTracker::new(1000);
        t.insert(0);
        let mut cursor = 0;
        for next in 2..50 {
            t.insert(next);
            let mut out = Vec::new();
            t.ack_ranges(&mut cursor, 128, &mut out);
            assert_eq!(out, vec![NackRange { start: 1, len: 1 }], "after {next}");
        }
        t.insert(1);
        let mut out = Vec::new();
        t.ack_ranges(&mut cursor, 128, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn more_holes_than_an_ack_holds_take_turns() {
        let mut t = LossTracker::new(1000);
        for i in (0..1000).filter(|i| i % 3 != 1) {
            t.insert(i);
        }
        // 333 holes, 128 per ACK: three ACKs list them all, then the oldest come first again.
        let (mut cursor, mut seen) = (0, Vec::new());
        for _ in 0..3 {
            let mut out = Vec::new();
            t.ack_ranges(&mut cursor, 128, &mut out);
            seen.extend(out.iter().map(|r| r.start));
        }
        assert_eq!(seen, (0..1000).filter(|i| i % 3 == 1).collect::<Vec<u32>>());
        let mut out = Vec::new();
        t.ack_ranges(&mut cursor, 128, &mut out);
        assert_eq!(out[0].start, 1);
    }

    #[test]
    fn tail_is_reported_when_asked_up_to_total() {
        let mut t = LossTracker::new(10);
        for i in 0..6 {
            t.insert(i);
        }
        assert!(ranges(&t, t.seen_end()).is_empty());
        assert_eq!(ranges(&t, 10), vec![(6, 4)]);
        assert_eq!(ranges(&t, 1000), vec![(6, 4)]);
    }

    #[test]
    fn empty_file_is_complete() {
        let t = LossTracker::new(0);
        assert!(t.is_complete());
        assert_eq!(t.recv_next(), 0);
    }

    #[test]
    fn repair_clock_times_holes_and_forgets_filled_ones() {
        let mut t = LossTracker::new(10_000);
        let mut clock = RepairClock::default();
        let mut repairs = Vec::new();
        let mut arrive = |t: &mut LossTracker, clock: &mut RepairClock, i: u32, at: u64| {
            if let Some(d) = clock.on_arrival(t, i, at) {
                repairs.push(d);
            }
            t.insert(i);
            clock.prune(t.recv_next());
        };
        // Every tenth datagram is lost, then repaired 50 units later.
        for i in 0..10_000u32 {
            if i % 10 != 3 {
                arrive(&mut t, &mut clock, i, i as u64);
            }
            if i >= 50 && (i - 50) % 10 == 3 {
                arrive(&mut t, &mut clock, i - 50, i as u64);
            }
            // Never more than the holes a 50-datagram repair delay can keep open.
            assert!(
                clock.open_holes() <= 6,
                "{} holes kept at {i}",
                clock.open_holes()
            );
        }
        for i in (9_950..10_000).filter(|i| i % 10 == 3) {
            arrive(&mut t, &mut clock, i, 20_000);
        }
        assert!(t.is_complete());
        assert_eq!(clock.open_holes(), 0, "holes kept after the copy completed");
        assert_eq!(repairs.len(), 1000);
        assert!(
            repairs[..995].iter().all(|&d| d == 49),
            "{:?}",
            &repairs[..5]
        );
    }

    proptest! {
        #[test]
        fn matches_a_naive_model(total in 0u32..400, picks in proptest::collection::vec(0u32..450, 0..600)) {
            let mut t = LossTracker::new(total);
            let mut model = vec![false; total as usize];
            for p in picks {
                let fresh = p < total && !model[p as usize];
                prop_assert_eq!(t.insert(p), fresh);
                if fresh { model[p as usize] = true; }
            }
            let next = model.iter().position(|b| !b).unwrap_or(total as usize) as u32;
            prop_assert_eq!(t.recv_next(), next);
            prop_assert_eq!(t.received() as usize, model.iter().filter(|b| **b).count());
            // Ranges: exactly the zero runs of the model in [recv_next, total).
            let mut expect = Vec::new();
            let mut i = next as usize;
            while i < total as usize {
                if model[i] { i += 1; continue; }
                let s = i;
                while i < total as usize && !model[i] { i += 1; }
                expect.push((s as u32, (i - s) as u32));
            }
            prop_assert_eq!(ranges(&t, total), expect);
        }
    }
}
