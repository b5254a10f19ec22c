//! The server: one UDP port for every client and every message, one control thread.
//!
//! The control thread (`control.rs`) receives everything that arrives on the port (`recvmmsg`
//! batches), admits requests (`admission.rs`: tokens, per-IP and per-session budgets), answers
//! `LIST`, turns `GET`s into [`Session`](session::Session)s (kept in `table.rs`) handed to an
//! engine (`engine/`),
//! applies `ACK`s to their sender state and wakes the engine, times out silent clients, and
//! logs what engines report back. Indexing a file (`catalog.rs`, `indexer.rs`) takes time
//! proportional to its size, so it runs on an indexer thread; a client asking meanwhile is told
//! to `WAIT`. `legacy.rs` answers the lab's text protocol when asked to.

pub mod admission;
pub mod catalog;
mod control;
pub mod engine;
pub mod indexer;
pub mod legacy;
mod log_budget;
pub mod session;
pub mod stats;
mod table;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use crate::protocol::congestion::CcKind;
use crate::protocol::layout::DatagramSize;
use crate::protocol::pacer::MIN_RATE_BPS;
use crate::protocol::token::DEFAULT_TOKEN_LIFETIME;
use crate::protocol::{MAX_DATAGRAM, MIN_DATAGRAM};
use crate::sys::socket;
use control::Control;
use engine::threads::ThreadsEngine;
use engine::uring::UringEngine;
use engine::{Engine, EngineKind, SendPath};
use stats::ServerStats;

/// Sessions a server carries at once unless told otherwise: a session costs about 40 KiB
/// (docs/ARCHITECTURE.md, measured) plus 4 bytes per datagram of its file, and one open file
/// (its ring), so 4096 take ~160 MiB. (The threads engine spends a thread on each.)
pub const DEFAULT_MAX_SESSIONS: usize = 4096;
/// Sessions one client IP may hold at once unless told otherwise (never more than
/// `--max-sessions`): one host cannot take every place. A thousand sub-clients of one host
/// still run at once; more wait their turn (they are told busy and ask again).
pub const DEFAULT_SESSIONS_PER_IP: usize = 1024;
/// Requests per second one source IP may make unless told otherwise. The burst, twice that,
/// lets 1000 sub-clients of one host start at once (a HELLO and a GET each, and resends).
pub const DEFAULT_REQUESTS_PER_IP: f64 = 2000.0;

/// Everything `ringblast serve` can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub dir: PathBuf,
    pub bind: SocketAddr,
    pub engine: EngineKind,
    pub workers: usize,
    /// Datagram size on the wire, header included: auto (each client's path MTU, 65507 on
    /// loopback) or fixed. A client's own limit (its `GET`) lowers it.
    pub datagram_size: DatagramSize,
    /// Send several datagrams per call with UDP GSO where the kernel can (uring engine).
    pub gso: bool,
    /// How the uring engine sends payloads: spliced from the page cache or copied.
    pub send_path: SendPath,
    /// A session whose client is silent this long is dropped.
    pub idle_timeout: Duration,
    /// Per-session rate cap, bits per second (`None`: none beyond congestion control).
    pub rate_bps: Option<u64>,
    /// The congestion controller of each session.
    pub cc: CcKind,
    pub max_sessions: usize,
    /// Sessions one client IP may hold at once.
    pub sessions_per_ip: usize,
    /// Cap on the window (bytes of payload in flight) a client may ask for.
    pub max_window_bytes: u64,
    /// Print one JSON object per finished session on stdout.
    pub json: bool,
    /// Also answer the lab's text protocol (an amplifier: off by default).
    pub legacy: bool,
    /// Requests (HELLO, LIST, GET) per second one source IP may make, on average; twice
    /// that in a burst.
    pub requests_per_ip: f64,
    /// ACKs per second one session may send (a tenth of a second's worth in a burst); beyond
    /// it they are dropped unread. A receiver sends one per quarter window or per 2 ms idle.
    pub acks_per_session: f64,
    /// How long an address-validation token stays valid.
    pub token_lifetime: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            dir: PathBuf::from("files"),
            bind: "127.0.0.1:6969".parse().expect("literal address"),
            engine: EngineKind::Uring,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            datagram_size: DatagramSize::Auto,
            gso: true,
            send_path: SendPath::Auto,
            idle_timeout: Duration::from_secs(10),
            rate_bps: None,
            cc: CcKind::Bbr,
            max_sessions: DEFAULT_MAX_SESSIONS,
            sessions_per_ip: DEFAULT_SESSIONS_PER_IP,
            max_window_bytes: 256 << 20,
            json: false,
            legacy: false,
            requests_per_ip: DEFAULT_REQUESTS_PER_IP,
            acks_per_session: 100_000.0,
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
        }
    }
}

impl ServerConfig {
    /// Refuses settings that cannot work, with the reason (the CLI's value parsers refuse
    /// them earlier; this guards the library's other callers).
    pub fn validate(&self) -> anyhow::Result<()> {
        if let DatagramSize::Fixed(n) = self.datagram_size {
            if !(MIN_DATAGRAM..=MAX_DATAGRAM).contains(&n) {
                anyhow::bail!(
                    "datagram size must be between {MIN_DATAGRAM} and {MAX_DATAGRAM} bytes"
                );
            }
        }
        if self.send_path == SendPath::Splice && self.engine != EngineKind::Uring {
            anyhow::bail!(
                "--send-path splice needs the uring engine (the threads engine sends as the lab did)"
            );
        }
        if let (SendPath::Splice, DatagramSize::Fixed(n)) = (self.send_path, self.datagram_size) {
            if n > engine::SPLICE_DATAGRAM + 1 {
                anyhow::bail!(
                    "--send-path splice sends datagrams of at most {} bytes ({} of payload: the kernel splices at most 16 pages into one), not {n}; use --send-path copy or auto for larger ones",
                    engine::SPLICE_DATAGRAM + 1,
                    engine::MAX_SPLICE_PAYLOAD
                );
            }
        }
        if self.workers == 0
            || self.max_sessions == 0
            || self.sessions_per_ip == 0
            || self.max_window_bytes < 65_536
        {
            anyhow::bail!(
                "workers, max sessions and sessions per IP must be at least 1, max window 64 KiB"
            );
        }
        if !(self.requests_per_ip.is_finite() && self.requests_per_ip >= 1.0) {
            anyhow::bail!("requests per IP must be at least 1 per second");
        }
        if !(self.acks_per_session.is_finite() && self.acks_per_session >= 10.0) {
            anyhow::bail!("ACKs per session must be at least 10 per second");
        }
        if self.rate_bps.is_some_and(|r| r < MIN_RATE_BPS) {
            anyhow::bail!("the rate must be at least {MIN_RATE_BPS} bit/s");
        }
        if self.idle_timeout.is_zero() {
            anyhow::bail!("the idle timeout must be positive");
        }
        if !self.dir.is_dir() {
            anyhow::bail!(
                "--dir {}: {}",
                self.dir.display(),
                if self.dir.exists() {
                    "not a directory"
                } else {
                    "no such directory (create it, or point --dir at the files to serve)"
                }
            );
        }
        Ok(())
    }
}

/// A running server. Dropping it shuts it down.
pub struct Server {
    local_addr: SocketAddr,
    stats: Arc<ServerStats>,
    stop: Arc<AtomicBool>,
    control: Option<JoinHandle<()>>,
    engine_threads: usize,
}

impl Server {
    /// Binds the port, starts the engine and the control thread.
    pub fn start(cfg: ServerConfig) -> anyhow::Result<Server> {
        cfg.validate()?;
        let sock =
            UdpSocket::bind(cfg.bind).with_context(|| format!("cannot bind {}", cfg.bind))?;
        let local_addr = sock.local_addr()?;
        let rcvbuf = socket::set_recv_buffer(&sock, 8 << 20)?;
        let sndbuf = socket::set_send_buffer(&sock, 8 << 20)?;
        // A datagram the path cannot carry whole fails loudly instead of fragmenting.
        socket::forbid_fragmentation(&sock).context("cannot forbid IP fragmentation")?;
        let gso = match (cfg.gso, cfg.engine) {
            (false, _) => "off (--no-gso)",
            (true, EngineKind::Threads) => "off (the threads engine sends one datagram per call)",
            (true, EngineKind::Uring) if socket::gso_supported(&sock) => "on",
            (true, EngineKind::Uring) => "off (this kernel has no UDP_SEGMENT)",
        };
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let sock = Arc::new(sock);
        let stats = Arc::new(ServerStats::default());
        let mut send_path = match cfg.engine {
            EngineKind::Uring => cfg.send_path,
            EngineKind::Threads => SendPath::Copy,
        };
        let engine: Box<dyn Engine> = match cfg.engine {
            EngineKind::Uring => {
                let splice = send_path != SendPath::Copy;
                match UringEngine::new(sock.clone(), cfg.workers, stats.clone(), splice) {
                    Ok(e) => Box::new(e),
                    Err(e) if splice && send_path == SendPath::Auto => {
                        tracing::warn!(
                            "cannot splice ({e}): payloads are copied (--send-path copy)"
                        );
                        send_path = SendPath::Copy;
                        Box::new(UringEngine::new(
                            sock.clone(),
                            cfg.workers,
                            stats.clone(),
                            false,
                        )?)
                    }
                    Err(e) => return Err(e).context("cannot start the uring engine"),
                }
            }
            EngineKind::Threads => Box::new(ThreadsEngine::new(sock.clone(), stats.clone())),
        };
        let engine_threads = engine.threads();
        let threads = match cfg.engine {
            EngineKind::Uring => format!("{engine_threads} workers"),
            EngineKind::Threads => "one thread per session".to_string(),
        };
        tracing::info!(
            "[LISTENING] Server is listening on {local_addr}, serving {} (engine {}, {threads}, datagram size {}, send path {}, GSO {gso}, receive buffer {} KiB, send buffer {} KiB)",
            crate::report::escape(&cfg.dir.display().to_string()),
            cfg.engine.as_str(),
            cfg.datagram_size,
            match send_path {
                SendPath::Auto => "auto: splice while sessions >= workers",
                SendPath::Copy => "copy",
                SendPath::Splice => "splice",
            },
            rcvbuf / 1024,
            sndbuf / 1024
        );
        let stop = Arc::new(AtomicBool::new(false));
        let use_gso = gso == "on";
        let control = Control::new(cfg, sock, engine, stats.clone(), use_gso, send_path)?;
        let stop2 = stop.clone();
        let control = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || control.run(&stop2))?;
        Ok(Server {
            local_addr,
            stats,
            stop,
            control: Some(control),
            engine_threads,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Threads the engine runs (not counting the control and indexer threads).
    pub fn engine_threads(&self) -> usize {
        self.engine_threads
    }

    /// Whether the control thread still runs (it ends only when shut down, or on a bug).
    pub fn is_running(&self) -> bool {
        self.control.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Blocks until the server stops (it runs until shut down or the process ends).
    pub fn wait(mut self) {
        if let Some(h) = self.control.take() {
            let _ = h.join();
        }
    }

    /// Stops accepting, closes every session and joins all threads.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.control.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonsensical_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ok = ServerConfig {
            dir: dir.path().into(),
            ..ServerConfig::default()
        };
        assert!(ok.validate().is_ok());
        let cases: Vec<(ServerConfig, &str)> = vec![
            (
                ServerConfig {
                    rate_bps: Some(0),
                    ..ok.clone()
                },
                "rate",
            ),
            (
                ServerConfig {
                    requests_per_ip: 0.4,
                    ..ok.clone()
                },
                "requests",
            ),
            (
                ServerConfig {
                    requests_per_ip: f64::NAN,
                    ..ok.clone()
                },
                "requests",
            ),
            (
                ServerConfig {
                    workers: 0,
                    ..ok.clone()
                },
                "workers",
            ),
            (
                ServerConfig {
                    send_path: SendPath::Splice,
                    engine: EngineKind::Threads,
                    ..ok.clone()
                },
                "needs the uring engine",
            ),
            (
                ServerConfig {
                    send_path: SendPath::Splice,
                    datagram_size: DatagramSize::Fixed(65_507),
                    ..ok.clone()
                },
                "at most 61473 bytes",
            ),
            (
                ServerConfig {
                    max_sessions: 0,
                    ..ok.clone()
                },
                "sessions",
            ),
            (
                ServerConfig {
                    datagram_size: DatagramSize::Fixed(100),
                    ..ok.clone()
                },
                "datagram size",
            ),
            (
                ServerConfig {
                    idle_timeout: Duration::ZERO,
                    ..ok.clone()
                },
                "timeout",
            ),
            (
                ServerConfig {
                    dir: dir.path().join("nope"),
                    ..ok.clone()
                },
                "no such directory",
            ),
        ];
        for (cfg, why) in cases {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }
}
