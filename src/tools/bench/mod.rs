//! `ringblast bench`: the lab's experiment matrix, repeated and measured.
//!
//! For each engine a server runs in this process; for each mode x file size x client count
//! the transfer is repeated `reps` times. Server CPU comes from `getrusage`: the process's
//! CPU time over a run minus what the sub-client threads measured for themselves
//! (`RUSAGE_THREAD`), so client work is not charged to the server. Writes results.csv (one row
//! per run), results.json (runs and per-cell medians), throughput.svg and loss.svg (the lab's
//! figures 7 and 8), and prints the medians.
//!
//! `--delivery unicast,multicast` measures each cell both ways (the uring engine; multicast
//! on loopback needs `ip link set lo multicast on`): the time until all N copies are done and
//! the bytes the server sent, against N.

mod chart;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::client::{self, GetConfig, Verify};
use crate::protocol::Mode;
use crate::report::copy::{aggregate_goodput_bps, ClientHists};
use crate::report::cpu::cpu_time;
use crate::server::engine::EngineKind;
use crate::server::group::MulticastConfig;
use crate::server::{Server, ServerConfig};
use chart::line_chart;
use std::net::SocketAddr;

pub struct BenchConfig {
    pub clients: Vec<usize>,
    pub sizes: Vec<u64>,
    pub engines: Vec<EngineKind>,
    pub modes: Vec<Mode>,
    pub reps: usize,
    pub out: PathBuf,
    /// Where the generated files live (and are served from).
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
    pub server_bytes_sent: u64,
    pub server_cpu_s: f64,
    pub server_cpu_s_per_gb: f64,
    pub client_cpu_s: f64,
    pub p99_one_way_delay_us: u64,
}

/// Medians of one cell (engine x mode x size x clients) over its repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub engine: &'static str,
    pub mode: &'static str,
    pub delivery: &'static str,
    pub size_bytes: u64,
    pub clients: usize,
    pub reps: usize,
    pub goodput_bps: f64,
    pub per_client_bps: f64,
    pub bytes_lost: f64,
    pub loss_pct: f64,
    pub retransmitted: f64,
    pub server_cpu_s_per_gb: f64,
    pub p99_one_way_delay_us: f64,
    /// Until the last copy was done, and what the server sent for all of them.
    pub duration_s: f64,
    pub server_bytes_sent: f64,
    pub all_intact_every_rep: bool,
    /// Repetitions in which every copy arrived whole and verified (a median of bytes lost
    /// can be 0 with one of them short).
    pub reps_intact: usize,
}

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

fn wait_idle(server: &Server) {
    let t = Instant::now();
    while server.stats().sessions_active.load(Ordering::Acquire) > 0
        && t.elapsed() < Duration::from_secs(3)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn get_config(
    server: &Server,
    name: &str,
    clients: usize,
    mode: Mode,
    recv_buffer: usize,
) -> GetConfig {
    let mut g = GetConfig::new(server.local_addr(), name);
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
    engine: EngineKind,
    mode: Mode,
    delivery: Delivery,
    size: u64,
    name: &'a str,
    clients: usize,
    rep: usize,
}

fn one_run(server: &Server, cfg: &BenchConfig, p: &Point<'_>) -> anyhow::Result<Run> {
    let Point {
        engine,
        mode,
        delivery,
        size,
        name,
        clients,
        rep,
    } = *p;
    wait_idle(server);
    let stats = server.stats();
    let all_sent = || {
        stats.bytes_sent.load(Ordering::Relaxed) + stats.group_bytes_sent.load(Ordering::Relaxed)
    };
    let sent0 = all_sent();
    let cpu0 = cpu_time(false);
    let mut g = get_config(server, name, clients, mode, cfg.recv_buffer);
    g.multicast = delivery == Delivery::Multicast;
    g.stop = cfg.stop;
    let reports = client::get(&g)?;
    wait_idle(server);
    if g.multicast {
        // The group's last datagrams (its end markers) go after the copies are done.
        std::thread::sleep(Duration::from_millis(300));
    }
    let cpu = cpu_time(false).saturating_sub(cpu0).as_secs_f64();
    let sent = all_sent() - sent0;
    let client_cpu: f64 = reports.iter().map(|r| r.cpu_s).sum();
    let server_cpu = (cpu - client_cpu).max(0.0);
    let requested = size * clients as u64;
    let intact: u64 = reports.iter().map(|r| r.bytes_intact).sum();
    let mut hists = ClientHists::default();
    for r in &reports {
        hists.merge(&r.hists);
    }
    let wall = reports.iter().map(|r| r.duration_s).fold(0.0, f64::max);
    Ok(Run {
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
        server_cpu_s_per_gb: if sent > 0 {
            server_cpu / (sent as f64 / 1e9)
        } else {
            0.0
        },
        client_cpu_s: client_cpu,
        p99_one_way_delay_us: hists.one_way_delay_us.summary().p99,
    })
}

/// Runs the matrix; returns the per-run rows and the per-cell medians (of the runs measured
/// before a stop, if one was asked for: see [`BenchConfig::stop`]).
pub fn run(cfg: &BenchConfig) -> anyhow::Result<(Vec<Run>, Vec<Cell>)> {
    std::fs::create_dir_all(&cfg.out)
        .with_context(|| format!("cannot create {}", cfg.out.display()))?;
    let mut names = Vec::new();
    for &size in &cfg.sizes {
        names.push((size, crate::tools::demo::ensure_file(&cfg.files, size)?));
    }
    if cfg.stop.is_some() {
        // Generating a file gave the signals their default action back after it.
        crate::sys::stop_on_signals();
    }
    let mut runs = Vec::new();
    let total = cfg.engines.len()
        * cfg.modes.len()
        * cfg.deliveries.len()
        * names.len()
        * cfg.clients.len()
        * cfg.reps;
    let started = Instant::now();
    let multicast = cfg.deliveries.contains(&Delivery::Multicast);
    if multicast && !loopback_multicast() {
        anyhow::bail!(
            "--delivery multicast runs on loopback, which carries no multicast here: `ip link set lo multicast on` (root) first"
        );
    }
    'matrix: for &engine in &cfg.engines {
        if stopped(cfg) {
            break;
        }
        let server = Server::start(ServerConfig {
            dir: Some(cfg.files.clone()),
            bind: "127.0.0.1:0".parse().expect("literal"),
            engine,
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
        })?;
        // Warm up: index every file and bring it into the page cache.
        for (_, name) in &names {
            let r = client::get(&get_config(
                &server,
                name,
                1,
                Mode::Reliable,
                cfg.recv_buffer,
            ))?;
            if let Some(e) = r.iter().find_map(|r| r.error.clone()) {
                anyhow::bail!("warm-up fetch of {name} failed: {e}");
            }
        }
        for &mode in &cfg.modes {
            for &delivery in &cfg.deliveries {
                for (size, name) in &names {
                    for &clients in &cfg.clients {
                        for rep in 1..=cfg.reps {
                            let point = Point {
                                engine,
                                mode,
                                delivery,
                                size: *size,
                                name,
                                clients,
                                rep,
                            };
                            if stopped(cfg) {
                                server.shutdown();
                                break 'matrix;
                            }
                            let r = one_run(&server, cfg, &point)?;
                            if stopped(cfg) {
                                // Cut short by the stop: not a measurement.
                                server.shutdown();
                                break 'matrix;
                            }
                            let done = runs.len() + 1;
                            let elapsed = started.elapsed().as_secs_f64();
                            let left = elapsed / done as f64 * (total - done) as f64;
                            eprintln!(
                            "[{done}/{total}, {elapsed:.0} s, ~{left:.0} s left] {:>7} {:>8} {:>9} {:>10} x{:<3} rep {rep}: {:>8.1} MiB/s aggregate, {:.3} s, server sent {:.1} MiB, {:>5.2}% lost, {} retransmitted, server {:.3} CPU s/GB",
                            r.engine,
                            r.mode,
                            r.delivery,
                            name,
                            clients,
                            r.goodput_bps / 8.0 / 1048576.0,
                            r.duration_s,
                            r.server_bytes_sent as f64 / 1048576.0,
                            r.loss_pct,
                            r.retransmitted,
                            r.server_cpu_s_per_gb
                        );
                            runs.push(r);
                        }
                    }
                }
            }
        }
        server.shutdown();
    }
    let cells = cells(&runs);
    write_outputs(cfg, &runs, &cells)?;
    Ok((runs, cells))
}

fn cells(runs: &[Run]) -> Vec<Cell> {
    let mut out: Vec<Cell> = Vec::new();
    for r in runs {
        if out.iter().any(|c| {
            c.engine == r.engine
                && c.mode == r.mode
                && c.delivery == r.delivery
                && c.size_bytes == r.size_bytes
                && c.clients == r.clients
        }) {
            continue;
        }
        let same: Vec<&Run> = runs
            .iter()
            .filter(|x| {
                x.engine == r.engine
                    && x.mode == r.mode
                    && x.delivery == r.delivery
                    && x.size_bytes == r.size_bytes
                    && x.clients == r.clients
            })
            .collect();
        let m = |f: fn(&Run) -> f64| median(same.iter().map(|x| f(x)).collect());
        out.push(Cell {
            engine: r.engine,
            mode: r.mode,
            delivery: r.delivery,
            size_bytes: r.size_bytes,
            clients: r.clients,
            reps: same.len(),
            goodput_bps: m(|x| x.goodput_bps),
            per_client_bps: m(|x| x.per_client_bps),
            bytes_lost: m(|x| x.bytes_lost as f64),
            loss_pct: m(|x| x.loss_pct),
            retransmitted: m(|x| x.retransmitted as f64),
            server_cpu_s_per_gb: m(|x| x.server_cpu_s_per_gb),
            p99_one_way_delay_us: m(|x| x.p99_one_way_delay_us as f64),
            duration_s: m(|x| x.duration_s),
            server_bytes_sent: m(|x| x.server_bytes_sent as f64),
            all_intact_every_rep: same.iter().all(|x| x.all_intact),
            reps_intact: same.iter().filter(|x| x.all_intact).count(),
        });
    }
    out
}

fn size_label(size: u64) -> String {
    crate::tools::demo::file_name(size)
        .trim_end_matches(".bin")
        .to_string()
}

/// The medians as a table for people.
pub fn table(cells: &[Cell]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>7} {:>8} {:>9} {:>8} {:>7} {:>12} {:>12} {:>9} {:>12} {:>12} {:>8} {:>8} {:>12} {:>11}  intact reps",
        "engine",
        "mode",
        "delivery",
        "size",
        "clients",
        "all MiB/s",
        "copy MiB/s",
        "all done s",
        "server MiB",
        "bytes lost",
        "lost %",
        "retrans",
        "srv CPU s/GB",
        "delay p99 us",
    );
    for c in cells {
        let _ = writeln!(
            s,
            "{:>7} {:>8} {:>9} {:>8} {:>7} {:>12.1} {:>12.1} {:>9.3} {:>12.1} {:>12.0} {:>8.3} {:>8.0} {:>12.3} {:>11.0}  {}/{}",
            c.engine,
            c.mode,
            c.delivery,
            size_label(c.size_bytes),
            c.clients,
            c.goodput_bps / 8.0 / 1048576.0,
            c.per_client_bps / 8.0 / 1048576.0,
            c.duration_s,
            c.server_bytes_sent / 1048576.0,
            c.bytes_lost,
            c.loss_pct,
            c.retransmitted,
            c.server_cpu_s_per_gb,
            c.p99_one_way_delay_us,
            c.reps_intact,
            c.reps,
        );
    }
    s.push_str(concat!(
        "Medians over the repetitions. all MiB/s: every copy's verified bytes over the slowest\n",
        "copy's time. copy MiB/s: the mean of each copy's own rate (one that ends early has a shorter\n",
        "time, so it can exceed all / clients). all done s: until the last copy was done. delay p99\n",
        "us: the 99th percentile of the data's one-way delay. intact reps: repetitions in which every\n",
        "copy arrived whole and verified (blast mode measures its loss instead).\n",
    ));
    s
}

fn write_outputs(cfg: &BenchConfig, runs: &[Run], cells: &[Cell]) -> anyhow::Result<()> {
    let csv_path = cfg.out.join("results.csv");
    let mut csv = csv::Writer::from_path(&csv_path)
        .with_context(|| format!("cannot write {}", csv_path.display()))?;
    for r in runs {
        csv.serialize(r)?;
    }
    csv.flush()
        .with_context(|| format!("cannot write {}", csv_path.display()))?;
    #[derive(Serialize)]
    struct Out<'a> {
        machine: String,
        runs: &'a [Run],
        medians: &'a [Cell],
    }
    let machine = format!(
        "{} cores, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    write(
        &cfg.out.join("results.json"),
        &serde_json::to_string_pretty(&Out {
            machine,
            runs,
            medians: cells,
        })?,
    )?;
    let series = |f: fn(&Cell) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for c in cells {
            let key = match c.delivery {
                "unicast" => format!("{} {} {}", c.engine, c.mode, size_label(c.size_bytes)),
                d => format!("{} {} {d} {}", c.engine, c.mode, size_label(c.size_bytes)),
            };
            match out.iter_mut().find(|(k, _)| *k == key) {
                Some((_, pts)) => pts.push((c.clients as f64, f(c))),
                None => out.push((key, vec![(c.clients as f64, f(c))])),
            }
        }
        out
    };
    write(
        &cfg.out.join("throughput.svg"),
        &line_chart(
            "Per-client goodput vs active clients (median)",
            "clients",
            "MiB/s per client",
            &series(|c| c.per_client_bps / 8.0 / 1048576.0),
        ),
    )?;
    write(
        &cfg.out.join("loss.svg"),
        &line_chart(
            "Bytes lost vs active clients (median, % of requested)",
            "clients",
            "% lost",
            &series(|c| c.loss_pct),
        ),
    )?;
    Ok(())
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

    #[test]
    fn results_csv_has_a_header_and_a_row_per_run() {
        let dir = tempfile::tempdir().unwrap();
        let run = Run {
            engine: "uring",
            mode: "reliable",
            delivery: "unicast",
            size_bytes: 100,
            clients: 5,
            rep: 1,
            duration_s: 0.5,
            goodput_bps: 1600.0,
            per_client_bps: 320.0,
            bytes_requested: 500,
            bytes_intact: 500,
            bytes_lost: 0,
            loss_pct: 0.0,
            datagrams_lost: 0,
            retransmitted: 2,
            all_intact: true,
            server_bytes_sent: 510,
            server_cpu_s: 0.01,
            server_cpu_s_per_gb: 19.6,
            client_cpu_s: 0.02,
            p99_one_way_delay_us: 900,
        };
        let cfg = BenchConfig {
            clients: vec![5],
            sizes: vec![100],
            engines: vec![EngineKind::Uring],
            modes: vec![Mode::Reliable],
            reps: 1,
            out: dir.path().into(),
            files: dir.path().into(),
            recv_buffer: 1 << 20,
            deliveries: vec![Delivery::Unicast],
            multicast_rate_bps: 1_000_000_000,
            stop: None,
        };
        let runs = vec![run.clone(), Run { rep: 2, ..run }];
        write_outputs(&cfg, &runs, &cells(&runs)).unwrap();
        let text = std::fs::read_to_string(dir.path().join("results.csv")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0]
            .starts_with("engine,mode,delivery,size_bytes,clients,rep,duration_s,goodput_bps"));
        assert_eq!(lines[0].split(',').count(), lines[2].split(',').count());
        assert!(
            lines[2].starts_with("uring,reliable,unicast,100,5,2,0.5,1600.0"),
            "{}",
            lines[2]
        );
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("results.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(json["medians"][0]["reps"], 2);
        assert!(dir.path().join("throughput.svg").exists() && dir.path().join("loss.svg").exists());
    }
}
