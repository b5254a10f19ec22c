//! Packet trains: the bottleneck's capacity, from how it spreads out datagrams that were sent
//! back to back.
//!
//! Datagrams that leave together reach the receiver spaced by the slowest link on the way
//! (Keshav's packet pair, 1991; Jain and Dovrolis's trains): n of them arriving over a span T
//! say that link moves n datagrams per T, whatever rate the sender averaged. A delivery-rate
//! sample cannot say as much: it spans a round trip of sending, so it reports what was sent,
//! up to the capacity, one round trip late. The receiver's ACKs carry what a train needs: the
//! send timestamp of the newest datagram in (the echo), how long before the ACK it arrived (the
//! hold: its arrival time is the kernel's), and how many datagrams are in. Two ACKs whose
//! echoes left much closer together than they arrived bracket a train.
//!
//! Pure and clock-free: callers pass the times.

use std::time::{Duration, Instant};

/// The shortest arrival span a train is timed over: the ACKs' own jitter (the return path,
/// the sender's reading of them) stays a small part of it.
pub const MIN_TRAIN_SPAN: Duration = Duration::from_millis(2);
/// Datagrams are a train when they arrived at least this many times further apart than they
/// left: the path, not the sender, spaced them.
const SPREAD: u128 = 2;
/// A bottleneck spaces a train evenly; a stall (a relay, a sender or a host that stopped for a
/// while) leaves a gap and then a burst. A train some stretch of which arrived this many times
/// faster than the whole is no measure of a bottleneck.
const UNEVEN: f64 = 3.0;
/// The shortest stretch of a train timed on its own: ACKs come every 200 µs or more.
const MIN_STRETCH: Duration = Duration::from_micros(250);

#[derive(Debug, Clone, Copy)]
struct Mark {
    sent_ns: u64,
    arrived: Instant,
    received: u64,
}

/// Finds trains in a session's ACKs.
#[derive(Debug, Clone, Default)]
pub struct Trains {
    start: Option<Mark>,
    /// Where the current stretch of the train began, and the fastest stretch so far
    /// (datagrams per second).
    stretch: Option<Mark>,
    fastest: f64,
}

impl Trains {
    /// An ACK whose echo left at `sent_ns` (the sender's send timestamp) and arrived at
    /// `arrived` (the ACK's arrival less its hold), with `received` distinct datagrams in by
    /// then. Returns the capacity the train this ACK belongs to measured so far (from its
    /// first ACK to this one, 2 ms at least), datagrams per second.
    pub fn on_echo(&mut self, sent_ns: u64, arrived: Instant, received: u64) -> Option<f64> {
        let mark = Mark {
            sent_ns,
            arrived,
            received,
        };
        let Some(start) = self.start else {
            self.begin(mark);
            return None;
        };
        if sent_ns == start.sent_ns {
            // The same echo again: nothing new arrived.
            return None;
        }
        if sent_ns < start.sent_ns || received <= start.received || arrived <= start.arrived {
            // Out of order, or nothing counted in between: begin again from here.
            self.begin(mark);
            return None;
        }
        let sent_span = (sent_ns - start.sent_ns) as u128;
        let arrival_span = arrived - start.arrived;
        if sent_span * SPREAD > arrival_span.as_nanos() {
            // Spaced by the sender (its pacing, its pauses), not by the path: no train here,
            // but one may begin.
            self.begin(mark);
            return None;
        }
        if let Some(s) = self.stretch.filter(|s| arrived >= s.arrived + MIN_STRETCH) {
            let rate =
                received.saturating_sub(s.received) as f64 / (arrived - s.arrived).as_secs_f64();
            self.fastest = self.fastest.max(rate);
            self.stretch = Some(mark);
        }
        if arrival_span < MIN_TRAIN_SPAN {
            // A train, too short yet to time.
            return None;
        }
        let rate = (received - start.received) as f64 / arrival_span.as_secs_f64();
        if self.fastest > UNEVEN * rate {
            // A gap, then a burst: something stalled, and no bottleneck was measured. What
            // follows may be a train again.
            self.begin(mark);
            return None;
        }
        // The train goes on: later ACKs time it over a longer span.
        Some(rate)
    }

    fn begin(&mut self, mark: Mark) {
        self.start = Some(mark);
        self.stretch = Some(mark);
        self.fastest = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::protocol::proptest_cases()))]

        /// Whatever echoes, holds and counts a receiver reports (the sender clamps the count
        /// to what it sent, and a hold to 10 s; nothing else), no panic, and a capacity is
        /// finite, positive, and no more than the count allows over the shortest span.
        #[test]
        fn any_acks_give_sane_capacities(
            acks in proptest::collection::vec((any::<u64>(), 0u64..20_000_000, 0u64..1 << 32), 0..60)
        ) {
            let t0 = Instant::now();
            let mut t = Trains::default();
            for (sent_ns, arrived_ns, received) in acks {
                let arrived = t0 + Duration::from_nanos(arrived_ns);
                if let Some(c) = t.on_echo(sent_ns, arrived, received) {
                    prop_assert!(c.is_finite() && c > 0.0);
                    prop_assert!(c <= (1u64 << 32) as f64 / MIN_TRAIN_SPAN.as_secs_f64());
                }
            }
        }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn a_burst_spread_by_the_path_measures_the_path() {
        let t0 = Instant::now();
        let mut t = Trains::default();
        // 16 datagrams sent within 16 µs, arriving one every 0.5 ms (a gigabit link of 64 KB
        // datagrams), acknowledged every second one.
        let mut samples = Vec::new();
        for k in (2..=16u64).step_by(2) {
            let arrived = t0 + Duration::from_micros(500 * k);
            if let Some(s) = t.on_echo(1_000 + k * 1_000, arrived, k) {
                samples.push(s);
            }
        }
        assert!(!samples.is_empty());
        for s in &samples {
            assert!((s - 2000.0).abs() < 1.0, "{s} datagrams/s");
        }
        // The last echo again (an idle receiver's repeated ACK) measures the same; the next
        // paced datagram, sent 200 ms later, is no part of the train.
        let end = t0 + Duration::from_millis(8);
        let again = t.on_echo(17_000, end, 16);
        assert!(again.is_some_and(|s| (s - 2000.0).abs() < 1.0), "{again:?}");
        assert_eq!(
            t.on_echo(200 * MS, end + Duration::from_millis(200), 17),
            None
        );
    }

    #[test]
    fn paced_datagrams_are_no_train() {
        let t0 = Instant::now();
        let mut t = Trains::default();
        // One datagram a millisecond, arriving as they left (the path has room).
        for k in 1..100u64 {
            let at = t0 + Duration::from_millis(k);
            assert_eq!(t.on_echo(k * MS, at, k), None, "datagram {k}");
        }
        // Arriving a little later than they left (a queue growing slowly) is no train either.
        for k in 100..200u64 {
            let at = t0 + Duration::from_millis(99) + Duration::from_micros((k - 99) * 1_300);
            assert_eq!(t.on_echo(k * MS, at, k), None, "datagram {k}");
        }
    }

    #[test]
    fn sending_past_the_capacity_measures_the_capacity() {
        let t0 = Instant::now();
        let mut t = Trains::default();
        // Sent one every 0.2 ms, leaving the bottleneck one every 0.5 ms: its queue grows, and
        // what comes out is its capacity.
        let mut last = None;
        for k in 1..40u64 {
            let at = t0 + Duration::from_micros(500 * k);
            if let Some(s) = t.on_echo(k * 200_000, at, k) {
                last = Some(s);
            }
        }
        let s = last.expect("a sample");
        assert!((s - 2000.0).abs() < 1.0, "{s}");
    }

    /// A burst sent at once that waited 100 ms in a stalled relay and then came out at 1 Gbit/s
    /// is no 24 Mbit/s bottleneck (issue 24: such a train held a gigabit flow at 30 Mbit/s).
    #[test]
    fn a_stall_then_a_burst_is_no_train() {
        let t0 = Instant::now();
        let mut t = Trains::default();
        // 10 datagrams arrive evenly, one every 0.1 ms, then nothing for 100 ms, then 200 at
        // one every 12 µs, acknowledged every second one.
        let mut at = Vec::new();
        for k in 1..=10u64 {
            at.push((k, Duration::from_micros(100 * k)));
        }
        for k in 11..=210u64 {
            at.push((k, Duration::from_micros(101_000 + 12 * (k - 10))));
        }
        for (k, d) in at.into_iter().filter(|(k, _)| k % 2 == 0) {
            // The burst after the stall is a train of its own, at the rate it came out at.
            if let Some(s) = t.on_echo(1_000 + k, t0 + d, k) {
                assert!(s > 50_000.0, "datagram {k}: {s} datagrams/s");
            }
        }
    }

    #[test]
    fn nothing_counted_or_time_backwards_starts_over() {
        let t0 = Instant::now();
        let mut t = Trains::default();
        assert_eq!(t.on_echo(1_000, t0, 1), None);
        // A newer echo with no more received (a count that did not move: a confused peer).
        assert_eq!(t.on_echo(2_000, t0 + Duration::from_millis(5), 1), None);
        // An arrival before the start (jitter in the ACKs' path).
        assert_eq!(t.on_echo(3_000, t0 + Duration::from_millis(4), 3), None);
        // From there, a train is timed again.
        let s = t.on_echo(4_000, t0 + Duration::from_millis(8), 5);
        assert!(s.is_some_and(|s| (s - 500.0).abs() < 1.0), "{s:?}");
    }
}
