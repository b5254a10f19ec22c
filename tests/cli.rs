//! The `ringblast` binary as a user runs it: exit codes, output, one-line errors, help.

mod common;
use common::{free_port, run, serve, serve_with, wait_up, BIN};

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Stops a server and returns its log (`stdout`: what it printed, piped, instead).
/// What a piped child wrote to stderr (all of it: call once it has ended).
fn stderr_of(child: &mut std::process::Child) -> String {
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

fn stop_and_read(srv: &mut common::Serve, stdout: bool) -> String {
    if stdout {
        srv.stop_stdout()
    } else {
        srv.stop()
    }
}

/// A `serve` of a directory holding one file, `f`, of `data` (with `extra` options), up and
/// answering; its log kept (read it with [`stop_and_read`]).
struct Served {
    srv: common::Serve,
    server: String,
    _dir: tempfile::TempDir,
}

fn serve_f(data: &[u8], extra: &[&str], _log: bool) -> Served {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), data).unwrap();
    let srv = serve(dir.path(), extra);
    let server = srv.server();
    assert!(wait_up(&server).status.success());
    Served {
        srv,
        server,
        _dir: dir,
    }
}

#[test]
fn serve_list_get_and_failures() {
    let served = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(served.path().join("seed.bin"), &data).unwrap();
    let srv = serve(served.path(), &[]);
    let server = srv.server();

    let listed = wait_up(&server);
    assert!(listed.status.success(), "{listed:?}");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("seed.bin") && text.contains("300000"),
        "{text}"
    );

    let got = run(&[
        "get",
        "seed.bin",
        "--server",
        &server,
        "--clients",
        "2",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(got.status.success(), "{got:?}");
    let table = String::from_utf8_lossy(&got.stdout);
    assert!(table.contains("2/2 copies intact and verified"), "{table}");
    for i in 1..=2 {
        assert_eq!(
            std::fs::read(out.path().join(format!("seed.bin.{i}"))).unwrap(),
            data
        );
    }

    // Interval reports, per client and in sum.
    let iv = run(&[
        "get",
        "seed.bin",
        "--server",
        &server,
        "--discard",
        "--clients",
        "2",
        "-i",
        "0.01",
    ]);
    assert!(iv.status.success(), "{iv:?}");
    let text = String::from_utf8_lossy(&iv.stdout);
    assert!(text.contains("[SUM]") && text.contains("[  2]"), "{text}");

    // JSON for scripts: one object with the fields DESIGN.md lists.
    let js = run(&[
        "get",
        "seed.bin",
        "--server",
        &server,
        "--discard",
        "--clients",
        "2",
        "--json",
        "-",
    ]);
    assert!(js.status.success(), "{js:?}");
    let v: serde_json::Value = serde_json::from_slice(&js.stdout).expect("valid JSON on stdout");
    assert_eq!(v["file"], "seed.bin");
    assert_eq!(v["size"], 300_000);
    assert_eq!(v["mode"], "reliable");
    let c = &v["clients"][1];
    for key in [
        "id",
        "local_port",
        "bytes_received",
        "bytes_intact",
        "complete",
        "hash_ok",
        "duration_s",
        "goodput_bps",
        "datagrams_received",
        "datagrams_lost",
        "retransmitted",
        "duplicates",
    ] {
        assert!(!c[key].is_null(), "{key} missing: {c}");
    }
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(c["latency_us"][p].is_u64(), "latency_us.{p} missing: {c}");
    }
    assert_eq!(c["bytes_intact"], 300_000);
    assert!(v["goodput_bps"].as_f64().unwrap() > 0.0);

    let missing = run(&["get", "nope.bin", "--server", &server, "--discard"]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("no such file"), "{err}");

    let traversal = run(&["get", "../etc/passwd", "--server", &server, "--discard"]);
    assert!(!traversal.status.success());
    assert!(String::from_utf8_lossy(&traversal.stderr).contains("bad file name"));

    let bad = run(&["get", "seed.bin", "--discard", "--verify", "content"]);
    assert!(
        !bad.status.success(),
        "--discard with --verify content must be refused"
    );

    drop(srv);
    let t = Instant::now();
    let gone = run(&[
        "get",
        "seed.bin",
        "--server",
        &server,
        "--discard",
        "--timeout",
        "1",
    ]);
    assert!(!gone.status.success());
    assert!(t.elapsed() < Duration::from_secs(5));
    let err = String::from_utf8_lossy(&gone.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn help_explains_every_command() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let commands = ["serve", "list", "get", "bench", "relay", "demo"];
    for cmd in commands {
        assert!(text.contains(cmd), "{cmd} missing from --help");
    }
    let flags: &[(&str, &[&str])] = &[
        (
            "serve",
            &[
                "--dir",
                "--bind",
                "--engine",
                "--workers",
                "--rate",
                "--idle-timeout",
                "--datagram-size",
                "--max-sessions",
                "--requests-per-ip",
                "--json",
                "--legacy",
            ],
        ),
        ("list", &["--server", "--timeout"]),
        (
            "get",
            &[
                "--server",
                "--clients",
                "--out",
                "--discard",
                "--mode",
                "--timeout",
                "--window",
                "--verify",
                "--max-size",
                "--json",
                "--interval",
                "--quiet",
            ],
        ),
        (
            "bench",
            &[
                "--clients",
                "--sizes",
                "--engines",
                "--modes",
                "--reps",
                "--out",
                "--files",
                "--recv-buffer",
                "--sources",
                "--server",
                "--path",
                "--delay",
                "--loss",
                "--reorder",
                "--compare",
            ],
        ),
        (
            "relay",
            &[
                "--listen",
                "--to",
                "--loss",
                "--reorder",
                "--duplicate",
                "--corrupt",
                "--garbage",
                "--delay",
                "--rate",
                "--queue",
                "--seed",
                "--duration",
            ],
        ),
        (
            "demo",
            &["--dir", "--size", "--clients", "--mode", "--engine"],
        ),
    ];
    for (cmd, wanted) in flags {
        let out = run(&[cmd, "--help"]);
        assert!(out.status.success(), "{cmd} --help failed");
        let help = String::from_utf8_lossy(&out.stdout).to_string();
        for flag in *wanted {
            // The flag, and some words explaining it on its line or the next.
            let line = help
                .lines()
                .position(|l| l.trim_start().starts_with(flag) || l.contains(&format!(", {flag}")))
                .unwrap_or_else(|| panic!("{flag} missing from {cmd} --help:\n{help}"));
            let lines: Vec<&str> = help.lines().collect();
            let described = lines[line]
                .split("  ")
                .filter(|p| !p.trim().is_empty())
                .count()
                > 1
                || lines
                    .get(line + 1)
                    .is_some_and(|l| !l.trim().is_empty() && !l.trim_start().starts_with('-'));
            assert!(
                described,
                "{flag} has no help text in {cmd} --help:\n{help}"
            );
        }
    }
}

/// Nonsense values are refused before anything starts, with the reason, and never panic.
#[test]
fn nonsensical_values_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["serve", "--dir", d, "--rate", "0.5"], "rate"),
        (&["serve", "--dir", d, "--rate", "0"], "rate"),
        (
            &["serve", "--dir", d, "--requests-per-ip", "0.4"],
            "at least 1",
        ),
        (&["serve", "--dir", d, "--workers", "0"], "workers"),
        (
            &["serve", "--dir", d, "--max-sessions", "0"],
            "max-sessions",
        ),
        (
            &["serve", "--dir", d, "--datagram-size", "100"],
            "datagram-size",
        ),
        (&["serve", "--dir", d, "--idle-timeout", "0"], "positive"),
        (&["get", "f", "--clients", "0"], "clients"),
        (&["get", "f", "--clients", "100000"], "clients"),
        (&["get", "f", "--window", "0"], "window"),
        (&["get", "f", "--timeout=-1"], "timeout"),
        (&["demo", "--clients", "0"], "clients"),
        (&["bench", "--clients", "1,0"], "clients"),
        (&["bench", "--reps", "0"], "reps"),
        (
            &[
                "relay",
                "--listen",
                "127.0.0.1:0",
                "--to",
                "127.0.0.1:9",
                "--rate",
                "0.5",
            ],
            "rate",
        ),
        (
            &[
                "relay",
                "--listen",
                "127.0.0.1:0",
                "--to",
                "127.0.0.1:9",
                "--delay",
                "20",
            ],
            "20ms",
        ),
        (
            &[
                "relay",
                "--listen",
                "127.0.0.1:0",
                "--to",
                "127.0.0.1:9",
                "--loss",
                "2",
            ],
            "probability",
        ),
    ];
    for (args, why) in cases {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} accepted: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// The log written to a pipe is plain text (no colour codes), in MiB/s like everything else.
#[test]
fn logs_to_a_pipe_are_plain_text() {
    let Served {
        mut srv,
        server,
        _dir,
    } = serve_f(&[3u8; 200_000], &[], true);
    let got = run(&["get", "f", "--server", &server, "--discard"]);
    assert!(got.status.success(), "{got:?}");
    // The session's line is logged when it ends; give the control thread a moment.
    std::thread::sleep(Duration::from_millis(300));
    let log = stop_and_read(&mut srv, false);
    assert!(log.contains("[SESSION"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "colour codes in a piped log: {log:?}"
    );
    assert!(log.contains("MiB/s") && !log.contains(" MB/s"), "{log}");
}

#[test]
fn a_server_killed_mid_transfer_fails_the_client_fast_and_clean() {
    let served = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("slow.bin"), vec![1u8; 4_000_000]).unwrap();
    // 16 Mbit/s: the 4 MB file takes 2 s.
    let mut srv = serve(served.path(), &["--rate", "16M"]);
    let server = srv.server();
    assert!(wait_up(&server).status.success());
    let get = Command::new(BIN)
        .args([
            "get",
            "slow.bin",
            "--server",
            &server,
            "--clients",
            "3",
            "--timeout",
            "2",
            "--out",
        ])
        .arg(out.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    srv.stop(); // SIGKILL: no goodbye
    let t = Instant::now();
    let got = get.wait_with_output().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "client took {:?} to give up",
        t.elapsed()
    );
    assert!(!got.status.success());
    let err = String::from_utf8_lossy(&got.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("3 of 3 copies failed"), "{err}");
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "partial copies left behind"
    );
}

/// `serve --json`: one object per finished session on stdout, printed by the control thread.
#[test]
fn serve_json_prints_one_object_per_finished_session() {
    let served = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("f"), vec![5u8; 150_000]).unwrap();
    // Killed when dropped, even if an assertion fails first.
    let mut srv = serve_with(served.path(), &["--json"], Stdio::piped());
    let server = srv.server();
    assert!(wait_up(&server).status.success());
    let got = run(&[
        "get",
        "f",
        "--server",
        &server,
        "--discard",
        "--clients",
        "2",
    ]);
    assert!(got.status.success(), "{got:?}");
    std::thread::sleep(Duration::from_millis(300));
    let out = stop_and_read(&mut srv, true);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("one JSON object a line");
        for key in [
            "peer",
            "file",
            "engine",
            "mode",
            "bytes_sent",
            "datagrams_sent",
            "retransmitted",
            "duration_s",
            "throughput_bps",
        ] {
            assert!(!v[key].is_null(), "{key} missing: {v}");
        }
        for p in ["p50", "p99", "max"] {
            assert!(v["send_latency_us"][p].is_u64(), "{v}");
        }
        assert_eq!(v["bytes_sent"], 150_000);
        assert_eq!(v["outcome"], "complete");
    }
}

/// Several client processes, each with many sub-clients, against one server at once (as a
/// lab runs a `get` per machine): every copy arrives, and one host's burst of requests fits
/// the server's default per-address budget.
#[test]
fn several_client_processes_with_many_sub_clients_each() {
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 249) as u8).collect();
    let Served {
        srv: _srv,
        server,
        _dir,
    } = serve_f(&data, &[], false);
    let out = tempfile::tempdir().unwrap();
    // 4 processes x 50 sub-clients, all started together.
    let procs: Vec<_> = (0..4)
        .map(|p| {
            let dir = out.path().join(format!("p{p}"));
            Command::new(BIN)
                .args([
                    "get",
                    "f",
                    "--server",
                    &server,
                    "--clients",
                    "50",
                    "--quiet",
                ])
                .arg("--out")
                .arg(&dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (p, child) in procs.into_iter().enumerate() {
        let got = child.wait_with_output().unwrap();
        assert!(got.status.success(), "process {p}: {got:?}");
        let table = String::from_utf8_lossy(&got.stdout);
        assert!(
            table.contains("50/50 copies intact and verified"),
            "{table}"
        );
        for i in [1, 25, 50] {
            let copy = out.path().join(format!("p{p}/f.{i}"));
            assert_eq!(std::fs::read(copy).unwrap(), data);
        }
    }
}

/// A full server says so in its log (what it turned away, once a second), and the refused
/// client, told when to ask again, gets its copy once there is room.
#[test]
fn a_full_server_logs_what_it_sheds_and_the_refused_client_gets_in_later() {
    // One session at a time, paced to last over a second.
    let extra = ["--max-sessions", "1", "--rate", "2M"];
    let Served {
        mut srv,
        server,
        _dir,
    } = serve_f(&[9u8; 300_000], &extra, true);
    let got = run(&[
        "get",
        "f",
        "--server",
        &server,
        "--discard",
        "--clients",
        "2",
        "--timeout",
        "10",
    ]);
    assert!(got.status.success(), "{got:?}");
    std::thread::sleep(Duration::from_millis(1200));
    let log = stop_and_read(&mut srv, false);
    assert!(
        log.contains("shedding load") && log.contains("GETs refused busy"),
        "{log}"
    );
}

/// Ctrl-C during `get --out`: every copy stops at once, its temporary file is removed, the
/// server is told (it ends the sessions without waiting for its idle timeout), each copy's
/// line says how far it got, and the exit status is 130. Partial copies that a vanished
/// process left in the directory are removed by the next `get`, and it says so.
#[test]
fn ctrl_c_during_get_cleans_up_and_tells_the_server() {
    // 4 MiB at 8 Mbit/s: 4 s, long enough to be interrupted.
    let Served {
        mut srv,
        server,
        _dir,
    } = serve_f(&vec![4u8; 4 << 20], &["--rate", "8M"], true);
    let out = tempfile::tempdir().unwrap();
    // Left by a process that is gone (PIDs above the kernel's maximum never run); and one
    // of another file, which is not this get's business.
    for stale in [".f.4194999.part", ".f.2.4194998.part", ".fx.4194997.part"] {
        std::fs::write(out.path().join(stale), b"old").unwrap();
    }
    let child = Command::new(BIN)
        .args(["get", "f", "--server", &server, "--clients", "2", "--quiet"])
        .arg("--out")
        .arg(out.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let t = Instant::now();
    let got = child.wait_with_output().unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "slow to stop");
    assert_eq!(got.status.code(), Some(130), "{got:?}");
    let table = String::from_utf8_lossy(&got.stdout);
    assert_eq!(table.matches("interrupted: ").count(), 2, "{table}");
    let err = String::from_utf8_lossy(&got.stderr);
    assert!(err.contains("interrupted: 2 of 2 copies stopped"), "{err}");
    assert!(
        err.contains("removed") && err.contains(".f.4194999.part"),
        "{err}"
    );
    let left: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec![".fx.4194997.part".to_string()]);
    // The server ended both sessions on the clients' word, long before its 10 s idle timeout.
    std::thread::sleep(Duration::from_millis(500));
    let log = stop_and_read(&mut srv, false);
    assert_eq!(log.matches("client gave up").count(), 2, "{log}");
}

/// SIGTERM (or Ctrl-C) to `serve`: the clients of active sessions fail at once with the
/// reason, the server logs a summary and exits 0.
#[test]
fn a_stopped_server_tells_its_clients_and_exits_cleanly() {
    let Served {
        mut srv,
        server,
        _dir,
    } = serve_f(&vec![6u8; 4 << 20], &["--rate", "8M"], true);
    let client = Command::new(BIN)
        .args(["get", "f", "--server", &server, "--discard", "--quiet"])
        .args(["--clients", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let kill = Command::new("kill")
        .args(["-TERM", &srv.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let t = Instant::now();
    let got = client.wait_with_output().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the client waited for a timeout"
    );
    assert_eq!(got.status.code(), Some(1));
    let err = String::from_utf8_lossy(&got.stderr);
    assert!(err.contains("the server is shutting down"), "{err}");
    let status = srv.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let log = srv.log();
    assert!(
        log.contains("[STOPPED]") && log.contains("2 cut short"),
        "{log}"
    );
}

/// Local trouble is named, once, with its path: an `--out` that is a file, a copy that cannot
/// be created (the server is told at once and ends the session), a `--json` that cannot be
/// written (refused before the transfer). A missing file is one line, no table of zeros, and
/// leaves no empty directory behind.
#[test]
fn local_errors_name_their_paths_and_leave_nothing_behind() {
    let Served {
        mut srv,
        server,
        _dir,
    } = serve_f(&[2u8; 100_000], &[], true);
    let out = tempfile::tempdir().unwrap();
    let a_file = out.path().join("a-file");
    std::fs::write(&a_file, b"x").unwrap();
    let get = |extra: &[&str]| {
        let mut args = vec!["get", "--server", &server];
        args.extend_from_slice(extra);
        run(&args)
    };
    let one_line = |o: &std::process::Output| {
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(err.lines().count(), 1, "{err}");
        err
    };
    let o = get(&["f", "--out", a_file.to_str().unwrap()]);
    let err = one_line(&o);
    assert!(
        err.contains("a-file") && err.contains("not a directory"),
        "{err}"
    );
    let missing = out.path().join("never-made");
    let o = get(&["nope.bin", "--out", missing.to_str().unwrap()]);
    let err = one_line(&o);
    assert!(err.contains("no such file: nope.bin"), "{err}");
    assert!(o.stdout.is_empty(), "{o:?}");
    assert!(!missing.exists());
    let o = get(&["f", "--discard", "--json", "/proc/no-such-dir/r.json"]);
    let err = one_line(&o);
    assert!(err.contains("/proc/no-such-dir/r.json"), "{err}");
    // /proc takes no directories: the copy cannot be created once META has come.
    let t = Instant::now();
    let o = get(&["f", "--out", "/proc/ringblast-cannot/x"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot create the output directory /proc/ringblast-cannot/x"),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let log = stop_and_read(&mut srv, false);
    assert_eq!(log.matches("client gave up").count(), 1, "{log}");
    assert!(t.elapsed() < Duration::from_secs(5), "the session lingered");
}

/// `get` never replaces a copy silently: a second `get` into the same directory is refused,
/// naming the copy, before anything is asked of the server; `--force` replaces it.
#[test]
fn an_existing_copy_is_replaced_only_with_force() {
    let Served {
        srv: _srv,
        server,
        _dir,
    } = serve_f(&[8u8; 50_000], &[], false);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let first = run(&["get", "f", "--server", &server, "--out", dir]);
    assert!(first.status.success(), "{first:?}");
    std::fs::write(out.path().join("f"), b"mine").unwrap();
    let again = run(&["get", "f", "--server", &server, "--out", dir]);
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("already at") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.path().join("f")).unwrap(), b"mine");
    let forced = run(&["get", "f", "--server", &server, "--out", dir, "--force"]);
    assert!(forced.status.success(), "{forced:?}");
    assert_eq!(
        std::fs::read(out.path().join("f")).unwrap(),
        vec![8u8; 50_000]
    );
}

/// `list` prints names with their control characters escaped (a name could otherwise drive
/// the terminal), and leaves out what the server cannot read (checked where the process is
/// not root: root reads everything).
#[test]
fn list_escapes_control_characters_and_hides_unreadable_files() {
    use std::os::unix::fs::PermissionsExt;
    let served = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("plain.bin"), b"abc").unwrap();
    std::fs::write(served.path().join("red\x1b[31mtext"), b"abcd").unwrap();
    let locked = served.path().join("locked.bin");
    std::fs::write(&locked, b"secret").unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let srv = serve(served.path(), &[]);
    let server = srv.server();
    let listed = wait_up(&server);
    assert!(listed.status.success(), "{listed:?}");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(!text.contains('\x1b'), "{text:?}");
    assert!(text.contains("red\\u{1b}[31mtext"), "{text}");
    assert!(text.contains("plain.bin"), "{text}");
    // The effective user, from /proc/self/status.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"));
    if root {
        // Not a skip: root reads everything, so there is no unreadable file to leave out.
        eprintln!("NOTE: running as root, which reads every file: the unreadable-file check has nothing to check");
    } else {
        assert!(!text.contains("locked.bin"), "{text}");
    }
}

/// No value given to any option of any subcommand makes `ringblast` panic: each is refused
/// with a one-line error, or accepted and run (to a closed port, or stopped after a moment).
/// Values: zero, negative, past u64 and f64, NaN, infinities, empty, garbage, huge strings.
#[test]
fn extreme_values_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let closed = format!("127.0.0.1:{}", free_port());
    let long = "9".repeat(5000);
    let numbers: Vec<&str> = vec![
        "0",
        "-1",
        "1e3",
        "4294967297",
        "18446744073709551616",
        "999999999999999999999999999999",
        "NaN",
        "inf",
        "",
        " ",
        "x",
        "0x10",
        &long,
    ];
    let rates = [
        "0",
        "-1M",
        "1e400",
        "18446744073709551615G",
        "NaN",
        "inf",
        "1.5.5M",
        "1e-9G",
    ];
    let durations = [
        "0",
        "-1s",
        "1e400s",
        "18446744073709551615m",
        "NaN",
        "inf",
        "1e-30s",
        "99999999999999999999ms",
        "5 parsecs",
    ];
    let sizes = [
        "0",
        "-1",
        "1e30GiB",
        "18446744073709551615TiB",
        "NaN",
        "inf",
        "8EiB",
        "1.5.5",
    ];
    let probabilities = ["-0.1", "1.1", "NaN", "inf", "-inf", "1e-400", "101%", "%"];
    let addrs = [
        "",
        ":",
        "127.0.0.1:99999",
        "[::1",
        "256.1.1.1:1",
        "1.2.3.4:-1",
        "[fe80::1]:1",
    ];
    let datagrams = ["0", "31", "544", "65508", "4294967296", "-1", "auto2"];

    let mut cases: Vec<Vec<String>> = Vec::new();
    let mut add = |base: &[&str], opt: &str, values: &[&str]| {
        for v in values {
            let mut c: Vec<String> = base.iter().map(|s| s.to_string()).collect();
            c.push(format!("{opt}={v}"));
            cases.push(c);
        }
    };
    let serve = ["serve", "--dir", &d, "--bind", "127.0.0.1:0"];
    let get = [
        "get",
        "f",
        "--server",
        &closed,
        "--timeout",
        "1",
        "--discard",
    ];
    let relay = [
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &closed,
        "--duration",
        "1",
    ];
    for opt in ["--workers", "--max-sessions"] {
        add(&serve, opt, &numbers);
    }
    add(&serve, "--rate", &rates);
    add(&serve, "--idle-timeout", &durations);
    add(&serve, "--datagram-size", &datagrams);
    add(&serve, "--requests-per-ip", &numbers);
    add(&serve, "--bind", &addrs);
    add(&serve, "--engine", &["", "io_uring", &long]);
    add(&serve, "--send-path", &["", "zerocopy"]);
    add(&serve, "--cc", &["", "cubic"]);
    for opt in ["--clients", "--threads"] {
        add(&get, opt, &numbers);
    }
    add(&get, "--timeout", &durations);
    add(&get, "--interval", &durations);
    add(&get, "--window", &sizes);
    add(&get, "--max-size", &sizes);
    add(&get, "--datagram-size", &datagrams);
    add(&get, "--server", &addrs);
    add(&get, "--mode", &["", "turbo"]);
    add(
        &["get", "f", "--server", &closed, "--timeout", "1"],
        "--out",
        &[""],
    );
    add(
        &["get", "--server", &closed, "--timeout", "1", "--discard"],
        "../x",
        &[""],
    );
    add(&["list", "--server", &closed], "--timeout", &durations);
    add(&["list"], "--server", &addrs);
    add(&["demo", "--dir", &d], "--clients", &numbers);
    add(&["demo", "--dir", &d], "--size", &sizes);
    add(&["demo", "--dir", &d], "--size", &["1TiB"]);
    // A small bench (one 1 MiB file, one run per cell) but for the option under test.
    let bench = |skip: &str| -> Vec<&str> {
        let mut v = vec!["bench", "--files", &d, "--out", &d];
        for (o, x) in [("--sizes", "1MiB"), ("--reps", "1"), ("--clients", "1")] {
            if o != skip {
                v.extend([o, x]);
            }
        }
        v
    };
    for opt in ["--clients", "--reps"] {
        add(&bench(opt), opt, &numbers);
    }
    add(&bench("--sizes"), "--sizes", &sizes);
    add(&bench(""), "--recv-buffer", &sizes);
    for opt in [
        "--loss",
        "--reorder",
        "--duplicate",
        "--corrupt",
        "--garbage",
    ] {
        add(&relay, opt, &probabilities);
    }
    add(&relay, "--delay", &durations);
    add(&relay[..5], "--duration", &durations);
    add(&relay, "--rate", &rates);
    add(&relay, "--queue", &sizes);
    add(&relay, "--seed", &numbers);
    add(&["relay", "--to", &closed], "--listen", &addrs);

    // Every value meets its parser in-process (clap's try_parse_from): no panic, and most are
    // refused there with their error. What a parser accepts runs, in a process of its own
    // (with a few refused ones, to see the one-line error and exit status end to end).
    let total = cases.len();
    let mut refused = 0;
    let cases: Vec<Vec<String>> = cases
        .into_iter()
        .filter(|args| {
            let argv: Vec<String> = std::iter::once("ringblast".to_string())
                .chain(args.iter().cloned())
                .collect();
            use clap::Parser;
            match std::panic::catch_unwind(|| ringblast::cli::Cli::try_parse_from(argv)) {
                Err(_) => panic!("parsing {args:?} panicked"),
                Ok(Ok(_)) => true,
                Ok(Err(_)) => {
                    refused += 1;
                    refused % 50 == 1
                }
            }
        })
        .collect();
    eprintln!(
        "{total} cases: {refused} refused by their parser in-process, {} run",
        cases.len()
    );
    // All at once (about 30): most end at once; what still runs after 3 s (a server, a
    // relay without --duration) has started without panicking, and is stopped.
    let mut running: Vec<_> = cases
        .iter()
        .map(|args| {
            let child = Command::new(BIN)
                .args(args)
                .env("RUST_BACKTRACE", "0")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (args, child)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(3);
    for (args, child) in running.iter_mut() {
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let stopped = child.try_wait().unwrap().is_none();
        if stopped {
            let _ = child.kill();
        }
        let status = child.wait().unwrap();
        let err = stderr_of(child);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        if !stopped {
            use std::os::unix::process::ExitStatusExt;
            assert_ne!(status.code(), Some(101), "{args:?}: {err}");
            assert_eq!(status.signal(), None, "{args:?} died: {err}");
        }
    }
}

/// A long `bench` shows its progress (run k of n, elapsed, time left), and Ctrl-C keeps what
/// it measured: the table and the result files of the runs done, exit 130.
#[test]
fn ctrl_c_during_bench_keeps_the_runs_measured() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    let out = dir.path().join("out");
    let mut child = Command::new(BIN)
        .args([
            "bench",
            "--sizes",
            "256MiB",
            "--clients",
            "1,2",
            "--reps",
            "100",
        ])
        .args(["--engines", "uring", "--modes", "reliable", "--files"])
        .arg(&files)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until a few runs are done.
    let t = Instant::now();
    while !out.exists() || t.elapsed() < Duration::from_secs(2) {
        if let Some(status) = child.try_wait().unwrap() {
            let err = stderr_of(&mut child);
            panic!("bench ended early ({status}): {err}");
        }
        assert!(t.elapsed() < Duration::from_secs(60), "bench never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let table = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("[1/200, "), "progress lines: {err}");
    assert!(err.contains("runs measured and kept"), "{err}");
    assert!(table.contains("intact reps"), "{table}");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(csv.lines().count() >= 2, "{csv}");
    // Both sides' latency, per cell: the receivers' one-way delay, the server's send latency.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let cell = &json["medians"][0];
    for field in ["one_way_delay_us", "server_send_latency_us"] {
        assert_eq!(
            cell[field].as_array().map(Vec::len),
            Some(9),
            "{field}: {cell}"
        );
    }
}
