//! The lab's table, for people: one row per sub-client, then the aggregate and the
//! percentiles of every histogram over all sub-clients.

use std::fmt::Write as _;

use super::copy::{aggregate_goodput_bps, ClientHists, CopyReport};

const MIB: f64 = 1024.0 * 1024.0;

/// The lab's table: one row per sub-client, then the aggregate and the percentiles.
pub fn table(file: &str, reports: &[CopyReport]) -> String {
    let mut s = String::new();
    let size = reports.iter().map(|r| r.file_size).max().unwrap_or(0);
    let datagram_size = reports.iter().map(|r| r.datagram_size).max().unwrap_or(0);
    let gro = if reports.iter().any(|r| r.gro) {
        "on"
    } else {
        "off"
    };
    let written: u64 = reports
        .iter()
        .filter(|r| r.path.is_some())
        .map(|r| r.file_size)
        .sum();
    let direct: u64 = reports
        .iter()
        .filter(|r| r.path.is_some())
        .map(|r| r.written_direct)
        .sum();
    let writes = if written > 0 {
        format!(
            ", {:.0}% written with O_DIRECT",
            direct as f64 * 100.0 / written as f64
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "file {file}: {size} bytes, {} sub-client(s), {datagram_size}-byte datagrams, GRO {gro}{writes}",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_written_around_the_page_cache_counts_kept_copies_only() {
        let kept = CopyReport {
            file_size: 100,
            written_direct: 50,
            path: Some("a".into()),
            ..Default::default()
        };
        // Written, then refused by its hash: neither its size nor its direct bytes count.
        let refused = CopyReport {
            file_size: 100,
            written_direct: 100,
            error: Some("BLAKE3 content hash mismatch".into()),
            ..Default::default()
        };
        let t = table("f", &[kept, refused.clone()]);
        assert!(t.contains(", 50% written with O_DIRECT"), "{t}");
        let t = table("f", &[refused]);
        assert!(!t.contains("written around"), "nothing kept, no share: {t}");
    }
}
