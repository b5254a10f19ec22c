//! `serve --trace FILE` and `ringblast trace`: the sender's state over time for each session,
//! through a relay that adds a round trip, listed and plotted.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{run, serve_args, BIN};

#[test]
fn a_trace_follows_each_session_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    let trace_s = trace.to_str().unwrap().to_string();
    let mut srv = serve_args(
        &["--generated", "--trace", &trace_s, "--trace-every", "5ms"],
        Stdio::null(),
    );
    // A 40 ms round trip, so the transfer takes a number of them.
    let relay_port = common::free_port();
    let listen = format!("127.0.0.1:{relay_port}");
    let mut relay = std::process::Command::new(BIN)
        .args([
            "relay",
            "--listen",
            &listen,
            "--to",
            &srv.server(),
            "--delay",
            "20ms",
        ])
        .args(["--duration", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let out = run(&[
        "get",
        "gen-20MiB",
        "--server",
        &listen,
        "--discard",
        "--clients",
        "2",
    ]);
    assert!(out.status.success(), "{out:?}");
    // The writer flushes once samples stop coming (a read meanwhile may end mid-line): then
    // every line is whole, and both sessions have ended.
    let t = Instant::now();
    let lines: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(&trace).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let ends = lines.iter().filter(|l| l["end"] == true).count();
        let whole = text.ends_with('\n') && lines.len() == text.lines().count();
        if (ends == 2 && whole) || t.elapsed() > Duration::from_secs(5) {
            assert!(whole, "a line cut short after the writer went quiet");
            break lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // (The relay carried the clients' DONEs, 20 ms late: it stays until the sessions end.)
    let _ = relay.kill();
    let _ = relay.wait();
    srv.stop();
    let sessions: std::collections::BTreeSet<&str> = lines
        .iter()
        .map(|l| l["session"].as_str().unwrap())
        .collect();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_eq!(lines.iter().filter(|l| l["end"] == true).count(), 2);
    let per: Vec<usize> = sessions
        .iter()
        .map(|s| lines.iter().filter(|l| l["session"] == *s).count())
        .collect();
    assert!(per.iter().all(|&n| n >= 5), "too few samples: {per:?}");
    let first = &lines[0];
    for field in [
        "t_ms",
        "state",
        "pacing_bps",
        "srtt_us",
        "inflight",
        "cwnd",
        "retransmitted",
    ] {
        assert!(first.get(field).is_some(), "{field} missing: {first}");
    }
    // The RTT the relay adds shows.
    assert!(
        lines
            .iter()
            .any(|l| l["srtt_us"].as_u64().unwrap() >= 35_000),
        "no 40 ms RTT in the trace"
    );
    // Listed, then plotted.
    let trace_arg = trace.to_str().unwrap();
    let list = run(&["trace", trace_arg]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success() && text.lines().count() == 2, "{text}");
    let svg = dir.path().join("t.svg");
    let plotted = *sessions.iter().next().unwrap();
    let plot = run(&[
        "trace",
        trace_arg,
        "--svg",
        svg.to_str().unwrap(),
        "--title",
        "relay 40 ms",
        "--session",
        plotted,
    ]);
    assert!(plot.status.success(), "{plot:?}");
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.starts_with("<svg") && drawn.contains("relay 40 ms"));
    // Two lines in each of four panels, and the capacity's where packet trains measured it
    // (in the session plotted: the other one's trains may have measured it and its not).
    let measured = lines
        .iter()
        .any(|l| l["session"] == plotted && l.get("capacity_bps").is_some_and(|c| !c.is_null()));
    assert_eq!(drawn.matches("<path").count(), 8 + measured as usize);
    let missing = run(&[
        "trace",
        trace_arg,
        "--svg",
        "/dev/null",
        "--session",
        "ffffffff",
    ]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no session ffffffff"));
}
