//! How fast a session may go on the path: the round-trip estimate and retransmission timeout
//! (RFC 6298), and the congestion window (additive increase, multiplicative decrease on loss).
//! Pure: the sender feeds it samples, progress and loss events with the caller's clock.

use std::time::{Duration, Instant};

/// Retransmission timeout floor: loopback RTTs are tens of microseconds, but a receiver
/// draining a full socket buffer takes milliseconds.
pub const MIN_RTO: Duration = Duration::from_millis(2);
/// Retransmission timeout before the first RTT sample.
const INITIAL_RTO: Duration = Duration::from_millis(10);
/// Smallest congestion window (datagrams): the sender never backs off below it.
pub const MIN_CWND: f64 = 4.0;
/// Datagrams the congestion window grows by per window's worth of progress.
const CWND_GROWTH: f64 = 8.0;

/// Smoothed round-trip time and its variation.
#[derive(Debug, Clone, Default)]
pub struct RttEstimator {
    srtt_us: f64,
    rttvar_us: f64,
}

impl RttEstimator {
    pub fn sample(&mut self, rtt: Duration) {
        let s = rtt.as_micros() as f64;
        if self.srtt_us == 0.0 {
            self.srtt_us = s;
            self.rttvar_us = s / 2.0;
        } else {
            self.rttvar_us = 0.75 * self.rttvar_us + 0.25 * (self.srtt_us - s).abs();
            self.srtt_us = 0.875 * self.srtt_us + 0.125 * s;
        }
    }

    /// Zero before the first sample.
    pub fn srtt(&self) -> Duration {
        Duration::from_micros(self.srtt_us as u64)
    }

    /// Current retransmission timeout: SRTT + 4 RTTVAR, at least [`MIN_RTO`].
    pub fn rto(&self) -> Duration {
        if self.srtt_us == 0.0 {
            return INITIAL_RTO;
        }
        Duration::from_micros((self.srtt_us + 4.0 * self.rttvar_us) as u64).max(MIN_RTO)
    }
}

/// The congestion window, in datagrams beyond the receiver's cumulative point: halved on loss
/// at most once per round trip, grown additively with progress, never above the receiver's
/// window (it starts there, so a clean path is not slowed; a lossy one is not flooded).
#[derive(Debug, Clone)]
pub struct Aimd {
    cwnd: f64,
    max_cwnd: f64,
    last_backoff: Option<Instant>,
    backoffs: u64,
}

impl Aimd {
    pub fn new(window: u32) -> Self {
        let w = window.max(1) as f64;
        Aimd {
            cwnd: w,
            max_cwnd: w,
            last_backoff: None,
            backoffs: 0,
        }
    }

    pub fn cwnd(&self) -> f64 {
        self.cwnd
    }

    /// Times the window was halved.
    pub fn backoffs(&self) -> u64 {
        self.backoffs
    }

    /// `datagrams` more were confirmed received.
    pub fn on_progress(&mut self, datagrams: u32) {
        self.cwnd = (self.cwnd + datagrams as f64 * CWND_GROWTH / self.cwnd).min(self.max_cwnd);
    }

    /// A loss was detected at `now`: halves the window unless it was halved less than `rtt`
    /// ago (one loss event, one halving).
    pub fn on_loss(&mut self, now: Instant, rtt: Duration) {
        let rtt = rtt.max(MIN_RTO);
        if self
            .last_backoff
            .is_none_or(|t| now.saturating_duration_since(t) >= rtt)
        {
            self.cwnd = (self.cwnd / 2.0).max(MIN_CWND);
            self.last_backoff = Some(now);
            self.backoffs += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rto_follows_the_samples_with_a_floor() {
        let mut r = RttEstimator::default();
        assert_eq!(r.rto(), INITIAL_RTO);
        r.sample(Duration::from_millis(40));
        assert_eq!(r.srtt(), Duration::from_millis(40));
        assert_eq!(r.rto(), Duration::from_millis(40 + 4 * 20));
        for _ in 0..100 {
            r.sample(Duration::from_micros(30));
        }
        assert_eq!(r.rto(), MIN_RTO);
    }

    #[test]
    fn one_halving_per_round_trip_never_below_the_floor() {
        let t0 = Instant::now();
        let mut w = Aimd::new(64);
        w.on_loss(t0, Duration::from_millis(10));
        w.on_loss(t0 + Duration::from_millis(5), Duration::from_millis(10));
        assert_eq!((w.cwnd(), w.backoffs()), (32.0, 1));
        w.on_loss(t0 + Duration::from_millis(10), Duration::from_millis(10));
        assert_eq!(w.cwnd(), 16.0);
        for k in 0..20u64 {
            w.on_loss(t0 + Duration::from_secs(k + 1), Duration::from_millis(10));
        }
        assert_eq!(w.cwnd(), MIN_CWND);
        for _ in 0..1000 {
            w.on_progress(64);
        }
        assert_eq!(w.cwnd(), 64.0, "capped at the receiver's window");
    }
}
