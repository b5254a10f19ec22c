//! What sessions learned of the paths to the hosts they served ([`PathRecord`]: the rate a
//! session sustained, its minimum RTT, the window an overflow taught it), for the next session
//! to the same host to start from: Linux keeps a destination's ssthresh and RTT for TCP's next
//! connection (`ip tcp_metrics`), QUIC's Careful Resume (draft-ietf-tsvwg-careful-resume) a
//! path's rate. A new session takes the record only if its first RTT sample matches the
//! recorded path's (`PathRecord::matches`), and its controller forgets a rate the path no
//! longer holds as it forgets a wrong packet train's. Per host (IP address), kept for
//! `serve --path-memory` (10 minutes by default; 0: off), at most [`MAX_HOSTS`] hosts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::protocol::congestion::PathRecord;

/// Hosts remembered at most; a new one beyond it takes the place of the one heard of longest
/// ago.
pub const MAX_HOSTS: usize = 4096;

/// How long a record lasts by default (`serve --path-memory`).
pub const DEFAULT_PATH_MEMORY: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub struct PathMemory {
    hosts: HashMap<IpAddr, (PathRecord, Instant)>,
    keep: Duration,
}

impl PathMemory {
    /// Records last `keep` from the session that made (or last confirmed) them.
    pub fn new(keep: Duration) -> PathMemory {
        PathMemory {
            hosts: HashMap::new(),
            keep,
        }
    }

    /// A session to `host` ended having learned `record`. A live record of the same path
    /// (its RTT matches) keeps the best of both: sessions that ran at once each learned their
    /// share. Another path's, or an expired one, is replaced.
    pub fn remember(&mut self, host: IpAddr, record: PathRecord, now: Instant) {
        let merged = match self.hosts.get(&host) {
            Some((old, at))
                if now.saturating_duration_since(*at) < self.keep
                    && old.matches(record.min_rtt) =>
            {
                old.merge(&record)
            }
            _ => record,
        };
        if !self.hosts.contains_key(&host) && self.hosts.len() >= MAX_HOSTS {
            let oldest = self
                .hosts
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(h, _)| *h);
            if let Some(h) = oldest {
                self.hosts.remove(&h);
            }
        }
        self.hosts.insert(host, (merged, now));
    }

    /// The record of the path to `host`, if one is live.
    pub fn recall(&self, host: IpAddr, now: Instant) -> Option<PathRecord> {
        self.hosts
            .get(&host)
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.keep)
            .map(|(r, _)| *r)
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(rate: f64, rtt_ms: u64, hi: Option<f64>) -> PathRecord {
        PathRecord {
            rate,
            min_rtt: Duration::from_millis(rtt_ms),
            inflight_hi: hi,
        }
    }

    #[test]
    fn a_path_is_recalled_until_it_expires() {
        let t0 = Instant::now();
        let mut m = PathMemory::new(Duration::from_secs(600));
        let host: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(m.recall(host, t0), None);
        m.remember(host, record(12e6, 100, None), t0);
        assert_eq!(
            m.recall(host, t0 + Duration::from_secs(599)),
            Some(record(12e6, 100, None))
        );
        assert_eq!(m.recall(host, t0 + Duration::from_secs(600)), None);
        let other: IpAddr = "10.0.0.3".parse().unwrap();
        assert_eq!(m.recall(other, t0), None);
    }

    #[test]
    fn sessions_on_one_path_keep_the_best_and_another_path_replaces_it() {
        let t0 = Instant::now();
        let mut m = PathMemory::new(Duration::from_secs(600));
        let host: IpAddr = "fd00::2".parse().unwrap();
        // Two sessions that shared the path: each learned its share.
        m.remember(host, record(6e6, 100, Some(1e6)), t0);
        m.remember(host, record(5e6, 98, Some(2e6)), t0);
        assert_eq!(m.recall(host, t0), Some(record(6e6, 98, Some(2e6))));
        // One that learned no overflow says the window needs no bound.
        m.remember(host, record(5e6, 100, None), t0);
        assert_eq!(m.recall(host, t0), Some(record(6e6, 98, None)));
        // The host now answers over another path (a round trip twice as long): the new one.
        m.remember(host, record(1e6, 200, None), t0);
        assert_eq!(m.recall(host, t0), Some(record(1e6, 200, None)));
        // An expired record is not merged into.
        let later = t0 + Duration::from_secs(700);
        m.remember(host, record(0.5e6, 200, None), later);
        assert_eq!(m.recall(host, later), Some(record(0.5e6, 200, None)));
    }

    #[test]
    fn a_full_memory_forgets_the_host_heard_of_longest_ago() {
        let t0 = Instant::now();
        let mut m = PathMemory::new(Duration::from_secs(600));
        let host = |i: usize| IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
        for i in 0..MAX_HOSTS {
            m.remember(
                host(i),
                record(1e6, 50, None),
                t0 + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(m.len(), MAX_HOSTS);
        let now = t0 + Duration::from_secs(10);
        m.remember(host(MAX_HOSTS), record(1e6, 50, None), now);
        assert_eq!(m.len(), MAX_HOSTS);
        assert_eq!(m.recall(host(0), now), None);
        assert!(m.recall(host(1), now).is_some());
        assert!(m.recall(host(MAX_HOSTS), now).is_some());
    }
}
