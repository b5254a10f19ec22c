//! `bench --compare DIR_A DIR_B`: two result directories side by side, cell by cell (the
//! same source, engine, mode, delivery, size and clients; the paths may differ, that is often
//! the point): B's median goodput over A's, and whether the two spreads over repetitions
//! overlap (then the difference is within what repeating the run shows, not a finding).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use super::output::ResultsFile;
use super::{Cell, CellKey};
use crate::report::MIB;

/// One cell of the comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Compared {
    pub key: CellKey,
    /// Median goodput, lowest and highest, bits/s, in A and in B (`None`: not measured there).
    pub a: Option<(f64, f64, f64)>,
    pub b: Option<(f64, f64, f64)>,
}

impl Compared {
    /// B's median over A's.
    pub fn ratio(&self) -> Option<f64> {
        match (self.a, self.b) {
            (Some((a, ..)), Some((b, ..))) if a > 0.0 => Some(b / a),
            _ => None,
        }
    }

    /// The two ranges over repetitions share some value.
    pub fn overlap(&self) -> bool {
        match (self.a, self.b) {
            (Some((_, alo, ahi)), Some((_, blo, bhi))) => alo <= bhi && blo <= ahi,
            _ => false,
        }
    }
}

/// A result directory's cells, from this release's results.json or an earlier one (before
/// paths, sources and spreads were written: the path is unnamed, the source files, the
/// spread unknown, i.e. the median alone).
fn read(dir: &Path) -> anyhow::Result<(ResultsFile, Vec<Cell>)> {
    let path = dir.join("results.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {} (a bench --out directory?)", path.display()))?;
    let not_results = || format!("{} is not a bench results file", path.display());
    if let Ok(file) = serde_json::from_str::<ResultsFile>(&text) {
        let cells = file.medians.clone();
        return Ok((file, cells));
    }
    let v: serde_json::Value = serde_json::from_str(&text).with_context(not_results)?;
    let medians = v["medians"].as_array().with_context(not_results)?;
    let text_of = |m: &serde_json::Value, k: &str, default: &str| {
        m[k].as_str().unwrap_or(default).to_string()
    };
    let mut cells = Vec::new();
    for m in medians {
        let goodput = m["goodput_bps"].as_f64().with_context(not_results)?;
        let mut cell: Cell = serde_json::from_value(serde_json::json!({
            "path": text_of(m, "path", ""),
            "source": text_of(m, "source", "files"),
            "engine": text_of(m, "engine", "uring"),
            "mode": text_of(m, "mode", "reliable"),
            "delivery": text_of(m, "delivery", "unicast"),
            "size_bytes": m["size_bytes"].as_u64().unwrap_or(0),
            "clients": m["clients"].as_u64().unwrap_or(0),
            "reps": m["reps"].as_u64().unwrap_or(0),
            "goodput_bps": goodput,
            "goodput_min_bps": m["goodput_min_bps"].as_f64().unwrap_or(goodput),
            "goodput_max_bps": m["goodput_max_bps"].as_f64().unwrap_or(goodput),
            "per_client_bps": 0.0, "per_client_min_bps": 0.0, "per_client_max_bps": 0.0,
            "bytes_lost": 0.0, "loss_pct": 0.0, "loss_min_pct": 0.0, "loss_max_pct": 0.0,
            "retransmitted": 0.0, "server_cpu_s_per_gb": null, "p99_one_way_delay_us": 0.0,
            "duration_s": 0.0, "server_bytes_sent": null, "all_intact_every_rep": false,
            "reps_intact": 0,
        }))
        .with_context(not_results)?;
        cell.key.path = text_of(m, "path", "");
        cells.push(cell);
    }
    let file = ResultsFile {
        path: v["path"].as_str().unwrap_or("(not recorded)").to_string(),
        server: v["server"].as_str().unwrap_or("(not recorded)").to_string(),
        client_machine: v["client_machine"]
            .as_str()
            .or(v["machine"].as_str())
            .unwrap_or("(not recorded)")
            .to_string(),
        server_machine: String::new(),
        runs: Vec::new(),
        medians: Vec::new(),
        ratios: Vec::new(),
    };
    Ok((file, cells))
}

/// The cell's key without its path (cells of two paths compare) and, with `any_source`,
/// without its source.
fn same_point(a: &CellKey, b: &CellKey, any_source: bool) -> bool {
    let strip = |k: &CellKey| CellKey {
        path: String::new(),
        source: if any_source {
            String::new()
        } else {
            k.source.clone()
        },
        ..k.clone()
    };
    strip(a) == strip(b)
}

/// Every cell of A with B's of the same point, then those only B has. A point measured from
/// one source in A and another in B (files on one path, generated on the other) is compared,
/// its source shown as `A/B`, when neither side has it from the same source.
pub fn compare_cells(a: &[Cell], b: &[Cell]) -> Vec<Compared> {
    let spread = |c: &Cell| (c.goodput_bps, c.goodput_min_bps, c.goodput_max_bps);
    let twin = |ca: &Cell| -> Option<&Cell> {
        b.iter()
            .find(|cb| same_point(&ca.key, &cb.key, false))
            .or_else(|| {
                let exact_elsewhere =
                    |cb: &Cell| a.iter().any(|x| same_point(&x.key, &cb.key, false));
                b.iter()
                    .find(|cb| same_point(&ca.key, &cb.key, true) && !exact_elsewhere(cb))
            })
    };
    let mut matched: Vec<&CellKey> = Vec::new();
    let mut out: Vec<Compared> = a
        .iter()
        .map(|ca| {
            let cb = twin(ca);
            let mut key = ca.key.clone();
            if let Some(cb) = cb {
                matched.push(&cb.key);
                if cb.key.source != ca.key.source {
                    key.source = format!("{}/{}", ca.key.source, cb.key.source);
                }
            }
            Compared {
                key,
                a: Some(spread(ca)),
                b: cb.map(spread),
            }
        })
        .collect();
    for cb in b {
        if !matched.contains(&&cb.key) {
            out.push(Compared {
                key: cb.key.clone(),
                a: None,
                b: Some(spread(cb)),
            });
        }
    }
    out
}

/// The comparison of two result directories, as a table for people.
pub fn compare(dir_a: &Path, dir_b: &Path) -> anyhow::Result<String> {
    let ((a, a_cells), (b, b_cells)) = (read(dir_a)?, read(dir_b)?);
    let rows = compare_cells(&a_cells, &b_cells);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "A: {} ({}, server {}; {})\nB: {} ({}, server {}; {})",
        dir_a.display(),
        a.path,
        a.server,
        a.client_machine,
        dir_b.display(),
        b.path,
        b.server,
        b.client_machine
    );
    let _ = writeln!(
        s,
        "{:>15} {:>8} {:>9} {:>9} {:>10} {:>7} {:>24} {:>24} {:>7}  spreads",
        "source",
        "engine",
        "mode",
        "delivery",
        "size",
        "clients",
        "A all MiB/s (range)",
        "B all MiB/s (range)",
        "B/A"
    );
    let cell = |v: Option<(f64, f64, f64)>| {
        v.map_or("-".to_string(), |(m, lo, hi)| {
            let f = |x: f64| x / 8.0 / MIB;
            format!("{:.1} ({:.1}-{:.1})", f(m), f(lo), f(hi))
        })
    };
    for r in &rows {
        let k = &r.key;
        let _ = writeln!(
            s,
            "{:>15} {:>8} {:>9} {:>9} {:>10} {:>7} {:>24} {:>24} {:>7}  {}",
            k.source,
            k.engine,
            k.mode,
            k.delivery,
            crate::tools::demo::file_name(k.size_bytes).trim_end_matches(".bin"),
            k.clients,
            cell(r.a),
            cell(r.b),
            r.ratio().map_or("-".to_string(), |x| format!("{x:.2}")),
            match (r.a, r.b) {
                (None, _) => "only in B",
                (_, None) => "only in A",
                _ if r.overlap() => "overlap: within the repetitions' spread",
                _ if r.ratio().is_some_and(|x| x > 1.0) => "apart: B faster",
                _ => "apart: B slower",
            }
        );
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::super::tests::run_of;
    use super::super::{cells, output, BenchConfig};
    use super::*;

    /// Two small result directories, as bench writes them: ratios per cell, flagged where
    /// the spreads overlap, cells only one side has said so.
    #[test]
    fn two_result_directories_compare_cell_by_cell() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let write = |dir: &Path, path: &str, runs: Vec<super::super::Run>| {
            let mut cfg = BenchConfig::new(dir.into());
            cfg.path = path.into();
            let runs: Vec<_> = runs
                .into_iter()
                .map(|r| super::super::Run {
                    path: path.into(),
                    ..r
                })
                .collect();
            output::write_outputs(&cfg, &runs, &cells(&runs, &[])).unwrap();
        };
        write(
            a.path(),
            "loopback",
            vec![
                run_of("uring", 1, 1, 100.0),
                run_of("uring", 1, 2, 110.0),
                run_of("threads", 1, 1, 50.0),
                run_of("threads", 1, 2, 52.0),
                run_of("uring", 10, 1, 300.0),
            ],
        );
        write(
            b.path(),
            "veth:1500",
            vec![
                run_of("uring", 1, 1, 105.0),
                run_of("uring", 1, 2, 115.0),
                run_of("threads", 1, 1, 20.0),
                run_of("threads", 1, 2, 22.0),
                run_of("threads", 10, 1, 30.0),
            ],
        );
        let text = compare(a.path(), b.path()).unwrap();
        let line = |engine: &str, clients: &str| {
            text.lines()
                .find(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    w.get(1) == Some(&engine) && w.get(5) == Some(&clients)
                })
                .unwrap_or_else(|| panic!("no {engine} x{clients} row:\n{text}"))
                .to_string()
        };
        let uring = line("uring", "1");
        assert!(
            uring.contains("1.05") && uring.contains("overlap"),
            "{uring}"
        );
        let threads = line("threads", "1");
        assert!(
            threads.contains("0.41") && threads.contains("apart: B slower"),
            "{threads}"
        );
        assert!(line("uring", "10").contains("only in A"), "{text}");
        assert!(line("threads", "10").contains("only in B"), "{text}");
        assert!(
            text.contains("loopback") && text.contains("veth:1500"),
            "{text}"
        );
        let missing = compare(a.path(), &a.path().join("nope")).unwrap_err();
        assert!(format!("{missing:#}").contains("a bench --out directory"));
        // results.json of an earlier release (no path, source or spread) still compare.
        let old = |goodput_bps: f64| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(
                dir.path().join("results.json"),
                format!(
                    r#"{{"machine": "2 cores", "runs": [], "medians": [{{"engine": "uring",
                    "mode": "reliable", "size_bytes": 100, "clients": 1, "reps": 3,
                    "goodput_bps": {goodput_bps:.1}}}]}}"#
                ),
            )
            .unwrap();
            dir
        };
        let (old_a, old_b) = (old(100.0 * 8.0 * MIB), old(110.0 * 8.0 * MIB));
        let text = compare(old_a.path(), old_b.path()).unwrap();
        let row = text
            .lines()
            .find(|l| l.contains(" uring ") && l.contains("files"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            row.contains("100.0 (100.0-100.0)") && row.contains("1.10") && row.contains("apart"),
            "{row}"
        );
        // Files in A, generated in B: the point still compares, both sources named.
        let text = compare(old_a.path(), b.path()).unwrap();
        let row = text
            .lines()
            .find(|l| l.contains("files/generated") && l.contains(" uring "))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(row.contains("1.10"), "{row}");
    }
}
