//! Token-bucket pacing: how many bytes a session may put on the wire now, and when the next
//! datagrams may go. Clock-free: callers pass `now`.
//!
//! It releases bytes in quanta: once it has run dry it waits until a quantum has accumulated
//! (64 KiB, or a quarter millisecond of the rate if more), so an engine sends a paced burst
//! per submit (a GSO batch) instead of waking for every datagram's worth of tokens.

use std::time::{Duration, Instant};

/// Slowest pace a [`Pacer`] keeps: below it (a rate that rounds to 0 bit/s) it would never
/// send again, and its timer arithmetic would overflow. The CLI refuses such rates; this is
/// the library's own guard.
pub const MIN_RATE_BPS: u64 = 1_000;
/// Longest a pacer ever asks a caller to wait: a deadline further out is no deadline at all.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// How much sending a pacer lets accumulate: an engine sleeps in whole milliseconds and sends
/// what it may in one batch when it wakes, so tokens that overflowed meanwhile would be rate
/// lost.
pub const BURST_TIME: Duration = Duration::from_millis(2);

/// A pacer's burst at `bps`: [`BURST_TIME`] of sending, at least 2 datagrams.
pub fn burst_for(bps: u64, datagram: usize) -> usize {
    let burst = (bps as f64 / 8.0 * BURST_TIME.as_secs_f64()).min(usize::MAX as f64) as usize;
    burst.max(2 * datagram)
}

/// Smallest quantum, bytes.
const MIN_QUANTUM: f64 = 65_536.0;

/// How late an engine may wake for a deadline without losing rate: tokens accumulate this
/// much time's worth past a quantum. A worker sleeps in `epoll_wait`, which counts whole
/// milliseconds (a wait rounds up: half a millisecond late on average); below 262 Mbit/s a
/// quantum is the whole 2 ms burst, and a bucket full at the deadline dropped what came
/// while the worker overslept: the sender reached 80% of its pacing rate, ProbeBW's probes
/// at 1.25x delivered no more than its estimate, and a flow Startup left at 26 Mbit/s on a
/// 1 Gbit/s path stayed there (issue 24: a 256 MiB copy at 200 ms timed out after a minute).
pub const WAKE_SLACK: Duration = Duration::from_millis(1);

/// Token-bucket pacing.
#[derive(Debug, Clone)]
pub struct Pacer {
    bytes_per_s: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Ran dry: nothing goes until a quantum has accumulated.
    refilling: bool,
}

impl Pacer {
    /// `bits_per_s` as iperf3's `-b` (at least [`MIN_RATE_BPS`]); bursts of up to
    /// `burst_bytes`.
    pub fn new(bits_per_s: u64, burst_bytes: usize, now: Instant) -> Self {
        Pacer {
            bytes_per_s: bits_per_s.max(MIN_RATE_BPS) as f64 / 8.0,
            burst: burst_bytes as f64,
            tokens: burst_bytes as f64,
            last: now,
            refilling: false,
        }
    }

    /// What a dry pacer waits for before it sends again.
    fn quantum(&self) -> f64 {
        (self.bytes_per_s * 250e-6).max(MIN_QUANTUM).min(self.burst)
    }

    /// Most tokens held: the burst, or a quantum and [`WAKE_SLACK`]'s worth if more.
    fn cap(&self) -> f64 {
        self.burst
            .max(self.quantum() + self.bytes_per_s * WAKE_SLACK.as_secs_f64())
    }

    /// Paces at `bits_per_s` from now on (at least [`MIN_RATE_BPS`]), bursts of `burst_bytes`.
    pub fn set_rate(&mut self, bits_per_s: u64, burst_bytes: usize, now: Instant) {
        self.refill(now);
        self.bytes_per_s = bits_per_s.max(MIN_RATE_BPS) as f64 / 8.0;
        self.burst = burst_bytes as f64;
        self.tokens = self.tokens.min(self.cap());
    }

    /// The current rate, bits per second.
    pub fn rate_bps(&self) -> u64 {
        (self.bytes_per_s * 8.0) as u64
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.bytes_per_s).min(self.cap());
        // Never backwards: threads that share a pacer read their clocks at different times.
        self.last = self.last.max(now);
    }

    /// Takes `bytes` if available now.
    pub fn take(&mut self, bytes: usize, now: Instant) -> bool {
        self.refill(now);
        if self.refilling && self.tokens < self.quantum().max(bytes as f64) {
            return false;
        }
        self.refilling = false;
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            self.refilling = true;
            false
        }
    }

    /// When `bytes` will be available (never more than an hour ahead): a quantum's worth if
    /// the pacer ran dry.
    pub fn ready_at(&self, bytes: usize) -> Instant {
        let want = if self.refilling {
            self.quantum().max(bytes as f64)
        } else {
            bytes as f64
        };
        let missing = (want - self.tokens).max(0.0);
        // Rounded up to the nanosecond: a shortfall of a rounding error must still be a wait,
        // or a caller whose clock has not moved asks again at once, for ever.
        let wait = Duration::try_from_secs_f64((missing / self.bytes_per_s * 1e9).ceil() / 1e9)
            .unwrap_or(MAX_WAIT)
            .min(MAX_WAIT);
        self.last.checked_add(wait).unwrap_or(self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_below_one_bit_per_second_neither_panics_nor_stalls_forever() {
        // `serve --rate 0.5` used to reach here as 0 bit/s: the wait became infinite and
        // Duration::from_secs_f64 panicked the worker thread.
        let t0 = Instant::now();
        let mut p = Pacer::new(0, 1000, t0);
        assert!(p.take(1000, t0));
        let at = p.ready_at(65_507);
        assert!(at > t0 && at <= t0 + MAX_WAIT, "{:?}", at - t0);
    }

    /// A shortfall of a rounding error is still a wait: a caller whose clock stands still
    /// (simulated time) asked again at once for ever.
    #[test]
    fn a_shortfall_of_a_rounding_error_is_a_wait_and_the_clock_never_runs_back() {
        let t0 = Instant::now();
        let mut p = Pacer::new(800_000_000, 200_000, t0);
        p.tokens = 65_536.0 - 1e-9;
        p.refilling = true;
        assert!(!p.take(1472, t0));
        let at = p.ready_at(1472);
        assert!(at > t0, "a wait of at least a nanosecond");
        assert!(p.take(1472, at));
        // A clock read earlier on another thread does not move the pacer back.
        let later = t0 + Duration::from_millis(5);
        p.take(1, later);
        p.take(1, t0);
        assert_eq!(p.last, later);
    }

    #[test]
    fn a_dry_pacer_releases_a_quantum_at_once() {
        let t0 = Instant::now();
        // 1 Gbit/s, bursts of 250 KB: a quantum is 64 KiB.
        let mut p = Pacer::new(1_000_000_000, 250_000, t0);
        while p.take(1472, t0) {}
        // Not a datagram every 12 µs: nothing, then 44 at once.
        let first = p.ready_at(1472);
        let quantum = Duration::from_secs_f64(65_536.0 * 8.0 / 1e9);
        assert!(
            first >= t0 + quantum - Duration::from_micros(20),
            "{:?}",
            first - t0
        );
        assert!(!p.take(1472, t0 + Duration::from_micros(100)));
        let mut n = 0;
        while p.take(1472, first) {
            n += 1;
        }
        assert!((43..=45).contains(&n), "{n}");
    }

    #[test]
    fn refills_at_the_rate_up_to_the_burst() {
        let t0 = Instant::now();
        // 8 Mbit/s = 1 MB/s.
        let mut p = Pacer::new(8_000_000, 1000, t0);
        assert!(p.take(1000, t0));
        assert!(!p.take(1, t0));
        // Dry: it waits for a quantum (the whole 1000-byte burst here), not for one byte.
        assert_eq!(p.ready_at(1), t0 + Duration::from_millis(1));
        assert!(!p.take(1, t0 + Duration::from_micros(500)));
        assert!(p.take(1000, t0 + Duration::from_millis(1)));
        // A long pause refills only up to the burst, and WAKE_SLACK past the quantum (here
        // the burst): 1000 bytes more.
        let later = t0 + Duration::from_secs(10);
        assert!(p.take(1000, later));
        assert!(p.take(1000, later));
        assert!(!p.take(1, later));
    }

    /// An engine that wakes late for every deadline (a worker's `epoll_wait` rounds its wait up
    /// to whole milliseconds) still sends at the rate: what came while it overslept is not
    /// lost to a full bucket. Before, at 26 Mbit/s (a quantum of the whole 2 ms burst) it sent
    /// 80% of the rate.
    #[test]
    fn an_engine_that_wakes_late_still_sends_at_the_rate() {
        let t0 = Instant::now();
        for (bps, late_us) in [
            (26_000_000u64, 500u64),
            (26_000_000, 900),
            (100_000_000, 700),
        ] {
            let datagram = 1472;
            let mut p = Pacer::new(bps, burst_for(bps, datagram), t0);
            let mut now = t0;
            let mut sent = 0u64;
            let end = t0 + Duration::from_secs(2);
            while now < end {
                while p.take(datagram, now) {
                    sent += datagram as u64;
                }
                now = p.ready_at(datagram) + Duration::from_micros(late_us);
            }
            let rate = sent as f64 * 8.0 / 2.0;
            assert!(
                rate >= 0.98 * bps as f64,
                "{bps} bit/s, {late_us} us late: {:.1}%",
                rate / bps as f64 * 100.0
            );
        }
    }
}
