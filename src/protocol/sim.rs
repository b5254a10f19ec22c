//! A discrete-event simulation of senders sharing one bottleneck, for testing the congestion
//! controller and loss detection in simulated time: deterministic, fast, independent of the
//! machine's load. Each flow is a real [`SenderState`] and a receiver that records arrivals
//! in a [`LossTracker`] and acknowledges as the client does (every two datagrams once 200 µs
//! have passed, and every 2 ms while idle). The link: a rate, a tail-drop queue, a propagation
//! delay each way, random loss and reordering on the data direction; optionally a token bucket
//! in front of it (as `tc tbf` shapes: what the bucket holds passes at once). A flow starts as
//! a server's session does once its client has answered META: that round trip seeds the
//! timeout before the first RTT sample.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::congestion::{CcKind, PathRecord};
use super::loss::LossTracker;
use super::sender::{NextDatagram, SenderConfig, SenderState};
use super::{Ack, Mode, NackRange, MAX_NACK_RANGES};

const EPOCH_NS: u64 = 1_000_000_000;
const HEADERS: usize = 32 + 28;
/// The wire behind a token bucket, bytes/s.
const LINE_BYTE_RATE: f64 = 10e9 / 8.0;

/// The path all flows share.
#[derive(Debug, Clone)]
pub struct Link {
    pub rate_bps: f64,
    /// Tail-drop queue in front of the bottleneck, bytes.
    pub queue_bytes: usize,
    /// One-way propagation delay (the RTT is twice this, plus queueing).
    pub delay: Duration,
    /// Random loss of data datagrams.
    pub loss: f64,
    /// Probability that a datagram is held back `reorder_hold` after the bottleneck.
    pub reorder: f64,
    pub reorder_hold: Duration,
    /// A token bucket of this many bytes shapes the link instead of serialisation at its
    /// rate (0: none): tokens accrue at the rate up to the bucket's size, and a datagram
    /// leaves as soon as the bucket holds its size, so a full bucket lets a burst of its size
    /// through at once (`tc tbf rate R burst B`; its `limit` is `queue_bytes`).
    pub bucket_bytes: usize,
}

/// The bottleneck's state: serialisation at the link's rate, or a token bucket.
struct Bottleneck {
    /// When the bottleneck is free again (serialisation) / the last departure (bucket).
    free: Duration,
    /// Bucket: tokens as of `free`, bytes.
    tokens: f64,
    /// Bucket: departures still queued, (time, bytes), and their total bytes.
    backlog: VecDeque<(Duration, usize)>,
    backlog_bytes: usize,
}

impl Bottleneck {
    /// When a datagram of `bytes` offered at `now` leaves the bottleneck, or `None` if the
    /// queue has no room for it.
    fn offer(&mut self, link: &Link, now: Duration, bytes: usize) -> Option<Duration> {
        let byte_rate = link.rate_bps / 8.0;
        if link.bucket_bytes == 0 {
            let start = self.free.max(now);
            let queued = (start - now).as_secs_f64() * byte_rate;
            if queued as usize + bytes > link.queue_bytes {
                return None;
            }
            self.free = start + Duration::from_secs_f64(bytes as f64 / byte_rate);
            return Some(self.free);
        }
        while self.backlog.front().is_some_and(|(t, _)| *t <= now) {
            let (_, b) = self.backlog.pop_front().expect("checked");
            self.backlog_bytes -= b;
        }
        if self.backlog_bytes + bytes > link.queue_bytes {
            return None;
        }
        let start = self.free.max(now);
        let bucket = link.bucket_bytes.max(bytes) as f64;
        let tokens = (self.tokens + (start - self.free).as_secs_f64() * byte_rate).min(bucket);
        // Tokens or not, the wire behind the bucket takes its time (veth's ~10 Gbit/s).
        let wire = bytes as f64 / LINE_BYTE_RATE;
        let wait = ((bytes as f64 - tokens).max(0.0) / byte_rate).max(wire);
        let leave = start + Duration::from_secs_f64(wait);
        self.tokens = tokens + wait * byte_rate - bytes as f64;
        self.free = leave;
        self.backlog.push_back((leave, bytes));
        self.backlog_bytes += bytes;
        Some(leave)
    }
}

/// One flow: when it starts and how much it sends.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    pub start: Duration,
    pub datagrams: u64,
    pub payload: u32,
    pub cc: CcKind,
    pub window: u32,
    /// What an earlier flow learned of the path, to start from.
    pub path: Option<PathRecord>,
}

/// What a flow did.
#[derive(Debug, Clone, Default)]
pub struct FlowResult {
    pub delivered_bytes: u64,
    pub sent: u64,
    pub retransmitted: u64,
    pub spurious: u64,
    pub duplicates: u64,
    /// Dropped by the bottleneck's full queue, and by random loss.
    pub queue_drops: u64,
    pub random_drops: u64,
    /// Queue drops per second of simulated time, from the flow's start.
    pub queue_drops_by_second: Vec<u64>,
    pub complete_at: Option<Duration>,
    /// Bytes delivered per second of simulated time, from each flow's start.
    pub delivered_by_second: Vec<u64>,
    /// What the flow learned of the path, at its end (or the simulation's).
    pub path: Option<PathRecord>,
    /// Probe timeouts that fired.
    pub probes: u64,
    /// The sender's view every 250 ms: (time, status, controller state, the capacity its
    /// trains measured, bits/s).
    pub trace: Vec<(Duration, super::Status, &'static str, Option<u64>)>,
}

#[derive(Debug)]
enum Ev {
    /// A sender looks at what it may send (the second field: its wake generation; a wake
    /// superseded by a later scheduling is ignored).
    Wake(usize, u64),
    /// A datagram left the bottleneck queue and reaches its receiver.
    Arrive {
        flow: usize,
        index: u32,
        send_ts: u64,
    },
    AckArrive {
        flow: usize,
        ack: AckData,
    },
    IdleAck(usize),
}

#[derive(Debug, Clone)]
struct AckData {
    recv_next: u32,
    credit: u32,
    seen_end: u32,
    received: u32,
    duplicates: u32,
    echo_ts: u64,
    echo_delay_us: u32,
    idle: bool,
    ranges: Vec<NackRange>,
}

struct Receiver {
    tracker: LossTracker,
    duplicates: u32,
    echo_ts: u64,
    echo_at: Duration,
    since_ack: u32,
    last_ack: Duration,
    last_arrival: Duration,
    window: u32,
    idle_pending: bool,
    nack_cursor: u32,
}

/// Pending events by time (FIFO among equal times); payloads in reused slots.
#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    store: Vec<Option<Ev>>,
    free: Vec<usize>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        assert!(self.seq < 100_000_000, "event storm");

        let slot = match self.free.pop() {
            Some(k) => {
                self.store[k] = Some(ev);
                k
            }
            None => {
                self.store.push(Some(ev));
                self.store.len() - 1
            }
        };
        self.heap.push(Reverse((at, self.seq, slot)));
    }

    fn pop(&mut self) -> Option<(Duration, Ev)> {
        let Reverse((at, _, slot)) = self.heap.pop()?;
        self.free.push(slot);
        Some((at, self.store[slot].take().expect("each event once")))
    }
}

/// Runs `flows` over `link` for `duration` of simulated time.
pub fn run(link: &Link, flows: &[Flow], duration: Duration, seed: u64) -> Vec<FlowResult> {
    let base = Instant::now();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut q = Queue::default();
    let mut senders: Vec<Option<SenderState>> = flows.iter().map(|_| None).collect();
    let mut receivers: Vec<Receiver> = flows
        .iter()
        .map(|f| Receiver {
            tracker: LossTracker::new(f.datagrams as u32),
            duplicates: 0,
            echo_ts: 0,
            echo_at: Duration::ZERO,
            since_ack: 0,
            last_ack: Duration::ZERO,
            last_arrival: Duration::ZERO,
            window: f.window,
            idle_pending: false,
            nack_cursor: 0,
        })
        .collect();
    let mut results: Vec<FlowResult> = flows.iter().map(|_| FlowResult::default()).collect();
    let mut wake_gen = vec![0u64; flows.len()];
    for (i, f) in flows.iter().enumerate() {
        q.push(f.start, Ev::Wake(i, 0));
    }
    let mut bottleneck = Bottleneck {
        free: Duration::ZERO,
        tokens: link.bucket_bytes as f64,
        backlog: VecDeque::new(),
        backlog_bytes: 0,
    };
    while let Some((now, ev)) = q.pop() {
        if now > duration {
            break;
        }
        let at = base + now;
        let unix = EPOCH_NS + now.as_nanos() as u64;
        match ev {
            Ev::Wake(i, gen) => {
                if gen != wake_gen[i] {
                    continue;
                }
                let f = flows[i];
                let s = senders[i].get_or_insert_with(|| {
                    SenderState::new(
                        SenderConfig {
                            mode: Mode::Reliable,
                            file_size: f.datagrams * f.payload as u64,
                            payload_size: f.payload,
                            window: f.window,
                            cc: f.cc,
                            rate_cap_bps: None,
                            seed: i as u64 + seed,
                            path: f.path,
                        },
                        at,
                        unix,
                    )
                    .handshaken(at, 2 * link.delay)
                });
                while let Some(n) = s.next(at) {
                    let NextDatagram::Data {
                        index,
                        retransmit,
                        send_ts_ns,
                    } = n
                    else {
                        continue;
                    };
                    results[i].sent += 1;
                    if retransmit {
                        results[i].retransmitted += 1;
                    }
                    let bytes = f.payload as usize + HEADERS;
                    let Some(leave) = bottleneck.offer(link, now, bytes) else {
                        let res = &mut results[i];
                        res.queue_drops += 1;
                        let second = now.saturating_sub(f.start).as_secs() as usize;
                        if res.queue_drops_by_second.len() <= second {
                            res.queue_drops_by_second.resize(second + 1, 0);
                        }
                        res.queue_drops_by_second[second] += 1;
                        continue;
                    };
                    if rng.random::<f64>() < link.loss {
                        results[i].random_drops += 1;
                        continue;
                    }
                    let mut arrive = leave + link.delay;
                    if rng.random::<f64>() < link.reorder {
                        arrive += link.reorder_hold;
                    }
                    q.push(
                        arrive,
                        Ev::Arrive {
                            flow: i,
                            index,
                            send_ts: send_ts_ns,
                        },
                    );
                }
                if let Some(d) = s.deadline() {
                    let d = d
                        .saturating_duration_since(base)
                        .max(now + Duration::from_micros(10));
                    wake_gen[i] += 1;
                    q.push(d, Ev::Wake(i, wake_gen[i]));
                }
            }
            Ev::Arrive {
                flow,
                index,
                send_ts,
            } => {
                let r = &mut receivers[flow];
                let f = flows[flow];
                if r.tracker.contains(index) {
                    r.duplicates += 1;
                } else {
                    r.tracker.insert(index);
                    let res = &mut results[flow];
                    res.delivered_bytes += f.payload as u64;
                    let second = (now.saturating_sub(f.start)).as_secs() as usize;
                    if res.delivered_by_second.len() <= second {
                        res.delivered_by_second.resize(second + 1, 0);
                    }
                    res.delivered_by_second[second] += f.payload as u64;
                    if r.tracker.is_complete() && res.complete_at.is_none() {
                        res.complete_at = Some(now - f.start);
                    }
                }
                if send_ts > r.echo_ts {
                    r.echo_ts = send_ts;
                    r.echo_at = now;
                }
                r.since_ack += 1;
                r.last_arrival = now;
                let due = (r.since_ack >= 2 && now - r.last_ack >= Duration::from_micros(200))
                    || r.since_ack as u64 >= (r.window as u64 / 4).max(1)
                    || r.tracker.is_complete();
                if due {
                    let ack = make_ack(r, now, false);
                    q.push(now + link.delay, Ev::AckArrive { flow, ack });
                } else if !r.idle_pending {
                    r.idle_pending = true;
                    q.push(now + Duration::from_millis(2), Ev::IdleAck(flow));
                }
            }
            Ev::IdleAck(flow) => {
                let r = &mut receivers[flow];
                r.idle_pending = false;
                if r.tracker.is_complete() {
                    continue;
                }
                if now - r.last_arrival < Duration::from_millis(2)
                    || now - r.last_ack < Duration::from_millis(2)
                {
                    // Data still flows: ACKs go with it; look again later.
                    r.idle_pending = true;
                    q.push(now + Duration::from_millis(2), Ev::IdleAck(flow));
                    continue;
                }
                if now - r.last_arrival >= Duration::from_millis(2)
                    && now - r.last_ack >= Duration::from_millis(2)
                    && !r.tracker.is_complete()
                {
                    let ack = make_ack(r, now, true);
                    q.push(now + link.delay, Ev::AckArrive { flow, ack });
                    r.idle_pending = true;
                    q.push(now + Duration::from_millis(2), Ev::IdleAck(flow));
                }
            }
            Ev::AckArrive { flow, ack } => {
                if senders[flow].is_none() {
                    continue;
                }
                let mut scratch = Vec::new();
                let a = Ack {
                    recv_next: ack.recv_next,
                    credit_limit: ack.credit,
                    seen_end: ack.seen_end,
                    received: ack.received,
                    duplicates: ack.duplicates,
                    echo_ts_ns: ack.echo_ts,
                    echo_delay_us: ack.echo_delay_us,
                    ..Ack::new(1)
                }
                .with_ranges(&ack.ranges, &mut scratch);
                let rtt = unix
                    .checked_sub(ack.echo_ts)
                    .and_then(|d| d.checked_sub(ack.echo_delay_us as u64 * 1000))
                    .map(Duration::from_nanos);
                // As `serve` does: a flow starts from a remembered path only if no other is
                // running.
                let running = senders
                    .iter()
                    .flatten()
                    .filter(|s| !s.is_complete())
                    .count();
                let s = senders[flow].as_mut().expect("acked");
                s.settle_path(|| running <= 1);
                s.on_ack(&a, rtt, ack.idle, at);
                results[flow].spurious = s.spurious;
                let tr = &mut results[flow].trace;
                if tr
                    .last()
                    .is_none_or(|(t, ..)| now >= *t + Duration::from_millis(250))
                {
                    tr.push((now, s.status(0), s.cc_state(), s.capacity_bps()));
                }
                wake_gen[flow] += 1;
                q.push(now, Ev::Wake(flow, wake_gen[flow]));
            }
        }
    }
    for (i, r) in receivers.iter().enumerate() {
        results[i].duplicates = r.duplicates as u64;
        results[i].path = senders[i].as_ref().and_then(|s| s.path_record());
        results[i].probes = senders[i].as_ref().map_or(0, |s| s.probes);
    }
    results
}

fn make_ack(r: &mut Receiver, now: Duration, idle: bool) -> AckData {
    let t = &r.tracker;
    let mut ranges = Vec::new();
    t.ack_ranges(&mut r.nack_cursor, MAX_NACK_RANGES, &mut ranges);
    r.since_ack = 0;
    r.last_ack = now;
    AckData {
        recv_next: t.recv_next(),
        credit: t.recv_next().saturating_add(r.window).min(t.total()),
        seen_end: t.seen_end(),
        received: t.received(),
        duplicates: r.duplicates,
        echo_ts: r.echo_ts,
        echo_delay_us: (now - r.echo_at).as_micros() as u32,
        idle,
        ranges,
    }
}

/// Goodput of `r` over seconds `from..to` of its life, bits/s.
pub fn goodput_bps(r: &FlowResult, from: usize, to: usize) -> f64 {
    let bytes: u64 = r
        .delivered_by_second
        .iter()
        .skip(from)
        .take(to - from)
        .sum();
    bytes as f64 * 8.0 / (to - from) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(rate_bps: f64, rtt_ms: u64, queue_ms: u64) -> Link {
        Link {
            rate_bps,
            queue_bytes: (rate_bps / 8.0 * queue_ms as f64 / 1000.0) as usize,
            delay: Duration::from_millis(rtt_ms) / 2,
            loss: 0.0,
            reorder: 0.0,
            reorder_hold: Duration::ZERO,
            bucket_bytes: 0,
        }
    }

    fn bulk(start_s: u64) -> Flow {
        Flow {
            start: Duration::from_secs(start_s),
            datagrams: 10_000_000,
            payload: 1440,
            cc: CcKind::Bbr,
            window: 200_000,
            path: None,
        }
    }

    #[test]
    fn one_flow_fills_the_bottleneck_without_loss() {
        let l = link(100e6, 20, 50);
        let r = &run(&l, &[bulk(0)], Duration::from_secs(10), 1)[0];
        let g = goodput_bps(r, 2, 10);
        assert!(g >= 0.9 * 100e6 * 1440.0 / 1500.0, "{:.1} Mbit/s", g / 1e6);
        assert!(
            r.retransmitted * 100 <= r.sent,
            "{} of {}",
            r.retransmitted,
            r.sent
        );
    }

    #[test]
    fn two_flows_share_the_bottleneck() {
        let l = link(100e6, 20, 50);
        let r = run(&l, &[bulk(0), bulk(2)], Duration::from_secs(30), 2);
        let (a, b) = (goodput_bps(&r[0], 17, 27), goodput_bps(&r[1], 15, 25));
        let ratio = a.max(b) / a.min(b).max(1.0);
        assert!(ratio <= 1.2, "{:.1} vs {:.1} Mbit/s", a / 1e6, b / 1e6);
        assert!(
            a + b >= 0.85 * 100e6 * 1440.0 / 1500.0,
            "{:.1} Mbit/s in all",
            (a + b) / 1e6
        );
    }

    #[test]
    fn random_loss_does_not_collapse_a_long_path() {
        let mut l = link(100e6, 100, 50);
        l.loss = 0.01;
        let r = &run(&l, &[bulk(0)], Duration::from_secs(20), 3)[0];
        let g = goodput_bps(r, 5, 20);
        assert!(g >= 0.8 * 100e6, "{:.1} Mbit/s", g / 1e6);
        let overhead = r.retransmitted as f64 / (r.sent - r.retransmitted) as f64;
        assert!(
            overhead <= 0.02,
            "{:.2}% resent, {} spurious, {} duplicates, drops: {} queue {} random, {} sent",
            overhead * 100.0,
            r.spurious,
            r.duplicates,
            r.queue_drops,
            r.random_drops,
            r.sent
        );
    }

    #[test]
    fn a_gigabit_200ms_path_with_loss_keeps_its_rate() {
        // The anchor: commercial tools claim 90% of 1 Gbit/s at 200 ms and 2% loss; TCP
        // manages a few Mbit/s there.
        let mut l = link(1e9, 200, 50);
        l.loss = 0.02;
        let r = &run(&l, &[bulk(0)], Duration::from_secs(20), 5)[0];
        let g = goodput_bps(r, 10, 20);
        assert!(g >= 0.8 * 1e9, "{:.1} Mbit/s", g / 1e6);
        let overhead = r.retransmitted as f64 / (r.sent - r.retransmitted) as f64;
        assert!(overhead <= 0.03 + 0.01, "{:.2}% resent", overhead * 100.0);
    }

    #[test]
    fn two_flows_share_a_shallow_rtt_gigabit_bottleneck() {
        // The router namespace's case: sub-millisecond RTT, a deep tbf queue.
        let l = link(1e9, 1, 50);
        let r = run(&l, &[bulk(0), bulk(0)], Duration::from_secs(12), 6);
        let (a, b) = (goodput_bps(&r[0], 4, 12), goodput_bps(&r[1], 4, 12));
        let ratio = a.max(b) / a.min(b).max(1.0);
        assert!(ratio <= 1.2, "{:.1} vs {:.1} Mbit/s", a / 1e6, b / 1e6);
        assert!(
            a + b >= 0.85e9 * 1440.0 / 1500.0,
            "{:.1} Mbit/s in all",
            (a + b) / 1e6
        );
    }

    /// Issue 24: relay 1 Gbit/s x 200 ms behind its 8 MiB tail-drop queue (a third of the
    /// path's bandwidth-delay product), 256 MiB of 64 KB datagrams. Startup doubling into it
    /// overflowed the queue by the round trip it took to see it: 225 datagrams (5.5%) dropped
    /// at 0% loss, 6.1-6.3% resent at 1%. Pacing no further than just past the capacity its
    /// first flight measured, it drops none.
    #[test]
    fn startup_fills_a_long_path_without_overflowing_a_short_queue() {
        for (loss, seed) in [(0.0, 1), (0.01, 2), (0.01, 3)] {
            let l = Link {
                queue_bytes: 8 << 20,
                loss,
                ..link(1e9, 200, 0)
            };
            let f = Flow {
                datagrams: 4096,
                payload: 65475,
                window: 1600,
                ..bulk(0)
            };
            let r = &run(&l, &[f], Duration::from_secs(20), seed)[0];
            let done = r.complete_at.expect("the copy completes");
            let resent = r.retransmitted as f64 / f.datagrams as f64;
            assert!(
                r.queue_drops * 100 <= f.datagrams && resent <= loss + 0.01,
                "loss {loss}: {} queue drops, {:.2}% resent",
                r.queue_drops,
                resent * 100.0
            );
            // Not bought with a slower start: 256 MiB at 1 Gbit/s is 2.15 s. Doubling from 16
            // datagrams all the way took 3.13-3.31 s; skipping to the last doubling once a
            // quiet round showed the path empty (issue 24) 2.81-2.98 s.
            assert!(
                done <= Duration::from_millis(3150),
                "loss {loss}: done in {done:?}"
            );
        }
    }

    #[test]
    fn reordering_is_not_taken_for_loss() {
        let mut l = link(100e6, 2, 20);
        l.reorder = 0.02;
        l.reorder_hold = Duration::from_millis(2);
        let r = &run(&l, &[bulk(0)], Duration::from_secs(10), 4)[0];
        let overhead = r.retransmitted as f64 / (r.sent - r.retransmitted) as f64;
        assert!(
            overhead < 0.01,
            "{:.2}% resent, {} spurious",
            overhead * 100.0,
            r.spurious
        );
    }

    #[test]
    fn a_flow_that_starts_on_a_full_link_grows_when_it_empties() {
        // The first flow fills a gigabit link with a sub-millisecond RTT; the second starts
        // 1 s later, when there is no room, and must take the link once the first is done.
        let l = Link {
            rate_bps: 1e9,
            queue_bytes: 6_250_000,
            delay: Duration::from_micros(50),
            loss: 0.0,
            reorder: 0.0,
            reorder_hold: Duration::ZERO,
            bucket_bytes: 0,
        };
        let f = |start, datagrams| Flow {
            start: Duration::from_millis(start),
            datagrams,
            payload: 1440,
            cc: CcKind::Bbr,
            window: 200_000,
            path: None,
        };
        let r = run(
            &l,
            &[f(0, 200_000), f(1000, 2_000_000)],
            Duration::from_secs(10),
            9,
        );
        let done = r[0].complete_at.expect("the first completes");
        // Whole seconds of the second flow's life (it started at 1 s) from half a second
        // after the first completed.
        let from = (done.as_secs_f64() - 0.5).ceil() as usize;
        let g = goodput_bps(&r[1], from, from + 3);
        assert!(
            g >= 0.8e9,
            "second flow after the first left: {:.1} Mbit/s",
            g / 1e6
        );
    }

    /// Issue 24: `tc tbf rate 100mbit burst 256kb latency 50ms` (a queue of 0.7 of the path's
    /// bandwidth-delay product) at 100 ms. Every ProbeBW probe's samples carry the bucket's
    /// refill (the drain phase lets it fill), the estimate stands 8-9% above the link, and
    /// cruising there overflowed the queue once a cycle: 150-700 datagrams a time. Held to a
    /// window below what the path held when it first overflowed, ProbeBW drops nothing;
    /// Startup's overshoot (a doubling rate, seen a round trip late) is not this test's.
    #[test]
    fn probe_bw_behind_a_token_bucket_does_not_overflow_its_queue() {
        let l = router(100);
        let r = &run(&l, &[bulk(0)], Duration::from_secs(20), 7)[0];
        let later: u64 = r.queue_drops_by_second.iter().skip(3).sum();
        let g = goodput_bps(r, 3, 20);
        assert!(
            later == 0 && g >= 0.9 * 100e6 * 1440.0 / 1500.0,
            "{later} queue drops after 3 s ({} in all), {:.1} Mbit/s",
            r.queue_drops,
            g / 1e6
        );
    }

    /// The benches' router at `rtt_ms`: `tc tbf rate 100mbit burst 256kb latency 50ms` (its
    /// queue: 50 ms at the rate, and the bucket).
    fn router(rtt_ms: u64) -> Link {
        Link {
            queue_bytes: 625_000 + 262_144,
            bucket_bytes: 262_144,
            ..link(100e6, rtt_ms, 0)
        }
    }

    /// A flow starts as a session does after its handshake: on a 200 ms path its first
    /// timeout is seeded from META's round trip (400 ms), so no probe fires while its first
    /// flight is out. Started with the 100 ms default instead, the simulator's sessions on
    /// paths longer than that timed out before their first ACK, cut their window to 4
    /// datagrams at it, and spent a round trip more in Startup than a server's do.
    #[test]
    fn a_long_paths_first_flight_fires_no_probe() {
        let r = alone(
            &link(100e6, 200, 50),
            Flow {
                datagrams: 20_000,
                ..bulk(0)
            },
            None,
            1,
        );
        assert_eq!(r.probes, 0);
        assert!(r.complete_at.is_some());
    }

    /// `f` alone on `l` for up to 30 s, starting from `path`.
    fn alone(l: &Link, f: Flow, path: Option<PathRecord>, seed: u64) -> FlowResult {
        run(l, &[Flow { path, ..f }], Duration::from_secs(30), seed).remove(0)
    }

    /// Issue 24: the router's `tbf rate 100mbit burst 256kb latency 50ms` at 100 and 200 ms,
    /// 32 MiB copies. A cold Startup doubles past the link before its RTT can show the queue
    /// (the bucket hides the crossing, and no packet train forms before it): 671 and 1,437
    /// datagrams dropped (2.9% and 6.2% of the file's). The next copy to the same host starts
    /// from what the first learned ([`PathRecord`]): it paces no further than just past the
    /// rate the first sustained, skips to half of it after a quiet round, and holds its window
    /// below the first's overflow, and drops nothing, sooner done.
    #[test]
    fn a_copy_that_remembers_the_path_does_not_overshoot_it() {
        for rtt in [100, 200] {
            let l = router(rtt);
            let f = Flow {
                datagrams: (32 << 20) / 1440 + 1,
                ..bulk(0)
            };
            let cold = &alone(&l, f, None, 1);
            let path = cold.path.expect("the first copy learned its path");
            let warm = &alone(&l, f, Some(path), 2);
            let (t_cold, t_warm) = (cold.complete_at.unwrap(), warm.complete_at.unwrap());
            let payload_rate = 100e6 / 8.0 * 1440.0 / 1500.0;
            assert!(
                (0.9..=1.05).contains(&(path.rate / payload_rate)),
                "{rtt} ms: remembered {:.1} Mbit/s",
                path.rate * 8e-6
            );
            assert!(
                cold.queue_drops > 0,
                "{rtt} ms: the cold start overshot no queue"
            );
            assert!(
                warm.queue_drops == 0 && t_warm <= t_cold,
                "{rtt} ms: warm {} queue drops, done in {t_warm:?} (cold {} in {t_cold:?})",
                warm.queue_drops,
                cold.queue_drops
            );
        }
    }

    /// A record of a path that has since grown tenfold (100 Mbit/s remembered, 1 Gbit/s now,
    /// the same 100 ms): Startup runs into the remembered rate with no queue, forgets it
    /// (as a wrong packet train's capacity) and doubles on; the copy costs a few round trips
    /// more than a cold one (128 MiB: 2.04 s cold, 2.28 s), not the seconds ProbeBW's 1.25x
    /// per cycle of 8 round trips would take from 100 Mbit/s.
    #[test]
    fn a_remembered_rate_the_path_outgrew_is_forgotten() {
        let l = link(1e9, 100, 50);
        let f = Flow {
            datagrams: (128 << 20) / 1440,
            ..bulk(0)
        };
        let stale = PathRecord {
            rate: 100e6 / 8.0,
            min_rtt: Duration::from_millis(100),
            inflight_hi: None,
        };
        let cold = &alone(&l, f, None, 1);
        let warm = &alone(&l, f, Some(stale), 1);
        let (t_cold, t_warm) = (cold.complete_at.unwrap(), warm.complete_at.unwrap());
        // 2.04 s cold, 2.28 s from the stale record.
        assert!(
            t_warm <= t_cold + Duration::from_millis(500),
            "cold {t_cold:?}, from a stale record {t_warm:?}"
        );
    }

    /// Copies to one host at once (the lab's sub-clients) start cold, as `serve` has them: a
    /// record is one session's rate, and ten sessions that all started from it (jumping to
    /// half of it, pacing up to 1.1x it) overflowed the router's queue through 4,090 queue
    /// drops (17.5% of the file's datagrams) where cold starts dropped 845 (3.6%), and finished
    /// 2.6 s later.
    #[test]
    fn copies_to_one_host_at_once_start_cold() {
        let l = router(100);
        let one = Flow {
            datagrams: (32 << 20) / 1440,
            ..bulk(0)
        };
        let path = alone(&l, one, None, 1).path;
        assert!(path.is_some(), "a copy alone leaves a record");
        let tenth = Flow {
            datagrams: one.datagrams / 10,
            ..one
        };
        let drops = |path| -> (u64, bool) {
            let r = run(
                &l,
                &[Flow { path, ..tenth }; 10],
                Duration::from_secs(60),
                3,
            );
            (
                r.iter().map(|x| x.queue_drops).sum(),
                r.iter().any(|x| x.path.is_some()),
            )
        };
        let (cold, cold_left) = drops(None);
        let (warm, warm_left) = drops(path);
        assert_eq!(warm, cold, "ten copies given the record");
        assert!(
            !cold_left && !warm_left,
            "a copy that shared the path left a record"
        );
    }
}
