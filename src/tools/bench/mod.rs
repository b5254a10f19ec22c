//! `ringblast bench`: the lab's experiment matrix, repeated and measured.
//!
//! Against a server in this process on loopback (the default: one server offering every
//! engine asked for, its files on disk in `--files` and/or generated), or against a running
//! server elsewhere (`--server`: its generated files, each GET naming its engine), or across
//! a path this machine builds (`--path`, `path.rs`: namespaces, a veth pair or a shaping
//! router, the bench re-run inside them). For each source x engine x mode x delivery x file
//! size x client count the transfer is repeated `reps` times. A server in this process has
//! its CPU measured from `getrusage`: the process's CPU time over a run minus what the
//! sub-client threads measured for themselves (`RUSAGE_THREAD`). `output.rs` writes
//! results.csv (one row per run), results.json (runs, per-cell medians with their spread and
//! latency percentiles, the machines), and the plots; `compare.rs` sets two result
//! directories side by side.
//!
//! `--delivery unicast,multicast` measures each cell both ways (multicast on loopback needs
//! `ip link set lo multicast on`): the time until all N copies are done and the bytes the
//! server sent, against N.

pub(crate) mod chart;
pub mod compare;
mod output;
pub mod path;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::client::{self, GetConfig, Verify};
use crate::protocol::Mode;
use crate::report::copy::{aggregate_goodput_bps, ClientHists};
use crate::report::cpu::cpu_time;
use crate::report::hist::{Hist, Percentiles};
use crate::report::MIB;
use crate::server::engine::EngineKind;
use crate::server::group::MulticastConfig;
use crate::server::{Server, ServerConfig};
pub use output::{ratios, table, this_machine as output_machine};

pub struct BenchConfig {
    pub clients: Vec<usize>,
    pub sizes: Vec<u64>,
    pub engines: Vec<EngineKind>,
    pub modes: Vec<Mode>,
    pub reps: usize,
    pub out: PathBuf,
    /// Where the files on disk live (and are served from) for the `files` source.
    pub files: PathBuf,
    /// Kernel receive buffer each sub-client asks for (the lab's Python used the default,
    /// ~208 KiB).
    pub recv_buffer: usize,
    /// Unicast (a session per sub-client), and/or multicast (one group transmission).
    pub deliveries: Vec<Delivery>,
    /// The group's pace for multicast runs, bits/s.
    pub multicast_rate_bps: u64,
    /// Set (by a signal handler) to stop: the run under way is dropped, the ones measured are
    /// kept and written.
    pub stop: Option<&'static std::sync::atomic::AtomicBool>,
    /// A server already running elsewhere (`bench --server`): its generated files are
    /// fetched, each GET naming its engine. `None`: a server in this process on loopback.
    pub server: Option<SocketAddr>,
    /// Where the files come from (a server in this process): files on disk, generated, or
    /// both (to compare them).
    pub sources: Vec<Source>,
    /// What the results call the path ("loopback", "veth:1500", "router:1gbit", ...).
    pub path: String,
    /// What is known of the server's machine when it is not this process's (`bench --path`
    /// runs it on this machine, in a namespace).
    pub server_machine: Option<String>,
    /// The server's process id when it runs on this machine (`bench --path`): its CPU time
    /// is read from /proc.
    pub server_pid: Option<u32>,
    /// Where that server writes its sessions (`serve --json`): their send latency is read
    /// from it after each run.
    pub server_sessions: Option<PathBuf>,
}

impl BenchConfig {
    /// The lab's matrix at its defaults, on loopback (the command line's defaults).
    pub fn new(out: PathBuf) -> Self {
        BenchConfig {
            clients: vec![1, 5, 10],
            sizes: vec![100 << 20, 250 << 20],
            engines: vec![EngineKind::Uring, EngineKind::Threads],
            modes: vec![Mode::Reliable, Mode::Blast],
            reps: 3,
            out,
            files: PathBuf::from("files"),
            recv_buffer: 48 << 20,
            deliveries: vec![Delivery::Unicast],
            multicast_rate_bps: 2_000_000_000,
            stop: None,
            server: None,
            sources: vec![Source::Files],
            path: "loopback".to_string(),
            server_machine: None,
            server_pid: None,
            server_sessions: None,
        }
    }
}

/// Where a bench's files come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Files on disk (`--files`), generated there once and read from the page cache.
    Files,
    /// The server's generated files (`gen-SIZE`, from memory).
    Generated,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Files => "files",
            Source::Generated => "generated",
        }
    }
}

/// How the copies of one run travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Unicast,
    Multicast,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Unicast => "unicast",
            Delivery::Multicast => "multicast",
        }
    }
}

/// One transfer of the matrix.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// The path's name, and the server's address.
    pub path: String,
    pub server: String,
    pub source: &'static str,
    pub engine: &'static str,
    pub mode: &'static str,
    pub delivery: &'static str,
    pub size_bytes: u64,
    pub clients: usize,
    pub rep: usize,
    pub duration_s: f64,
    /// Verified bytes of all copies / the longest copy's time.
    pub goodput_bps: f64,
    /// Mean over sub-clients of intact bytes / own time (the lab's per-client MB/s).
    pub per_client_bps: f64,
    pub bytes_requested: u64,
    pub bytes_intact: u64,
    pub bytes_lost: u64,
    pub loss_pct: f64,
    pub datagrams_lost: u64,
    pub retransmitted: u64,
    pub all_intact: bool,
    /// What the server sent, its CPU time: measured only for a server in this process.
    pub server_bytes_sent: Option<u64>,
    pub server_cpu_s: Option<f64>,
    pub server_cpu_s_per_gb: Option<f64>,
    pub client_cpu_s: f64,
    pub p50_one_way_delay_us: u64,
    pub p99_one_way_delay_us: u64,
    /// The path as the copies saw it: datagram size on the wire (header included), whether
    /// they arrived coalesced (GRO), and the RTT the sender measured (its last STATUS;
    /// medians over the copies).
    pub datagram_size: usize,
    pub gro: bool,
    pub sender_srtt_us: u64,
    pub sender_min_rtt_us: u64,
    /// The most datagrams one of the server's sends carried (UDP GSO; 1: none), where the
    /// server is known (this process, or `--path`).
    pub gso_segments: Option<u64>,
    /// The first copy's error, if one failed (server gone, refused, timed out).
    pub error: Option<String>,
}

/// What identifies a cell: everything but the repetition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellKey {
    pub path: String,
    pub source: String,
    pub engine: String,
    pub mode: String,
    pub delivery: String,
    pub size_bytes: u64,
    pub clients: usize,
}

impl CellKey {
    fn of(r: &Run) -> CellKey {
        CellKey {
            path: r.path.clone(),
            source: r.source.to_string(),
            engine: r.engine.to_string(),
            mode: r.mode.to_string(),
            delivery: r.delivery.to_string(),
            size_bytes: r.size_bytes,
            clients: r.clients,
        }
    }
}

/// Medians of one cell (path x source x engine x mode x delivery x size x clients) over its
/// repetitions, with the lowest and highest of the throughputs and losses (their spread).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cell {
    #[serde(flatten)]
    pub key: CellKey,
    pub reps: usize,
    pub goodput_bps: f64,
    pub goodput_min_bps: f64,
    pub goodput_max_bps: f64,
    pub per_client_bps: f64,
    pub per_client_min_bps: f64,
    pub per_client_max_bps: f64,
    pub bytes_lost: f64,
    pub loss_pct: f64,
    pub loss_min_pct: f64,
    pub loss_max_pct: f64,
    pub retransmitted: f64,
    pub server_cpu_s_per_gb: Option<f64>,
    pub p99_one_way_delay_us: f64,
    /// Until the last copy was done, and what the server sent for all of them.
    pub duration_s: f64,
    pub server_bytes_sent: Option<f64>,
    pub all_intact_every_rep: bool,
    /// Repetitions in which every copy arrived whole and verified (a median of bytes lost
    /// can be 0 with one of them short).
    pub reps_intact: usize,
    /// The data's one-way delay and the gaps between arrivals over every copy of every
    /// repetition: `(quantile, microseconds)` at [`QUANTILES`].
    #[serde(default)]
    pub one_way_delay_us: Vec<(f64, u64)>,
    #[serde(default)]
    pub inter_arrival_us: Vec<(f64, u64)>,
    /// The server's send latency (submit to completion, uring; the `sendto` call, threads):
    /// exact quantiles for a server in this process; for another process of this machine
    /// (`--path`), the median over its sessions of each percentile (p50 ... p99.9) and the
    /// largest maximum; empty where not known.
    #[serde(default)]
    pub server_send_latency_us: Vec<(f64, u64)>,
}

/// What a cell's runs recorded, merged: the receivers' histograms, the server's send latency
/// (a server in this process), or its sessions' percentiles (another process).
#[derive(Default)]
struct CellHists {
    client: ClientHists,
    server: Option<Hist>,
    server_sessions: Vec<Percentiles>,
}

impl CellHists {
    fn merge(&mut self, o: CellHists) {
        self.client.merge(&o.client);
        if let Some(h) = o.server {
            match &mut self.server {
                Some(all) => all.merge(&h),
                None => self.server = Some(h),
            }
        }
        self.server_sessions.extend(o.server_sessions);
    }

    /// The server's send latency as `(quantile, us)`.
    fn server_quantiles(&self) -> Vec<(f64, u64)> {
        if let Some(h) = &self.server {
            return h.quantiles(&QUANTILES);
        }
        let s = &self.server_sessions;
        if s.is_empty() {
            return Vec::new();
        }
        let med =
            |f: fn(&Percentiles) -> u64| median(s.iter().map(|p| f(p) as f64).collect()) as u64;
        vec![
            (0.5, med(|p| p.p50)),
            (0.9, med(|p| p.p90)),
            (0.99, med(|p| p.p99)),
            (0.999, med(|p| p.p999)),
            (1.0, s.iter().map(|p| p.max).max().unwrap_or(0)),
        ]
    }
}

/// The quantiles of the latency histograms kept per cell (and plotted).
pub const QUANTILES: [f64; 9] = [0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999, 1.0];

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The server a run fetches from: in this process (its counters and CPU are known) or
/// elsewhere (its CPU known if it is a process of this machine).
#[derive(Clone, Copy)]
enum Target<'a> {
    Local(&'a Server),
    Remote(SocketAddr, Option<u32>),
}

impl Target<'_> {
    fn addr(&self) -> SocketAddr {
        match self {
            Target::Local(s) => s.local_addr(),
            Target::Remote(a, _) => *a,
        }
    }

    /// Waits until the previous run's sessions are gone (a remote server: a moment).
    fn wait_idle(&self) {
        match self {
            Target::Local(server) => {
                let t = Instant::now();
                while server.stats().sessions_active.load(Ordering::Acquire) > 0
                    && t.elapsed() < Duration::from_secs(3)
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            Target::Remote(..) => std::thread::sleep(Duration::from_millis(100)),
        }
    }

    fn bytes_sent(&self) -> Option<u64> {
        match self {
            Target::Local(server) => {
                let st = server.stats();
                Some(
                    st.bytes_sent.load(Ordering::Relaxed)
                        + st.group_bytes_sent.load(Ordering::Relaxed),
                )
            }
            Target::Remote(..) => None,
        }
    }

    /// What the server recorded of its sessions since the last call: a server in this
    /// process, its send latency exactly; another that writes its sessions to `sessions`
    /// (from byte `from`), their percentiles. With the most datagrams a send carried (GSO).
    fn sessions(&self, sessions: Option<(&Path, u64)>) -> ServerRecord {
        match (self, sessions) {
            (Target::Local(server), _) => {
                let (h, gso) = server.stats().take_finished_sessions();
                ServerRecord {
                    hist: Some(h),
                    sessions: Vec::new(),
                    gso_segments: Some(gso),
                }
            }
            (Target::Remote(..), Some((path, from))) => {
                // The server logs a finished session within its 50 ms sweep.
                std::thread::sleep(Duration::from_millis(150));
                sessions_since(path, from)
            }
            (Target::Remote(..), None) => ServerRecord::default(),
        }
    }

    /// The CPU time of a server that is another process of this machine.
    fn process_cpu(&self) -> Option<Duration> {
        match self {
            Target::Remote(_, Some(pid)) => crate::report::cpu::process_cpu_time(*pid),
            _ => None,
        }
    }
}

/// What the server said of a run's sessions.
#[derive(Default)]
struct ServerRecord {
    hist: Option<Hist>,
    sessions: Vec<Percentiles>,
    gso_segments: Option<u64>,
}

/// The send latency percentiles and largest GSO batch of the sessions `serve --json` wrote to
/// `path` after byte `from`.
fn sessions_since(path: &Path, from: u64) -> ServerRecord {
    // Only what this run appended: the file grows with every run of the matrix.
    let mut new = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        use std::io::{Read, Seek, SeekFrom};
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let _ = f.read_to_end(&mut new);
        }
    }
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&new)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    ServerRecord {
        hist: None,
        sessions: lines
            .iter()
            .filter_map(|v| serde_json::from_value(v.get("send_latency_us")?.clone()).ok())
            .collect(),
        gso_segments: lines
            .iter()
            .filter_map(|v| v.get("gso_segments")?.as_u64())
            .max(),
    }
}

fn file_len(path: Option<&PathBuf>) -> u64 {
    path.and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len())
}

fn get_config(
    server: SocketAddr,
    name: &str,
    clients: usize,
    mode: Mode,
    recv_buffer: usize,
) -> GetConfig {
    let mut g = GetConfig::new(server, name);
    g.clients = clients;
    g.mode = mode;
    g.out_dir = None;
    g.verify = Verify::Manifest;
    g.timeout = Duration::from_secs(10);
    g.recv_buffer = recv_buffer;
    g
}

/// Whether the user asked to stop.
fn stopped(cfg: &BenchConfig) -> bool {
    cfg.stop.is_some_and(|s| s.load(Ordering::Acquire))
}

/// One point of the matrix.
struct Point<'a> {
    source: Source,
    engine: EngineKind,
    mode: Mode,
    delivery: Delivery,
    size: u64,
    name: &'a str,
    clients: usize,
    rep: usize,
}

/// One transfer, and its copies' and the server's histograms.
fn one_run(
    target: Target<'_>,
    cfg: &BenchConfig,
    p: &Point<'_>,
) -> anyhow::Result<(Run, CellHists)> {
    let Point {
        source,
        engine,
        mode,
        delivery,
        size,
        name,
        clients,
        rep,
    } = *p;
    target.wait_idle();
    // Whatever the server recorded before this run is not this run's.
    let _ = target.sessions(None);
    let sessions_from = file_len(cfg.server_sessions.as_ref());
    let sent0 = target.bytes_sent();
    let cpu0 = cpu_time(false);
    let server_cpu0 = target.process_cpu();
    let mut g = get_config(target.addr(), name, clients, mode, cfg.recv_buffer);
    g.multicast = delivery == Delivery::Multicast;
    g.engine = Some(engine);
    g.stop = cfg.stop;
    let reports = client::get(&g)?;
    target.wait_idle();
    if g.multicast {
        // The group's last datagrams (its end markers) go after the copies are done.
        std::thread::sleep(Duration::from_millis(300));
    }
    let cpu = cpu_time(false).saturating_sub(cpu0).as_secs_f64();
    let sent = sent0.and_then(|s0| target.bytes_sent().map(|s| s - s0));
    let client_cpu: f64 = reports.iter().map(|r| r.cpu_s).sum();
    // A server in this process: its CPU is the process's less the sub-clients' own; another
    // process of this machine: what /proc says it used.
    let server_cpu = match target {
        Target::Local(_) => Some((cpu - client_cpu).max(0.0)),
        Target::Remote(..) => server_cpu0
            .zip(target.process_cpu())
            .map(|(a, b)| b.saturating_sub(a).as_secs_f64()),
    };
    // CPU per GB of what the server sent; without its counters, of the file bytes asked for.
    let per_gb_of = sent.unwrap_or(size * clients as u64);
    let requested = size * clients as u64;
    let intact: u64 = reports.iter().map(|r| r.bytes_intact).sum();
    let mut run_hists = ClientHists::default();
    for r in &reports {
        run_hists.merge(&r.hists);
    }
    let record = target.sessions(cfg.server_sessions.as_deref().map(|p| (p, sessions_from)));
    let gso_segments = record.gso_segments;
    let delay = run_hists.one_way_delay_us.summary();
    let wall = reports.iter().map(|r| r.duration_s).fold(0.0, f64::max);
    let sender = |f: fn(&crate::protocol::Status) -> u32| -> u64 {
        median(
            reports
                .iter()
                .filter_map(|r| r.sender.as_ref().map(|s| f(s) as f64))
                .collect(),
        ) as u64
    };
    let run = Run {
        path: cfg.path.clone(),
        server: target.addr().to_string(),
        source: source.as_str(),
        engine: engine.as_str(),
        mode: mode.as_str(),
        delivery: delivery.as_str(),
        size_bytes: size,
        clients,
        rep,
        duration_s: wall,
        goodput_bps: aggregate_goodput_bps(&reports),
        per_client_bps: reports
            .iter()
            .map(|r| r.bytes_intact as f64 * 8.0 / r.duration_s.max(1e-9))
            .sum::<f64>()
            / reports.len().max(1) as f64,
        bytes_requested: requested,
        bytes_intact: intact,
        bytes_lost: requested.saturating_sub(intact),
        loss_pct: 100.0 * requested.saturating_sub(intact) as f64 / requested.max(1) as f64,
        datagrams_lost: reports.iter().map(|r| r.datagrams_lost).sum(),
        retransmitted: reports.iter().map(|r| r.retransmitted).sum(),
        all_intact: reports.iter().all(|r| r.ok()),
        server_bytes_sent: sent,
        server_cpu_s: server_cpu,
        server_cpu_s_per_gb: server_cpu
            .and_then(|cpu| (per_gb_of > 0).then(|| cpu / (per_gb_of as f64 / 1e9))),
        client_cpu_s: client_cpu,
        p50_one_way_delay_us: delay.p50,
        p99_one_way_delay_us: delay.p99,
        datagram_size: reports.iter().map(|r| r.datagram_size).max().unwrap_or(0),
        gro: reports.iter().any(|r| r.gro),
        sender_srtt_us: sender(|s| s.srtt_us),
        sender_min_rtt_us: sender(|s| s.min_rtt_us),
        gso_segments,
        error: reports.iter().find_map(|r| r.error.clone()),
    };
    let hists = CellHists {
        client: run_hists,
        server: record.hist,
        server_sessions: record.sessions,
    };
    Ok((run, hists))
}

/// What a bench measured: a row per run and the medians per cell.
pub struct Results {
    pub runs: Vec<Run>,
    pub cells: Vec<Cell>,
}

/// The name each size is fetched by, per source (files on disk made first if missing, when
/// the server is this process's).
fn names(cfg: &BenchConfig) -> anyhow::Result<Vec<(Source, u64, String)>> {
    let mut names = Vec::new();
    for &source in &cfg.sources {
        for &size in &cfg.sizes {
            let name = match (source, cfg.server) {
                (Source::Files, None) => crate::tools::demo::ensure_file(&cfg.files, size)?,
                // Another server's files, named as bench and demo make them (SIZE.bin).
                (Source::Files, Some(_)) => crate::tools::demo::file_name(size),
                (Source::Generated, _) => crate::protocol::generated::name_for(size),
            };
            names.push((source, size, name));
        }
    }
    if cfg.stop.is_some() {
        // Generating a file gave the signals their default action back after it.
        crate::sys::stop_on_signals();
    }
    Ok(names)
}

/// The server of a bench without `--server`: in this process on loopback, offering every
/// engine measured, the files on disk and/or generated ones.
fn local_server(cfg: &BenchConfig, multicast: bool) -> anyhow::Result<Server> {
    Server::start(ServerConfig {
        dir: cfg
            .sources
            .contains(&Source::Files)
            .then(|| cfg.files.clone()),
        generated: cfg
            .sources
            .contains(&Source::Generated)
            .then(|| cfg.sizes.iter().copied().max().unwrap_or(1).max(1)),
        bind: "127.0.0.1:0".parse().expect("literal"),
        engine: cfg.engines[0],
        engines: cfg.engines.clone(),
        multicast: multicast.then(|| MulticastConfig {
            group: SocketAddr::new(
                [239, 255, 70, 1 + (std::process::id() % 250) as u8].into(),
                free_port(),
            ),
            ttl: 1,
            interface: Some([127, 0, 0, 1].into()),
            rate_bps: cfg.multicast_rate_bps,
            gather: Duration::from_millis(100),
        }),
        ..ServerConfig::default()
    })
}

/// Runs the matrix, writes the results; returns the per-run rows and the per-cell medians
/// (of the runs measured before a stop, if one was asked for: see [`BenchConfig::stop`]).
pub fn run(cfg: &BenchConfig) -> anyhow::Result<Results> {
    std::fs::create_dir_all(&cfg.out)
        .with_context(|| format!("cannot create {}", cfg.out.display()))?;
    if cfg.engines.is_empty() || cfg.sources.is_empty() {
        anyhow::bail!("nothing to measure: give at least one engine and one source");
    }
    let names = names(cfg)?;
    let multicast = cfg.deliveries.contains(&Delivery::Multicast);
    if multicast && cfg.server.is_none() && !loopback_multicast() {
        anyhow::bail!(
            "--delivery multicast runs on loopback, which carries no multicast here: `ip link set lo multicast on` (root) first"
        );
    }
    let local = match cfg.server {
        Some(_) => None,
        None => Some(local_server(cfg, multicast)?),
    };
    let target = match (&local, cfg.server) {
        (Some(server), _) => Target::Local(server),
        (None, Some(addr)) => Target::Remote(addr, cfg.server_pid),
        (None, None) => unreachable!("a local server is started without --server"),
    };
    warm_up(cfg, target, &names)?;
    let mut runs = Vec::new();
    let mut hists: Vec<(CellKey, CellHists)> = Vec::new();
    let total = cfg.engines.len()
        * cfg.modes.len()
        * cfg.deliveries.len()
        * names.len()
        * cfg.clients.len()
        * cfg.reps;
    let started = Instant::now();
    'matrix: for &engine in &cfg.engines {
        for &mode in &cfg.modes {
            for &delivery in &cfg.deliveries {
                for (source, size, name) in &names {
                    for &clients in &cfg.clients {
                        for rep in 1..=cfg.reps {
                            let point = Point {
                                source: *source,
                                engine,
                                mode,
                                delivery,
                                size: *size,
                                name,
                                clients,
                                rep,
                            };
                            if stopped(cfg) {
                                break 'matrix;
                            }
                            let (r, h) = one_run(target, cfg, &point)?;
                            if stopped(cfg) {
                                // Cut short by the stop: not a measurement.
                                break 'matrix;
                            }
                            let key = CellKey::of(&r);
                            match hists.iter_mut().find(|(k, _)| *k == key) {
                                Some((_, all)) => all.merge(h),
                                None => hists.push((key, h)),
                            }
                            progress(runs.len() + 1, total, started, name, &r);
                            let failed = (r.bytes_intact == 0).then(|| r.error.clone()).flatten();
                            runs.push(r);
                            if let Some(e) = failed {
                                // Nothing arrived: the server is gone or refuses; the rest
                                // of the matrix would only time out. What was measured stays.
                                let cells = cells(&runs, &hists);
                                output::write_outputs(cfg, &runs, &cells)?;
                                anyhow::bail!(
                                    "run {} of {total} failed, nothing arrived: {e} (the {} runs measured are in {})",
                                    runs.len(),
                                    runs.len() - 1,
                                    cfg.out.display()
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(server) = local {
        server.shutdown();
    }
    let cells = cells(&runs, &hists);
    output::write_outputs(cfg, &runs, &cells)?;
    Ok(Results { runs, cells })
}

/// Every file fetched once per engine before the matrix: scanned (generated) at the engine's
/// datagram size and in memory. A server that lacks an engine or the files says so here.
fn warm_up(
    cfg: &BenchConfig,
    target: Target<'_>,
    names: &[(Source, u64, String)],
) -> anyhow::Result<()> {
    for &engine in &cfg.engines {
        for (_, _, name) in names {
            let mut g = get_config(target.addr(), name, 1, Mode::Reliable, cfg.recv_buffer);
            g.engine = Some(engine);
            g.timeout = Duration::from_secs(30);
            g.stop = cfg.stop;
            let r = client::get(&g)?;
            if stopped(cfg) {
                // Ctrl-C: no run is measured; the matrix ends at once.
                return Ok(());
            }
            if let Some(e) = r.iter().find_map(|r| r.error.clone()) {
                anyhow::bail!(
                    "warm-up fetch of {name} from {} (engine {}) failed: {e}",
                    target.addr(),
                    engine.as_str()
                );
            }
        }
    }
    Ok(())
}

/// The line after each run: where the matrix is, and what the run measured.
fn progress(done: usize, total: usize, started: Instant, name: &str, r: &Run) {
    let elapsed = started.elapsed().as_secs_f64();
    let left = elapsed / done as f64 * (total - done) as f64;
    eprintln!(
        "[{done}/{total}, {elapsed:.0} s, ~{left:.0} s left] {:>7} {:>8} {:>9} {:>10} x{:<3} rep {}: {:>8.1} MiB/s aggregate, {:.3} s, {:>5.2}% lost, {} retransmitted{}",
        r.engine,
        r.mode,
        r.delivery,
        name,
        r.clients,
        r.rep,
        r.goodput_bps / 8.0 / MIB,
        r.duration_s,
        r.loss_pct,
        r.retransmitted,
        match (r.server_bytes_sent, r.server_cpu_s_per_gb) {
            (Some(sent), Some(cpu)) => format!(
                ", server sent {:.1} MiB, {cpu:.3} CPU s/GB",
                sent as f64 / MIB
            ),
            _ => String::new(),
        }
    );
}

/// The medians and spreads per cell, in the order cells were first measured.
fn cells(runs: &[Run], hists: &[(CellKey, CellHists)]) -> Vec<Cell> {
    let mut out: Vec<Cell> = Vec::new();
    for r in runs {
        let key = CellKey::of(r);
        if out.iter().any(|c| c.key == key) {
            continue;
        }
        let same: Vec<&Run> = runs.iter().filter(|x| CellKey::of(x) == key).collect();
        let m = |f: fn(&Run) -> f64| median(same.iter().map(|x| f(x)).collect());
        let lo = |f: fn(&Run) -> f64| same.iter().map(|x| f(x)).fold(f64::INFINITY, f64::min);
        let hi = |f: fn(&Run) -> f64| same.iter().map(|x| f(x)).fold(0.0, f64::max);
        let opt = |f: fn(&Run) -> Option<f64>| {
            let v: Vec<f64> = same.iter().filter_map(|x| f(x)).collect();
            (!v.is_empty()).then(|| median(v))
        };
        let cell_hists = hists.iter().find(|(k, _)| *k == key).map(|(_, h)| h);
        let quantiles = |pick: fn(&ClientHists) -> &Hist| {
            cell_hists
                .map(|h| pick(&h.client).quantiles(&QUANTILES))
                .unwrap_or_default()
        };
        out.push(Cell {
            reps: same.len(),
            goodput_bps: m(|x| x.goodput_bps),
            goodput_min_bps: lo(|x| x.goodput_bps),
            goodput_max_bps: hi(|x| x.goodput_bps),
            per_client_bps: m(|x| x.per_client_bps),
            per_client_min_bps: lo(|x| x.per_client_bps),
            per_client_max_bps: hi(|x| x.per_client_bps),
            bytes_lost: m(|x| x.bytes_lost as f64),
            loss_pct: m(|x| x.loss_pct),
            loss_min_pct: lo(|x| x.loss_pct),
            loss_max_pct: hi(|x| x.loss_pct),
            retransmitted: m(|x| x.retransmitted as f64),
            server_cpu_s_per_gb: opt(|x| x.server_cpu_s_per_gb),
            p99_one_way_delay_us: m(|x| x.p99_one_way_delay_us as f64),
            duration_s: m(|x| x.duration_s),
            server_bytes_sent: opt(|x| x.server_bytes_sent.map(|b| b as f64)),
            all_intact_every_rep: same.iter().all(|x| x.all_intact),
            reps_intact: same.iter().filter(|x| x.all_intact).count(),
            one_way_delay_us: quantiles(|h| &h.one_way_delay_us),
            inter_arrival_us: quantiles(|h| &h.inter_arrival_us),
            server_send_latency_us: cell_hists
                .map(CellHists::server_quantiles)
                .unwrap_or_default(),
            key,
        });
    }
    out
}

/// Whether loopback carries multicast (its MULTICAST flag).
fn loopback_multicast() -> bool {
    let flags = std::fs::read_to_string("/sys/class/net/lo/flags").unwrap_or_default();
    u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16)
        .is_ok_and(|f| f & libc::IFF_MULTICAST as u32 != 0)
}

/// A UDP port free on loopback now (for the group).
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_or(6970, |a| a.port())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    /// A run as a test makes one: `engine`, `clients`, `rep`, and a goodput.
    pub(super) fn run_of(engine: &'static str, clients: usize, rep: usize, mibps: f64) -> Run {
        Run {
            path: "loopback".into(),
            server: "127.0.0.1:6969".into(),
            source: "generated",
            engine,
            mode: "reliable",
            delivery: "unicast",
            size_bytes: 100,
            clients,
            rep,
            duration_s: 0.5,
            goodput_bps: mibps * 8.0 * MIB,
            per_client_bps: mibps * 8.0 * MIB / clients as f64,
            bytes_requested: 500,
            bytes_intact: 500,
            bytes_lost: 0,
            loss_pct: 0.0,
            datagrams_lost: 0,
            retransmitted: 2,
            all_intact: true,
            server_bytes_sent: Some(510),
            server_cpu_s: Some(0.01),
            server_cpu_s_per_gb: Some(19.6),
            client_cpu_s: 0.02,
            p50_one_way_delay_us: 300,
            p99_one_way_delay_us: 900,
            datagram_size: 1472,
            gro: true,
            sender_srtt_us: 120,
            sender_min_rtt_us: 80,
            gso_segments: Some(64),
            error: None,
        }
    }

    #[test]
    fn results_have_a_row_per_run_a_cell_per_point_and_plots() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = BenchConfig::new(dir.path().into());
        let runs = vec![
            run_of("uring", 5, 1, 100.0),
            run_of("uring", 5, 2, 120.0),
            run_of("threads", 5, 1, 50.0),
            run_of("threads", 5, 2, 60.0),
        ];
        let mut h = CellHists::default();
        for us in 1..=1000 {
            h.client.one_way_delay_us.record(us);
        }
        // Another server process's sessions: medians of their percentiles, the largest max.
        let session = |p50, max| Percentiles {
            count: 10,
            p50,
            p90: p50 * 2,
            p99: p50 * 3,
            p999: p50 * 4,
            max,
        };
        h.server_sessions = vec![session(10, 100), session(20, 900), session(30, 50)];
        let key = CellKey::of(&runs[0]);
        let cells = cells(&runs, &[(key, h)]);
        assert_eq!(
            cells[0].server_send_latency_us,
            vec![(0.5, 20), (0.9, 40), (0.99, 60), (0.999, 80), (1.0, 900)]
        );
        assert_eq!(cells.len(), 2);
        assert_eq!(
            (cells[0].goodput_min_bps, cells[0].goodput_max_bps),
            (100.0 * 8.0 * MIB, 120.0 * 8.0 * MIB)
        );
        assert_eq!(cells[0].one_way_delay_us.len(), QUANTILES.len());
        assert_eq!(cells[0].one_way_delay_us[2].0, 0.5);
        assert!((495..=505).contains(&cells[0].one_way_delay_us[2].1));
        output::write_outputs(&cfg, &runs, &cells).unwrap();
        let text = std::fs::read_to_string(dir.path().join("results.csv")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[0].starts_with("path,server,source,engine,mode,delivery,size_bytes,clients,rep"),
            "{}",
            lines[0]
        );
        assert_eq!(lines[0].split(',').count(), lines[2].split(',').count());
        assert!(
            lines[2]
                .starts_with("loopback,127.0.0.1:6969,generated,uring,reliable,unicast,100,5,2"),
            "{}",
            lines[2]
        );
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("results.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(json["medians"][0]["reps"], 2);
        assert_eq!(json["medians"][0]["engine"], "uring");
        assert!(json["client_machine"].as_str().unwrap().contains("cores"));
        assert_eq!(json["ratios"][0]["uring_over_threads"], 2.0);
        for svg in [
            "throughput.svg",
            "loss.svg",
            "latency.svg",
            "server_latency.svg",
        ] {
            let text = std::fs::read_to_string(dir.path().join(svg)).unwrap();
            assert!(
                text.contains("loopback"),
                "{svg} names where it was measured"
            );
        }
        let table = table(&cells);
        assert!(table.contains("uring/threads"), "{table}");
        assert!(table.contains("2.00 (1.67-2.40)"), "{table}");
    }
}
