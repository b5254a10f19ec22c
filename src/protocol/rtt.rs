//! The round-trip estimate: smoothed RTT and variation (RFC 6298), the retransmission
//! timeout, and the minimum over a window that BBR's ProbeRTT refreshes.

use std::time::{Duration, Instant};

/// Retransmission timeout floor: loopback RTTs are tens of microseconds, but a receiver
/// draining a full socket buffer takes milliseconds.
pub const MIN_RTO: Duration = Duration::from_millis(2);
/// Retransmission timeout before the first RTT sample.
pub const INITIAL_RTO: Duration = Duration::from_millis(100);
/// Longest timeout before the first sample that a handshake may ask for.
pub const MAX_SEEDED_RTO: Duration = Duration::from_millis(500);
/// How long a minimum RTT sample stays the minimum: after that BBR drains the queue to
/// measure it again (ProbeRTT). 5 s, as BBR v2: flows sharing a bottleneck converge at each.
pub const MIN_RTT_WINDOW: Duration = Duration::from_secs(5);
/// A sample within this fraction of the minimum (1/64) confirms it (restarts its window).
const MIN_RTT_SLACK: u32 = 64;

/// Smoothed round-trip time, its variation (RFC 6298), and the minimum over a window.
///
/// The minimum is what the path takes with no queue. Once it is older than its window, a new
/// sample does not simply replace it (with a queue standing, every sample is inflated): the
/// lowest sample since then is kept aside, and becomes the minimum when the controller has
/// drained the queue to measure it (BBR's ProbeRTT, [`RttEstimator::refresh_min_rtt`]), or
/// after a second window for controllers that never drain.
#[derive(Debug, Clone, Default)]
pub struct RttEstimator {
    srtt_us: f64,
    rttvar_us: f64,
    min_rtt: Option<Duration>,
    min_rtt_stamp: Option<Instant>,
    /// The lowest sample since the minimum expired.
    fresh_min: Option<Duration>,
    /// The timeout before the first sample, when the handshake gave a hint of the path
    /// ([`RttEstimator::seed_timeout`]).
    initial_rto: Option<Duration>,
}

impl RttEstimator {
    pub fn sample(&mut self, rtt: Duration, now: Instant) {
        let s = rtt.as_micros() as f64;
        if self.srtt_us == 0.0 {
            self.srtt_us = s.max(1.0);
            self.rttvar_us = s / 2.0;
        } else {
            self.rttvar_us = 0.75 * self.rttvar_us + 0.25 * (self.srtt_us - s).abs();
            self.srtt_us = 0.875 * self.srtt_us + 0.125 * s;
        }
        // A new minimum; or within a 64th of it, the path was as good as empty: the minimum
        // stands confirmed, and there is no queue for a ProbeRTT to drain. An exact repeat is
        // rare on a path of hundreds of milliseconds (its samples jitter by the hosts'
        // batching and the bottleneck's serialisation: 200.6-202 ms in ProbeBW on a 200 ms
        // relay), and each 5 s a ProbeRTT held the window at half a BDP for 0.3 s (issue 24).
        if self.min_rtt.is_none_or(|m| rtt <= m + m / MIN_RTT_SLACK) {
            self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
            self.min_rtt_stamp = Some(now);
            self.fresh_min = None;
            return;
        }
        if self.min_rtt_expired(now) {
            self.fresh_min = Some(self.fresh_min.map_or(rtt, |m| m.min(rtt)));
            let stale = self
                .min_rtt_stamp
                .is_some_and(|t| now.saturating_duration_since(t) > 2 * MIN_RTT_WINDOW);
            if stale {
                self.refresh_min_rtt(now);
            }
        }
    }

    /// The time from the first META to the receiver's first ACK: an upper bound of the
    /// path's RTT (the receiver may have taken a while to answer, or answered a later copy),
    /// so it only ever lengthens the timeout before the first sample, to twice it and at most
    /// [`MAX_SEEDED_RTO`]; it is no sample (not the minimum, not the smoothed RTT). (RFC
    /// 6298 makes 3x of a first sample: with 5000 sessions on two cores, where a receiver
    /// takes hundreds of milliseconds to answer META, 3x and a 1 s cap doubled the p99 time
    /// of a copy, 0.72 -> 1.50 s; 2x and 500 ms cost 0.74 -> 0.81 s.)
    pub fn seed_timeout(&mut self, handshake: Duration) {
        self.initial_rto = Some((2 * handshake).clamp(INITIAL_RTO, MAX_SEEDED_RTO));
    }

    /// Zero before the first sample.
    pub fn srtt(&self) -> Duration {
        Duration::from_micros(self.srtt_us as u64)
    }

    /// The smallest RTT seen in the last 10 s (or the last sample if older), if any.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// True when the minimum is older than its window: BBR's cue to probe for it.
    pub fn min_rtt_expired(&self, now: Instant) -> bool {
        self.min_rtt_stamp
            .is_some_and(|t| now.saturating_duration_since(t) > MIN_RTT_WINDOW)
    }

    /// Takes the lowest sample since the minimum expired as the minimum, and restarts its
    /// window (after a ProbeRTT drained the queue to measure it).
    pub fn refresh_min_rtt(&mut self, now: Instant) {
        if let Some(m) = self.fresh_min.take() {
            self.min_rtt = Some(m);
        }
        self.min_rtt_stamp = Some(now);
    }

    /// Current retransmission timeout: SRTT + 4 RTTVAR, at least [`MIN_RTO`].
    pub fn rto(&self) -> Duration {
        if self.srtt_us == 0.0 {
            return self.initial_rto.unwrap_or(INITIAL_RTO);
        }
        Duration::from_micros((self.srtt_us + 4.0 * self.rttvar_us) as u64).max(MIN_RTO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handshake_on_a_long_path_lengthens_the_first_timeout_only() {
        let t0 = Instant::now();
        let mut r = RttEstimator::default();
        // A 200 ms handshake: 400 ms before the first sample (100 ms would fire before any
        // ACK of the first flight can come back, resending it all for nothing).
        r.seed_timeout(Duration::from_millis(200));
        assert_eq!(r.rto(), Duration::from_millis(400));
        assert_eq!((r.srtt(), r.min_rtt()), (Duration::ZERO, None));
        // A loopback handshake never shortens it; a META lost and answered much later, or a
        // receiver too busy to answer soon, does not stretch it past half a second.
        let mut lo = RttEstimator::default();
        lo.seed_timeout(Duration::from_micros(40));
        assert_eq!(lo.rto(), INITIAL_RTO);
        lo.seed_timeout(Duration::from_secs(3));
        assert_eq!(lo.rto(), MAX_SEEDED_RTO);
        // The first real sample takes over.
        r.sample(Duration::from_millis(10), t0);
        assert_eq!(r.rto(), Duration::from_millis(30));
    }

    #[test]
    fn rto_follows_the_samples_with_a_floor_and_min_rtt_expires() {
        let t0 = Instant::now();
        let mut r = RttEstimator::default();
        assert_eq!(r.rto(), INITIAL_RTO);
        r.sample(Duration::from_millis(40), t0);
        assert_eq!(r.srtt(), Duration::from_millis(40));
        assert_eq!(r.rto(), Duration::from_millis(40 + 4 * 20));
        for _ in 0..100 {
            r.sample(Duration::from_micros(30), t0);
        }
        assert_eq!(r.rto(), MIN_RTO);
        assert_eq!(r.min_rtt(), Some(Duration::from_micros(30)));
        // Expired, a larger sample (a queue) does not replace it until the queue was drained
        // and the minimum measured again.
        let later = t0 + MIN_RTT_WINDOW + Duration::from_secs(1);
        assert!(r.min_rtt_expired(later));
        r.sample(Duration::from_millis(5), later);
        r.sample(Duration::from_millis(2), later);
        assert_eq!(r.min_rtt(), Some(Duration::from_micros(30)));
        r.refresh_min_rtt(later);
        assert_eq!(r.min_rtt(), Some(Duration::from_millis(2)));
        assert!(!r.min_rtt_expired(later));
    }

    /// Issue 24: on a 200 ms path the samples of an empty pipe jitter by a millisecond or
    /// two; one within a 64th of the minimum confirms it, and no ProbeRTT is due. One just
    /// past that (a queue of 4 ms) does not, and the minimum expires as before.
    #[test]
    fn a_sample_close_to_the_minimum_confirms_it() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = RttEstimator::default();
        r.sample(ms(200), t0);
        let mut t = t0;
        for _ in 0..4 {
            t += MIN_RTT_WINDOW - ms(1);
            r.sample(Duration::from_micros(202_900), t);
            assert!(!r.min_rtt_expired(t + ms(1)));
            assert_eq!(r.min_rtt(), Some(ms(200)));
        }
        r.sample(ms(204), t + ms(1));
        assert!(r.min_rtt_expired(t + MIN_RTT_WINDOW + ms(1)));
        // Loopback's microseconds: the slack is a 64th, not a floor (30 us of 20 is a queue).
        let mut lo = RttEstimator::default();
        lo.sample(Duration::from_micros(20), t0);
        lo.sample(Duration::from_micros(30), t0 + MIN_RTT_WINDOW - ms(1));
        assert!(lo.min_rtt_expired(t0 + MIN_RTT_WINDOW + ms(1)));
    }
}
