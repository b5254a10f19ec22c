//! `ringblast relay`: a UDP relay that impairs traffic, for experiments and tests on machines
//! without netem (this kernel has none, like many containers).
//!
//! Each client address gets its own upstream socket connected to the server, so the server
//! sees one flow per client (as through a NAT). Datagrams are dropped, reordered, duplicated,
//! corrupted, delayed and rate-limited in both directions by a seeded generator: the same seed
//! and the same traffic give the same impairments. One thread, one `poll` loop.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::sys::socket::{retry_eintr, set_recv_buffer};

/// What the relay does to traffic. Probabilities are in [0, 1], per datagram, per direction.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub listen: SocketAddr,
    pub to: SocketAddr,
    pub loss: f64,
    pub reorder: f64,
    pub duplicate: f64,
    pub corrupt: f64,
    /// Probability of sending, beside a datagram, a garbage one: random bytes, a truncated
    /// copy, or a ringblast header followed by random bytes.
    pub garbage: f64,
    /// Added to every datagram.
    pub delay: Duration,
    /// Per direction, bits per second; excess is queued (up to [`QUEUE_LIMIT`]) then dropped.
    pub rate_bps: Option<u64>,
    pub seed: u64,
    /// Drop the first N ringblast messages of a kind (byte 3 of the header), in either
    /// direction: to test the loss of each control message deterministically.
    pub drop_first: Vec<(u8, u32)>,
}

impl RelayConfig {
    pub fn new(listen: SocketAddr, to: SocketAddr) -> Self {
        RelayConfig {
            listen,
            to,
            loss: 0.0,
            reorder: 0.0,
            duplicate: 0.0,
            corrupt: 0.0,
            garbage: 0.0,
            delay: Duration::ZERO,
            rate_bps: None,
            seed: 1,
            drop_first: Vec::new(),
        }
    }
}

/// Bytes a direction may hold in its rate queue before it drops.
pub const QUEUE_LIMIT: usize = 8 << 20;
/// How long a reordered datagram is held back (at most): later ones overtake it.
const REORDER_HOLD: Duration = Duration::from_millis(2);

/// What the relay did in one direction.
#[derive(Debug, Clone, Copy, Default, Serialize)]
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

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RelayStats {
    /// Client to server.
    pub up: DirStats,
    /// Server to client.
    pub down: DirStats,
    pub flows: u64,
}

impl std::fmt::Display for RelayStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} flows", self.flows)?;
        for (name, d) in [("client->server", self.up), ("server->client", self.down)] {
            writeln!(
                f,
                "{name}: {} received, {} forwarded, {} dropped, {} reordered, {} duplicated, {} corrupted, {} dropped by rate limit, {} targeted drops, {} garbage sent",
                d.received, d.forwarded, d.dropped, d.reordered, d.duplicated, d.corrupted, d.rate_dropped, d.targeted_drops, d.garbage
            )?;
        }
        Ok(())
    }
}

/// A running relay.
pub struct Relay {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<RelayStats>>,
}

impl Relay {
    pub fn start(cfg: RelayConfig) -> io::Result<Relay> {
        for (name, p) in [
            ("loss", cfg.loss),
            ("reorder", cfg.reorder),
            ("duplicate", cfg.duplicate),
            ("corrupt", cfg.corrupt),
            ("garbage", cfg.garbage),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("--{name} must be a probability between 0 and 1 (or 0% to 100%)"),
                ));
            }
        }
        let listen = UdpSocket::bind(cfg.listen)?;
        listen.set_nonblocking(true)?;
        let _ = set_recv_buffer(&listen, 16 << 20);
        let local_addr = listen.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || Engine::new(cfg, listen).run(&stop2))?;
        Ok(Relay {
            local_addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the relay and returns what it did.
    pub fn stop(mut self) -> RelayStats {
        self.stop.store(true, Ordering::Release);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }

    /// Runs until `stop` is set (a signal), then returns the statistics.
    pub fn wait_for(self, stop: &AtomicBool) -> RelayStats {
        while !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Up,
    Down,
}

struct Flow {
    upstream: UdpSocket,
    last_active: Instant,
}

/// A datagram waiting for its release time.
struct Held {
    at: Instant,
    seq: u64,
    dir: Dir,
    client: SocketAddr,
    bytes: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct Engine {
    cfg: RelayConfig,
    listen: UdpSocket,
    flows: HashMap<SocketAddr, Flow>,
    /// One generator per direction: what happens to one direction's traffic does not depend
    /// on how it interleaves with the other's, so a seed reproduces each.
    rng: [SmallRng; 2],
    held: BinaryHeap<Reverse<Held>>,
    seq: u64,
    /// Per direction: when the rate limiter's line is free again, and bytes queued behind it.
    line_free: [Instant; 2],
    queued: [usize; 2],
    drops_left: Vec<(u8, u32)>,
    stats: RelayStats,
}

impl Engine {
    fn new(cfg: RelayConfig, listen: UdpSocket) -> Self {
        let now = Instant::now();
        Engine {
            rng: [
                SmallRng::seed_from_u64(cfg.seed),
                SmallRng::seed_from_u64(cfg.seed ^ 0x9E37_79B9_7F4A_7C15),
            ],
            drops_left: cfg.drop_first.clone(),
            cfg,
            listen,
            flows: HashMap::new(),
            held: BinaryHeap::new(),
            seq: 0,
            line_free: [now, now],
            queued: [0, 0],
            stats: RelayStats::default(),
        }
    }

    fn dir_stats(&mut self, dir: Dir) -> &mut DirStats {
        match dir {
            Dir::Up => &mut self.stats.up,
            Dir::Down => &mut self.stats.down,
        }
    }

    fn run(mut self, stop: &AtomicBool) -> RelayStats {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            self.release(now);
            let wait = self
                .held
                .peek()
                .map(|Reverse(h)| h.at.saturating_duration_since(now))
                .unwrap_or(Duration::from_millis(50))
                .min(Duration::from_millis(50));
            let clients: Vec<SocketAddr> = self.flows.keys().copied().collect();
            let ready: Vec<bool> = {
                let mut fds = vec![PollFd::new(self.listen.as_fd(), PollFlags::POLLIN)];
                for c in &clients {
                    fds.push(PollFd::new(
                        self.flows[c].upstream.as_fd(),
                        PollFlags::POLLIN,
                    ));
                }
                let ms = wait.as_micros().div_ceil(1000).min(50) as u16;
                if poll(&mut fds, PollTimeout::from(ms)).unwrap_or(0) == 0 {
                    continue;
                }
                fds.iter()
                    .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                    .collect()
            };
            if ready[0] {
                while let Ok((n, from)) = retry_eintr(|| self.listen.recv_from(&mut buf)) {
                    if let Err(e) = self.ensure_flow(from) {
                        tracing::warn!("relay: cannot open a flow for {from}: {e}");
                        continue;
                    }
                    self.impair(Dir::Up, from, &buf[..n]);
                }
            }
            for (i, c) in clients.iter().enumerate() {
                if !ready[i + 1] {
                    continue;
                }
                while let Some(Ok(n)) = self
                    .flows
                    .get(c)
                    .map(|flow| retry_eintr(|| flow.upstream.recv(&mut buf)))
                {
                    self.impair(Dir::Down, *c, &buf[..n]);
                }
            }
            let idle = Duration::from_secs(60);
            self.flows.retain(|_, f| f.last_active.elapsed() < idle);
        }
        self.stats
    }

    fn ensure_flow(&mut self, client: SocketAddr) -> io::Result<()> {
        if let Some(f) = self.flows.get_mut(&client) {
            f.last_active = Instant::now();
            return Ok(());
        }
        let any: SocketAddr = if self.cfg.to.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .expect("literal");
        let upstream = UdpSocket::bind(any)?;
        upstream.connect(self.cfg.to)?;
        upstream.set_nonblocking(true)?;
        let _ = set_recv_buffer(&upstream, 16 << 20);
        self.flows.insert(
            client,
            Flow {
                upstream,
                last_active: Instant::now(),
            },
        );
        self.stats.flows += 1;
        Ok(())
    }

    /// Applies the impairments to one datagram and forwards, holds or drops it.
    fn impair(&mut self, dir: Dir, client: SocketAddr, d: &[u8]) {
        self.dir_stats(dir).received += 1;
        if self.rng[dir as usize].random::<f64>() < self.cfg.garbage {
            let junk = self.garbage(dir, d);
            self.dir_stats(dir).garbage += 1;
            self.forward(dir, client, &junk);
        }
        if d.len() >= 4 && d[0..2] == crate::wire::MAGIC {
            if let Some(slot) = self
                .drops_left
                .iter_mut()
                .find(|(k, n)| *k == d[3] && *n > 0)
            {
                slot.1 -= 1;
                self.dir_stats(dir).targeted_drops += 1;
                return;
            }
        }
        if self.rng[dir as usize].random::<f64>() < self.cfg.loss {
            self.dir_stats(dir).dropped += 1;
            return;
        }
        let mut bytes = d.to_vec();
        if !bytes.is_empty() && self.rng[dir as usize].random::<f64>() < self.cfg.corrupt {
            let i = self.rng[dir as usize].random_range(0..bytes.len());
            bytes[i] ^= 1 << self.rng[dir as usize].random_range(0..8);
            self.dir_stats(dir).corrupted += 1;
        }
        let copies = if self.rng[dir as usize].random::<f64>() < self.cfg.duplicate {
            self.dir_stats(dir).duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut at = Instant::now() + self.cfg.delay;
            if self.rng[dir as usize].random::<f64>() < self.cfg.reorder {
                at += REORDER_HOLD.mul_f64(0.5 + self.rng[dir as usize].random::<f64>() / 2.0);
                self.dir_stats(dir).reordered += 1;
            }
            if let Some(bps) = self.cfg.rate_bps {
                let d = dir as usize;
                if self.queued[d] + bytes.len() > QUEUE_LIMIT {
                    self.dir_stats(dir).rate_dropped += 1;
                    continue;
                }
                let start = self.line_free[d].max(Instant::now());
                self.line_free[d] =
                    start + Duration::from_secs_f64(bytes.len() as f64 * 8.0 / bps as f64);
                at = at.max(self.line_free[d]);
                self.queued[d] += bytes.len();
            }
            if at <= Instant::now() {
                self.forward(dir, client, &bytes);
            } else {
                self.seq += 1;
                self.held.push(Reverse(Held {
                    at,
                    seq: self.seq,
                    dir,
                    client,
                    bytes: bytes.clone(),
                }));
            }
        }
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
                v[..2].copy_from_slice(&crate::wire::MAGIC);
                v[2] = crate::wire::VERSION;
                v[3] = d.get(3).copied().unwrap_or(0);
                v
            }
        }
    }

    fn release(&mut self, now: Instant) {
        while self.held.peek().is_some_and(|Reverse(h)| h.at <= now) {
            let Reverse(h) = self.held.pop().expect("peeked");
            if self.cfg.rate_bps.is_some() {
                let d = h.dir as usize;
                self.queued[d] = self.queued[d].saturating_sub(h.bytes.len());
            }
            self.forward(h.dir, h.client, &h.bytes);
        }
    }

    fn forward(&mut self, dir: Dir, client: SocketAddr, bytes: &[u8]) {
        let sent = match dir {
            Dir::Up => match self.flows.get(&client) {
                Some(f) => retry_eintr(|| f.upstream.send(bytes)).is_ok(),
                None => false,
            },
            Dir::Down => retry_eintr(|| self.listen.send_to(bytes, client)).is_ok(),
        };
        if sent {
            self.dir_stats(dir).forwarded += 1;
        }
    }
}

/// Parses a probability: `0.05` or `5%`.
pub fn parse_probability(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let v = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => s.parse::<f64>(),
    }
    .map_err(|_| format!("bad probability {s:?}: use 0.05 or 5%"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "bad probability {s:?}: must be between 0 and 1 (0% and 100%)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities() {
        assert_eq!(parse_probability("0.05"), Ok(0.05));
        assert_eq!(parse_probability("20%"), Ok(0.2));
        assert!(parse_probability("120%").is_err());
        assert!(parse_probability("-0.1").is_err());
        assert!(parse_probability("x").is_err());
    }

    fn echo_through(
        cfg_of: impl FnOnce(SocketAddr) -> RelayConfig,
        n: usize,
    ) -> (usize, RelayStats) {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        set_recv_buffer(&server, 4 << 20).unwrap();
        let relay = Relay::start(cfg_of(server.local_addr().unwrap())).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        // The test reads only after sending everything: room for all of it.
        set_recv_buffer(&client, 4 << 20).unwrap();
        client.connect(relay.local_addr()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 2048];
        // Echo server: everything it gets goes back through the relay.
        let echo = std::thread::spawn(move || {
            while let Ok((k, from)) = server.recv_from(&mut buf) {
                server.send_to(&buf[..k], from).unwrap();
            }
        });
        for i in 0..n {
            client.send(&(i as u32).to_be_bytes()).unwrap();
            if i % 50 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let mut got = 0;
        let mut b = [0u8; 64];
        while client.recv(&mut b).is_ok() {
            got += 1;
        }
        echo.join().unwrap();
        (got, relay.stop())
    }

    #[test]
    fn forwards_everything_when_unimpaired() {
        let (got, st) = echo_through(
            |to| RelayConfig::new("127.0.0.1:0".parse().unwrap(), to),
            500,
        );
        assert_eq!(got, 500);
        assert_eq!(
            (st.up.forwarded, st.down.forwarded, st.flows),
            (500, 500, 1)
        );
    }

    #[test]
    fn loss_is_seeded_and_about_right() {
        let run = |seed| {
            echo_through(
                |to| RelayConfig {
                    loss: 0.2,
                    seed,
                    ..RelayConfig::new("127.0.0.1:0".parse().unwrap(), to)
                },
                1000,
            )
            .1
        };
        let (a, b) = (run(7), run(7));
        // About 20% each way, and the same seed drops the same datagrams.
        assert!((120..=280).contains(&a.up.dropped), "{a}");
        assert_eq!(a.up.dropped, b.up.dropped);
        assert_eq!(a.down.dropped, b.down.dropped);
    }

    #[test]
    fn duplicates_corrupts_and_targets() {
        let (got, st) = echo_through(
            |to| RelayConfig {
                duplicate: 0.5,
                corrupt: 0.5,
                ..RelayConfig::new("127.0.0.1:0".parse().unwrap(), to)
            },
            200,
        );
        assert!(st.up.duplicated > 50 && st.up.corrupted > 50, "{st}");
        assert!(got > 200, "duplicates arrive: {got}");
        // Targeted: the first 3 "RB" messages of kind 1 are dropped, nothing else.
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let relay = Relay::start(RelayConfig {
            drop_first: vec![(1, 3)],
            ..RelayConfig::new("127.0.0.1:0".parse().unwrap(), server.local_addr().unwrap())
        })
        .unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..5u8 {
            c.send_to(&[b'R', b'B', 1, 1, i], relay.local_addr())
                .unwrap();
        }
        let mut b = [0u8; 16];
        let (n, _) = server.recv_from(&mut b).unwrap();
        assert_eq!(&b[..n], &[b'R', b'B', 1, 1, 3]);
        assert_eq!(relay.stop().up.targeted_drops, 3);
    }
}
