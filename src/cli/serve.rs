//! `ringblast serve` and `ringblast list`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

use super::{values, EngineArg};
use crate::client;
use crate::protocol::congestion::CcKind;
use crate::protocol::layout::DatagramSize;
use crate::report::logging;
use crate::server::engine::SendPath;
use crate::server::group::MulticastConfig;
use crate::server::{Server, ServerConfig};

/// `--send-path`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SendPathArg {
    /// Datagrams too large for UDP GSO to batch (loopback's) are spliced while the server is
    /// busy (at least as many sessions as workers) and copied while it has cores to spare;
    /// smaller ones (an Ethernet path's 1472) are copied, with GSO.
    Auto,
    /// `sendmsg` from the mapped file: the kernel copies each payload (with UDP GSO, up to 64
    /// datagrams per call).
    #[value(alias = "copy")]
    Sendmsg,
    /// The header with `MSG_MORE`, then `sendfile()` of the payload: the kernel attaches the
    /// file's page-cache pages, nothing is copied; one datagram per pair of calls.
    Splice,
}

impl From<SendPathArg> for SendPath {
    fn from(p: SendPathArg) -> SendPath {
        match p {
            SendPathArg::Auto => SendPath::Auto,
            SendPathArg::Sendmsg => SendPath::Sendmsg,
            SendPathArg::Splice => SendPath::Splice,
        }
    }
}

/// `--cc`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum CcArg {
    /// BBR: paces at the estimated bottleneck bandwidth (the default).
    Bbr,
    /// No congestion control: credit-limited, paced only at --rate.
    Fixed,
}

impl From<CcArg> for CcKind {
    fn from(c: CcArg) -> CcKind {
        match c {
            CcArg::Bbr => CcKind::Bbr,
            CcArg::Fixed => CcKind::Fixed,
        }
    }
}

#[derive(Args)]
pub struct ServeArgs {
    /// Directory whose regular files are served (symlinks and subdirectories are not)
    /// [default: files, or none with --generated].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also serve generated files: `gen-SIZE` (gen-100MiB, gen-1GiB, gen-12345) for any size
    /// up to --generated-max, made in memory when first asked for, no disk needed. Their
    /// bytes are the same from every server and every run (a client can check them without
    /// the server). `list` shows a few sizes as examples; any other size may be asked for.
    #[arg(long)]
    generated: bool,
    /// Largest generated file (held in memory: the largest asked for so far stays there)
    /// [default: a quarter of this machine's memory, at most 4GiB].
    #[arg(long, value_parser = values::size, requires = "generated")]
    generated_max: Option<u64>,
    /// Address and port to listen on (port 6969 if none; IPv6 as [addr]:port, link-local as
    /// [fe80::1%eth0]:port). Every message of every client uses this one port.
    #[arg(long, default_value = "127.0.0.1:6969", value_parser = values::socket_addr)]
    bind: SocketAddr,
    /// Send engine: uring = mmap + io_uring, one ring per session, batched sends, a fixed
    /// worker pool; threads = the lab's baseline, one thread per client, read() + sendto()
    /// per datagram.
    #[arg(long, value_enum, default_value_t = EngineArg::Uring, conflicts_with = "engines")]
    engine: EngineArg,
    /// Offer several engines, comma-separated (uring,threads): a client names the one it
    /// wants (`get --engine`, `bench --engines`); the first serves GETs that name none.
    #[arg(long, value_enum, value_delimiter = ',')]
    engines: Vec<EngineArg>,
    /// Worker threads driving the rings (1-256) [default: number of cores].
    #[arg(long, value_parser = values::count(1, 256))]
    workers: Option<usize>,
    /// Cap each session at this rate, bits/s like iperf3's -b (e.g. 800M, 2G; at least 1k),
    /// whatever the congestion controller estimates; also paces each --legacy transfer.
    #[arg(long, value_parser = values::rate)]
    rate: Option<u64>,
    /// Congestion control: bbr = estimate the path's bandwidth and RTT and pace at it (fills
    /// a bottleneck, shares it, keeps its rate under random loss); fixed = none, as fast as
    /// the receiver's credit allows, paced only at --rate (for experiments).
    #[arg(long, value_enum, default_value_t = CcArg::Bbr)]
    cc: CcArg,
    /// Keep what a session learned of the path to its client's host (the rate it sustained,
    /// its RTT, the window an overflow taught it) this long, for the next session to that
    /// host to start from if its first RTT matches and no other session to that host is open:
    /// on long paths Startup then paces no further than just past that rate instead of
    /// doubling past it into the queue. 0: every session starts cold (independent runs of an
    /// experiment). Paths under 20 ms are not kept.
    #[arg(long, value_parser = values::duration_or_zero, default_value = "10m")]
    path_memory: Duration,
    /// Drop a session whose client has been silent this long (e.g. 10, 2.5s, 500ms).
    #[arg(long, value_parser = values::duration, default_value = "10s")]
    idle_timeout: Duration,
    /// Datagram size on the wire, header included: auto = each client's path MTU less the
    /// IP and UDP headers, never fragmented (61472 on loopback where payloads may be
    /// spliced, 65507 with --send-path sendmsg; 1472 on Ethernet), or bytes (544-65507). A
    /// client's own limit lowers it (to one of a few sizes: 65507, 61472, 8972, 1472, ...).
    #[arg(long, default_value = "auto", value_parser = DatagramSize::from_str)]
    datagram_size: DatagramSize,
    /// Send one datagram per sendmsg instead of up to 64 with UDP GSO (to compare).
    #[arg(long)]
    no_gso: bool,
    /// How the uring engine puts payloads on the wire. sendmsg (alias: copy): sendmsg from
    /// the mapped file, the kernel copies each payload, with UDP GSO. splice: the header, then
    /// sendfile() of the payload, whose page-cache pages the kernel attaches to the datagram:
    /// no copy on the server (Linux 6.5+); datagrams of at most 61473 bytes (the kernel
    /// splices at most 16 pages into one), so auto picks 61472 on loopback (15 whole pages)
    /// instead of 65507. auto: datagrams over 32 KiB (loopback) are spliced while the server
    /// has at least as many sessions as workers and sent with sendmsg while it has cores to
    /// spare (a lone receiver on the same host then gets them from cache: faster); smaller
    /// ones (Ethernet) go by sendmsg with GSO; sendmsg everywhere if splicing cannot be set up.
    #[arg(long, value_enum, default_value = "auto")]
    send_path: SendPathArg,
    /// Most concurrent sessions (1-100000); further requests get a "busy" answer naming
    /// when to ask again, and clients retry with backoff. Each session costs ~40 KiB plus 4
    /// bytes per datagram of its file, and an open file (the soft limit is raised to the hard
    /// one at start).
    #[arg(long, default_value_t = crate::server::DEFAULT_MAX_SESSIONS, value_parser = values::count(1, 100_000))]
    max_sessions: usize,
    /// Most concurrent sessions from one client IP (1-100000; never more than
    /// --max-sessions), so one host cannot take every place; beyond, it is told busy and its
    /// sub-clients wait their turn. On a full server, a session that has made no progress for
    /// a second (its client silent or stalled) gives its place to a new request.
    #[arg(long, default_value_t = crate::server::DEFAULT_SESSIONS_PER_IP, value_parser = values::count(1, 100_000))]
    sessions_per_ip: usize,
    /// Requests (HELLO, LIST, GET) per second one source IP may make (twice that in a
    /// burst; at least 1); beyond it they are dropped with a short "busy" answer. The
    /// default's burst lets 1000 sub-clients of one host start at once.
    #[arg(long, default_value = "2000", value_parser = values::per_second)]
    requests_per_ip: f64,
    /// Print one JSON object per finished session on stdout (logs stay on stderr).
    #[arg(long)]
    json: bool,
    /// Also answer the lab's text protocol (LIST, !CONFIG :file :n, TRANSFER; raw
    /// datagrams, no header) so its Python clients work unchanged. Off by default: it has
    /// no address validation, so anyone can make the server blast a file at any address.
    #[arg(long)]
    legacy: bool,
    /// Serve GETs that ask for it (get --multicast) by multicast to this group: one
    /// transmission to every client that asks for the same file at about the same time,
    /// erasure-coded repairs for what each lost, the rest by unicast. An IPv4 or IPv6 group
    /// with an optional port (default 6970), e.g. 239.255.77.1 or [ff15::77]:7000. The server
    /// chooses the group; clients never name one.
    #[arg(long, value_parser = values::group_addr)]
    multicast: Option<SocketAddr>,
    /// Answer only these source addresses, comma-separated or repeated (10.0.0.0/8,
    /// 2001:db8::/32, 192.168.1.7); datagrams from any other are dropped unread and counted
    /// (the lab's protocol too) [default: every address].
    #[arg(long, value_delimiter = ',', value_parser = values::cidr)]
    allow: Vec<crate::server::admission::Cidr>,
    /// Hops a group datagram may take: 1 (the default) keeps it on the LAN.
    #[arg(long, default_value_t = 1, value_parser = values::count(1, 255), requires = "multicast")]
    multicast_ttl: usize,
    /// Send group datagrams from the interface with this address [default: by route].
    #[arg(long, requires = "multicast")]
    multicast_if: Option<IpAddr>,
    /// The group's highest pace, bits/s (e.g. 950M, 200M): what the members' links carry. It
    /// slows down by itself while most members lose much; a member losing far more than the
    /// rest is no longer served and finishes by unicast.
    #[arg(long, default_value = "950M", value_parser = values::rate, requires = "multicast")]
    multicast_rate: u64,
    /// How long the first GET of a file waits for others to share its transmission
    /// (e.g. 200ms, 0); later ones join the running transmission.
    #[arg(long, default_value = "200ms", value_parser = values::duration_or_zero, requires = "multicast")]
    multicast_gather: Duration,
    #[command(flatten)]
    security: super::security::ServeSecurityArgs,
    /// Write each session's sender state over time to FILE, one JSON object per line: the
    /// controller's state, pacing and delivery rates, RTT, inflight and window, losses and
    /// resends, after an ACK at most every --trace-every and when the session ends. `ringblast
    /// trace FILE --svg OUT` plots it.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// How often a session is sampled at most for --trace (e.g. 10ms, 1ms, 100ms).
    #[arg(long, value_parser = values::duration, default_value = "10ms", requires = "trace")]
    trace_every: Duration,
}

impl ServeArgs {
    /// The server's config, its key files read.
    pub fn config(self) -> anyhow::Result<ServerConfig> {
        let security = self.security.security()?;
        let mut cfg = ServerConfig::from(self);
        cfg.security = security;
        Ok(cfg)
    }
}

impl From<ServeArgs> for ServerConfig {
    fn from(a: ServeArgs) -> ServerConfig {
        let defaults = ServerConfig::default();
        let engines: Vec<_> = a.engines.iter().map(|&e| e.into()).collect();
        ServerConfig {
            dir: match (a.dir, a.generated) {
                (Some(d), _) => Some(d),
                (None, true) => None,
                (None, false) => defaults.dir.clone(),
            },
            generated: a.generated.then(|| {
                a.generated_max
                    .unwrap_or_else(crate::server::generated::default_limit)
            }),
            bind: a.bind,
            allow: a.allow,
            trace: a.trace.map(|p| (p, a.trace_every)),
            engine: engines.first().copied().unwrap_or(a.engine.into()),
            engines,
            workers: a.workers.unwrap_or(defaults.workers),
            datagram_size: a.datagram_size,
            gso: !a.no_gso,
            send_path: a.send_path.into(),
            idle_timeout: a.idle_timeout,
            path_memory: a.path_memory,
            rate_bps: a.rate,
            cc: a.cc.into(),
            max_sessions: a.max_sessions,
            sessions_per_ip: a.sessions_per_ip.min(a.max_sessions),
            json: a.json,
            legacy: a.legacy,
            requests_per_ip: a.requests_per_ip,
            multicast: a.multicast.map(|group| MulticastConfig {
                group,
                ttl: a.multicast_ttl as u32,
                interface: a.multicast_if,
                rate_bps: a.multicast_rate,
                gather: a.multicast_gather,
            }),
            ..defaults
        }
    }
}

impl ServeArgs {
    /// Serves until SIGINT or SIGTERM: then it stops accepting, tells the clients of active
    /// sessions that it is going away (they fail at once, with that reason), logs a summary
    /// and exits 0. A second signal exits at once.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        logging::init("info");
        let stop = crate::sys::stop_on_signals();
        let server = Server::start(self.config()?)?;
        while !stop.load(std::sync::atomic::Ordering::Acquire) && server.is_running() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if crate::sys::stop_signal().is_none() {
            anyhow::bail!("the server's control thread ended unexpectedly");
        }
        server.shutdown();
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Args)]
pub struct ListArgs {
    /// The server: address or host name, port (default 6969).
    #[arg(long, default_value = "127.0.0.1:6969", value_parser = values::socket_addr)]
    server: SocketAddr,
    /// Give up after this long without an answer (e.g. 5, 500ms).
    #[arg(long, value_parser = values::duration, default_value = "5s")]
    timeout: Duration,
    #[command(flatten)]
    security: super::security::ClientSecurityArgs,
}

impl ListArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        logging::init("warn");
        let security = self.security.security(self.server)?;
        let files = client::list(self.server, self.timeout, security.as_deref())?;
        for (name, size) in &files {
            // A name is the server's to choose: control characters are shown escaped, never
            // sent to the terminal.
            println!("{size:>14}  {}", crate::report::escape(name));
        }
        if files.is_empty() {
            eprintln!("(no files served at {})", self.server);
        }
        if let Some((name, _)) = files
            .iter()
            .rev()
            .find(|(n, _)| crate::protocol::generated::parse_name(n).is_some())
        {
            eprintln!(
                "(gen-SIZE files are generated by the server: any size up to {} may be asked for)",
                crate::report::escape(name)
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}
