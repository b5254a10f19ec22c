//! Histograms (hdrhistogram), owned by the thread that records into them and merged or
//! summarised at the end, so recording is a few nanoseconds and takes no lock.
//!
//! Each is sized for what it records: 2 significant figures (1% resolution: plenty for
//! p50..p99.9) over a bounded range. A latency histogram takes ~20 KiB, a batch-size one
//! ~2 KiB; 3 figures up to an hour took 184 KiB each, 370 KiB per server session.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Significant figures kept: 1% resolution.
const SIGFIG: u8 = 2;
/// Largest time a latency histogram keeps exactly (a minute in microseconds); larger ones are
/// clamped to it.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// A histogram of positive integers (microseconds, or counts), values clamped to its range.
#[derive(Clone)]
pub struct Hist(Histogram<u64>);

impl std::fmt::Debug for Hist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hist({:?})", self.summary())
    }
}

/// Percentiles of a histogram, as printed and as written to JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Hist {
    /// For values from 1 to `max`.
    pub fn with_max(max: u64) -> Self {
        Hist(Histogram::new_with_bounds(1, max.max(2), SIGFIG).expect("valid histogram bounds"))
    }

    /// For durations in microseconds, up to [`MAX_LATENCY_US`].
    pub fn latency_us() -> Self {
        Self::with_max(MAX_LATENCY_US)
    }

    pub fn record(&mut self, v: u64) {
        let max = self.0.high();
        self.0.saturating_record(v.clamp(1, max));
    }

    pub fn merge(&mut self, other: &Hist) {
        // Histograms are merged only with others of the same kind (same bounds): cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// Bytes its counters take.
    pub fn memory_bytes(&self) -> usize {
        self.0.distinct_values() * std::mem::size_of::<u64>()
    }

    /// `(q, value)` at each quantile of `qs` (empty for an empty histogram).
    pub fn quantiles(&self, qs: &[f64]) -> Vec<(f64, u64)> {
        if self.0.is_empty() {
            return Vec::new();
        }
        qs.iter()
            .map(|&q| (q, self.0.value_at_quantile(q)))
            .collect()
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
#[derive(Debug, Clone)]
pub struct SendHists {
    /// Submit to completion (uring) or duration of the sendto call (threads), µs.
    pub send_latency_us: Hist,
    /// Datagrams per io_uring_enter (uring; always 1 for threads).
    pub batch: Hist,
    /// `sendmsg`/`sendto` calls (one per datagram, or per GSO batch).
    pub send_calls: u64,
    /// `io_uring_enter` calls that submitted sends (0 for threads).
    pub enters: u64,
}

impl Default for SendHists {
    fn default() -> Self {
        SendHists {
            send_latency_us: Hist::latency_us(),
            batch: Hist::with_max(4096),
            send_calls: 0,
            enters: 0,
        }
    }
}

impl SendHists {
    pub fn memory_bytes(&self) -> usize {
        self.send_latency_us.memory_bytes() + self.batch.memory_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = Hist::latency_us();
        for v in 1..=1000 {
            h.record(v);
        }
        let p = h.summary();
        assert_eq!(p.count, 1000);
        // 2 significant figures: within 1%.
        assert!((495..=505).contains(&p.p50), "{p:?}");
        assert!((980..=1000).contains(&p.p99), "{p:?}");
        assert!((995..=1005).contains(&p.max), "{p:?}");
        let mut other = Hist::latency_us();
        other.record(0); // clamped to 1, not lost
        other.record(u64::MAX); // clamped, not an error
        h.merge(&other);
        assert_eq!(h.summary().count, 1002);
        assert_eq!(Hist::latency_us().summary(), Percentiles::default());
    }

    #[test]
    fn histograms_are_small() {
        // 3 significant figures up to an hour took 184 KiB each: 370 KiB per server session
        // and 740 KiB per sub-client before anything was sent.
        let h = Hist::latency_us();
        assert!(h.memory_bytes() <= 24 << 10, "{} bytes", h.memory_bytes());
        let s = SendHists::default();
        assert!(s.memory_bytes() <= 28 << 10, "{} bytes", s.memory_bytes());
    }
}
