//! The relay's impairment model: what happens to one datagram (dropped, corrupted,
//! duplicated, delayed, held back, queued behind a rate limit) and when each copy leaves.
//!
//! Pure: no sockets, and the clock is the caller's `now`, so it is tested here in simulated
//! time. Every random choice comes from one seeded generator per direction: the same seed and
//! the same traffic give the same impairments, and one direction's fate does not depend on how
//! its traffic interleaves with the other's.

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::protocol::{MAGIC, VERSION};

/// How long a reordered datagram is held back (at most): later ones overtake it.
pub const REORDER_HOLD: Duration = Duration::from_millis(2);

/// What the relay does to traffic. Probabilities are in [0, 1], per datagram, per direction.
#[derive(Debug, Clone)]
pub struct Impairments {
    pub loss: f64,
    pub reorder: f64,
    pub duplicate: f64,
    pub corrupt: f64,
    /// Probability of sending, beside a datagram, a garbage one: random bytes, a truncated
    /// copy, or a ringblast header followed by random bytes.
    pub garbage: f64,
    /// Added to every datagram (propagation delay, after any queueing).
    pub delay: Duration,
    /// Per direction, bits per second: a line of this rate with a tail-drop queue in front.
    pub rate_bps: Option<u64>,
    /// Bytes the rate limiter's queue holds (waiting for the line) before it drops.
    pub queue_bytes: usize,
    /// Drop the first N ringblast messages of a kind (byte 3 of the header), in either
    /// direction: to test the loss of each control message deterministically.
    pub drop_first: Vec<(u8, u32)>,
}

impl Default for Impairments {
    fn default() -> Self {
        Impairments {
            loss: 0.0,
            reorder: 0.0,
            duplicate: 0.0,
            corrupt: 0.0,
            garbage: 0.0,
            delay: Duration::ZERO,
            rate_bps: None,
            queue_bytes: 8 << 20,
            drop_first: Vec::new(),
        }
    }
}

/// The two directions of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client to server.
    Up = 0,
    /// Server to client.
    Down = 1,
}

/// What the relay did in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DirStats {
    pub received: u64,
    pub forwarded: u64,
    pub dropped: u64,
    pub reordered: u64,
    pub duplicated: u64,
    pub corrupted: u64,
    pub rate_dropped: u64,
    pub targeted_drops: u64,
    pub garbage: u64,
}

/// A datagram to forward at `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub at: Instant,
    pub bytes: Vec<u8>,
}

/// The impairment state of a relay: generators, rate-limited lines, counters.
pub struct Impairer {
    cfg: Impairments,
    rng: [SmallRng; 2],
    /// Per direction: when the rate-limited line has sent everything queued so far.
    line_free: [Instant; 2],
    drops_left: Vec<(u8, u32)>,
    pub stats: [DirStats; 2],
}

impl Impairer {
    pub fn new(cfg: Impairments, seed: u64, now: Instant) -> Self {
        Impairer {
            rng: [
                SmallRng::seed_from_u64(seed),
                SmallRng::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15),
            ],
            drops_left: cfg.drop_first.clone(),
            cfg,
            line_free: [now, now],
            stats: [DirStats::default(); 2],
        }
    }

    /// Bytes waiting for the rate-limited line in `dir` at `now`. The queue is what the line
    /// has not sent yet, so it drains with time whether a datagram went out at once or waited.
    pub fn queued_bytes(&self, dir: Dir, now: Instant) -> usize {
        match self.cfg.rate_bps {
            Some(bps) => {
                let backlog = self.line_free[dir as usize].saturating_duration_since(now);
                (backlog.as_secs_f64() * bps as f64 / 8.0) as usize
            }
            None => 0,
        }
    }

    /// Applies the impairments to datagram `d` arriving at `now` in `dir`; appends what is to
    /// be forwarded, and when, to `out` (nothing if it is dropped).
    pub fn apply(&mut self, dir: Dir, d: &[u8], now: Instant, out: &mut Vec<Release>) {
        let di = dir as usize;
        self.stats[di].received += 1;
        if self.chance(dir, self.cfg.garbage) {
            let junk = self.garbage(dir, d);
            self.stats[di].garbage += 1;
            out.push(Release {
                at: now,
                bytes: junk,
            });
        }
        if d.len() >= 4 && d[0..2] == MAGIC {
            if let Some(slot) = self
                .drops_left
                .iter_mut()
                .find(|(k, n)| *k == d[3] && *n > 0)
            {
                slot.1 -= 1;
                self.stats[di].targeted_drops += 1;
                return;
            }
        }
        if self.chance(dir, self.cfg.loss) {
            self.stats[di].dropped += 1;
            return;
        }
        let mut bytes = d.to_vec();
        if !bytes.is_empty() && self.chance(dir, self.cfg.corrupt) {
            let rng = &mut self.rng[di];
            let i = rng.random_range(0..bytes.len());
            bytes[i] ^= 1 << rng.random_range(0..8);
            self.stats[di].corrupted += 1;
        }
        let copies = if self.chance(dir, self.cfg.duplicate) {
            self.stats[di].duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut at = now;
            if let Some(bps) = self.cfg.rate_bps {
                if self.queued_bytes(dir, now) + bytes.len() > self.cfg.queue_bytes {
                    self.stats[di].rate_dropped += 1;
                    continue;
                }
                let start = self.line_free[di].max(now);
                self.line_free[di] =
                    start + Duration::from_secs_f64(bytes.len() as f64 * 8.0 / bps as f64);
                at = self.line_free[di];
            }
            at += self.cfg.delay;
            if self.chance(dir, self.cfg.reorder) {
                let hold = 0.5 + self.rng[di].random::<f64>() / 2.0;
                at += REORDER_HOLD.mul_f64(hold);
                self.stats[di].reordered += 1;
            }
            out.push(Release {
                at,
                bytes: bytes.clone(),
            });
        }
    }

    fn chance(&mut self, dir: Dir, p: f64) -> bool {
        p > 0.0 && self.rng[dir as usize].random::<f64>() < p
    }

    /// One garbage datagram, shaped after `d`.
    fn garbage(&mut self, dir: Dir, d: &[u8]) -> Vec<u8> {
        let rng = &mut self.rng[dir as usize];
        match rng.random_range(0..3) {
            // Random bytes.
            0 => {
                let mut v = vec![0u8; rng.random_range(0..1500)];
                rng.fill(&mut v[..]);
                v
            }
            // A truncated copy of the real datagram.
            1 => d[..rng.random_range(0..=d.len())].to_vec(),
            // A ringblast header with the real kind, then random bytes of a random length.
            _ => {
                let mut v = vec![0u8; rng.random_range(4..=d.len().max(4))];
                rng.fill(&mut v[..]);
                v[..2].copy_from_slice(&MAGIC);
                v[2] = VERSION;
                v[3] = d.get(3).copied().unwrap_or(0);
                v
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        imp: &mut Impairer,
        dir: Dir,
        sizes: impl Iterator<Item = (Instant, usize)>,
    ) -> Vec<Release> {
        let mut out = Vec::new();
        for (now, len) in sizes {
            imp.apply(dir, &vec![0u8; len], now, &mut out);
        }
        out
    }

    #[test]
    fn a_rate_limited_line_below_its_rate_never_drops() {
        // 1 Gbit/s line, 8 MiB queue; 64 KiB datagrams offered at half the rate for 1 s, i.e.
        // 64 MB, each forwarded at once (the line is idle when it comes). The queue used to
        // count these bytes in and never out: after 8 MiB everything was "dropped by rate".
        let t0 = Instant::now();
        let cfg = Impairments {
            rate_bps: Some(1_000_000_000),
            ..Impairments::default()
        };
        let mut imp = Impairer::new(cfg, 1, t0);
        let gap = Duration::from_secs_f64(65_507.0 * 8.0 / 0.5e9);
        let n = (1.0 / gap.as_secs_f64()) as u32;
        let out = run(&mut imp, Dir::Down, (0..n).map(|i| (t0 + gap * i, 65_507)));
        assert_eq!(imp.stats[1].rate_dropped, 0, "{:?}", imp.stats[1]);
        assert_eq!(out.len(), n as usize);
        // Each leaves when the line has sent it: 65507 bytes at 1 Gbit/s = 524 us later.
        let tx = Duration::from_secs_f64(65_507.0 * 8.0 / 1e9);
        assert_eq!(out[5].at, t0 + gap * 5 + tx);
    }

    #[test]
    fn a_rate_limited_line_above_its_rate_queues_then_tail_drops() {
        let t0 = Instant::now();
        let cfg = Impairments {
            rate_bps: Some(8_000_000), // 1 MB/s
            queue_bytes: 100_000,
            delay: Duration::from_millis(20),
            ..Impairments::default()
        };
        let mut imp = Impairer::new(cfg, 1, t0);
        // 300 datagrams of 1000 bytes at once: the queue holds 100 of them (100 ms of line).
        let out = run(&mut imp, Dir::Up, (0..300).map(|_| (t0, 1000)));
        assert_eq!(out.len(), 100);
        assert_eq!(imp.stats[0].rate_dropped, 200);
        // Paced at the line's rate, then the propagation delay (to the microsecond).
        let near = |a: Instant, ms: u64| {
            let want = t0 + Duration::from_millis(ms);
            a.max(want) - a.min(want) < Duration::from_micros(1)
        };
        assert!(near(out[0].at, 21) && near(out[99].at, 120));
        // 50 ms later half the queue has drained: room for 50 more, not 100.
        let later = t0 + Duration::from_millis(50);
        assert!((49_999..=50_001).contains(&imp.queued_bytes(Dir::Up, later)));
        let out = run(&mut imp, Dir::Up, (0..100).map(|_| (later, 1000)));
        assert!((49..=50).contains(&out.len()), "{}", out.len());
        // The other direction has its own line.
        assert_eq!(imp.queued_bytes(Dir::Down, later), 0);
    }

    #[test]
    fn loss_is_seeded_and_about_right() {
        let t0 = Instant::now();
        let cfg = Impairments {
            loss: 0.2,
            ..Impairments::default()
        };
        let drops = |seed| {
            let mut imp = Impairer::new(cfg.clone(), seed, t0);
            let out = run(&mut imp, Dir::Down, (0..1000).map(|_| (t0, 100)));
            (imp.stats[1].dropped, out.len())
        };
        let (a, b) = (drops(7), drops(7));
        assert_eq!(a, b);
        assert!((120..=280).contains(&a.0), "{a:?}");
        assert_eq!(a.0 as usize + a.1, 1000);
        assert_ne!(drops(8), a);
    }

    #[test]
    fn reordered_datagrams_are_overtaken() {
        let t0 = Instant::now();
        let cfg = Impairments {
            reorder: 0.5,
            ..Impairments::default()
        };
        let mut imp = Impairer::new(cfg, 3, t0);
        let out = run(
            &mut imp,
            Dir::Down,
            (0..100u32).map(|i| (t0 + Duration::from_micros(100) * i, 10)),
        );
        let held = out
            .iter()
            .filter(|r| r.at > t0 + Duration::from_millis(1))
            .count();
        assert!(imp.stats[1].reordered > 20 && held > 0);
        assert!(
            out.windows(2).any(|w| w[1].at < w[0].at),
            "nothing overtaken"
        );
    }
}
