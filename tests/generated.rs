//! Issue 22.1 and 22.2: generated files (`serve --generated`) and the engine a GET asks for
//! (`serve --engines`, `get --engine`), through the binary as a user runs it.

mod common;

use std::process::Stdio;

use common::{run, serve_args};
use ringblast::protocol::generated::{content_hash, fill};

/// `get SERVER NAME --out DIR`.
fn get_to(server: std::net::SocketAddr, name: &str, out: &std::path::Path) -> std::process::Output {
    run(&[
        "get",
        "--server",
        &server.to_string(),
        name,
        "--out",
        out.to_str().unwrap(),
    ])
}

fn generated(size: u64) -> Vec<u8> {
    let mut v = vec![0u8; size as usize];
    fill(0, &mut v);
    v
}

/// The same bytes from two servers (one with a directory, one without), equal to what the
/// client computes on its own; `list` shows examples and the limit; past the limit and a
/// shadowed disk file are refused or hidden with a reason.
#[test]
fn generated_files_are_the_same_bytes_from_every_server() {
    let disk = tempfile::tempdir().unwrap();
    std::fs::write(
        disk.path().join("gen-1MiB"),
        b"a file on disk with a generated name",
    )
    .unwrap();
    std::fs::write(disk.path().join("plain.bin"), b"plain").unwrap();
    let dir = disk.path().to_str().unwrap();
    let mut with_dir = serve_args(
        &["--dir", dir, "--generated", "--generated-max", "64MiB"],
        Stdio::null(),
    );
    let mut without = serve_args(&["--generated", "--generated-max", "8MiB"], Stdio::null());

    let listed = run(&["list", "--server", &with_dir.addr.to_string()]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{listed:?}");
    for want in ["plain.bin", "gen-1MiB", "gen-64MiB"] {
        assert!(text.contains(want), "list lacks {want}: {text}");
    }
    assert!(!text.contains("gen-1GiB"), "past the limit: {text}");
    // The disk file named like a generated one is not what is listed: 1 MiB is.
    assert!(
        text.contains(&format!("{:>14}  gen-1MiB", 1 << 20)),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&listed.stderr).contains("any size up to gen-64MiB"));

    for (size, name) in [
        (5 << 20, "gen-5MiB"),
        (3_000_001, "gen-3000001"),
        (0, "gen-0"),
    ] {
        let want = generated(size);
        assert_eq!(
            *blake3::hash(&want).as_bytes(),
            content_hash(size),
            "{name}"
        );
        for srv in [&with_dir, &without] {
            let out = tempfile::tempdir().unwrap();
            let o = get_to(srv.addr, name, out.path());
            assert!(o.status.success(), "{name}: {o:?}");
            // The client checked the copy against the META's hash; it is the sequence's.
            let got = std::fs::read(out.path().join(name)).unwrap();
            assert!(got == want, "{name}: the copy differs from the sequence");
        }
    }

    let out = tempfile::tempdir().unwrap();
    let o = get_to(without.addr, "gen-9MiB", out.path());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("larger than this server generates"), "{err}");
    // A server without a directory has no other files.
    let o = get_to(without.addr, "plain.bin", out.path());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no such file"),
        "{o:?}"
    );
    let log = with_dir.stop();
    assert!(
        log.contains("with --generated, gen-SIZE names are generated files"),
        "{log}"
    );
    without.stop();
}

/// One server, both engines: each GET is sent by the engine it names (the session's log
/// line and JSON say which); a server offering one refuses the other with a clear error.
#[test]
fn a_get_chooses_its_engine_and_one_not_offered_is_refused() {
    let mut both = serve_args(
        &[
            "--generated",
            "--engines",
            "uring,threads",
            "--workers",
            "2",
            "--json",
        ],
        Stdio::piped(),
    );
    let addr = both.addr.to_string();
    for engine in ["threads", "uring", "threads"] {
        let o = run(&[
            "get",
            "--server",
            &addr,
            "gen-3MiB",
            "--discard",
            "--engine",
            engine,
        ]);
        assert!(o.status.success(), "{engine}: {o:?}");
    }
    // No --engine: the first of --engines.
    let o = run(&["get", "--server", &addr, "gen-2MiB", "--discard"]);
    assert!(o.status.success(), "{o:?}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = both.log();
    let json = both.stop_stdout();
    let engines: Vec<String> = json
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["file"].is_string())
        .map(|v| {
            format!(
                "{} {}",
                v["file"].as_str().unwrap(),
                v["engine"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        engines,
        [
            "gen-3MiB threads",
            "gen-3MiB uring",
            "gen-3MiB threads",
            "gen-2MiB uring"
        ],
        "{json}"
    );
    assert!(log.contains("engine threads,"), "{log}");
    assert!(
        log.contains("engines uring (2 workers), the default, and threads (a thread per session),"),
        "{log}"
    );

    let mut one = serve_args(&["--generated", "--engine", "uring"], Stdio::null());
    let o = run(&[
        "get",
        "--server",
        &one.addr.to_string(),
        "gen-1MiB",
        "--discard",
        "--engine",
        "threads",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("does not offer the threads engine (it offers uring: serve --engines)"),
        "{err}"
    );
    one.stop();
}

/// Issue 22.1: a generated file goes by multicast like one on disk: two members, every copy
/// the generated sequence, the file multicast once, nothing by unicast. (Here, not beside
/// tests/multicast.rs's lossy tests, whose repairs it would compete with for CPU.)
#[test]
fn a_generated_file_is_multicast_like_one_on_disk() {
    if !common::loopback_multicast() {
        return;
    }
    let g = format!(
        "239.255.99.{}:{}",
        1 + std::process::id() % 250,
        common::free_port()
    );
    let srv = common::serve_args(
        &[
            "--generated",
            "--multicast",
            &g,
            "--multicast-if",
            "127.0.0.1",
        ],
        std::process::Stdio::null(),
    );
    let out = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(common::BIN)
        .args(["get", "gen-2MiB", "--server", &srv.server(), "--multicast"])
        .args([
            "--clients",
            "2",
            "--quiet",
            "--timeout",
            "10s",
            "--json",
            "-",
            "--out",
        ])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut want = vec![0u8; 2 << 20];
    ringblast::protocol::generated::fill(0, &mut want);
    for (i, c) in v["clients"].as_array().unwrap().iter().enumerate() {
        let copy = out.path().join(format!("gen-2MiB.{}", i + 1));
        let listing: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
        assert!(
            std::fs::read(&copy).ok() == Some(want.clone()),
            "{copy:?}: {listing:?}"
        );
        assert!(c["multicast"]["sources"].as_u64().unwrap() > 0, "{c}");
        assert_eq!(c["multicast"]["unicast_datagrams"], 0, "{c}");
    }
}
