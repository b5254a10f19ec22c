//! A group transmission in simulated time: one [`GroupSender`], receivers each behind a
//! path with its own delay and independent random loss, their feedback coming back over the
//! same delay. Every byte a receiver ends with is checked against the file.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use super::fec::{BlockEncoder, BlockPlan};
use super::group_rx::{FeedbackReport, GroupReceiver};
use super::group_tx::{feedback_interval, GroupSend, GroupSender};
use super::message::Feedback;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// True with probability `permille` / 1000.
    fn chance(&mut self, permille: u32) -> bool {
        self.next() % 1000 < permille as u64
    }
}

#[derive(Clone, Copy)]
struct Path {
    delay: Duration,
    loss_permille: u32,
    /// Joins when the transmission reaches this block.
    join_at_block: u32,
}

enum Event {
    Deliver { to: usize, send: GroupSend },
    Feedback { from: usize, report: FeedbackReport },
}

struct Outcome {
    rx: Vec<GroupReceiver>,
    tx: GroupSender,
    /// Per receiver: its copy, `None` where it has nothing.
    copies: Vec<Vec<Option<Vec<u8>>>>,
    first_blocks: Vec<u32>,
    elapsed: Duration,
}

fn file(plan: &BlockPlan) -> Vec<Vec<u8>> {
    (0..plan.datagrams())
        .map(|i| {
            (0..plan.payload_len(i))
                .map(|j| (i as u8).wrapping_mul(29) ^ (j as u8).wrapping_mul(13))
                .collect()
        })
        .collect()
}

/// Runs a transmission of `plan` at `rate_bps` to receivers on `paths`, feedback every
/// `interval`, until the sender is done (or 60 simulated seconds).
fn run(plan: BlockPlan, rate_bps: u64, interval: Duration, paths: &[Path], seed: u64) -> Outcome {
    let data = file(&plan);
    let t0 = Instant::now();
    let mut now = t0;
    let mut rng = Rng(seed | 1);
    let mut tx = GroupSender::new(plan, rate_bps, interval, now);
    let mut rx: Vec<Option<GroupReceiver>> = paths.iter().map(|_| None).collect();
    let mut first_blocks = vec![u32::MAX; paths.len()];
    let mut copies: Vec<Vec<Option<Vec<u8>>>> =
        paths.iter().map(|_| vec![None; data.len()]).collect();
    let mut events: BinaryHeap<Reverse<(Instant, u64, usize)>> = BinaryHeap::new();
    let mut slab: HashMap<usize, Event> = HashMap::new();
    let mut seq = 0u64;
    let mut repairs: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
    let mut enc = BlockEncoder::new();
    let mut push = |events: &mut BinaryHeap<_>, slab: &mut HashMap<usize, Event>, at, e| {
        seq += 1;
        slab.insert(seq as usize, e);
        events.push(Reverse((at, seq, seq as usize)));
    };
    while !tx.is_done() && now < t0 + Duration::from_secs(60) {
        for (r, p) in paths.iter().enumerate() {
            if rx[r].is_none() && tx.next_block() >= p.join_at_block {
                first_blocks[r] = tx.join(r as u32);
                rx[r] = Some(GroupReceiver::new(
                    plan,
                    first_blocks[r],
                    interval,
                    64 << 20,
                    now,
                ));
            }
        }
        while let Some(send) = tx.next(now) {
            if let GroupSend::Repair { block, .. } = send {
                repairs.entry(block).or_insert_with(|| {
                    let mut out = Vec::new();
                    let range = plan.sources(block);
                    enc.encode(&plan, block, range.map(|i| &data[i as usize][..]), &mut out)
                        .unwrap();
                    out
                });
            }
            for (r, p) in paths.iter().enumerate() {
                if rx[r].is_some() && !rng.chance(p.loss_permille) {
                    push(
                        &mut events,
                        &mut slab,
                        now + p.delay,
                        Event::Deliver { to: r, send },
                    );
                }
            }
        }
        // Receivers' feedback due now.
        for (r, p) in paths.iter().enumerate() {
            let Some(g) = &mut rx[r] else { continue };
            if let Some(report) = g.feedback(now) {
                let at = now + p.delay;
                push(
                    &mut events,
                    &mut slab,
                    at,
                    Event::Feedback { from: r, report },
                );
            }
        }
        // Next moment anything happens.
        let mut next = now + Duration::from_millis(50);
        if let Some(t) = tx.next_deadline() {
            next = next.min(t);
        }
        for g in rx.iter().flatten() {
            next = next.min(g.next_deadline());
        }
        if let Some(Reverse((t, _, _))) = events.peek() {
            next = next.min(*t);
        }
        now = next.max(now);
        while let Some(Reverse((t, _, id))) = events.peek().copied() {
            if t > now {
                break;
            }
            events.pop();
            match slab.remove(&id).unwrap() {
                Event::Deliver { to, send } => {
                    let g = rx[to].as_mut().unwrap();
                    let copy = &mut copies[to];
                    match send {
                        GroupSend::Source(i) => {
                            copy[i as usize] = Some(data[i as usize].clone());
                            g.on_source(i, &data[i as usize], |j, s| {
                                copy[j as usize] = Some(s.to_vec())
                            });
                        }
                        GroupSend::Repair { block, repair } => {
                            let shard = &repairs[&block][repair as usize];
                            let k = plan.sources(block).count() as u16;
                            g.on_repair(block, repair, k, shard, |j, s| {
                                copy[j as usize] = Some(s.to_vec())
                            });
                        }
                        GroupSend::End { last } => g.on_end(last, now),
                    }
                }
                Event::Feedback { from, report } => {
                    let mut scratch = Vec::new();
                    let fb = Feedback {
                        session: from as u32,
                        group: 1,
                        whole_below: report.whole_below,
                        seen_end: report.seen_end,
                        sources_received: report.sources_received,
                        lacks: Default::default(),
                    }
                    .with_lacks(&report.lacks, &mut scratch);
                    tx.on_feedback(&fb, now);
                    // A member moved to unicast is told by a GROUP_END last of its own.
                    for s in tx.take_evicted() {
                        let at = now + paths[s as usize].delay;
                        let send = GroupSend::End { last: true };
                        push(
                            &mut events,
                            &mut slab,
                            at,
                            Event::Deliver {
                                to: s as usize,
                                send,
                            },
                        );
                    }
                }
            }
        }
    }
    let elapsed = now - t0;
    Outcome {
        rx: rx.into_iter().map(Option::unwrap).collect(),
        tx,
        copies,
        first_blocks,
        elapsed,
    }
}

/// Every receiver's copy holds the file from its first block on.
fn check_copies(copies: &[Vec<Option<Vec<u8>>>], first_blocks: &[u32], plan: &BlockPlan) {
    let data = file(plan);
    for (r, copy) in copies.iter().enumerate() {
        let from = plan.sources(first_blocks[r]).start as usize;
        for (i, got) in copy.iter().enumerate().skip(from) {
            assert_eq!(
                got.as_deref(),
                Some(&data[i][..]),
                "receiver {r} datagram {i}"
            );
        }
    }
}

const ETH: u32 = 1440;

#[test]
fn ten_receivers_each_losing_2_percent_get_whole_copies_for_a_few_percent_of_repairs() {
    let plan = BlockPlan::for_file(16 << 20, ETH);
    let path = Path {
        delay: Duration::from_micros(200),
        loss_permille: 20,
        join_at_block: 0,
    };
    let o = run(
        plan,
        1_000_000_000,
        Duration::from_millis(10),
        &[path; 10],
        7,
    );
    check_copies(&o.copies, &o.first_blocks, &plan);
    assert!(o.rx.iter().all(|g| g.is_whole() && g.is_over()));
    let s = o.tx.stats;
    let repairs = s.proactive_repairs + s.reactive_repairs;
    let sources = plan.datagrams();
    // Repairing the union would cost 1-(1-p)^10 = 18%; the worst receiver per block loses
    // ~4.5% of 256 (the mean is 2%): a few percent, not the union.
    eprintln!(
        "measured: 10 x 2% loss: {repairs} repairs for {sources} sources ({:.1}%), {:?}, {:?} simulated",
        100.0 * repairs as f64 / sources as f64,
        s,
        o.elapsed
    );
    assert!(repairs as f64 / (sources as f64) < 0.08, "{s:?}");
    assert!(repairs as f64 / (sources as f64) > 0.02, "{s:?}");
    // Each receiver rebuilt what it lost, and used its repairs.
    for g in &o.rx {
        assert!(
            g.stats.rebuilt > 0 && g.stats.blocks_rebuilt > 0,
            "{:?}",
            g.stats
        );
    }
    // Feedback: at most one per interval per receiver (plus the end's).
    let bound = 10 * (o.elapsed.as_millis() as u64 / 10 + 2);
    assert!(s.feedback_received <= bound, "{s:?} {bound}");
}

#[test]
fn a_loss_free_group_needs_no_repairs_and_sends_each_source_once() {
    let plan = BlockPlan::for_file(4 << 20, ETH);
    let path = Path {
        delay: Duration::from_millis(1),
        loss_permille: 0,
        join_at_block: 0,
    };
    let o = run(plan, 500_000_000, Duration::from_millis(10), &[path; 3], 3);
    check_copies(&o.copies, &o.first_blocks, &plan);
    let s = o.tx.stats;
    assert_eq!(s.sources_sent, plan.datagrams());
    assert_eq!(s.proactive_repairs + s.reactive_repairs, 0, "{s:?}");
    assert!(o.rx.iter().all(|g| g.is_whole() && g.stats.rebuilt == 0));
}

#[test]
fn a_late_joiner_gets_every_block_from_its_first_and_a_heavy_loser_does_not_slow_the_rest() {
    let plan = BlockPlan::for_file(8 << 20, ETH);
    let ok = Path {
        delay: Duration::from_micros(300),
        loss_permille: 10,
        join_at_block: 0,
    };
    let late = Path {
        join_at_block: 10,
        ..ok
    };
    // 40% loss: more than a block's parity can heal; it finishes by unicast.
    let heavy = Path {
        loss_permille: 400,
        ..ok
    };
    let o = run(
        plan,
        1_000_000_000,
        Duration::from_millis(10),
        &[ok, ok, late, heavy],
        11,
    );
    assert_eq!(o.first_blocks[2], 10);
    check_copies(&o.copies[..3], &o.first_blocks[..3], &plan);
    assert!(o.rx[..3].iter().all(|g| g.is_whole()));
    assert!(
        !o.rx[3].is_whole(),
        "40% loss cannot be healed by a quarter of parity"
    );
    let s = o.tx.stats;
    assert!(s.repairs_refused > 0, "{s:?}");
    // No block got more than its parity: the heavy loser cannot make the group send more.
    assert!(
        s.proactive_repairs + s.reactive_repairs <= plan.blocks() as u64 * plan.parity as u64,
        "{s:?}"
    );
    // The transmission ended within a second of simulated time (8 MiB at 1 Gbit/s: 70 ms).
    assert!(o.elapsed < Duration::from_secs(1), "{:?}", o.elapsed);
}

/// A member claiming to lack every datagram of every block, as fast as it can: each block
/// gets at most its parity, lacks for blocks not yet sent are ignored, feedback faster than
/// half an interval is dropped, and a session that is not a member is not heard.
#[test]
fn hostile_feedback_cannot_make_the_group_send_more_than_parity_per_block() {
    let plan = BlockPlan::for_file(2 << 20, ETH);
    let t = Instant::now();
    let mut tx = GroupSender::new(plan, 10_000_000_000, Duration::from_millis(10), t);
    tx.join(7);
    let mut now = t;
    let mut sent_repairs = 0u64;
    let mut lacks = Vec::new();
    let all: Vec<super::message::Lack> = (0..plan.blocks())
        .map(|block| super::message::Lack {
            block,
            missing: u16::MAX,
            repairs_seen: 0,
        })
        .collect();
    let mut steps = 0;
    for step in 0..2000 {
        steps += 1;
        for session in [7, 8] {
            let fb = Feedback {
                session,
                group: 1,
                whole_below: 0,
                seen_end: 0,
                sources_received: 0,
                lacks: Default::default(),
            }
            .with_lacks(&all, &mut lacks);
            tx.on_feedback(&fb, now);
        }
        while let Some(s) = tx.next(now) {
            if matches!(s, GroupSend::Repair { .. }) {
                sent_repairs += 1;
            }
        }
        now += Duration::from_millis(1);
        if tx.is_done() && step > 100 {
            break;
        }
    }
    let s = tx.stats;
    assert!(
        sent_repairs <= plan.blocks() as u64 * plan.parity as u64,
        "{sent_repairs} {s:?}"
    );
    // One every millisecond from each: the member's is read once per half interval (5 ms),
    // the non-member's never.
    assert_eq!(s.feedback_received + s.feedback_dropped, 2 * steps, "{s:?}");
    assert!(s.feedback_received <= steps / 5 + 1, "{steps} {s:?}");
    assert!(
        s.lacks_ignored > 0,
        "lacks for blocks not yet passed: {s:?}"
    );
}

/// A receiver that may hold little gives blocks up (their gaps go to unicast) instead of
/// growing; nothing panics.
#[test]
fn a_receiver_short_of_memory_gives_blocks_up() {
    let plan = BlockPlan::for_file(4 << 20, ETH);
    let t = Instant::now();
    let mut g = GroupReceiver::new(plan, 0, Duration::from_millis(10), 100_000, t);
    let data = file(&plan);
    // Every block loses its first datagram: nothing can settle without repairs.
    for (i, d) in data.iter().enumerate() {
        if plan.sources(plan.block_of(i as u64)).start != i as u64 {
            g.on_source(i as u64, d, |_, _| panic!("nothing to rebuild"));
        }
    }
    assert!(
        g.stats.blocks_given_up >= plan.blocks() as u64 - 1,
        "{:?}",
        g.stats
    );
    assert!(!g.is_whole());
}

/// A hundred receivers: far fewer feedback datagrams than one per receiver per block, and
/// at most one per receiver per interval; every copy whole.
#[test]
fn feedback_from_a_hundred_receivers_is_bounded() {
    let plan = BlockPlan::for_file(8 << 20, ETH);
    let path = Path {
        delay: Duration::from_micros(500),
        loss_permille: 20,
        join_at_block: 0,
    };
    let receivers = 100;
    let interval = feedback_interval(receivers);
    let o = run(plan, 1_000_000_000, interval, &vec![path; receivers], 5);
    check_copies(&o.copies, &o.first_blocks, &plan);
    assert!(o.rx.iter().all(|g| g.is_whole()));
    let s = o.tx.stats;
    let per_block = s.feedback_received as f64 / plan.blocks() as f64;
    eprintln!(
        "measured: {receivers} receivers x 2% loss, {} blocks: {} feedbacks ({per_block:.1} per block), {} repairs, {:?} simulated",
        plan.blocks(),
        s.feedback_received,
        s.proactive_repairs + s.reactive_repairs,
        o.elapsed
    );
    assert!(per_block < receivers as f64 / 2.0, "{s:?}");
    let by_interval = receivers as u64 * (o.elapsed.as_micros() / interval.as_micros() + 2) as u64;
    assert!(s.feedback_received <= by_interval, "{s:?}");
}

/// Blast over multicast: every source once, no repair whatever the receivers lack, and the
/// end marker right after the sources; each receiver's loss is what it is.
#[test]
fn a_blast_transmission_sends_once_and_repairs_nothing() {
    let plan = BlockPlan::for_file(2 << 20, ETH);
    let t = Instant::now();
    let mut tx =
        GroupSender::new(plan, 10_000_000_000, Duration::from_millis(10), t).without_repairs();
    tx.join(1);
    let mut now = t;
    let (mut sources, mut ends) = (0, 0);
    let mut lacks = Vec::new();
    while !tx.is_done() && now < t + Duration::from_secs(5) {
        while let Some(s) = tx.next(now) {
            match s {
                GroupSend::Source(_) => sources += 1,
                GroupSend::Repair { .. } => panic!("blast repairs nothing"),
                GroupSend::End { last } => {
                    assert!(last);
                    ends += 1
                }
            }
        }
        let fb = Feedback {
            session: 1,
            group: 1,
            whole_below: 0,
            seen_end: 0,
            sources_received: 0,
            lacks: Default::default(),
        }
        .with_lacks(
            &[super::message::Lack {
                block: 0,
                missing: 10,
                repairs_seen: 0,
            }],
            &mut lacks,
        );
        tx.on_feedback(&fb, now);
        now += Duration::from_millis(1);
    }
    assert_eq!((sources, ends), (plan.datagrams(), 3));
    assert!(now < t + Duration::from_millis(100), "{:?}", now - t);
}

/// Ten members losing 1% and one losing 15%: the lossy one is no longer served within a few
/// loss windows, so its repairs stop costing the others; they finish whole, with few repairs,
/// and the group's pace stays where it was.
#[test]
fn a_member_losing_far_more_than_the_rest_is_moved_to_unicast() {
    let plan = BlockPlan::for_file(64 << 20, ETH);
    let ok = Path {
        delay: Duration::from_micros(300),
        loss_permille: 10,
        join_at_block: 0,
    };
    let lossy = Path {
        loss_permille: 150,
        ..ok
    };
    let mut paths = vec![ok; 10];
    paths.push(lossy);
    let o = run(plan, 1_000_000_000, Duration::from_millis(10), &paths, 21);
    let s = o.tx.stats;
    assert_eq!(s.members_evicted, 1, "{s:?}");
    assert!(
        o.rx[10].is_over() && !o.rx[10].is_whole(),
        "the lossy one finishes by unicast"
    );
    check_copies(&o.copies[..10], &o.first_blocks[..10], &plan);
    assert!(o.rx[..10].iter().all(|g| g.is_whole()));
    let repairs = s.proactive_repairs + s.reactive_repairs;
    eprintln!(
        "measured: 10 x 1% + 1 x 15%: {repairs} repairs for {} sources, {s:?}",
        plan.datagrams()
    );
    assert!((repairs as f64) < 0.08 * plan.datagrams() as f64, "{s:?}");
    assert_eq!(o.tx.rate_bps(), 1_000_000_000, "1% loss is no congestion");
}

/// Every member losing 20% (the sender's pace too much for their paths): the group slows
/// down, and nobody is singled out.
#[test]
fn a_group_whose_members_all_lose_much_slows_down() {
    let plan = BlockPlan::for_file(32 << 20, ETH);
    let path = Path {
        delay: Duration::from_micros(300),
        loss_permille: 200,
        join_at_block: 0,
    };
    let o = run(
        plan,
        1_000_000_000,
        Duration::from_millis(10),
        &[path; 4],
        9,
    );
    assert!(o.tx.rate_bps() < 500_000_000, "{}", o.tx.rate_bps());
    assert_eq!(o.tx.stats.members_evicted, 0);
}
