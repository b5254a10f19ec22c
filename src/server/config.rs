//! What a server is told: `ServerConfig`, its defaults and its checks, and the choices it
//! names (the engine, the send path). Here, not in `engine/`, so that sessions and engines
//! both read them without importing each other; the command line maps its own enums onto
//! these (`cli/serve.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::congestion::CcKind;
use crate::protocol::layout::DatagramSize;
use crate::protocol::pacer::MIN_RATE_BPS;
use crate::protocol::token::DEFAULT_TOKEN_LIFETIME;
use crate::protocol::{MAX_DATAGRAM, MIN_DATAGRAM};

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
    /// The directory whose files are served (`None`: generated files only).
    pub dir: Option<PathBuf>,
    /// `serve --generated`: also serve `gen-SIZE` files of up to this many bytes, generated
    /// in memory ([`crate::protocol::generated`]).
    pub generated: Option<u64>,
    pub bind: SocketAddr,
    /// The engine of a GET that names none.
    pub engine: EngineKind,
    /// Every engine this server offers (`serve --engines`), `engine` among them; empty:
    /// `engine` alone. A GET naming an engine not offered is refused.
    pub engines: Vec<EngineKind>,
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
    /// Serve GETs that ask for it by multicast to this group (`serve --multicast`).
    pub multicast: Option<super::group::MulticastConfig>,
    /// Only these source addresses are answered (`serve --allow`); empty: every address.
    /// Datagrams from others are dropped unread and counted.
    pub allow: Vec<super::admission::Cidr>,
    /// Authenticate clients and seal every datagram (`serve --identity --authorized`, or
    /// `--psk`); `None`: open mode.
    pub security: Option<std::sync::Arc<crate::keys::ServerSecurity>>,
    /// Write each session's sender state over time to this file (`serve --trace`), a sample
    /// per session at most this often.
    pub trace: Option<(PathBuf, Duration)>,
    /// How long what a session learned of the path to its host is kept for the next session
    /// to that host to start from (`serve --path-memory`; zero: not kept).
    pub path_memory: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            dir: Some(PathBuf::from("files")),
            generated: None,
            bind: "127.0.0.1:6969".parse().expect("literal address"),
            engine: EngineKind::Uring,
            engines: Vec::new(),
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
            multicast: None,
            allow: Vec::new(),
            security: None,
            trace: None,
            path_memory: super::paths::DEFAULT_PATH_MEMORY,
        }
    }
}

impl ServerConfig {
    /// The engines offered, the default (`engine`) first.
    pub fn offered(&self) -> Vec<EngineKind> {
        let mut out = vec![self.engine];
        for &e in &self.engines {
            if !out.contains(&e) {
                out.push(e);
            }
        }
        out
    }

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
            if n > SPLICE_DATAGRAM + 1 {
                anyhow::bail!(
                    "--send-path splice sends datagrams of at most {} bytes ({} of payload: the kernel splices at most 16 pages into one), not {n}; use --send-path sendmsg or auto for larger ones",
                    SPLICE_DATAGRAM + 1,
                    MAX_SPLICE_PAYLOAD
                );
            }
        }
        if self.security.is_some() && self.legacy {
            anyhow::bail!(
                "--legacy cannot be combined with --authorized or --psk: the lab's protocol has no authentication, so it would hand every file to anyone"
            );
        }
        if self.security.is_some() && self.send_path == SendPath::Splice {
            anyhow::bail!(
                "--send-path splice cannot seal datagrams (the kernel attaches the file's pages as they are): use sendmsg or auto with --authorized or --psk"
            );
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
        match &self.dir {
            Some(dir) if !dir.is_dir() => anyhow::bail!(
                "--dir {}: {}",
                dir.display(),
                if dir.exists() {
                    "not a directory"
                } else {
                    "no such directory (create it, or point --dir at the files to serve)"
                }
            ),
            None if self.generated.is_none() => {
                anyhow::bail!("nothing to serve: give --dir, --generated, or both")
            }
            _ => {}
        }
        if self.generated == Some(0) {
            anyhow::bail!("--generated-max must be at least 1 byte");
        }
        Ok(())
    }
}

/// Which engine a server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// mmap + io_uring: one ring per session, batched sends, a bounded worker pool.
    Uring,
    /// The lab's baseline: one OS thread per session, read() then one blocking sendto() per
    /// datagram, no batching, no mmap.
    Threads,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Uring => "uring",
            EngineKind::Threads => "threads",
        }
    }
}

/// How the uring engine puts a datagram's payload on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendPath {
    /// Datagrams too large for UDP GSO to batch (loopback's, 65507 bytes) are spliced while
    /// the server is busy (at least as many sessions as workers) and copied while it has
    /// cores to spare: on one host a copied datagram reaches the receiver in cache, a spliced
    /// one from memory, so a lone receiver is faster and the server pays the copy. Smaller
    /// datagrams (an Ethernet path's 1472) are copied, with GSO.
    Auto,
    /// `sendmsg` from the mapped file: the kernel copies each payload (with UDP GSO, up to 64
    /// datagrams per call).
    Sendmsg,
    /// The header with `MSG_MORE`, then `sendfile()` of the payload: the kernel attaches the
    /// file's page-cache pages, nothing is copied; one datagram per pair of calls.
    Splice,
}

impl SendPath {
    pub fn as_str(self) -> &'static str {
        match self {
            SendPath::Auto => "auto",
            SendPath::Sendmsg => "sendmsg",
            SendPath::Splice => "splice",
        }
    }

    /// How a session of `datagram_size`-byte datagrams sends, where splicing works at all:
    /// `Auto` here means "by load". A datagram whose payload [`MAX_SPLICE_PAYLOAD`] cannot
    /// carry is copied.
    pub fn for_datagram(self, datagram_size: usize) -> SendPath {
        let fits = datagram_size - crate::protocol::DATA_HEADER_LEN <= MAX_SPLICE_PAYLOAD;
        match self {
            // GSO carries at most one such datagram per call (a GSO send is one UDP packet's
            // worth, MAX_DATAGRAM): splicing costs nothing in calls.
            SendPath::Auto if fits && datagram_size > MAX_DATAGRAM / 2 => SendPath::Auto,
            SendPath::Splice if fits => SendPath::Splice,
            _ => SendPath::Sendmsg,
        }
    }

    /// The largest datagram the server chooses by itself (`--datagram-size auto`): loopback's
    /// 65507 copied, [`SPLICE_DATAGRAM`] where it may splice.
    pub fn auto_datagram(self) -> usize {
        match self {
            SendPath::Sendmsg => MAX_DATAGRAM,
            SendPath::Auto | SendPath::Splice => SPLICE_DATAGRAM,
        }
    }
}

/// Largest payload one spliced datagram carries: 15 pages and a byte, so that it spans at most
/// 16 pages wherever it starts in the file (the kernel splices at most 16 page fragments into
/// one datagram; 65475 bytes span 17 at most offsets and are refused).
pub const MAX_SPLICE_PAYLOAD: usize = 15 * 4096 + 1;
/// The datagram size `--datagram-size auto` picks on loopback where it may splice: 15 whole
/// pages of payload (61440 bytes) and the header, so every payload also starts on a page.
pub const SPLICE_DATAGRAM: usize = 15 * 4096 + crate::protocol::DATA_HEADER_LEN;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonsensical_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ok = ServerConfig {
            dir: Some(dir.path().into()),
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
                    dir: Some(dir.path().join("nope")),
                    ..ok.clone()
                },
                "no such directory",
            ),
            (
                ServerConfig {
                    dir: None,
                    ..ok.clone()
                },
                "nothing to serve",
            ),
        ];
        for (cfg, why) in cases {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }
}
