//! Counters and histograms. Counters are atomics written off the hot path (per batch or per
//! session); histograms (hdrhistogram) are owned by the thread that records into them and
//! merged or summarised at the end, so recording is a few nanoseconds and takes no lock.

use std::sync::atomic::AtomicU64;

use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, Default)]
pub struct ServerStats {
    pub sessions_active: AtomicU64,
    pub sessions_started: AtomicU64,
    pub sessions_completed: AtomicU64,
    pub sessions_timed_out: AtomicU64,
    pub sessions_failed: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub datagrams_sent: AtomicU64,
    pub retransmitted: AtomicU64,
    /// Datagrams that were not ringblast messages, or not valid ones.
    pub malformed: AtomicU64,
    /// Requests with a missing, forged or expired token.
    pub bad_tokens: AtomicU64,
    /// Messages for a session that does not exist or from the wrong address.
    pub stray: AtomicU64,
    /// GETs refused because the server was at --max-sessions.
    pub busy: AtomicU64,
    /// Requests dropped because their source IP was over its request rate.
    pub rate_limited: AtomicU64,
}

/// A histogram of non-negative integers (microseconds, or counts), values clamped to its range.
#[derive(Clone)]
pub struct Hist(Histogram<u64>);

impl std::fmt::Debug for Hist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hist({:?})", self.summary())
    }
}

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of a histogram, as printed and as written to JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// Largest value a histogram keeps exactly (an hour in microseconds); larger ones are clamped.
const HIST_MAX: u64 = 3_600_000_000;

impl Hist {
    pub fn new() -> Self {
        // 3 significant digits: 0.1% resolution, about 25 KiB per histogram.
        Hist(Histogram::new_with_bounds(1, HIST_MAX, 3).expect("valid histogram bounds"))
    }

    pub fn record(&mut self, v: u64) {
        self.0.saturating_record(v.clamp(1, HIST_MAX));
    }

    pub fn merge(&mut self, other: &Hist) {
        // Same bounds on both sides: cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn summary(&self) -> Percentiles {
        if self.0.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: self.0.len(),
            p50: self.0.value_at_quantile(0.5),
            p90: self.0.value_at_quantile(0.9),
            p99: self.0.value_at_quantile(0.99),
            p999: self.0.value_at_quantile(0.999),
            max: self.0.max(),
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {} p90 {} p99 {} p99.9 {} max {} (n={})",
            self.p50, self.p90, self.p99, self.p999, self.max, self.count
        )
    }
}

/// What a server engine measures for one session.
#[derive(Debug, Clone, Default)]
pub struct SendHists {
    /// Submit to completion (uring) or duration of the sendto call (threads), µs.
    pub send_latency_us: Hist,
    /// Datagrams per io_uring_enter (uring; always 1 for threads).
    pub batch: Hist,
}

/// CPU time (user + system) used so far by this process, or by the calling thread.
pub fn cpu_time(thread_only: bool) -> std::time::Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let who = if thread_only {
        UsageWho::RUSAGE_THREAD
    } else {
        UsageWho::RUSAGE_SELF
    };
    match getrusage(who) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| {
                std::time::Duration::from_secs(t.tv_sec() as u64)
                    + std::time::Duration::from_micros(t.tv_usec() as u64)
            };
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => std::time::Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = Hist::new();
        for v in 1..=1000 {
            h.record(v);
        }
        let p = h.summary();
        assert_eq!(p.count, 1000);
        assert!((499..=501).contains(&p.p50), "{p:?}");
        assert!((989..=991).contains(&p.p99), "{p:?}");
        assert_eq!(p.max, 1000);
        let mut other = Hist::new();
        other.record(0); // clamped to 1, not lost
        other.record(u64::MAX); // clamped, not an error
        h.merge(&other);
        assert_eq!(h.summary().count, 1002);
        assert_eq!(Hist::new().summary(), Percentiles::default());
    }
}
