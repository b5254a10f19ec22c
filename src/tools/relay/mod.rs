//! `ringblast relay`: a UDP relay that impairs traffic, for experiments and tests on machines
//! without netem (this kernel has none, like many containers).
//!
//! Each client address gets its own upstream socket connected to the server, so the server
//! sees one flow per client (as through a NAT). What happens to each datagram is decided by
//! the pure model in `impair.rs`; this file owns the sockets, the datagrams held until their
//! release time, and one thread with one `ppoll` loop (the [`Forwarder`]).

pub mod impair;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::time::TimeSpec;
use serde::Serialize;

use crate::sys::socket::{retry_eintr, set_recv_buffer};
pub use impair::{Dir, DirStats, Impairments};
use impair::{Impairer, Release};

/// A relay: where it listens, where it forwards, what it does to traffic.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub listen: SocketAddr,
    pub to: SocketAddr,
    pub impair: Impairments,
    pub seed: u64,
}

impl RelayConfig {
    pub fn new(listen: SocketAddr, to: SocketAddr) -> Self {
        RelayConfig {
            listen,
            to,
            impair: Impairments::default(),
            seed: 1,
        }
    }
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
        writeln!(f, "{}", crate::report::plural(self.flows, "flow"))?;
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
        let i = &cfg.impair;
        for (name, p) in [
            ("loss", i.loss),
            ("reorder", i.reorder),
            ("duplicate", i.duplicate),
            ("corrupt", i.corrupt),
            ("garbage", i.garbage),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("--{name} must be a probability between 0 and 1 (or 0% to 100%)"),
                ));
            }
        }
        if i.rate_bps == Some(0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "--rate must be positive",
            ));
        }
        let listen = UdpSocket::bind(cfg.listen).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", cfg.listen))
        })?;
        listen.set_nonblocking(true)?;
        let _ = set_recv_buffer(&listen, 16 << 20);
        let local_addr = listen.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || Forwarder::new(cfg, listen).run(&stop2))?;
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

/// The relay's thread: sockets in, the impairment model, held datagrams out on time.
struct Forwarder {
    to: SocketAddr,
    listen: UdpSocket,
    flows: HashMap<SocketAddr, Flow>,
    model: Impairer,
    held: BinaryHeap<Reverse<Held>>,
    seq: u64,
    releases: Vec<Release>,
    flows_opened: u64,
}

impl Forwarder {
    fn new(cfg: RelayConfig, listen: UdpSocket) -> Self {
        Forwarder {
            to: cfg.to,
            model: Impairer::new(cfg.impair, cfg.seed, Instant::now()),
            listen,
            flows: HashMap::new(),
            held: BinaryHeap::new(),
            seq: 0,
            releases: Vec::new(),
            flows_opened: 0,
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
                // To the microsecond (ppoll), not the millisecond: a release rounded up to the
                // next millisecond bunches what the rate limiter spaced (a 64 KB datagram every
                // 0.52 ms at 1 Gbit/s left in pairs), which no link does.
                let timeout = TimeSpec::from_duration(wait);
                if ppoll(&mut fds, Some(timeout), None).unwrap_or(0) == 0 {
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
        RelayStats {
            up: self.model.stats[Dir::Up as usize],
            down: self.model.stats[Dir::Down as usize],
            flows: self.flows_opened,
        }
    }

    fn ensure_flow(&mut self, client: SocketAddr) -> io::Result<()> {
        if let Some(f) = self.flows.get_mut(&client) {
            f.last_active = Instant::now();
            return Ok(());
        }
        let any: SocketAddr = if self.to.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .expect("literal");
        let upstream = UdpSocket::bind(any)?;
        upstream.connect(self.to)?;
        upstream.set_nonblocking(true)?;
        let _ = set_recv_buffer(&upstream, 16 << 20);
        self.flows.insert(
            client,
            Flow {
                upstream,
                last_active: Instant::now(),
            },
        );
        self.flows_opened += 1;
        Ok(())
    }

    /// Runs one datagram through the model; forwards what is due now, holds the rest.
    fn impair(&mut self, dir: Dir, client: SocketAddr, d: &[u8]) {
        let now = Instant::now();
        let mut releases = std::mem::take(&mut self.releases);
        releases.clear();
        self.model.apply(dir, d, now, &mut releases);
        for r in releases.drain(..) {
            if r.at <= now {
                self.forward(dir, client, &r.bytes);
            } else {
                self.seq += 1;
                self.held.push(Reverse(Held {
                    at: r.at,
                    seq: self.seq,
                    dir,
                    client,
                    bytes: r.bytes,
                }));
            }
        }
        self.releases = releases;
    }

    fn release(&mut self, now: Instant) {
        while self.held.peek().is_some_and(|Reverse(h)| h.at <= now) {
            let Reverse(h) = self.held.pop().expect("peeked");
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
            self.model.stats[dir as usize].forwarded += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn relay_to(to: SocketAddr, impair: Impairments) -> RelayConfig {
        RelayConfig {
            impair,
            ..RelayConfig::new("127.0.0.1:0".parse().unwrap(), to)
        }
    }

    #[test]
    fn forwards_everything_when_unimpaired() {
        let (got, st) = echo_through(|to| relay_to(to, Impairments::default()), 500);
        assert_eq!(got, 500);
        assert_eq!(
            (st.up.forwarded, st.down.forwarded, st.flows),
            (500, 500, 1)
        );
    }

    #[test]
    fn forwards_more_than_its_queue_through_a_fast_rate_limit() {
        // 12 MB one way, more than the 8 MiB queue, never much of it at once. The queue used
        // to count datagrams forwarded at once in and never out: past 8 MiB, all dropped.
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        set_recv_buffer(&server, 16 << 20).unwrap();
        let relay = Relay::start(relay_to(
            server.local_addr().unwrap(),
            Impairments {
                rate_bps: Some(10_000_000_000),
                ..Impairments::default()
            },
        ))
        .unwrap();
        let counter = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            let mut got = 0;
            while server.recv(&mut buf).is_ok() {
                got += 1;
            }
            got
        });
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        let d = vec![7u8; 8000];
        for i in 0..1500 {
            c.send_to(&d, relay.local_addr()).unwrap();
            if i % 20 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let got = counter.join().unwrap();
        let st = relay.stop();
        assert_eq!(st.up.rate_dropped, 0, "{st}");
        assert_eq!((st.up.forwarded, got), (1500, 1500), "{st}");
    }

    #[test]
    fn duplicates_corrupts_and_targets() {
        let (got, st) = echo_through(
            |to| {
                relay_to(
                    to,
                    Impairments {
                        duplicate: 0.5,
                        corrupt: 0.5,
                        ..Impairments::default()
                    },
                )
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
        let relay = Relay::start(relay_to(
            server.local_addr().unwrap(),
            Impairments {
                drop_first: vec![(1, 3)],
                ..Impairments::default()
            },
        ))
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
