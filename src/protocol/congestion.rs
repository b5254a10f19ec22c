//! How fast a session may go on its path: the round-trip estimate, and the congestion
//! controller that models the path and paces.
//!
//! The default controller is BBR (Cardwell et al., "BBR: Congestion-Based Congestion Control",
//! and draft-cardwell-iccrg-bbr-congestion-control, version 1): it estimates the path's
//! bottleneck bandwidth (the max of recent delivery-rate samples, over 10 round trips) and its
//! minimum RTT (the min over 10 s), paces at a gain times that bandwidth and keeps about two
//! bandwidth-delay products in flight. Random loss does not lower its estimate, so a lossy
//! long path keeps its rate; a queue that builds raises the RTT it sees and its ProbeRTT phase
//! drains it, which is how flows sharing a bottleneck converge. Startup also knows the
//! bottleneck's capacity as packet trains measure it ([`train`](super::train)), and paces no
//! further than just past it: measured right, its last round trip before the queue shows
//! sends a tenth of a bandwidth-delay product more than the path takes, not a third or more;
//! and until the pipe is full no delivery sample counts for much more than that capacity (a
//! token bucket's burst is not bandwidth). Once a paced round shows the path empty (its RTT
//! never rose), Startup skips to its last doubling, half that capacity, instead of doubling
//! there from 16 datagrams. Once the pipe is full, a round trip that overflows the
//! bottleneck's queue (loss past 2% while the RTT shows the queue) holds the window below what
//! the path held then (BBR v2's inflight_hi), which pacing at an estimate a token bucket
//! inflated would not. `Fixed` paces at a set rate (or not at all) for experiments. Pure: the
//! sender feeds it events with the caller's clock.

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::pacer::BURST_TIME;
pub use super::rtt::RttEstimator;

/// Round trips the bandwidth max-filter spans (BBR's BtlBwFilterLen).
const BW_WINDOW_ROUNDS: u64 = 10;
/// Smallest congestion window, datagrams.
pub const MIN_CWND: f64 = 4.0;
/// Window before the first measurement, datagrams.
pub const INITIAL_CWND: f64 = 16.0;
/// 2/ln(2): Startup doubles the sending rate each round trip.
const HIGH_GAIN: f64 = 2.885;
/// Startup's window gain: 2 (as BBR v3), so it overshoots a shallow queue by one BDP, not two.
const STARTUP_CWND_GAIN: f64 = 2.0;
/// ProbeBW's gain cycle: probe for more bandwidth, drain the queue that made, cruise.
const CYCLE_GAINS: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// Shortest round trip the model counts, and shortest ProbeBW phase: on a path of tens of
/// microseconds, a sender pacing in bursts of a millisecond or two and a receiver acknowledging
/// every 200 µs produce rounds that measure nothing, and a probe phase that ends before the
/// pacer has released anything at its gain.
const MIN_ROUND_TIME: Duration = Duration::from_millis(2);
/// The shortest ProbeBW phase, in pacing bursts ([`BURST_TIME`]).
const PHASE_BURSTS: u32 = 4;
/// ProbeBW's cruise gain while a queue stands.
const CRUISE_DRAIN_GAIN: f64 = 0.9;
/// RTT samples of a round that tell Startup a queue is building (HyStart++'s N_RTT_SAMPLE).
const HYSTART_SAMPLES: u32 = 8;
/// Startup paces at most this much above the bottleneck capacity its packet trains measured
/// (or above the delivery rate, if that is higher): doubling up to the capacity, then a
/// gentle probe past it, so the queue it builds in the round trip before its ACKs show it
/// (a tenth of the path's bandwidth-delay product) fits even a queue far shorter than one.
const STARTUP_CAPACITY_GAIN: f64 = 1.1;
/// Until the pipe is full (Startup, Drain), a delivery-rate sample counts for no more than this
/// factor of the capacity packet trains measured. A sample spans a round trip, and a token
/// bucket whose burst outlasts the round trip delivers that burst at the line's rate: through
/// `tc tbf rate 100mbit burst 256kb` at 60 µs the samples said 11 Gbit/s, and the sender
/// paced at it for half a second (7-17% of a 32 MiB copy resent). A train spans 2 ms at least,
/// long enough to see the rate the bucket lets through. The margin covers a train measured
/// low (the ACKs' jitter). Not later: on a path whose bottleneck is the hosts' CPUs (loopback,
/// veth) a sender preempted between stamping datagrams and sending them makes a train of its
/// own, and a bound from it would hold a flow at a tenth of its rate for ten rounds.
const CAPACITY_BW_BOUND: f64 = 1.25;
/// Once a train has measured the bottleneck and a paced round has shown the path empty,
/// Startup skips to its last doubling: it paces at half the capacity, with a window of a
/// bandwidth-delay product at it. Doubling from the initial window takes log2(capacity /
/// initial rate) round trips (six at 1 Gbit/s x 200 ms from 16 datagrams of 64 KB, 1.5 s of a
/// 10 s copy). Half, not all of it: the capacity a train measures is the path's, not the
/// share left by flows that arrived between the quiet round and this one; what is left is
/// found as ever, by the delivery rate, in a round that asks for at most twice it.
const STARTUP_JUMP: f64 = 0.5;
/// A capacity Startup's delivery rate keeps running into, on a path without a queue, is wrong:
/// once this many rounds in a row (the first at least [`LONG_ROUND`]) and
/// [`CAPACITY_DISPROOF_TIME`] have had samples cut to [`CAPACITY_BW_BOUND`] of it and no
/// queue, Startup forgets it and doubles on. A packet train is a bottleneck's only when the
/// bottleneck spaced it: on this project's VM the relay and the receiver stall for a few
/// milliseconds now and then, and 20-220 datagrams that arrived over 2.3-11 ms made trains
/// of 70-290 Mbit/s on a 1 Gbit/s path behind `tbf` (whose 256 KB bucket lets the sender's
/// bursts through unspaced: no real train comes). Held to a quarter past such a capacity,
/// the delivery rate stopped growing, Startup took that for a full pipe (and 5% random loss
/// for its overflow), and ProbeBW's quarter per 8 round trips took minutes to reach the
/// link's rate (issue 24: a 256 MiB copy at 200 ms ran for minutes).
const CAPACITY_DISPROOF_ROUNDS: u32 = 3;
/// ...and at least this long: longer than a token bucket's burst keeps a delivery rate above
/// the capacity at the pace Startup's ceiling allows (256 KB at 100 Mbit/s took 55 ms), so
/// that such a burst does not disprove a capacity that was right.
const CAPACITY_DISPROOF_TIME: Duration = Duration::from_millis(200);
/// Rounds at least this long that ran into the capacity's bound are not a plateau of the
/// delivery rate (they do not end Startup) but evidence against the capacity. Shorter ones
/// end Startup as a plateau does: on a path of microseconds (loopback, veth, whose CPUs make
/// trains of their own) ProbeBW, where no capacity bounds anything, is milliseconds away.
const LONG_ROUND: Duration = Duration::from_millis(20);
/// Datagrams Drain must deliver (over half a round trip at least) to take its measure of the
/// bottleneck ([`Bbr::calibrate_after_drain`]).
const DRAIN_DELIVERIES: u64 = 32;
/// A round trip that lost more than one datagram in this many (and at least
/// [`OVERFLOW_MIN_LOST`]) while its RTT showed a queue overflowed the bottleneck's queue
/// (BBR v2's loss threshold, 2%); in Startup, once the delivery rate stopped growing, it ends
/// Startup.
const OVERFLOW_LOSS_DIVISOR: u64 = 50;
const OVERFLOW_MIN_LOST: u64 = 8;
/// After an overflow the window is held to this fraction of what was in flight when it
/// showed ([`Bbr::inflight_hi`]).
const OVERFLOW_BETA: f64 = 0.85;
/// A probe that ends without an overflow raises the bound by this fraction of it, doubling
/// with each clean probe after (BBR v3's ProbeBW_UP: slowly at first where the last
/// overflow was, then fast where the path has grown).
const INFLIGHT_HI_GROWTH: f64 = 1.0 / 16.0;
/// A path is remembered ([`PathRecord`]) only if its round trip is at least this long
/// ([`LONG_ROUND`]): on a path of microseconds Startup is over in microseconds, and the
/// bottleneck is the hosts' CPUs, whose rate one session's share says little about.
const REMEMBERED_MIN_RTT: Duration = LONG_ROUND;
/// ProbeBW must have lasted this many minimum RTTs for its average to be remembered.
const REMEMBERED_ROUNDS: u32 = 4;
/// ProbeRTT lasts this long at half a BDP.
const PROBE_RTT_TIME: Duration = Duration::from_millis(200);
/// The window covers at least this much time at the estimated bandwidth, however short the
/// minimum RTT. A sender and a receiver that each work in batches (a submit of 64 sends, a
/// `recvmmsg` of 32, an ACK every 200 µs) keep about a millisecond of data in their pipeline
/// even on loopback, where the empty-pipe RTT is 20 µs: a window of 2 x 20 µs starves it.
/// Pacing, not the window, keeps the queue at a real bottleneck short.
const MIN_PIPE_TIME: Duration = Duration::from_millis(1);

/// One delivery-rate sample (draft-cheng-iccrg-delivery-rate-estimation): datagrams delivered
/// over the interval between a datagram's send and its acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSample {
    /// Bytes per second.
    pub delivery_rate: f64,
    /// The sender had less to send than it could (credit or end of file) when the datagram
    /// left: a low rate says nothing about the path.
    pub app_limited: bool,
    /// The delivery count when the sampled datagram was sent.
    pub prior_delivered: u64,
}

/// What the sender learned from one ACK.
#[derive(Debug, Clone, Copy)]
pub struct AckEvent {
    pub now: Instant,
    /// Datagrams delivered so far (distinct).
    pub delivered: u64,
    /// Delivered by this ACK.
    pub newly_delivered: u64,
    /// Declared lost by this ACK.
    pub newly_lost: u64,
    /// Datagrams in flight after it.
    pub inflight: u64,
    pub sample: Option<RateSample>,
    /// The RTT this ACK measured, if it did.
    pub rtt: Option<Duration>,
    /// The bottleneck's capacity a packet train it closed measured, bytes per second
    /// (see [`train`](super::train)).
    pub capacity: Option<f64>,
}

/// What a session learned of its path, for the next session to the same host to start from
/// (as TCP's metrics cache keeps a destination's ssthresh, and QUIC's Careful Resume its
/// rate): the delivery rate it sustained once the pipe was full, its minimum RTT, and the
/// window an overflow of the bottleneck's queue taught it, if one did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathRecord {
    /// Bytes per second delivered over ProbeBW (and ProbeRTT), from its start to the last ACK.
    pub rate: f64,
    pub min_rtt: Duration,
    /// Bytes ([`Bbr::inflight_hi`] at the session's datagram size).
    pub inflight_hi: Option<f64>,
}

impl PathRecord {
    /// Whether a round trip of `rtt` is the recorded path's: within an eighth of its minimum
    /// (2 ms at least). A queue that others keep standing, or another route, is not.
    pub fn matches(&self, rtt: Duration) -> bool {
        let tolerance = (self.min_rtt / 8).max(Duration::from_millis(2));
        rtt.abs_diff(self.min_rtt) <= tolerance
    }

    /// Two records of one path: what either sustained or held (concurrent sessions each
    /// learned their share), its lowest RTT.
    pub fn merge(&self, other: &PathRecord) -> PathRecord {
        PathRecord {
            rate: self.rate.max(other.rate),
            min_rtt: self.min_rtt.min(other.min_rtt),
            inflight_hi: match (self.inflight_hi, other.inflight_hi) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            },
        }
    }
}

/// Which controller a session uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CcKind {
    /// Model-based: paces at the estimated bottleneck bandwidth.
    Bbr,
    /// No congestion control: as fast as the receiver's credit allows, paced only at the
    /// server's `--rate` if set (for experiments, and the lab's behaviour).
    Fixed,
}

impl CcKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CcKind::Bbr => "bbr",
            CcKind::Fixed => "fixed",
        }
    }
}

/// A session's congestion controller.
#[derive(Debug, Clone)]
pub enum Controller {
    Bbr(Box<Bbr>),
    Fixed,
}

impl Controller {
    /// `mss`: payload bytes per datagram; `seed`: spreads the controllers' probing phases
    /// (flows that probe in step never converge to a fair share).
    pub fn new(kind: CcKind, mss: u32, now: Instant, seed: u64) -> Self {
        match kind {
            CcKind::Bbr => Controller::Bbr(Box::new(Bbr::new(mss, now, seed))),
            CcKind::Fixed => Controller::Fixed,
        }
    }

    /// Starts from what an earlier session learned of the path, if the first RTT sample
    /// says it is the same path ([`Bbr::recall`]).
    pub fn recall(&mut self, path: PathRecord) {
        if let Controller::Bbr(b) = self {
            b.remembered = Some(path);
        }
    }

    /// The rate of an earlier session's record of the path this one started from, bytes/s
    /// (the first RTT matched it).
    pub fn recalled_rate(&self) -> Option<f64> {
        match self {
            Controller::Bbr(b) => b.recalled,
            Controller::Fixed => None,
        }
    }

    /// What this session learned of its path, if it learned enough to remember.
    pub fn path_record(&self) -> Option<PathRecord> {
        match self {
            Controller::Bbr(b) => b.path_record(),
            Controller::Fixed => None,
        }
    }

    pub fn on_ack(&mut self, ev: &AckEvent, rtt: &mut RttEstimator) {
        if let Controller::Bbr(b) = self {
            b.on_ack(ev, rtt);
        }
    }

    /// A probe timeout fired: the path may have lost everything in flight.
    pub fn on_timeout(&mut self) {
        if let Controller::Bbr(b) = self {
            b.cwnd = b.cwnd.min(b.bdp().max(MIN_CWND));
        }
    }

    /// The rate to pace at, bytes per second (`None`: unpaced).
    pub fn pacing_rate(&self) -> Option<f64> {
        match self {
            Controller::Bbr(b) => Some(b.pacing_rate),
            Controller::Fixed => None,
        }
    }

    /// Datagrams that may be in flight.
    pub fn cwnd(&self) -> u64 {
        match self {
            Controller::Bbr(b) => b.cwnd as u64,
            Controller::Fixed => u64::MAX,
        }
    }

    /// The estimated bottleneck bandwidth, bytes per second (0: no estimate).
    pub fn delivery_rate(&self) -> f64 {
        match self {
            Controller::Bbr(b) => b.max_bw(),
            Controller::Fixed => 0.0,
        }
    }

    /// The bottleneck capacity packet trains measured lately (or a remembered path's rate),
    /// bytes per second (0: none).
    pub fn capacity(&self) -> f64 {
        match self {
            Controller::Bbr(b) => b.capacity(),
            Controller::Fixed => 0.0,
        }
    }

    /// Short name of its state, for reports.
    pub fn state(&self) -> &'static str {
        match self {
            Controller::Bbr(b) => b.state.as_str(),
            Controller::Fixed => "fixed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BbrState {
    Startup,
    Drain,
    ProbeBw,
    ProbeRtt,
}

impl BbrState {
    fn as_str(self) -> &'static str {
        match self {
            BbrState::Startup => "startup",
            BbrState::Drain => "drain",
            BbrState::ProbeBw => "probe_bw",
            BbrState::ProbeRtt => "probe_rtt",
        }
    }
}

/// BBR, version 1, with an allowance for the ACK aggregation of a receiver that acknowledges
/// every few hundred microseconds (BBR's extra_acked).
#[derive(Debug, Clone)]
pub struct Bbr {
    mss: f64,
    state: BbrState,
    /// (round, max delivery rate sampled in it), for the last [`BW_WINDOW_ROUNDS`] rounds.
    bw_samples: [(u64, f64); BW_WINDOW_ROUNDS as usize],
    round: u64,
    /// Rounds outside ProbeRTT: the bandwidth filter's clock.
    bw_round: u64,
    /// When the current round began.
    round_stamp: Instant,
    next_round_delivered: u64,
    round_start: bool,
    full_bw: f64,
    full_bw_rounds: u32,
    filled_pipe: bool,
    pacing_gain: f64,
    cwnd_gain: f64,
    pacing_rate: f64,
    /// The pacing rate has been set from a measured RTT.
    rtt_known: bool,
    cwnd: f64,
    cycle: usize,
    cycle_stamp: Instant,
    probe_rtt_done: Option<Instant>,
    prior_cwnd: f64,
    /// Datagrams delivered since the aggregation epoch began, and when it began.
    ack_epoch_delivered: f64,
    ack_epoch_start: Instant,
    /// Max excess of delivered over what the bandwidth estimate explains, per round window.
    extra_acked: [(u64, f64); BW_WINDOW_ROUNDS as usize],
    /// The RTT estimator's minimum as of the last ACK (1 ms before any sample).
    min_rtt_cached: Duration,
    /// Picks where each ProbeBW cycle starts.
    rng: SmallRng,
    /// The lowest RTT sampled in the current ProbeBW cycle and the one before: if even that
    /// stays well above the path's minimum, a queue stands that no flow's drain phase empties.
    cycle_min_rtt: [Option<Duration>; 2],
    /// The lowest RTT sampled in the current round, and in the last complete one.
    round_min_rtt: Option<Duration>,
    last_round_min_rtt: Option<Duration>,
    /// RTT samples of the current round that saw no queue ([`jump_tolerance`]), and whether
    /// one did.
    round_quiet_samples: u32,
    round_queued: bool,
    /// The current round is paced (the second or later), and its first 8 samples saw no
    /// queue grow: Startup may jump.
    quiet_round: bool,
    /// Startup has jumped once.
    jumped: bool,
    /// RTT samples in the current round.
    round_rtt_samples: u32,
    /// Since when every RTT sample has been above Startup's queue limit (and how many):
    /// a queue that persists ends Startup mid-round.
    queued_since: Option<(Instant, u32)>,
    /// Datagrams delivered and lost in the current round.
    round_delivered: u64,
    round_lost: u64,
    /// (round, max capacity a packet train measured in it), bytes/s, like `bw_samples`.
    capacity_samples: [(u64, f64); BW_WINDOW_ROUNDS as usize],
    /// A delivery-rate sample of the current round was cut to the capacity's bound.
    round_clamped: bool,
    /// Since when (the end of the first), and how many, Startup's rounds in a row were cut
    /// to the capacity's bound ([`CAPACITY_DISPROOF_ROUNDS`]).
    clamped_rounds: Option<(Instant, u32)>,
    /// Trains measuring no more than this say nothing (bytes/s): a capacity this low was
    /// disproven in Startup.
    capacity_floor: f64,
    /// Startup ended on a queue (its RTT) or on its overflow (loss), not on a plateau: in
    /// Drain the bottleneck is busy.
    exit_queued: bool,
    /// When Drain began, and the datagrams delivered by then.
    drain_start: (Instant, u64),
    /// How much may be in flight, datagrams, as the last overflow of the bottleneck's queue
    /// taught (infinite until one): BBR v2's inflight_hi.
    inflight_hi: f64,
    /// What the next clean probe adds to it, as a fraction of it.
    hi_growth: f64,
    /// No overflow counts again before this round (the losses of what was in flight when
    /// the last one was seen are still being found).
    hi_quiet_until: u64,
    /// The current probe phase has seen no overflow.
    probe_clean: bool,
    /// The highest RTT sampled in the current round.
    round_max_rtt: Duration,
    /// The current probe phase has had the window up against its bound.
    probe_bound_reached: bool,
    /// What an earlier session learned of the path, until the first RTT sample confirms it
    /// (then it is taken, and this is `None`) or not (dropped).
    remembered: Option<PathRecord>,
    /// The capacity a confirmed record gave Startup, bytes/s (0: none, or disproven).
    recalled_capacity: f64,
    /// The rate of the record the session started from, if one was confirmed.
    recalled: Option<f64>,
    /// When ProbeBW first began and the datagrams delivered by then; the last ACK's time and
    /// delivered count: what the session sustained, for [`PathRecord::rate`].
    probe_bw_start: Option<(Instant, u64)>,
    last_ack: (Instant, u64),
}

impl Bbr {
    pub fn new(mss: u32, now: Instant, seed: u64) -> Self {
        let mss = mss.max(1) as f64;
        Bbr {
            rng: SmallRng::seed_from_u64(seed),
            cycle_min_rtt: [None, None],
            mss,
            state: BbrState::Startup,
            bw_samples: [(0, 0.0); BW_WINDOW_ROUNDS as usize],
            round: 0,
            bw_round: 0,
            round_stamp: now,
            next_round_delivered: 0,
            round_start: false,
            full_bw: 0.0,
            full_bw_rounds: 0,
            filled_pipe: false,
            pacing_gain: HIGH_GAIN,
            cwnd_gain: STARTUP_CWND_GAIN,
            // Before any sample: the initial window per millisecond, doubled each round.
            pacing_rate: HIGH_GAIN * INITIAL_CWND * mss / 1e-3,
            rtt_known: false,
            cwnd: INITIAL_CWND,
            cycle: 0,
            cycle_stamp: now,
            probe_rtt_done: None,
            prior_cwnd: INITIAL_CWND,
            ack_epoch_delivered: 0.0,
            ack_epoch_start: now,
            extra_acked: [(0, 0.0); BW_WINDOW_ROUNDS as usize],
            min_rtt_cached: Duration::from_millis(1),
            round_delivered: 0,
            round_lost: 0,
            round_min_rtt: None,
            last_round_min_rtt: None,
            round_quiet_samples: 0,
            round_queued: false,
            quiet_round: false,
            jumped: false,
            round_rtt_samples: 0,
            queued_since: None,
            capacity_samples: [(0, 0.0); BW_WINDOW_ROUNDS as usize],
            round_clamped: false,
            clamped_rounds: None,
            capacity_floor: 0.0,
            exit_queued: false,
            drain_start: (now, 0),
            inflight_hi: f64::INFINITY,
            hi_growth: INFLIGHT_HI_GROWTH,
            hi_quiet_until: 0,
            probe_clean: false,
            round_max_rtt: Duration::ZERO,
            probe_bound_reached: false,
            remembered: None,
            recalled_capacity: 0.0,
            recalled: None,
            probe_bw_start: None,
            last_ack: (now, 0),
        }
    }

    /// The bottleneck's capacity its packet trains measured lately, or the rate of a
    /// remembered path it started from (until disproven), bytes/s (0: none).
    pub fn capacity(&self) -> f64 {
        windowed_max(&self.capacity_samples, self.bw_round).max(self.recalled_capacity)
    }

    /// Bottleneck bandwidth estimate, bytes/s.
    pub fn max_bw(&self) -> f64 {
        windowed_max(&self.bw_samples, self.bw_round)
    }

    fn min_rtt(rtt: &RttEstimator) -> Duration {
        rtt.min_rtt().unwrap_or(Duration::from_millis(1))
    }

    /// The bandwidth-delay product, datagrams.
    fn bdp(&self) -> f64 {
        self.max_bw() * self.min_rtt_cached.as_secs_f64() / self.mss
    }

    /// What the window is sized from: the BDP, or [`MIN_PIPE_TIME`] of the bandwidth.
    fn pipe(&self) -> f64 {
        let time = self.min_rtt_cached.max(MIN_PIPE_TIME);
        self.max_bw() * time.as_secs_f64() / self.mss
    }

    fn on_ack(&mut self, ev: &AckEvent, rtt: &mut RttEstimator) {
        let min_rtt = Self::min_rtt(rtt);
        self.min_rtt_cached = min_rtt;
        self.last_ack = (ev.now, ev.delivered);
        self.update_round(ev);
        // ProbeRTT's deliberately low rate says nothing about the path, and its rounds (10 at
        // a 20 ms RTT) would age the estimate out: the filter neither takes its samples nor
        // counts its rounds.
        if let Some(s) = ev.sample.filter(|_| self.state != BbrState::ProbeRtt) {
            // Until the pipe is full, no sample counts for more than the capacity allows.
            let capacity = self.capacity();
            let rate = match self.state {
                BbrState::Startup | BbrState::Drain if capacity > 0.0 => {
                    let bound = CAPACITY_BW_BOUND * capacity;
                    self.round_clamped |= s.delivery_rate > bound;
                    s.delivery_rate.min(bound)
                }
                _ => s.delivery_rate,
            };
            if rate >= self.max_bw() || !s.app_limited {
                windowed_insert(&mut self.bw_samples, self.bw_round, rate);
            }
        }
        let measured = ev
            .capacity
            .filter(|c| c.is_finite() && *c > self.capacity_floor);
        if let Some(c) = measured {
            windowed_insert(&mut self.capacity_samples, self.bw_round, c);
            // What was sampled before the capacity was known is held to it too.
            if matches!(self.state, BbrState::Startup | BbrState::Drain) {
                let bound = CAPACITY_BW_BOUND * self.capacity();
                self.round_clamped |= self.cap_bw(bound);
            }
        }
        self.update_ack_aggregation(ev);
        self.check_full_pipe(ev);
        self.check_overflow(ev);
        self.update_state(ev, rtt);
        let min_rtt = Self::min_rtt(rtt);
        self.min_rtt_cached = min_rtt;
        // Before the first round trip is known the initial window goes out at once (paced
        // as if the RTT were 1 ms); from the first RTT sample, Startup paces at its gain x
        // the initial window per round trip (BBR's initial pacing rate, which TCP takes from
        // the handshake). Left at the 1 ms guess, a 100 ms path would see its first rounds
        // unpaced, and Startup overshoot by far more than one round.
        if !self.rtt_known {
            if let Some(r) = ev.rtt.filter(|r| !r.is_zero()) {
                self.rtt_known = true;
                self.pacing_rate = HIGH_GAIN * INITIAL_CWND * self.mss / r.as_secs_f64();
                self.recall(r);
            }
        }
        // Pacing: gain x bandwidth; during Startup only ever up...
        let bw = self.max_bw();
        if bw > 0.0 {
            let rate = self.pacing_gain * bw;
            if self.filled_pipe || rate > self.pacing_rate {
                self.pacing_rate = rate;
            }
        }
        // ...but not far past the capacity its trains measured (issue 24): doubling each
        // round, Startup sends up to twice the bottleneck's rate for the round trip before
        // the queue it builds shows, a third of a bandwidth-delay product more than a tail-drop
        // queue of a third of one holds (1 Gbit/s x 200 ms behind 8 MiB lost 3-8% of a
        // 256 MiB transfer). The capacity is the path's, not this flow's share: with others
        // on the bottleneck it bounds nothing, and the queue's delay ends Startup as before.
        let capacity = self.capacity();
        if self.state == BbrState::Startup && capacity > 0.0 {
            let ceiling = STARTUP_CAPACITY_GAIN * capacity.max(bw);
            self.pacing_rate = self.pacing_rate.min(ceiling);
        }
        self.set_cwnd(ev);
        // A round of paced sending, after a train measured the bottleneck, whose RTT never
        // rose: nothing else fills the path, and the doublings to half its capacity can be
        // skipped (once).
        if self.state == BbrState::Startup
            && self.quiet_round
            && !self.jumped
            && capacity > 0.0
            && self.rtt_known
        {
            self.jumped = true;
            let floor = STARTUP_JUMP * capacity;
            self.pacing_rate = self.pacing_rate.max(floor);
            let window = STARTUP_CWND_GAIN * floor * self.min_rtt_cached.as_secs_f64() / self.mss;
            self.cwnd = self.cwnd.max(window);
        }
    }

    fn update_round(&mut self, ev: &AckEvent) {
        self.round_start = false;
        if let Some(s) = ev.sample {
            let long_enough = ev.now.saturating_duration_since(self.round_stamp) >= MIN_ROUND_TIME;
            if s.prior_delivered >= self.next_round_delivered && long_enough {
                // The round that ends: were its samples cut to the capacity's bound? (See
                // LONG_ROUND: a streak begins with a long round.)
                let long = ev.now.saturating_duration_since(self.round_stamp) >= LONG_ROUND;
                self.clamped_rounds = match self.clamped_rounds {
                    _ if !self.round_clamped || self.state != BbrState::Startup => None,
                    Some((t, n)) => Some((t, n + 1)),
                    None if long => Some((ev.now, 1)),
                    None => None,
                };
                self.round_clamped = false;
                self.round_stamp = ev.now;
                self.next_round_delivered = ev.delivered;
                self.round += 1;
                self.round_start = true;
                if self.state != BbrState::ProbeRtt {
                    self.bw_round += 1;
                }
            }
        }
    }

    /// Datagrams delivered beyond what the bandwidth estimate explains since the last time
    /// they did not exceed it: the burst a receiver's delayed ACKs release at once.
    fn update_ack_aggregation(&mut self, ev: &AckEvent) {
        let bw = self.max_bw();
        if bw <= 0.0 || ev.newly_delivered == 0 {
            return;
        }
        let expected = bw
            * ev.now
                .saturating_duration_since(self.ack_epoch_start)
                .as_secs_f64()
            / self.mss;
        if self.ack_epoch_delivered <= expected {
            self.ack_epoch_delivered = 0.0;
            self.ack_epoch_start = ev.now;
        }
        self.ack_epoch_delivered += ev.newly_delivered as f64;
        let extra = (self.ack_epoch_delivered - expected).max(0.0);
        windowed_insert(&mut self.extra_acked, self.round, extra);
    }

    /// Forgets a capacity Startup has shown wrong ([`CAPACITY_DISPROOF_ROUNDS`]): no bound,
    /// no ceiling, and trains measuring no more than the delivery rate it held down are noise.
    fn disprove_capacity(&mut self) {
        self.capacity_floor = CAPACITY_BW_BOUND * self.capacity();
        self.capacity_samples = [(0, 0.0); BW_WINDOW_ROUNDS as usize];
        self.recalled_capacity = 0.0;
        self.clamped_rounds = None;
    }

    fn check_full_pipe(&mut self, ev: &AckEvent) {
        if self.round_start {
            self.round_quiet_samples = 0;
            self.round_queued = false;
            self.round_lost = 0;
            self.round_delivered = 0;
            self.last_round_min_rtt = self.round_min_rtt.take();
            self.round_rtt_samples = 0;
            self.round_max_rtt = Duration::ZERO;
        }
        let threshold = queue_threshold(self.min_rtt_cached);
        let limit = self.min_rtt_cached + threshold;
        self.quiet_round = false;
        if let Some(r) = ev.rtt {
            self.round_max_rtt = self.round_max_rtt.max(r);
            self.round_min_rtt = Some(self.round_min_rtt.map_or(r, |m| m.min(r)));
            if r <= self.min_rtt_cached + jump_tolerance(self.min_rtt_cached) {
                self.round_quiet_samples += 1;
                self.quiet_round = self.round >= 2
                    && !self.round_queued
                    && self.round_quiet_samples == HYSTART_SAMPLES;
            } else {
                self.round_queued = true;
            }
            self.round_rtt_samples += 1;
            self.queued_since = match self.queued_since {
                // The first round's samples are of the initial window, sent in one burst
                // before any rate was known: the queue it makes at a slow bottleneck (16
                // loopback datagrams at 100 Mbit/s are 80 ms of it) says nothing of the pipe.
                _ if r <= limit || self.round < 2 => None,
                None => Some((ev.now, 1)),
                Some((t, n)) => Some((t, n + 1)),
            };
        }
        // A queue building in Startup (even the lowest RTT of a round's first samples well
        // above the path's minimum, as HyStart++ tells): the pipe is full, before it overflows.
        // Not waiting for the round to end: Startup sends twice what the path takes meanwhile.
        let this_round = self
            .round_min_rtt
            .filter(|_| self.round_rtt_samples >= HYSTART_SAMPLES);
        let queued = |m: Option<Duration>| m.is_some_and(|m| m > limit);
        // Nor for the next round to begin: a round's early samples, taken before the queue
        // grew, keep its minimum low to its end, and on a long path that is a whole round of
        // sending at twice the path's rate into a queue that may be far shorter (issue 24: the
        // 200 ms relay path's 8 MiB queue overflowed while its RTT had stood 16 ms over the
        // minimum for 250 ms). Every sample above the limit for as long as the limit itself
        // (and HYSTART_SAMPLES of them) is a queue, not jitter.
        let persistent = self.queued_since.is_some_and(|(t, n)| {
            n >= HYSTART_SAMPLES && ev.now.saturating_duration_since(t) >= threshold
        });
        if !self.filled_pipe
            && (queued(self.last_round_min_rtt) || queued(this_round) || persistent)
        {
            self.filled_pipe = true;
            self.exit_queued = true;
            return;
        }
        self.round_delivered += ev.newly_delivered;
        self.round_lost += ev.newly_lost;
        // Startup overshoots into the bottleneck's queue: loss past 2% of the round so far
        // (and more than a handful) says the pipe is full (BBR v2's startup exit), at once,
        // once the delivery rate has stopped growing (random loss on a path with room to
        // spare must not end Startup early).
        if !self.filled_pipe && self.full_bw_rounds >= 1 && self.round_lost_past_threshold() {
            self.filled_pipe = true;
            self.exit_queued = true;
            return;
        }
        if self.filled_pipe || !self.round_start || ev.sample.is_none_or(|s| s.app_limited) {
            return;
        }
        if self.max_bw() >= self.full_bw * 1.25 {
            self.full_bw = self.max_bw();
            self.full_bw_rounds = 0;
            return;
        }
        // A plateau of Startup's own making: the capacity's bound cut the round's samples,
        // and the round's RTT showed no queue (that would have ended Startup above). Evidence
        // against the capacity, not a full pipe.
        if let Some((since, rounds)) = self.clamped_rounds {
            if rounds >= CAPACITY_DISPROOF_ROUNDS
                && ev.now.saturating_duration_since(since) >= CAPACITY_DISPROOF_TIME
            {
                self.disprove_capacity();
            }
            return;
        }
        self.full_bw_rounds += 1;
        if self.full_bw_rounds >= 3 {
            self.filled_pipe = true;
        }
    }

    /// This round trip so far lost more than one datagram in [`OVERFLOW_LOSS_DIVISOR`] (2%),
    /// and at least [`OVERFLOW_MIN_LOST`]: Startup's exit on loss, and with a queue in its RTT
    /// an overflow ([`Bbr::check_overflow`]).
    fn round_lost_past_threshold(&self) -> bool {
        let (lost, delivered) = (self.round_lost, self.round_delivered);
        lost >= OVERFLOW_MIN_LOST && lost * OVERFLOW_LOSS_DIVISOR > lost + delivered
    }

    /// The bottleneck's queue overflowed: more than one datagram in
    /// [`OVERFLOW_LOSS_DIVISOR`] of this round lost while its RTT showed a queue (random loss
    /// on an empty path is not overflow). Pacing alone does not keep a queue from overflowing
    /// when the estimate is high: behind a token bucket every probe's samples carry the
    /// bucket's refill (`tbf rate 100mbit burst 256kb` at 100 ms: 104-112 Mbit/s estimated
    /// where the link carries 96), and cruising there fills any queue, where a window would
    /// not. The window is held below what the path held when it overflowed
    /// ([`OVERFLOW_BETA`]), but never below what the estimated bandwidth needs, and a probe
    /// that caused it ends.
    ///
    /// What the path held: what was in flight, or (if less) the bottleneck's rate times the
    /// round's highest RTT, the full queue's (Little's law). Overflow is found a round trip
    /// after it happens, and a sender whose rate was growing (Startup, the overflow Drain
    /// finds) has more in flight by then than the path held.
    fn check_overflow(&mut self, ev: &AckEvent) {
        let limit = self.min_rtt_cached + queue_threshold(self.min_rtt_cached);
        if !matches!(self.state, BbrState::Drain | BbrState::ProbeBw)
            || self.round < self.hi_quiet_until
            || self.round_max_rtt <= limit
            || !self.round_lost_past_threshold()
        {
            return;
        }
        let in_flight = (ev.inflight + ev.newly_lost) as f64;
        let held = self.max_bw() * self.round_max_rtt.as_secs_f64() / self.mss;
        self.inflight_hi = (OVERFLOW_BETA * in_flight.min(held)).max(self.window_floor());
        self.hi_growth = INFLIGHT_HI_GROWTH;
        self.hi_quiet_until = self.round + 2;
        self.probe_clean = false;
        if self.state == BbrState::ProbeBw && self.pacing_gain > 1.0 {
            self.cycle = 1;
            self.cycle_stamp = ev.now;
            self.pacing_gain = CYCLE_GAINS[1];
        }
    }

    /// The session's first RTT sample `r`: if an earlier session's record of the path
    /// matches it, Startup takes the rate that session sustained as the bottleneck's capacity
    /// (packet trains measure none through a token bucket until the sender already exceeds
    /// it, a round trip before it can know): it paces no further than just past it, counts no
    /// sample for much more, skips to half of it after a quiet round, and forgets it as it
    /// forgets a wrong train's ([`CAPACITY_DISPROOF_ROUNDS`]) if the path has grown. The
    /// window an overflow taught that session holds this one's from the start of ProbeBW.
    fn recall(&mut self, r: Duration) {
        let Some(path) = self.remembered.take().filter(|p| p.matches(r)) else {
            return;
        };
        self.recalled_capacity = path.rate;
        self.recalled = Some(path.rate);
        if let Some(hi) = path.inflight_hi {
            self.inflight_hi = hi / self.mss;
        }
    }

    /// What this session learned of its path: nothing on a path shorter than
    /// [`REMEMBERED_MIN_RTT`], or before [`REMEMBERED_ROUNDS`] round trips of ProbeBW.
    fn path_record(&self) -> Option<PathRecord> {
        let (t0, d0) = self.probe_bw_start?;
        let (t1, d1) = self.last_ack;
        let span = t1.saturating_duration_since(t0);
        if self.min_rtt_cached < REMEMBERED_MIN_RTT
            || span < self.min_rtt_cached * REMEMBERED_ROUNDS
            || d1 <= d0
        {
            return None;
        }
        Some(PathRecord {
            rate: (d1 - d0) as f64 * self.mss / span.as_secs_f64(),
            min_rtt: self.min_rtt_cached,
            inflight_hi: self
                .inflight_hi
                .is_finite()
                .then_some(self.inflight_hi * self.mss),
        })
    }

    /// The window for `gain` pipes of the bandwidth estimate, with the ACKs' aggregation on
    /// top ([`Bbr::set_cwnd`]'s target at the current gain).
    fn window_at(&self, gain: f64) -> f64 {
        gain * self.pipe() + windowed_max(&self.extra_acked, self.round) + 3.0
    }

    /// The least window the bandwidth estimate needs: one pipe of it, and the aggregation.
    fn window_floor(&self) -> f64 {
        self.window_at(1.0)
    }

    /// How far `inflight_hi` holds the window: at it, or during a probe a step past it.
    fn inflight_bound(&self) -> f64 {
        let hi = self.inflight_hi.max(self.window_floor());
        if self.state == BbrState::ProbeBw && self.pacing_gain > 1.0 {
            hi * (1.0 + self.hi_growth)
        } else {
            hi
        }
    }

    fn update_state(&mut self, ev: &AckEvent, rtt: &mut RttEstimator) {
        let bdp = self.bdp();
        match self.state {
            BbrState::Startup if self.filled_pipe => {
                self.state = BbrState::Drain;
                self.drain_start = (ev.now, ev.delivered);
                self.pacing_gain = 1.0 / HIGH_GAIN;
                self.cwnd_gain = HIGH_GAIN;
            }
            BbrState::Drain if ev.inflight as f64 <= bdp => {
                self.calibrate_after_drain(ev);
                self.enter_probe_bw(ev.now);
            }
            BbrState::ProbeBw => {
                if let Some(r) = ev.rtt {
                    let m = &mut self.cycle_min_rtt[0];
                    *m = Some(m.map_or(r, |m| m.min(r)));
                }
                let elapsed = ev.now.saturating_duration_since(self.cycle_stamp);
                let gain = CYCLE_GAINS[self.cycle];
                // A probe held by inflight_hi has probed as far as it may.
                let probe_full = (gain * bdp).min(self.inflight_bound() - 1.0);
                if gain > 1.0 && ev.inflight as f64 >= self.inflight_bound() - 1.0 {
                    self.probe_bound_reached = true;
                }
                let next = elapsed > self.phase_time()
                    && (gain <= 1.0 || ev.newly_lost > 0 || ev.inflight as f64 >= probe_full)
                    || (gain < 1.0 && ev.inflight as f64 <= bdp);
                if next {
                    if gain > 1.0
                        && self.probe_clean
                        && self.probe_bound_reached
                        && self.inflight_hi.is_finite()
                    {
                        // Probed a step past the bound without overflowing: the bound moves
                        // there, and the next step is twice as long.
                        self.inflight_hi = self.inflight_bound();
                        self.hi_growth = (2.0 * self.hi_growth).min(1.0);
                    }
                    self.cycle = (self.cycle + 1) % CYCLE_GAINS.len();
                    self.probe_clean = CYCLE_GAINS[self.cycle] > 1.0;
                    self.probe_bound_reached = false;
                    self.cycle_stamp = ev.now;
                    if self.cycle == 0 {
                        self.cycle_min_rtt = [None, self.cycle_min_rtt[0]];
                    }
                    self.pacing_gain = CYCLE_GAINS[self.cycle];
                    // Cruising while a queue stands (flows together over-estimating the
                    // bottleneck, each pacing at its own peak): cruise a little below the
                    // estimate until it drains. Every flow sees the same queue, so all slow
                    // down; then the probe and drain phases trade bandwidth between them.
                    if self.pacing_gain == 1.0 && self.standing_queue() {
                        self.pacing_gain = CRUISE_DRAIN_GAIN;
                    }
                }
            }
            _ => {}
        }
        // ProbeRTT: every 5 s without a new minimum (or a sample close to it: RttEstimator),
        // drain to half a BDP for 200 ms.
        if self.state != BbrState::ProbeRtt && rtt.min_rtt_expired(ev.now) {
            self.state = BbrState::ProbeRtt;
            self.pacing_gain = 1.0;
            self.prior_cwnd = self.cwnd;
            self.probe_rtt_done = None;
        }
        if self.state == BbrState::ProbeRtt {
            if self.probe_rtt_done.is_none() && ev.inflight as f64 <= (0.5 * bdp).max(MIN_CWND) {
                self.probe_rtt_done = Some(ev.now + PROBE_RTT_TIME.max(self.min_rtt_cached));
            }
            if self.probe_rtt_done.is_some_and(|t| ev.now >= t) {
                rtt.refresh_min_rtt(ev.now);
                self.cwnd = self.cwnd.max(self.prior_cwnd);
                if self.filled_pipe {
                    self.enter_probe_bw(ev.now);
                } else {
                    self.state = BbrState::Startup;
                    self.pacing_gain = HIGH_GAIN;
                    self.cwnd_gain = STARTUP_CWND_GAIN;
                }
            }
        }
    }

    /// How long a ProbeBW phase lasts at least: a round trip, [`PHASE_BURSTS`] pacing bursts,
    /// and the time to send 16 datagrams at the estimated rate. A probe shorter than that is
    /// no probe: the pacer may release no more during it than at gain 1 (a slow flow pacing
    /// a burst every 2 ms would never grow), and its extra data would be lost in a queue of a
    /// few milliseconds, diluted in rate samples that each span a round trip.
    fn phase_time(&self) -> Duration {
        let bw = self.max_bw();
        let sixteen = if bw > 0.0 {
            Duration::from_secs_f64((16.0 * self.mss / bw).min(1.0))
        } else {
            Duration::ZERO
        };
        self.min_rtt_cached
            .max(BURST_TIME * PHASE_BURSTS)
            .max(sixteen)
    }

    /// Whether the lowest RTT of the last two ProbeBW cycles stayed above the path's minimum
    /// by more than [`standing_threshold`]: a queue no drain phase emptied.
    fn standing_queue(&self) -> bool {
        let lowest = match self.cycle_min_rtt {
            [Some(a), Some(b)] => a.min(b),
            _ => return false,
        };
        lowest > self.min_rtt_cached + standing_threshold(self.min_rtt_cached)
    }

    /// Drain after a queue (or its overflow) ended Startup: what it delivered came out of a
    /// busy bottleneck, at the bottleneck's rate, and an estimate above that rate is not the
    /// path's. Delivery-rate samples of a round trip each carried a token bucket's burst
    /// (`tbf rate 100mbit burst 256kb` at 100 ms: 110 Mbit/s for a link that carries 97 of
    /// payload), and some of Drain's own too, and ProbeBW cruising at such an estimate grows a
    /// queue until it overflows. What Drain delivered over its whole span is the bottleneck's
    /// rate, whatever any one sample says. (ProbeBW's own probes can carry the bucket's burst
    /// again once a drain phase has let it refill: docs/RELIABILITY.md, "The slow runs,
    /// fixed".)
    fn calibrate_after_drain(&mut self, ev: &AckEvent) {
        let (t0, delivered0) = self.drain_start;
        let span = ev.now.saturating_duration_since(t0);
        let delivered = ev.delivered.saturating_sub(delivered0);
        if !self.exit_queued
            || delivered < DRAIN_DELIVERIES
            || span < MIN_ROUND_TIME.max(self.min_rtt_cached / 2)
        {
            return;
        }
        self.cap_bw(delivered as f64 * self.mss / span.as_secs_f64());
    }

    /// Holds every bandwidth sample to at most `limit` (bytes/s); whether that cut any.
    fn cap_bw(&mut self, limit: f64) -> bool {
        let mut cut = false;
        for slot in &mut self.bw_samples {
            cut |= slot.1 > limit;
            slot.1 = slot.1.min(limit);
        }
        cut
    }

    fn enter_probe_bw(&mut self, now: Instant) {
        self.state = BbrState::ProbeBw;
        self.probe_bw_start.get_or_insert(self.last_ack);
        self.cwnd_gain = 2.0;
        // Start anywhere but in the drain phase, at random: flows whose phases line up
        // never trade bandwidth (one's drain is what another's probe picks up).
        let r = self.rng.random_range(0..7);
        self.cycle = if r == 0 { 0 } else { r + 1 };
        self.cycle_stamp = now;
        self.pacing_gain = CYCLE_GAINS[self.cycle];
        self.probe_clean = self.pacing_gain > 1.0;
        self.probe_bound_reached = false;
    }

    fn set_cwnd(&mut self, ev: &AckEvent) {
        if self.state == BbrState::ProbeRtt {
            // Half a BDP (BBR v2): enough to drain the queue, not the pipe.
            self.cwnd = (0.5 * self.bdp()).max(MIN_CWND);
            return;
        }
        let target = self.window_at(self.cwnd_gain).max(MIN_CWND);
        if self.filled_pipe {
            let target = target.min(self.inflight_bound());
            self.cwnd = (self.cwnd + ev.newly_delivered as f64).min(target);
        } else if self.cwnd < target || ev.delivered < 4 * INITIAL_CWND as u64 {
            // Startup: grow with every delivery, but not past gain x the BDP measured so far
            // (once there is a measurement worth the name).
            self.cwnd += ev.newly_delivered as f64;
        }
        self.cwnd = self.cwnd.max(MIN_CWND);
    }
}

/// How far above the minimum the RTT samples of a paced round may stand and still show an
/// empty path: a 64th of it (3 ms at 200 ms), at least 1 ms (the batching of hosts and the
/// serialisation of 64 KB datagrams). A flow arriving on a full path grows the queue by its
/// own rate every round: at 1 Gbit/s x 200 ms its second round (100 Mbit/s) grows the RTT
/// by 20 ms.
fn jump_tolerance(min_rtt: Duration) -> Duration {
    (min_rtt / 64).max(Duration::from_millis(1))
}

/// How much an RTT must exceed the minimum to say a queue stands: a quarter of the minimum,
/// between 4 and 16 ms (HyStart++, RFC 9406). The floor absorbs the jitter of hosts that
/// send, receive and acknowledge in batches (hundreds of microseconds on loopback or veth).
fn queue_threshold(min_rtt: Duration) -> Duration {
    (min_rtt / 4).clamp(Duration::from_millis(4), Duration::from_millis(16))
}

/// How much the lowest RTT of two whole ProbeBW cycles must exceed the minimum to say a queue
/// stands: a quarter of the minimum, between [`MIN_PIPE_TIME`] and 16 ms. Lower than
/// Startup's threshold: a minimum over two cycles (dozens of samples, each drain phase among
/// them) is not fooled by batching jitter, and flows that are window-limited on a path of
/// microseconds build a queue of about one [`MIN_PIPE_TIME`] plus their ACK aggregation
/// allowance (2-3 ms through a gigabit router), which must show, or flows that started
/// unequal stay so.
fn standing_threshold(min_rtt: Duration) -> Duration {
    (min_rtt / 4).clamp(MIN_PIPE_TIME, Duration::from_millis(16))
}

/// Takes `value` into `round`'s slot of a max filter over [`BW_WINDOW_ROUNDS`] rounds (the
/// slot of a round that long ago starts over).
fn windowed_insert(slots: &mut [(u64, f64); BW_WINDOW_ROUNDS as usize], round: u64, value: f64) {
    let slot = &mut slots[(round % BW_WINDOW_ROUNDS) as usize];
    if slot.0 != round {
        *slot = (round, 0.0);
    }
    slot.1 = slot.1.max(value);
}

fn windowed_max(slots: &[(u64, f64)], round: u64) -> f64 {
    slots
        .iter()
        .filter(|(r, _)| round.saturating_sub(*r) < BW_WINDOW_ROUNDS)
        .map(|(_, v)| *v)
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds one ACK of one datagram, `inflight` behind, with a delivery rate of `rate`.
    /// An ACK at `now` of `newly` datagrams (`delivered` in all), `inflight` behind it: an RTT
    /// sample `r` (fed to `rtt` too), a delivery-rate sample of `rate` bytes/s over the last
    /// 20 datagrams, and the capacity a train measured, if one did.
    fn feed(
        b: &mut Bbr,
        rtt: &mut RttEstimator,
        now: Instant,
        (delivered, newly, inflight): (u64, u64, u64),
        rate: f64,
        r: Duration,
        capacity: Option<f64>,
    ) {
        rtt.sample(r, now);
        let ev = AckEvent {
            now,
            delivered,
            newly_delivered: newly,
            newly_lost: 0,
            inflight,
            sample: Some(RateSample {
                delivery_rate: rate,
                app_limited: false,
                prior_delivered: delivered.saturating_sub(20),
            }),
            rtt: Some(r),
            capacity,
        };
        b.on_ack(&ev, rtt);
    }

    /// Feeds one ACK of one datagram, 20 behind, at a delivery rate doubling every 20.
    fn ack(b: &mut Bbr, rtt: &mut RttEstimator, now: Instant, delivered: u64, r: Duration) {
        let rate = 1e6 * 2f64.powf(delivered as f64 / 20.0);
        feed(b, rtt, now, (delivered, 1, 20), rate, r, None);
    }

    #[test]
    fn startup_ends_on_a_queue_seen_early_in_a_round_after_a_clean_one() {
        let t0 = Instant::now();
        let mut b = Bbr::new(1400, t0, 1);
        let mut rtt = RttEstimator::default();
        let step = Duration::from_micros(500);
        let mut delivered = 0;
        // One ACK every `step`, with an RTT of `ms`.
        let feed = |b: &mut Bbr, rtt: &mut RttEstimator, delivered: u64, ms: u64| {
            let now = t0 + step * delivered as u32;
            ack(b, rtt, now, delivered, Duration::from_millis(ms));
        };
        // Clean rounds at 10 ms, the rate doubling each: Startup stays.
        let starts_round = |b: &Bbr, delivered: u64| {
            let now = t0 + step * (delivered + 1) as u32;
            (delivered + 1).saturating_sub(20) >= b.next_round_delivered
                && now.saturating_duration_since(b.round_stamp) >= MIN_ROUND_TIME
        };
        while b.round < 3 || !starts_round(&b, delivered) {
            delivered += 1;
            feed(&mut b, &mut rtt, delivered, 10);
        }
        assert_eq!(b.state, BbrState::Startup);
        assert!(b
            .last_round_min_rtt
            .is_some_and(|m| m <= Duration::from_millis(10)));
        // The next round's first samples all see a 20 ms queue: Startup ends within the round,
        // though the last complete round was clean.
        let round = b.round + 1;
        for _ in 0..HYSTART_SAMPLES {
            delivered += 1;
            feed(&mut b, &mut rtt, delivered, 30);
        }
        assert_eq!(b.round, round, "the round has not ended");
        assert!(
            b.filled_pipe,
            "a queue in a round's first samples ends Startup"
        );
        assert_ne!(b.state, BbrState::Startup);
    }

    /// Issue 24: Startup paces no further than just past the capacity its packet trains
    /// measured, or the delivery rate if that is higher (the capacity was under-measured);
    /// once the pipe is full, the capacity bounds nothing.
    #[test]
    fn startup_paces_no_further_than_just_past_the_measured_capacity() {
        let t0 = Instant::now();
        let mut b = Bbr::new(1400, t0, 1);
        let mut rtt = RttEstimator::default();
        let step = Duration::from_millis(1);
        let capacity = 2e6;
        let mut delivered = 0u64;
        let mut next = |b: &mut Bbr, rtt: &mut RttEstimator, rate: f64, cap: Option<f64>| {
            delivered += 1;
            let now = t0 + step * delivered as u32;
            let r = Duration::from_millis(100);
            feed(b, rtt, now, (delivered, 1, 20), rate, r, cap);
        };
        // No train measured: gain x the delivery rate, as ever.
        next(&mut b, &mut rtt, 1e6, None);
        assert!(
            (b.pacing_rate - HIGH_GAIN * 1e6).abs() < 1.0,
            "{}",
            b.pacing_rate
        );
        // A train says 2 MB/s: 2.885 MB/s would be 44% past it.
        next(&mut b, &mut rtt, 1e6, Some(capacity));
        assert!((b.pacing_rate - STARTUP_CAPACITY_GAIN * capacity).abs() < 1.0);
        // Deliveries past the capacity measured (within CAPACITY_BW_BOUND of it): the train
        // measured low, and Startup probes on past the deliveries.
        next(&mut b, &mut rtt, 2.4e6, None);
        assert_eq!(b.state, BbrState::Startup);
        assert!((b.pacing_rate - STARTUP_CAPACITY_GAIN * 2.4e6).abs() < 1.0);
        // Out of Startup the ceiling is gone: ProbeBW's gains apply to the estimate.
        b.filled_pipe = true;
        next(&mut b, &mut rtt, 2.5e6, Some(capacity));
        assert_ne!(b.state, BbrState::Startup);
        next(&mut b, &mut rtt, 2.5e6, Some(capacity));
        assert!(
            (b.pacing_rate - b.pacing_gain * 2.5e6).abs() < 1.0,
            "{} at gain {}",
            b.pacing_rate,
            b.pacing_gain
        );
    }

    /// Issue 24: a train measured the bottleneck (here 100 MB/s) after the first flight, and
    /// the first 8 RTT samples of the first paced round saw no queue grow: Startup skips to
    /// its last doubling (half the capacity, a window of one BDP at it) instead of doubling
    /// from the initial window. A round whose RTT grew (another flow fills the path: the
    /// capacity is not this flow's to take) keeps it doubling.
    #[test]
    fn startup_jumps_to_half_the_capacity_after_a_quiet_round() {
        let capacity = 1e8;
        for rise_ms in [0u64, 8] {
            let t0 = Instant::now();
            let mut b = Bbr::new(1400, t0, 1);
            let mut rtt = RttEstimator::default();
            let before_jump = |b: &Bbr| b.pacing_rate < 0.5 * capacity;
            for n in 1..=45u64 {
                let now = t0 + Duration::from_millis(5 * n);
                // Round 2 (acks 21-40) is the first paced one: its RTT rises or stays.
                let r = if (21..=40).contains(&n) {
                    Duration::from_millis(100 + rise_ms * (n - 20) / 20)
                } else {
                    Duration::from_millis(100)
                };
                let rate = 1e6 * 2f64.powf(n as f64 / 20.0);
                let cap = (n == 3).then_some(capacity);
                feed(&mut b, &mut rtt, now, (n, 1, 20), rate, r, cap);
                // Round 2's 8th sample (ack 28) is the first that can show it quiet.
                if n < 28 {
                    assert!(before_jump(&b), "ack {n}: {}", b.pacing_rate);
                } else if rise_ms == 0 {
                    assert!(!before_jump(&b), "ack {n}: {}", b.pacing_rate);
                }
            }
            assert_eq!(b.state, BbrState::Startup);
            if rise_ms == 0 {
                assert!(b.pacing_rate >= 0.5 * capacity, "{}", b.pacing_rate);
                let bdp = capacity * 0.1 / 1400.0;
                assert!(b.cwnd >= bdp, "{} < {bdp}", b.cwnd);
            } else {
                assert!(before_jump(&b), "RTT grew 8 ms: {}", b.pacing_rate);
                assert!(b.cwnd < 100.0, "{}", b.cwnd);
            }
        }
    }

    /// Issue 24: a token bucket whose burst outlasts the round trip (`tbf rate 100mbit burst
    /// 256kb` at 60 µs) delivers it at the line's rate, and the delivery-rate samples said
    /// 11 Gbit/s. Until the pipe is full they count for no more than the capacity trains
    /// measured allows, those taken before a train was measured included; later they count.
    #[test]
    fn a_token_buckets_burst_is_not_taken_for_bandwidth_in_startup() {
        let t0 = Instant::now();
        let mut b = Bbr::new(1440, t0, 1);
        let mut rtt = RttEstimator::default();
        let mut delivered = 0u64;
        let mut next = |b: &mut Bbr, rtt: &mut RttEstimator, rate: f64, cap: Option<f64>| {
            delivered += 10;
            let now = t0 + Duration::from_millis(delivered);
            let r = Duration::from_micros(60);
            feed(b, rtt, now, (delivered, 10, 0), rate, r, cap);
        };
        let burst = 11e9 / 8.0;
        let link = 100e6 / 8.0;
        next(&mut b, &mut rtt, burst, None);
        assert_eq!(b.max_bw(), burst, "nothing known yet");
        // The first train: the estimate is held to the bound at once...
        next(&mut b, &mut rtt, link, Some(link));
        assert_eq!(b.state, BbrState::Startup);
        assert!(
            (b.max_bw() - CAPACITY_BW_BOUND * link).abs() < 1.0,
            "{}",
            b.max_bw()
        );
        // ...and so is every later sample until the pipe is full.
        next(&mut b, &mut rtt, burst, None);
        assert!(
            (b.max_bw() - CAPACITY_BW_BOUND * link).abs() < 1.0,
            "{}",
            b.max_bw()
        );
        assert!(b.pacing_rate <= STARTUP_CAPACITY_GAIN * CAPACITY_BW_BOUND * link + 1.0);
        // In ProbeBW a faster delivery is a faster path (the hosts' CPUs may have been the
        // bottleneck a train measured, and were busy then): it counts.
        b.filled_pipe = true;
        next(&mut b, &mut rtt, link, None);
        next(&mut b, &mut rtt, link, None);
        assert_eq!(b.state, BbrState::ProbeBw);
        next(&mut b, &mut rtt, 4.0 * link, None);
        assert_eq!(b.max_bw(), 4.0 * link);
    }

    /// Issue 24: a train measured far below the path (a stall of the relay or the receiver
    /// spread it out; here 240 Mbit/s on a 1 Gbit/s path of 200 ms that never queues) holds
    /// Startup's delivery rate to a quarter past it. On a long path such rounds are not a
    /// plateau: Startup stays, and after three of them forgets the capacity and doubles on to
    /// the link (before, it ended at 300 Mbit/s and ProbeBW took minutes to find the rest).
    /// On a path of milliseconds the same rounds are a plateau, as they were.
    #[test]
    fn a_capacity_startup_keeps_running_into_without_a_queue_is_forgotten() {
        let link = 1e9 / 8.0;
        let bogus = 30e6;
        for rtt_ms in [200u64, 2] {
            let t0 = Instant::now();
            let mut b = Bbr::new(1400, t0, 1);
            let mut rtt = RttEstimator::default();
            let r = Duration::from_millis(rtt_ms);
            // 20 ACKs a round trip, the delivery rate doubling each, up to what was paced a
            // round trip before, and the link.
            let step = r / 20;
            let mut paced = std::collections::VecDeque::new();
            let mut most_in_startup: f64 = 0.0;
            for n in 1..=400u64 {
                let now = t0 + step * n as u32;
                paced.push_back((now, b.pacing_rate));
                while paced.len() > 20 {
                    paced.pop_front();
                }
                let doubling = 1e5 * 2f64.powf(n as f64 / 20.0);
                let rate = doubling.min(paced[0].1).min(link);
                let cap = (n == 100).then_some(bogus);
                feed(&mut b, &mut rtt, now, (n, 1, 20), rate, r, cap);
                if b.state == BbrState::Startup {
                    most_in_startup = most_in_startup.max(b.max_bw());
                }
                if n > 100 && b.filled_pipe {
                    break;
                }
            }
            assert!(b.filled_pipe, "{rtt_ms} ms: Startup never ended");
            if rtt_ms == 200 {
                assert!(
                    most_in_startup >= 0.9 * link,
                    "Startup ended at {} Mbit/s",
                    most_in_startup * 8e-6
                );
                assert_eq!(b.capacity(), 0.0, "the capacity was forgotten");
                assert!(b.capacity_floor >= bogus, "{}", b.capacity_floor);
            } else {
                assert!(
                    most_in_startup <= CAPACITY_BW_BOUND * bogus + 1.0,
                    "2 ms: {}",
                    most_in_startup
                );
            }
        }
        // A right capacity whose samples a token bucket's burst carried past the bound for
        // less than CAPACITY_DISPROOF_TIME, then the link's rate: kept.
        let t0 = Instant::now();
        let mut b = Bbr::new(1400, t0, 1);
        let mut rtt = RttEstimator::default();
        let r = Duration::from_millis(100);
        let cap = 12.5e6;
        for n in 1..=120u64 {
            let now = t0 + Duration::from_millis(5 * n);
            let rate = if n < 60 { 2.0 * cap } else { cap };
            let train = (n == 40).then_some(cap);
            feed(&mut b, &mut rtt, now, (n, 1, 20), rate, r, train);
        }
        assert_eq!(
            b.capacity(),
            cap,
            "a bucket's burst disproved a right capacity"
        );
    }

    /// Issue 24: Startup ended on a queue with an estimate a token bucket inflated (samples
    /// of 110 Mbit/s where the link carries 97 of payload); Drain delivered at the link's
    /// rate over its span, whatever its own samples said, and ProbeBW starts from that rate.
    #[test]
    fn probe_bw_starts_from_what_drain_delivered_after_a_queue() {
        let t0 = Instant::now();
        let mut b = Bbr::new(1400, t0, 1);
        let mut rtt = RttEstimator::default();
        let inflated = 110e6 / 8.0;
        let link = 97e6 / 8.0;
        let mut delivered = 0u64;
        let mut now = t0;
        // Startup, doubling each round to the inflated rate, then a queue of 30 ms that
        // persists: the pipe is full.
        while b.state == BbrState::Startup {
            delivered += 1;
            now += Duration::from_millis(5);
            let ms = if delivered <= 60 { 100 } else { 130 };
            let r = Duration::from_millis(ms);
            let rate = inflated * 2f64.powf((delivered.min(60) as f64 - 60.0) / 20.0);
            feed(&mut b, &mut rtt, now, (delivered, 1, 2000), rate, r, None);
            assert!(delivered < 200, "Startup never ended");
        }
        assert_eq!(b.state, BbrState::Drain);
        assert!(b.exit_queued);
        // Drain: 80 ms of deliveries at the link's rate (one ACK a millisecond), samples
        // still inflated, the queue draining; then inflight at the BDP ends it.
        let per_ms = link * 1e-3 / 1400.0;
        let start = delivered;
        for ms in 1..=80u64 {
            now += Duration::from_millis(1);
            let d = start + (per_ms * ms as f64) as u64;
            let newly = d - delivered;
            delivered = d;
            let inflight = if ms < 80 { 2000 } else { 10 };
            let r = Duration::from_millis(120);
            feed(
                &mut b,
                &mut rtt,
                now,
                (d, newly, inflight),
                inflated,
                r,
                None,
            );
        }
        assert_eq!(b.state, BbrState::ProbeBw);
        let bw = b.max_bw();
        assert!(
            (bw - link).abs() < 0.03 * link,
            "ProbeBW starts at {:.1} Mbit/s",
            bw * 8e-6
        );
    }

    /// Issue 24: a round whose first samples were clean, then a queue that stays: Startup
    /// ends once it has stood as long as the limit, within the round (the round's minimum,
    /// the clean samples included, would have waited for the next round).
    #[test]
    fn startup_ends_on_a_queue_that_persists_within_a_round() {
        let t0 = Instant::now();
        let mut b = Bbr::new(1400, t0, 1);
        let mut rtt = RttEstimator::default();
        // A 200 ms path, one ACK a millisecond.
        let step = Duration::from_millis(1);
        let mut delivered = 0;
        let mut feed = |b: &mut Bbr, rtt: &mut RttEstimator, ms: u64| {
            delivered += 1;
            ack(
                b,
                rtt,
                t0 + step * delivered as u32,
                delivered,
                Duration::from_millis(ms),
            );
        };
        // Clean until well into round 3.
        while b.round < 3 {
            feed(&mut b, &mut rtt, 200);
        }
        for _ in 0..20 {
            feed(&mut b, &mut rtt, 200);
        }
        let round = b.round;
        assert_eq!(b.state, BbrState::Startup);
        // The queue grows past the 16 ms limit and stays: 10 ms of it is not yet enough...
        for _ in 0..10 {
            feed(&mut b, &mut rtt, 230);
        }
        assert_eq!(b.state, BbrState::Startup, "a queue of 10 ms may be jitter");
        // ...16 ms is, in the same round.
        for _ in 0..7 {
            feed(&mut b, &mut rtt, 230);
        }
        assert_eq!(b.round, round, "the round has not ended");
        assert!(
            b.filled_pipe,
            "a persistent queue ends Startup within the round"
        );
        // The initial window's own burst, queued at a slow bottleneck, is not a full pipe.
        let mut d = Bbr::new(1400, t0, 1);
        let mut rtt = RttEstimator::default();
        for i in 1..=16u64 {
            ack(
                &mut d,
                &mut rtt,
                t0 + step * i as u32 * 5,
                i,
                Duration::from_millis(200 + 5 * i),
            );
        }
        assert_eq!(d.round, 1);
        assert_eq!(
            d.state,
            BbrState::Startup,
            "the first flight's queue ended Startup"
        );
        // A sample back under the limit starts the count again.
        let mut c = Bbr::new(1400, t0, 1);
        let mut rtt = RttEstimator::default();
        for i in 1..400u64 {
            let ms = if i < 200 || i % 3 == 0 { 200 } else { 230 };
            ack(
                &mut c,
                &mut rtt,
                t0 + step * i as u32,
                i,
                Duration::from_millis(ms),
            );
        }
        assert_eq!(
            c.state,
            BbrState::Startup,
            "interrupted high samples are jitter"
        );
    }

    /// A flow cruising in ProbeBW on a 100 ms path, fed ACKs one a millisecond.
    struct Cruise {
        b: Bbr,
        rtt: RttEstimator,
        now: Instant,
        delivered: u64,
    }

    impl Cruise {
        /// At `link` bytes/s (its state set directly, a window of two BDPs).
        fn new(link: f64) -> Cruise {
            let now = Instant::now();
            let mut b = Bbr::new(1400, now, 1);
            let mut rtt = RttEstimator::default();
            rtt.sample(Duration::from_millis(100), now);
            b.min_rtt_cached = Duration::from_millis(100);
            b.filled_pipe = true;
            windowed_insert(&mut b.bw_samples, b.bw_round, link);
            b.enter_probe_bw(now);
            b.cycle = 2;
            b.pacing_gain = 1.0;
            b.cwnd = 2.0 * b.bdp();
            Cruise {
                b,
                rtt,
                now,
                delivered: 0,
            }
        }

        /// Feeds `rounds` round trips of 100 ms (each ACK delivering a 100th of a BDP,
        /// rounded down so that no ACK aggregation builds, and the first `lost_per_round`
        /// of each round's 100 one datagram found lost) with every RTT sample `r` and
        /// `inflight` in flight (`None`: the whole window); returns the largest window seen
        /// from the second round on.
        fn rounds(
            &mut self,
            rounds: u64,
            lost_per_round: u64,
            r: Duration,
            inflight: Option<u64>,
        ) -> f64 {
            let b = &mut self.b;
            let per_ack = (b.bdp() / 100.0).floor() as u64;
            let mut widest = 0f64;
            for ms in 0..rounds * 100 {
                self.now += Duration::from_millis(1);
                self.delivered += per_ack;
                self.rtt.sample(r, self.now);
                let ev = AckEvent {
                    now: self.now,
                    delivered: self.delivered,
                    newly_delivered: per_ack,
                    newly_lost: u64::from(ms % 100 < lost_per_round),
                    inflight: inflight.unwrap_or(b.cwnd as u64),
                    sample: Some(RateSample {
                        delivery_rate: b.max_bw(),
                        app_limited: false,
                        prior_delivered: self.delivered.saturating_sub(100 * per_ack),
                    }),
                    rtt: Some(r),
                    capacity: None,
                };
                b.on_ack(&ev, &mut self.rtt);
                if ms >= 100 {
                    widest = widest.max(b.cwnd);
                }
            }
            widest
        }
    }

    /// Issue 24: behind `tbf rate 100mbit burst 256kb latency 50ms` at 100 ms, ProbeBW's
    /// estimate carries the bucket's refill and cruising at it overflows the queue (the
    /// window, two BDPs, never held it). Once a round loses more than 2% while the RTT shows
    /// the queue full, the window stays below what the path held then: the bottleneck's rate
    /// times the full queue's RTT (here less than what was in flight), less 15%; and it
    /// grows again only by probes that reach it without overflowing.
    #[test]
    fn an_overflow_holds_the_window_below_what_the_path_held() {
        let link = 97e6 / 8.0;
        let mut c = Cruise::new(link);
        let bdp = c.b.bdp();
        // The queue full (170 ms), 1.9 BDPs in flight, 3% of each round lost.
        let full = Duration::from_millis(170);
        let lost = (0.03 * bdp) as u64;
        c.rounds(2, lost, full, Some((1.9 * bdp) as u64));
        let b = &c.b;
        let held = link * 0.170 / 1400.0;
        assert!(
            (b.inflight_hi - OVERFLOW_BETA * held).abs() < 2.0,
            "bound {:.0}, the path held {held:.0}",
            b.inflight_hi
        );
        assert!(b.cwnd <= b.inflight_hi + 1.0, "window {:.0}", b.cwnd);
        // Cruising on, window-limited, without loss, for a cycle: the window stays held but
        // for its probe, a sixteenth past it, which (clean) moves the bound there.
        let hi = b.inflight_hi;
        let ms = Duration::from_millis(100);
        let widest = c.rounds(8, 0, ms, None);
        let step = hi * (1.0 + INFLIGHT_HI_GROWTH);
        assert!(widest <= step + 1.0, "window {widest:.0}, bound {hi:.0}");
        assert!(
            (c.b.inflight_hi - step).abs() < 1.0,
            "bound {:.0} after a clean probe from {hi:.0}",
            c.b.inflight_hi
        );
        // The next probe takes twice the step.
        c.rounds(8, 0, ms, None);
        let next = step * (1.0 + 2.0 * INFLIGHT_HI_GROWTH);
        assert!(
            (c.b.inflight_hi - next).abs() < 1.0,
            "{:.0}",
            c.b.inflight_hi
        );
    }

    /// Random loss on a path without a queue (the RTT at its minimum) is no overflow: 5% of
    /// every round lost, the window stays two BDPs.
    #[test]
    fn random_loss_without_a_queue_bounds_no_window() {
        let mut c = Cruise::new(97e6 / 8.0);
        let bdp = c.b.bdp();
        let lost = (0.05 * bdp) as u64;
        c.rounds(5, lost, Duration::from_millis(101), Some(bdp as u64));
        assert!(c.b.inflight_hi.is_infinite());
        assert!(c.b.cwnd >= 2.0 * bdp - 1.0, "window {:.0}", c.b.cwnd);
    }

    /// A remembered path counts only if the session's first RTT sample is the recorded
    /// path's: then Startup has its rate as the capacity, and the window its bound.
    #[test]
    fn a_remembered_path_is_taken_only_if_the_first_rtt_matches() {
        let path = PathRecord {
            rate: 12e6,
            min_rtt: Duration::from_millis(100),
            inflight_hi: Some(1400.0 * 1300.0),
        };
        for (ms, taken) in [(100, true), (110, true), (114, false), (40, false)] {
            let t0 = Instant::now();
            let mut b = Bbr::new(1400, t0, 1);
            let mut rtt = RttEstimator::default();
            b.remembered = Some(path);
            let r = Duration::from_millis(ms);
            feed(&mut b, &mut rtt, t0 + r, (1, 1, 15), 1e5, r, None);
            assert!(b.remembered.is_none());
            if taken {
                assert_eq!(b.capacity(), 12e6, "{ms} ms");
                assert!((b.inflight_hi - 1300.0).abs() < 1e-6);
                // Startup paces no further than just past it.
                assert!(b.pacing_rate <= STARTUP_CAPACITY_GAIN * 12e6 + 1.0);
            } else {
                assert_eq!(b.capacity(), 0.0, "{ms} ms");
                assert!(b.inflight_hi.is_infinite());
            }
        }
    }

    /// What a session remembers: the rate ProbeBW sustained (to its last ACK), on a path of
    /// 20 ms or more, after 4 round trips of it.
    #[test]
    fn a_session_remembers_what_probe_bw_sustained_on_a_long_path() {
        let link = 97e6 / 8.0;
        let mut c = Cruise::new(link);
        // Cruise::new entered ProbeBW before any ACK: its start is the session's.
        assert!(c.b.path_record().is_none(), "nothing sustained yet");
        c.rounds(3, 0, Duration::from_millis(100), None);
        assert!(c.b.path_record().is_none(), "3 round trips are too few");
        c.rounds(2, 0, Duration::from_millis(100), None);
        let p = c.b.path_record().expect("5 round trips of ProbeBW");
        let per_ack = (c.b.bdp() / 100.0).floor();
        let delivered = per_ack * 1400.0 / 1e-3;
        assert!(
            (p.rate - delivered).abs() < 0.01 * delivered,
            "{} vs {delivered}",
            p.rate
        );
        assert_eq!(p.min_rtt, Duration::from_millis(100));
        assert_eq!(p.inflight_hi, None);
        // A path of 10 ms is not remembered.
        let mut short = Cruise::new(link);
        short.b.min_rtt_cached = Duration::from_millis(10);
        short.rounds(5, 0, Duration::from_millis(10), None);
        assert!(short.b.path_record().is_none());
    }
}
