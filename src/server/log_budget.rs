//! Log lines that peers cause (refusals, the lab's commands), logged without letting a flood
//! grow the log: the first few of each second in detail, the rest counted by kind and summed
//! up in one line a second ("[REFUSED] N more requests refused in the last 1.0 s: ..."). A
//! peer's datagram costs the log a few bytes at most, however many addresses it comes from.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Lines logged in detail per second; the rest are summed up.
pub const DETAILED_PER_SECOND: u32 = 5;

/// Rate-limited logging of what peers cause.
pub struct LogBudget {
    /// The lines' tag (`[REFUSED]`) and what the summary counts ("requests refused").
    tag: &'static str,
    noun: &'static str,
    window_start: Instant,
    detailed: u32,
    /// Refusals not logged in detail since the last summary, by kind.
    untold: BTreeMap<&'static str, u64>,
}

impl LogBudget {
    pub fn new(tag: &'static str, noun: &'static str, now: Instant) -> Self {
        LogBudget {
            tag,
            noun,
            window_start: now,
            detailed: 0,
            untold: BTreeMap::new(),
        }
    }

    /// An event of `kind` ("in another protocol version", ...): `line` is logged (info) if
    /// this second's detail budget allows, else it is only counted.
    pub fn log(&mut self, kind: &'static str, now: Instant, line: impl FnOnce() -> String) {
        if now.saturating_duration_since(self.window_start) >= Duration::from_secs(1) {
            self.flush(now);
        }
        if self.detailed < DETAILED_PER_SECOND {
            self.detailed += 1;
            let line = line();
            tracing::info!("{} {line}", self.tag);
        } else {
            *self.untold.entry(kind).or_default() += 1;
        }
    }

    /// Logs the summary of what was not logged in detail, if anything, and starts a new
    /// second. Called from the control thread's sweep as well, so a flood that stopped is
    /// still summed up.
    pub fn flush(&mut self, now: Instant) {
        if now.saturating_duration_since(self.window_start) < Duration::from_secs(1) {
            return;
        }
        if !self.untold.is_empty() {
            let total: u64 = self.untold.values().sum();
            let kinds: Vec<String> = self
                .untold
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect();
            tracing::warn!(
                "{} {total} more {} in the last {:.1} s: {}",
                self.tag,
                self.noun,
                now.saturating_duration_since(self.window_start)
                    .as_secs_f64(),
                kinds.join(", ")
            );
            self.untold.clear();
        }
        self.window_start = now;
        self.detailed = 0;
    }

    /// Events counted but not yet summed up.
    #[cfg(test)]
    pub fn untold(&self) -> u64 {
        self.untold.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_logged_in_detail_a_few_times_then_summed_up() {
        let t0 = Instant::now();
        let mut r = LogBudget::new("[REFUSED]", "requests refused", t0);
        let mut lines = 0;
        for _ in 0..10_000 {
            r.log("in another protocol version", t0, || {
                lines += 1;
                String::new()
            });
        }
        assert_eq!(lines, DETAILED_PER_SECOND);
        assert_eq!(r.untold(), 10_000 - DETAILED_PER_SECOND as u64);
        // Not a second yet: nothing summed up.
        r.flush(t0 + Duration::from_millis(500));
        assert_eq!(r.untold(), 10_000 - DETAILED_PER_SECOND as u64);
        r.flush(t0 + Duration::from_secs(1));
        assert_eq!(r.untold(), 0);
        // A new second has its own detail budget.
        let mut more = 0;
        r.log("for bad names", t0 + Duration::from_millis(1500), || {
            more += 1;
            String::new()
        });
        assert_eq!(more, 1);
    }
}
