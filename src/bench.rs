//! `ringblast bench`: the lab's experiment matrix, repeated and measured.
//!
//! For each engine a server runs in this process; for each mode x file size x client count
//! the transfer is repeated `reps` times. Server CPU comes from `getrusage`: the process's
//! CPU time over a run minus what the sub-client threads measured for themselves
//! (`RUSAGE_THREAD`), so client work is not charged to the server. Writes results.csv (one row
//! per run), results.json (runs and per-cell medians), throughput.svg and loss.svg (the lab's
//! figures 7 and 8), and prints the medians.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::client::{self, ClientHists, GetConfig, Verify};
use crate::engine::EngineKind;
use crate::server::{Server, ServerConfig};
use crate::stats::cpu_time;
use crate::wire::Mode;

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
}

/// One transfer of the matrix.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub engine: &'static str,
    pub mode: &'static str,
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
    pub all_intact_every_rep: bool,
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
    while server.stats().sessions_active.load(Ordering::Relaxed) > 0
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

/// One point of the matrix.
struct Point<'a> {
    engine: EngineKind,
    mode: Mode,
    size: u64,
    name: &'a str,
    clients: usize,
    rep: usize,
}

fn one_run(server: &Server, cfg: &BenchConfig, p: &Point<'_>) -> anyhow::Result<Run> {
    let Point {
        engine,
        mode,
        size,
        name,
        clients,
        rep,
    } = *p;
    wait_idle(server);
    let stats = server.stats();
    let sent0 = stats.bytes_sent.load(Ordering::Relaxed);
    let cpu0 = cpu_time(false);
    let reports = client::get(&get_config(server, name, clients, mode, cfg.recv_buffer))?;
    wait_idle(server);
    let cpu = cpu_time(false).saturating_sub(cpu0).as_secs_f64();
    let sent = stats.bytes_sent.load(Ordering::Relaxed) - sent0;
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
        size_bytes: size,
        clients,
        rep,
        duration_s: wall,
        goodput_bps: crate::report::aggregate_goodput_bps(&reports),
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

/// Runs the matrix; returns the per-run rows and the per-cell medians.
pub fn run(cfg: &BenchConfig) -> anyhow::Result<(Vec<Run>, Vec<Cell>)> {
    std::fs::create_dir_all(&cfg.out)
        .with_context(|| format!("cannot create {}", cfg.out.display()))?;
    let mut names = Vec::new();
    for &size in &cfg.sizes {
        names.push((size, crate::demo::ensure_file(&cfg.files, size)?));
    }
    let mut runs = Vec::new();
    for &engine in &cfg.engines {
        let server = Server::start(ServerConfig {
            dir: cfg.files.clone(),
            bind: "127.0.0.1:0".parse().expect("literal"),
            engine,
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
            for (size, name) in &names {
                for &clients in &cfg.clients {
                    for rep in 1..=cfg.reps {
                        let point = Point {
                            engine,
                            mode,
                            size: *size,
                            name,
                            clients,
                            rep,
                        };
                        let r = one_run(&server, cfg, &point)?;
                        eprintln!(
                            "{:>7} {:>8} {:>10} x{:<3} rep {rep}: {:>8.1} MiB/s aggregate, {:>5.2}% lost, {} retransmitted, server {:.3} CPU s/GB",
                            r.engine,
                            r.mode,
                            name,
                            clients,
                            r.goodput_bps / 8.0 / 1048576.0,
                            r.loss_pct,
                            r.retransmitted,
                            r.server_cpu_s_per_gb
                        );
                        runs.push(r);
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
                    && x.size_bytes == r.size_bytes
                    && x.clients == r.clients
            })
            .collect();
        let m = |f: fn(&Run) -> f64| median(same.iter().map(|x| f(x)).collect());
        out.push(Cell {
            engine: r.engine,
            mode: r.mode,
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
            all_intact_every_rep: same.iter().all(|x| x.all_intact),
        });
    }
    out
}

fn size_label(size: u64) -> String {
    crate::demo::file_name(size)
        .trim_end_matches(".bin")
        .to_string()
}

/// The medians as a table for people.
pub fn table(cells: &[Cell]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>7} {:>8} {:>8} {:>7} {:>12} {:>12} {:>12} {:>8} {:>8} {:>12} {:>9}  intact",
        "engine",
        "mode",
        "size",
        "clients",
        "aggr MiB/s",
        "client MiB/s",
        "bytes lost",
        "lost %",
        "retrans",
        "srv CPU s/GB",
        "p99 us",
    );
    for c in cells {
        let _ = writeln!(
            s,
            "{:>7} {:>8} {:>8} {:>7} {:>12.1} {:>12.1} {:>12.0} {:>8.3} {:>8.0} {:>12.3} {:>9.0}  {}",
            c.engine,
            c.mode,
            size_label(c.size_bytes),
            c.clients,
            c.goodput_bps / 8.0 / 1048576.0,
            c.per_client_bps / 8.0 / 1048576.0,
            c.bytes_lost,
            c.loss_pct,
            c.retransmitted,
            c.server_cpu_s_per_gb,
            c.p99_one_way_delay_us,
            if c.all_intact_every_rep { "all" } else { "NOT all" }
        );
    }
    s
}

fn write_outputs(cfg: &BenchConfig, runs: &[Run], cells: &[Cell]) -> anyhow::Result<()> {
    let mut csv = String::from("engine,mode,size_bytes,clients,rep,duration_s,goodput_bps,per_client_bps,bytes_requested,bytes_intact,bytes_lost,loss_pct,datagrams_lost,retransmitted,all_intact,server_bytes_sent,server_cpu_s,server_cpu_s_per_gb,client_cpu_s,p99_one_way_delay_us\n");
    for r in runs {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{:.6},{:.0},{:.0},{},{},{},{:.4},{},{},{},{},{:.4},{:.4},{:.4},{}",
            r.engine,
            r.mode,
            r.size_bytes,
            r.clients,
            r.rep,
            r.duration_s,
            r.goodput_bps,
            r.per_client_bps,
            r.bytes_requested,
            r.bytes_intact,
            r.bytes_lost,
            r.loss_pct,
            r.datagrams_lost,
            r.retransmitted,
            r.all_intact,
            r.server_bytes_sent,
            r.server_cpu_s,
            r.server_cpu_s_per_gb,
            r.client_cpu_s,
            r.p99_one_way_delay_us
        );
    }
    write(&cfg.out.join("results.csv"), &csv)?;
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
            let key = format!("{} {} {}", c.engine, c.mode, size_label(c.size_bytes));
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

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// A "nice" axis maximum and step for values up to `max`.
fn nice_axis(max: f64) -> (f64, f64) {
    if max.is_nan() || max <= 0.0 {
        return (1.0, 0.2);
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A plain SVG line chart: x values are shared ticks (client counts), one line per series.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    const W: f64 = 760.0;
    const H: f64 = 440.0;
    let (l, r, t, b) = (80.0, 220.0, 40.0, 60.0);
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    ];
    let mut xs: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .collect();
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.dedup();
    let ymax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.0, f64::max);
    let (ytop, ystep) = nice_axis(ymax);
    let (xmin, xmax) = (
        xs.first().copied().unwrap_or(0.0),
        xs.last().copied().unwrap_or(1.0),
    );
    let px = |x: f64| {
        if xmax > xmin {
            l + (x - xmin) / (xmax - xmin) * (W - l - r)
        } else {
            l + (W - l - r) / 2.0
        }
    };
    let py = |y: f64| H - b - y / ytop * (H - t - b);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        (W - r + l) / 2.0,
        esc(title)
    );
    let mut y = 0.0;
    while y <= ytop + 1e-9 {
        let _ = writeln!(
            s,
            r##"<line x1="{l}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - r,
            py(y),
            py(y),
            l - 6.0,
            py(y) + 4.0,
            if ystep < 1.0 {
                format!("{y:.2}")
            } else {
                format!("{y:.0}")
            }
        );
        y += ystep;
    }
    for x in &xs {
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{}" y2="{}" stroke="#ddd"/><text x="{:.1}" y="{}" text-anchor="middle">{x}</text>"##,
            px(*x),
            px(*x),
            t,
            H - b,
            px(*x),
            H - b + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<line x1="{l}" x2="{l}" y1="{t}" y2="{}" stroke="black"/><line x1="{l}" x2="{}" y1="{}" y2="{}" stroke="black"/>"#,
        H - b,
        W - r,
        H - b,
        H - b
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (W - r + l) / 2.0,
        H - 18.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(22,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (H - b + t) / 2.0,
        esc(y_label)
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for (x, y) in pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{c}"/>"#,
                px(*x),
                py(*y)
            );
        }
        let ly = t + 10.0 + i as f64 * 20.0;
        let _ = writeln!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            W - r + 15.0,
            W - r + 40.0,
            W - r + 46.0,
            ly + 4.0,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_axes() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        let (top, step) = nice_axis(3481.0);
        assert!(
            top >= 3481.0 && step > 0.0 && top / step <= 6.0,
            "{top} {step}"
        );
    }

    #[test]
    fn chart_is_wellformed_svg() {
        let svg = line_chart(
            "t <&>",
            "x",
            "y",
            &[
                ("a".into(), vec![(1.0, 2.0), (5.0, 3.0)]),
                ("b".into(), vec![(1.0, 0.0)]),
            ],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;&amp;&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 2);
    }
}
