//! Reports: the lab's per-client figures as a table with latency percentiles, for people, and
//! the same as JSON (`get --json`), for scripts.

use std::fmt::Write as _;

use serde::Serialize;

use crate::client::{ClientHists, CopyReport};
use crate::stats::Percentiles;
use crate::wire::Mode;

const MIB: f64 = 1024.0 * 1024.0;

/// Verified bytes of all copies over the longest copy's time, bits per second.
pub fn aggregate_goodput_bps(reports: &[CopyReport]) -> f64 {
    let intact: u64 = reports
        .iter()
        .filter(|r| r.ok())
        .map(|r| r.bytes_intact)
        .sum();
    let wall = reports.iter().map(|r| r.duration_s).fold(0.0, f64::max);
    if wall > 0.0 {
        intact as f64 * 8.0 / wall
    } else {
        0.0
    }
}

/// The lab's table: one row per sub-client, then the aggregate and the percentiles.
pub fn table(file: &str, reports: &[CopyReport]) -> String {
    let mut s = String::new();
    let size = reports.iter().map(|r| r.file_size).max().unwrap_or(0);
    let _ = writeln!(
        s,
        "file {file}: {size} bytes, {} sub-client(s)",
        reports.len()
    );
    let _ = writeln!(
        s,
        "{:>6} {:>6} {:>6} {:>14} {:>14} {:>9} {:>9} {:>9} {:>7} {:>7} {:>6}  status",
        "client",
        "port",
        "server",
        "bytes_recv",
        "bytes_intact",
        "seconds",
        "MiB/s",
        "datagrams",
        "lost",
        "retrans",
        "dup"
    );
    for r in reports {
        let status = match &r.error {
            Some(e) => format!("FAILED: {e}"),
            None if r.ok() => "ok, verified".to_string(),
            None => "incomplete".to_string(),
        };
        let _ = writeln!(
            s,
            "{:>6} {:>6} {:>6} {:>14} {:>14} {:>9.3} {:>9.1} {:>9} {:>7} {:>7} {:>6}  {}",
            r.id,
            r.local_port,
            r.server_port,
            r.bytes_received,
            r.bytes_intact,
            r.duration_s,
            r.bytes_intact as f64 / MIB / r.duration_s.max(1e-9),
            r.datagrams_received,
            r.datagrams_lost,
            r.retransmitted,
            r.duplicates,
            status
        );
    }
    let (ok, total) = (reports.iter().filter(|r| r.ok()).count(), reports.len());
    let wall = reports.iter().map(|r| r.duration_s).fold(0.0, f64::max);
    let bps = aggregate_goodput_bps(reports);
    let corrupt: u64 = reports.iter().map(|r| r.corrupt).sum();
    let _ = writeln!(
        s,
        "{ok}/{total} copies intact and verified; aggregate goodput {:.1} MiB/s ({:.2} Gbit/s) over {:.3} s{}",
        bps / 8.0 / MIB,
        bps / 1e9,
        wall,
        if corrupt > 0 { format!("; {corrupt} corrupt datagrams caught by CRC32C and repaired") } else { String::new() }
    );
    let mut all = ClientHists::default();
    for r in reports {
        all.merge(&r.hists);
    }
    let _ = writeln!(s, "all clients, percentiles:");
    let _ = writeln!(
        s,
        "  one-way delay us    {}",
        all.one_way_delay_us.summary()
    );
    let _ = writeln!(
        s,
        "  inter-arrival us    {}",
        all.inter_arrival_us.summary()
    );
    let _ = writeln!(s, "  recvmmsg batch      {}", all.recv_batch.summary());
    let _ = writeln!(s, "  loss repair us      {}", all.repair_us.summary());
    s
}

/// One sub-client in `get --json`.
#[derive(Debug, Serialize)]
pub struct ClientJson {
    pub id: usize,
    pub local_port: u16,
    pub server_port: u16,
    pub bytes_received: u64,
    pub bytes_intact: u64,
    pub complete: bool,
    pub hash_ok: bool,
    pub duration_s: f64,
    pub goodput_bps: f64,
    pub datagrams_received: u64,
    pub datagrams_lost: u64,
    pub retransmitted: u64,
    pub duplicates: u64,
    pub corrupt: u64,
    pub malformed: u64,
    pub error: Option<String>,
    /// One-way delay.
    pub latency_us: Percentiles,
    pub inter_arrival_us: Percentiles,
    pub recv_batch: Percentiles,
    pub repair_us: Percentiles,
}

/// The whole `get --json` object.
#[derive(Debug, Serialize)]
pub struct GetJson {
    pub file: String,
    pub size: u64,
    pub mode: &'static str,
    pub clients: Vec<ClientJson>,
    pub goodput_bps: f64,
    pub all_intact: bool,
}

pub fn get_json(file: &str, mode: Mode, reports: &[CopyReport]) -> GetJson {
    GetJson {
        file: file.to_string(),
        size: reports.iter().map(|r| r.file_size).max().unwrap_or(0),
        mode: mode.as_str(),
        clients: reports
            .iter()
            .map(|r| ClientJson {
                id: r.id,
                local_port: r.local_port,
                server_port: r.server_port,
                bytes_received: r.bytes_received,
                bytes_intact: r.bytes_intact,
                complete: r.complete,
                hash_ok: r.hash_ok,
                duration_s: r.duration_s,
                goodput_bps: r.goodput_bps(),
                datagrams_received: r.datagrams_received,
                datagrams_lost: r.datagrams_lost,
                retransmitted: r.retransmitted,
                duplicates: r.duplicates,
                corrupt: r.corrupt,
                malformed: r.malformed,
                error: r.error.clone(),
                latency_us: r.hists.one_way_delay_us.summary(),
                inter_arrival_us: r.hists.inter_arrival_us.summary(),
                recv_batch: r.hists.recv_batch.summary(),
                repair_us: r.hists.repair_us.summary(),
            })
            .collect(),
        goodput_bps: aggregate_goodput_bps(reports),
        all_intact: reports.iter().all(|r| r.ok()),
    }
}
