//! The server: one UDP port for every client and every message, one control thread.
//!
//! The control thread (`control.rs`) receives everything that arrives on the port (`recvmmsg`
//! batches), admits requests (`admission.rs`: tokens, per-IP and per-session budgets), answers
//! `LIST`, turns `GET`s into [`Session`](session::Session)s (kept in `table.rs`) handed to an
//! engine (`engine/`),
//! applies `ACK`s to their sender state and wakes the engine, times out silent clients, and
//! logs what engines report back. Scanning a file (`catalog.rs`, `scanner.rs`) takes time
//! proportional to its size, so it runs on an scanner thread; a client asking meanwhile is told
//! to `WAIT`. `legacy.rs` answers the lab's text protocol when asked to. `secure.rs` holds
//! the handshakes and authenticated connections of a server that authenticates its clients
//! (`--authorized`, `--psk`): then everything after the handshake goes sealed.

pub mod admission;
pub mod catalog;
pub mod config;
mod control;
pub mod engine;
pub mod generated;
pub mod group;
pub mod legacy;
mod log_budget;
pub mod paths;
pub mod scanner;
pub mod secure;
pub mod session;
pub mod stats;
mod table;
pub mod trace;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use crate::sys::socket;
pub use config::{
    ServerConfig, DEFAULT_MAX_SESSIONS, DEFAULT_REQUESTS_PER_IP, DEFAULT_SESSIONS_PER_IP,
};
use control::Control;
use engine::threads::ThreadsEngine;
use engine::uring::UringEngine;
use engine::{Engine, EngineKind, Engines, SendPath};
use stats::ServerStats;

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
        let offered = cfg.offered();
        let uring_offered = offered.contains(&EngineKind::Uring);
        let gso = match (cfg.gso, uring_offered) {
            (false, _) => "off (--no-gso)",
            (true, false) => "off (the threads engine sends one datagram per call)",
            (true, true) if socket::gso_supported(&sock) => "on",
            (true, true) => "off (this kernel has no UDP_SEGMENT)",
        };
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let sock = Arc::new(sock);
        let stats = Arc::new(ServerStats::default());
        // The uring engine's; the threads engine always sends with sendmsg.
        let mut send_path = if uring_offered {
            cfg.send_path
        } else {
            SendPath::Sendmsg
        };
        let mut list: Vec<(EngineKind, Box<dyn Engine>)> = Vec::new();
        for kind in offered {
            let engine: Box<dyn Engine> = match kind {
                EngineKind::Uring => {
                    let splice = send_path != SendPath::Sendmsg;
                    match UringEngine::new(sock.clone(), cfg.workers, stats.clone(), splice) {
                        Ok(e) => Box::new(e),
                        Err(e) if splice && send_path == SendPath::Auto => {
                            tracing::warn!(
                                "cannot splice ({e}): payloads are copied (--send-path sendmsg)"
                            );
                            send_path = SendPath::Sendmsg;
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
            list.push((kind, engine));
        }
        let engines = Engines::new(list);
        let engine_threads = engines.threads();
        let engine_text = |k: &EngineKind| match k {
            EngineKind::Uring => format!("uring ({} workers)", cfg.workers),
            EngineKind::Threads => "threads (a thread per session)".to_string(),
        };
        let offered_text = match cfg.offered().as_slice() {
            [one] => format!("engine {}", engine_text(one)),
            [first, rest @ ..] => format!(
                "engines {}, the default, and {}",
                engine_text(first),
                rest.iter().map(engine_text).collect::<Vec<_>>().join(", ")
            ),
            [] => unreachable!("offered() holds the default engine"),
        };
        let serving = match (&cfg.dir, cfg.generated) {
            (Some(d), None) => crate::report::escape(&d.display().to_string()),
            (Some(d), Some(max)) => format!(
                "{} and generated files gen-SIZE up to {}",
                crate::report::escape(&d.display().to_string()),
                crate::protocol::generated::name_for(max)
            ),
            (None, Some(max)) => format!(
                "generated files gen-SIZE up to {}",
                crate::protocol::generated::name_for(max)
            ),
            (None, None) => "nothing".to_string(),
        };
        tracing::info!(
            "[LISTENING] Server is listening on {local_addr}, serving {serving} ({offered_text}, datagram size {}, send path {}, GSO {gso}, receive buffer {} KiB, send buffer {} KiB)",
            cfg.datagram_size,
            match send_path {
                SendPath::Auto => "auto: splice while sessions >= workers",
                SendPath::Sendmsg => "sendmsg",
                SendPath::Splice => "splice",
            },
            rcvbuf / 1024,
            sndbuf / 1024
        );
        if let Some(sec) = &cfg.security {
            match (&sec.authorized, &sec.psk) {
                (Some(a), _) => tracing::info!(
                    "[AUTH] clients authenticate (Noise XX, X25519) and every datagram is sealed (AES-128-GCM); this server's key is {}; {} authorized",
                    crate::keys::fingerprint(&sec.identity.public),
                    crate::report::plural(a.keys.len() as u64, "client key")
                ),
                (None, _) => tracing::info!(
                    "[AUTH] clients authenticate with the pre-shared key (Noise XXpsk3) and every datagram is sealed (AES-128-GCM); this server's key is {}",
                    crate::keys::fingerprint(&sec.identity.public)
                ),
            }
        } else if !local_addr.ip().is_loopback() {
            // Said once, where the operator looks first: what binding beyond this host means.
            let allowed: Vec<String> = cfg.allow.iter().map(|c| c.to_string()).collect();
            match allowed.is_empty() {
                true => tracing::warn!(
                    "[OPEN] listening on {local_addr} without authentication: anyone who can reach this port can list and read every file served (--allow CIDR limits who may ask)"
                ),
                false => tracing::warn!(
                    "[OPEN] listening on {local_addr} without authentication: any host in {} can list and read every file served",
                    allowed.join(", ")
                ),
            }
        }
        if cfg.generated.is_some() && uring_offered && !generated::shmem_huge_pages() {
            tracing::info!(
                "generated files are in 4 KiB pages (shared memory huge pages are off: /sys/kernel/mm/transparent_hugepage/shmem_enabled): they are copied, not spliced; `advise` there lets them splice like cached files"
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let use_gso = gso == "on";
        let control = Control::new(cfg, sock, engines, stats.clone(), use_gso, send_path)?;
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

    /// Threads the engine runs (not counting the control and scanner threads).
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
