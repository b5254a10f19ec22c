//! Issue 22.3 and 22.4: the lab's matrix against a server on another host (`bench --server`,
//! the host a network namespace), and across paths `bench --path` builds itself: set up,
//! measured, and removed also when the bench is stopped or its server dies. Root only: each
//! test skips with a message without it (and fails in CI, where it is root).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{self, Hosts, SERVER_V4};
use common::BIN;

/// The namespaces a bench of process `pid` made and left behind.
fn left_behind(pid: u32) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("rbb{pid}")))
        .map(str::to_string)
        .collect()
}

fn results(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap()
}

/// `bench --path ARGS --out DIR`, its stderr read line by line; `on_line` may act on the
/// bench (stop it, kill its server) and says when it has.
fn bench_path(args: &[&str], out: &std::path::Path) -> Child {
    Command::new(BIN)
        .arg("bench")
        .args(args)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads `child`'s stderr until a line contains `want` (or it ends); returns all read.
fn stderr_until(child: &mut Child, want: &str) -> String {
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while err.read_line(&mut line).unwrap_or(0) > 0 {
        seen.push_str(&line);
        let hit = line.contains(want);
        line.clear();
        if hit {
            break;
        }
    }
    child.stderr = None;
    // The rest keeps flowing into a thread, so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while err.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    seen
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("the bench did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A newcomer's two commands on two hosts: `serve --generated --engines uring,threads` on
/// one, `bench --server HOST` on the other; the results say which server and which path.
#[test]
fn bench_against_a_server_on_another_host() {
    let Some(mut hosts) = Hosts::two(1500) else {
        return;
    };
    let mut serve = hosts.command(&hosts.server.clone(), BIN);
    serve
        .args(["serve", "--generated", "--engines", "uring,threads"])
        .args(["--bind", "0.0.0.0:6969"])
        .stderr(Stdio::null());
    hosts.spawn(serve);
    let out = tempfile::tempdir().unwrap();
    let server = format!("{SERVER_V4}:6969");
    hosts.wait_listing(&server);
    let o = hosts
        .command(&hosts.client.clone(), BIN)
        .args([
            "bench",
            "--server",
            &server,
            "--sizes",
            "3MiB",
            "--clients",
            "1,2",
        ])
        .args(["--reps", "2", "--modes", "reliable,blast", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout.contains("uring/threads"), "{stdout}");
    let json = results(out.path());
    assert_eq!(json["server"], server);
    assert_eq!(json["path"], format!("to {server}"));
    assert!(json["server_machine"]
        .as_str()
        .unwrap()
        .contains("another host"));
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(
        runs.len(),
        2 * 2 * 2 * 2,
        "engines x modes x clients x reps"
    );
    for r in runs {
        assert_eq!(r["datagram_size"], 1472, "{r}");
        assert_eq!(r["source"], "generated");
        assert!(
            r["server_cpu_s"].is_null(),
            "not measured from another host"
        );
    }
    assert!(
        runs.iter().any(|r| r["engine"] == "threads")
            && runs.iter().any(|r| r["engine"] == "uring")
    );
    assert!(runs
        .iter()
        .filter(|r| r["mode"] == "reliable")
        .all(|r| r["all_intact"] == true));
}

/// `bench --path veth:1500`: builds two namespaces, measures across them (the server's CPU
/// read from /proc), writes the path into every row, and leaves nothing behind.
#[test]
fn bench_across_a_veth_path_it_builds_and_removes() {
    if !netns::available() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let mut child = bench_path(
        &[
            "--path",
            "veth:1500",
            "--sizes",
            "2MiB",
            "--clients",
            "1,3",
            "--reps",
            "2",
            "--modes",
            "reliable",
        ],
        out.path(),
    );
    let pid = child.id();
    let err = stderr_until(&mut child, "never matches");
    let status = wait_with_timeout(&mut child, Duration::from_secs(120));
    assert!(status.success(), "{err}");
    assert!(err.contains("bench across veth:1500"), "{err}");
    let json = results(out.path());
    assert_eq!(json["path"], "veth:1500");
    assert!(json["server_machine"]
        .as_str()
        .unwrap()
        .contains("namespace"));
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2 * 2 * 2);
    for r in runs {
        assert_eq!(r["path"], "veth:1500");
        assert_eq!(r["datagram_size"], 1472);
        assert!(r["server_cpu_s"].as_f64().is_some(), "read from /proc: {r}");
        // GSO batches for uring, one datagram per call for the baseline.
        let gso = r["gso_segments"].as_u64().unwrap();
        match r["engine"].as_str().unwrap() {
            "uring" => assert!(gso > 1, "{r}"),
            _ => assert_eq!(gso, 1, "{r}"),
        }
    }
    assert_eq!(json["ratios"].as_array().unwrap().len(), 2);
    // The server's send latency, from the sessions it wrote (serve --json).
    for c in json["medians"].as_array().unwrap() {
        assert_eq!(
            c["server_send_latency_us"].as_array().map(Vec::len),
            Some(5),
            "{c}"
        );
    }
    assert!(out.path().join("server.log").exists());
    assert_eq!(left_behind(pid), Vec::<String>::new());
}

/// A stop (SIGTERM, as Ctrl-C) keeps the runs measured and removes the namespaces; a server
/// that dies mid-matrix fails the bench with a message, and the namespaces go too.
#[test]
fn a_stopped_or_failed_path_bench_removes_what_it_built() {
    if !netns::available() {
        return;
    }
    let args = [
        "--path",
        "veth:1500",
        "--sizes",
        "16MiB",
        "--clients",
        "1,2,3,4",
        "--reps",
        "10",
        "--engines",
        "threads",
        "--modes",
        "reliable",
    ];
    let out = tempfile::tempdir().unwrap();
    let mut child = bench_path(&args, out.path());
    let pid = child.id();
    stderr_until(&mut child, "[2/");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(128 + 15));
    let runs = results(out.path())["runs"].as_array().unwrap().len();
    assert!((2..40).contains(&runs), "{runs} runs kept");
    assert_eq!(left_behind(pid), Vec::<String>::new());

    // The server killed under the bench.
    let out = tempfile::tempdir().unwrap();
    let mut child = bench_path(&args, out.path());
    let pid = child.id();
    stderr_until(&mut child, "[1/");
    let pids = Command::new("ip")
        .args(["netns", "pids", &format!("rbb{pid}s")])
        .output()
        .unwrap();
    for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-9", p]).status();
    }
    let status = wait_with_timeout(&mut child, Duration::from_secs(60));
    assert!(!status.success());
    assert_eq!(left_behind(pid), Vec::<String>::new());
}

/// Without root, one line says what is needed.
#[test]
fn a_path_bench_without_root_says_so_in_one_line() {
    if !netns::available() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        out.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
        .args(["bench", "--path", "veth:1500", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("run it as root"), "{err}");
}
