//! What `bench` writes: the table people read, results.csv and results.json for scripts, and
//! the plots (throughput against clients per engine with the spread over repetitions, blast
//! loss, one-way delay percentiles), each titled with what was measured where.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::chart::{percentile_chart, spread_chart, Series};
use super::{write, BenchConfig, Cell, CellKey, Run};
use crate::report::MIB;

fn size_label(size: u64) -> String {
    crate::tools::demo::file_name(size)
        .trim_end_matches(".bin")
        .to_string()
}

fn mib(bps: f64) -> f64 {
    bps / 8.0 / MIB
}

/// One cell's uring / threads ratio of aggregate goodput: the medians' ratio, and the range
/// the repetitions allow (lowest uring over highest threads, highest over lowest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    #[serde(flatten)]
    pub key: CellKey,
    pub uring_over_threads: f64,
    pub low: f64,
    pub high: f64,
}

/// The uring / threads ratio of every cell measured with both engines.
pub fn ratios(cells: &[Cell]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for u in cells.iter().filter(|c| c.key.engine == "uring") {
        let twin = CellKey {
            engine: "threads".into(),
            ..u.key.clone()
        };
        let Some(t) = cells.iter().find(|c| c.key == twin) else {
            continue;
        };
        if t.goodput_bps <= 0.0 || t.goodput_min_bps <= 0.0 {
            continue;
        }
        out.push(Ratio {
            key: CellKey {
                engine: "uring/threads".into(),
                ..u.key.clone()
            },
            uring_over_threads: u.goodput_bps / t.goodput_bps,
            low: u.goodput_min_bps / t.goodput_max_bps,
            high: u.goodput_max_bps / t.goodput_min_bps,
        });
    }
    out
}

/// The medians as a table for people, then the uring / threads ratios.
pub fn table(cells: &[Cell]) -> String {
    let mut s = String::new();
    let mut paths: Vec<&str> = cells.iter().map(|c| c.key.path.as_str()).collect();
    paths.dedup();
    let sources = cells.iter().any(|c| c.key.source != cells[0].key.source);
    let _ = writeln!(
        s,
        "{:>7} {:>8} {:>9} {:>10} {:>7} {:>12} {:>12} {:>9} {:>12} {:>12} {:>8} {:>8} {:>12} {:>11}  intact reps",
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
    let opt = |v: Option<f64>, scale: f64, prec: usize| {
        v.map_or("-".to_string(), |v| format!("{:.prec$}", v / scale))
    };
    for c in cells {
        let size = if sources {
            format!("{} {}", &c.key.source[..3], size_label(c.key.size_bytes))
        } else {
            size_label(c.key.size_bytes)
        };
        let _ = writeln!(
            s,
            "{:>7} {:>8} {:>9} {:>10} {:>7} {:>12.1} {:>12.1} {:>9.3} {:>12} {:>12.0} {:>8.3} {:>8.0} {:>12} {:>11.0}  {}/{}",
            c.key.engine,
            c.key.mode,
            c.key.delivery,
            size,
            c.key.clients,
            mib(c.goodput_bps),
            mib(c.per_client_bps),
            c.duration_s,
            opt(c.server_bytes_sent, MIB, 1),
            c.bytes_lost,
            c.loss_pct,
            c.retransmitted,
            opt(c.server_cpu_s_per_gb, 1.0, 3),
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
        "copy arrived whole and verified (blast mode measures its loss instead). server MiB: for a\n",
        "server in this process only (-); srv CPU s/GB: a server on this machine, per GB it sent\n",
        "(or, for another process, per GB of the files asked for).\n",
    ));
    let ratios = ratios(cells);
    if !ratios.is_empty() {
        let _ = writeln!(
            s,
            "\n{:>8} {:>9} {:>10} {:>7}  uring/threads (all MiB/s: median, range over repetitions)",
            "mode", "delivery", "size", "clients"
        );
        for r in &ratios {
            let _ = writeln!(
                s,
                "{:>8} {:>9} {:>10} {:>7}  {:.2} ({:.2}-{:.2})",
                r.key.mode,
                r.key.delivery,
                size_label(r.key.size_bytes),
                r.key.clients,
                r.uring_over_threads,
                r.low,
                r.high
            );
        }
    }
    let _ = writeln!(s, "path: {}", paths.join(", "));
    s
}

/// This machine as results describe it: cores, CPU model, kernel.
pub fn this_machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "CPU unknown".into());
    format!(
        "{} cores ({cpu}), Linux {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    )
}

/// Latency percentiles to plot: per engine and mode, the most loaded cell (most clients,
/// largest file) that has them, over all its repetitions.
fn percentiles(
    cells: &[Cell],
    pick: fn(&Cell) -> &Vec<(f64, u64)>,
) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut out = Vec::new();
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for c in cells {
        let k = (c.key.engine.as_str(), c.key.mode.as_str());
        if seen.contains(&k) || pick(c).is_empty() {
            continue;
        }
        seen.push(k);
        let top = cells
            .iter()
            .filter(|o| (o.key.engine.as_str(), o.key.mode.as_str()) == k && !pick(o).is_empty())
            .max_by_key(|o| (o.key.clients, o.key.size_bytes))
            .expect("c itself");
        out.push((
            format!(
                "{} {} {} x{}",
                k.0,
                k.1,
                size_label(top.key.size_bytes),
                top.key.clients
            ),
            pick(top).iter().map(|&(q, us)| (q, us as f64)).collect(),
        ));
    }
    out
}

/// results.json as written and as `bench --compare` reads it back.
#[derive(Serialize, Deserialize)]
pub struct ResultsFile {
    pub path: String,
    pub server: String,
    pub client_machine: String,
    pub server_machine: String,
    #[serde(default)]
    pub runs: Vec<serde_json::Value>,
    pub medians: Vec<Cell>,
    #[serde(default)]
    pub ratios: Vec<Ratio>,
}

pub fn write_outputs(cfg: &BenchConfig, runs: &[Run], cells: &[Cell]) -> anyhow::Result<()> {
    let csv_path = cfg.out.join("results.csv");
    let mut csv = csv::Writer::from_path(&csv_path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", csv_path.display()))?;
    for r in runs {
        csv.serialize(r)?;
    }
    csv.flush()
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", csv_path.display()))?;
    let server = runs
        .first()
        .map_or_else(|| "-".to_string(), |r| r.server.clone());
    let client_machine = this_machine();
    let server_machine = match (&cfg.server_machine, cfg.server) {
        (Some(m), _) => m.clone(),
        (None, None) => format!("this process ({client_machine})"),
        (None, Some(_)) => "another host (not known to the client)".to_string(),
    };
    let file = ResultsFile {
        path: cfg.path.clone(),
        server: server.clone(),
        client_machine,
        server_machine,
        runs: runs
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?,
        medians: cells.to_vec(),
        ratios: ratios(cells),
    };
    write(
        &cfg.out.join("results.json"),
        &serde_json::to_string_pretty(&file)?,
    )?;
    let reps = cells.iter().map(|c| c.reps).max().unwrap_or(0);
    let where_ = format!("{}, server {server}", cfg.path);
    let series = |f: fn(&Cell) -> (f64, f64, f64), only: fn(&Cell) -> bool| -> Vec<Series> {
        let mut out: Vec<Series> = Vec::new();
        for c in cells.iter().filter(|c| only(c)) {
            let k = &c.key;
            let mut name = format!("{} {} {}", k.engine, k.mode, size_label(k.size_bytes));
            if k.delivery != "unicast" {
                name = format!("{name} {}", k.delivery);
            }
            if cells.iter().any(|o| o.key.source != k.source) {
                name = format!("{name} {}", k.source);
            }
            let (y, lo, hi) = f(c);
            let point = (k.clients as f64, y, lo, hi);
            match out.iter_mut().find(|s| s.name == name) {
                Some(s) => s.points.push(point),
                None => out.push(Series {
                    name,
                    points: vec![point],
                }),
            }
        }
        out
    };
    write(
        &cfg.out.join("throughput.svg"),
        &spread_chart(
            &format!(
                "Goodput of all copies vs clients (median, bars: range of {reps} reps) - {where_}"
            ),
            "clients",
            "MiB/s, all copies",
            &series(
                |c| {
                    (
                        mib(c.goodput_bps),
                        mib(c.goodput_min_bps),
                        mib(c.goodput_max_bps),
                    )
                },
                |_| true,
            ),
        ),
    )?;
    write(
        &cfg.out.join("per_client.svg"),
        &spread_chart(
            &format!("Per-client goodput vs clients (median, bars: range) - {where_}"),
            "clients",
            "MiB/s per client",
            &series(
                |c| {
                    (
                        mib(c.per_client_bps),
                        mib(c.per_client_min_bps),
                        mib(c.per_client_max_bps),
                    )
                },
                |_| true,
            ),
        ),
    )?;
    write(
        &cfg.out.join("loss.svg"),
        &spread_chart(
            &format!("Bytes lost vs clients (median, bars: range, % of requested) - {where_}"),
            "clients",
            "% lost",
            &series(
                |c| (c.loss_pct, c.loss_min_pct, c.loss_max_pct),
                |c| c.key.mode == "blast",
            ),
        ),
    )?;
    write(
        &cfg.out.join("latency.svg"),
        &percentile_chart(
            &format!("One-way delay of the data, percentiles (receivers' histograms) - {where_}"),
            "microseconds",
            &percentiles(cells, |c| &c.one_way_delay_us),
        ),
    )?;
    write(
        &cfg.out.join("server_latency.svg"),
        &percentile_chart(
            &format!(
                "Send latency at the server, percentiles (uring: submit to completion; threads: sendto) - {where_}"
            ),
            "microseconds",
            &percentiles(cells, |c| &c.server_send_latency_us),
        ),
    )?;
    Ok(())
}
