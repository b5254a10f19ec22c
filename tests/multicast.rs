//! One file to many hosts (`serve --multicast`, `get --multicast`): on loopback (the host's
//! sockets share one delivery, so their loss is the same) and on a LAN of namespaces (each
//! receiver loses its own datagrams). Every copy is checked byte for byte.
//!
//! Loopback needs `lo` to carry multicast (`ip link set lo multicast on`, root) and per-port
//! loss nftables (root); the LAN needs namespaces, nftables and ethtool. Each test skips with
//! a message where they are missing; CI has them all (RINGBLAST_CI=1 makes a skip a failure).

mod common;
use common::netns::{Lan, LAN_SENDER, LAN_SENDER_V6};
use common::{random_bytes, serve, RawClient, Serve, BIN};
use ringblast::protocol::{get_flags, Message, Mode};

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Drops UDP to `port` at random (`permille` of a thousand) on this host while it lives.
struct Drop_ {
    table: String,
}

impl Drop_ {
    fn new(port: u16, permille: u32) -> Option<Drop_> {
        static N: AtomicU32 = AtomicU32::new(0);
        let table = format!(
            "rbmc{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let chance = if permille >= 1000 {
            String::new()
        } else {
            format!("numgen random mod 1000 < {permille} ")
        };
        let rule = format!(
            "add table inet {table}; add chain inet {table} in {{ type filter hook input priority 0; }}; add rule inet {table} in udp dport {port} {chance}drop"
        );
        match Command::new("nft").arg(&rule).output() {
            Ok(o) if o.status.success() => Some(Drop_ { table }),
            other => {
                ringblast::skip(&format!(
                    "nftables cannot drop here (root, nftables): {other:?}"
                ));
                None
            }
        }
    }
}

impl Drop for Drop_ {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .output();
    }
}

/// A group address and port of this test's own.
fn group() -> (String, u16) {
    static N: AtomicU32 = AtomicU32::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let port = common::free_port();
    (format!("239.255.{}.{}", 70 + n / 250, n % 250 + 1), port)
}

/// A server of `dir` with a group at `group:port`.
fn group_server(dir: &Path, group: &str, port: u16, extra: &[&str]) -> Serve {
    let g = format!("{group}:{port}");
    let mut args = vec!["--multicast", &g, "--multicast-if", "127.0.0.1"];
    args.extend_from_slice(extra);
    serve(dir, &args)
}

/// `get FILE --multicast` of `clients` copies into `out`, with `extra` arguments: its exit,
/// stderr, and `--json` report.
fn get(server: &str, clients: usize, out: &Path, extra: &[&str]) -> (Output, Value) {
    let json = out.join("report.json");
    let clients = clients.to_string();
    let o = Command::new(BIN)
        .args([
            "get",
            NAME,
            "--server",
            server,
            "--multicast",
            "--clients",
            &clients,
        ])
        .args(["--out"])
        .arg(out)
        .args(["--force", "--quiet", "--timeout", "10s", "--json"])
        .arg(&json)
        .args(extra)
        .output()
        .unwrap();
    let v = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    (o, v)
}

fn copies(v: &Value) -> Vec<Value> {
    v["clients"].as_array().cloned().unwrap_or_default()
}

/// Each client's report in `v`, once its copy in `out` (of `clients`) is checked whole and
/// its report shows datagrams from the group: the `multicast` part of each.
fn whole_from_the_group(out: &Path, clients: usize, data: &[u8], v: &Value) -> Vec<Value> {
    copies(v)
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            assert!(
                file_copy(out, clients, i + 1) == data,
                "copy {} differs",
                i + 1
            );
            assert!(
                c["multicast"]["sources"].as_u64().unwrap() > 0,
                "nothing from the group: {c}"
            );
            c
        })
        .collect()
}

fn file_copy(out: &Path, clients: usize, i: usize) -> Vec<u8> {
    let name = if clients == 1 {
        NAME.to_string()
    } else {
        format!("{NAME}.{i}")
    };
    std::fs::read(out.join(name)).unwrap()
}

/// The served file's name: a GET for it is long enough for JOIN and META together to stay
/// within three times its size, with an IPv6 group too.
const NAME: &str = "f.bin";

fn setup(size: usize) -> (tempfile::TempDir, tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(size);
    std::fs::write(dir.path().join(NAME), &data).unwrap();
    (dir, tempfile::tempdir().unwrap(), data)
}

/// Three members on loopback, 3% of the group's datagrams dropped: every copy whole and
/// verified, the losses rebuilt from repairs (one per loss: the members share their loss
/// here; a member whose feedback came too late fetches its share by unicast), and the
/// server's summary counts the three.
#[test]
fn members_get_whole_copies_with_losses_rebuilt_from_repairs() {
    if !common::loopback_multicast() {
        return;
    }
    let (group, port) = group();
    let Some(_loss) = Drop_::new(port, 30) else {
        return;
    };
    let (dir, out, data) = setup(32 << 20);
    let mut srv = group_server(dir.path(), &group, port, &[]);
    // Every member's losses made good, and some by the group's repairs: in one fetch of two.
    // (Members whose feedback all comes after the group's linger fetch everything by unicast,
    // as designed: on 2 cores with this binary's other tests beside them, 3 runs in 37 saw
    // all three members starved so, and no repair went out.)
    let mut rebuilt_in_all = 0;
    for attempt in 1..=2 {
        let (o, v) = get(&srv.server(), 3, out.path(), &[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for c in whole_from_the_group(out.path(), 3, &data, &v) {
            let m = &c["multicast"];
            // Its losses were made good: rebuilt from repairs, or fetched by unicast when its
            // feedback came after the group's linger (a member starved of CPU by the tests
            // running beside it: seen 1 run in 8 on 2 cores, before and after issue 22).
            let (rebuilt, unicast) = (
                m["rebuilt"].as_u64().unwrap(),
                m["unicast_datagrams"].as_u64().unwrap(),
            );
            assert!(rebuilt + unicast > 0, "nothing lost was made good: {m}");
            rebuilt_in_all += rebuilt;
            assert_eq!(m["fallback"], Value::Null, "{m}");
        }
        if rebuilt_in_all > 0 {
            break;
        }
        eprintln!("attempt {attempt}: the group's repairs rebuilt nothing (every member's feedback late): {v}");
        for i in 1..=3 {
            let _ = std::fs::remove_file(out.path().join(format!("{NAME}.{i}")));
        }
    }
    assert!(
        rebuilt_in_all > 0,
        "the group's repairs rebuilt nothing, twice"
    );
    // The group's end is logged once the transmission lingered.
    let t = Instant::now();
    while !srv.log().contains("3 members") && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = srv.stop();
    assert!(log.contains("[GROUP") && log.contains("3 members"), "{log}");
}

/// A server without a group answers a multicast GET by unicast: the copy arrives, and one
/// line says why.
#[test]
fn a_server_without_a_group_serves_by_unicast_and_says_so() {
    let (dir, out, data) = setup(4 << 20);
    let srv = serve(dir.path(), &[]);
    let (o, v) = get(&srv.server(), 2, out.path(), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(err.matches("offers no multicast group").count(), 1, "{err}");
    for (i, c) in copies(&v).iter().enumerate() {
        assert!(file_copy(out.path(), 2, i + 1) == data);
        assert_eq!(c["multicast"], Value::Null);
    }
}

/// The group never arrives (every group datagram dropped): after a few seconds the copy
/// goes on by unicast, says so, and arrives whole.
#[test]
fn a_group_that_never_arrives_falls_back_to_unicast() {
    if !common::loopback_multicast() {
        return;
    }
    let (group, port) = group();
    let Some(_loss) = Drop_::new(port, 1000) else {
        return;
    };
    let (dir, out, data) = setup(4 << 20);
    let srv = group_server(dir.path(), &group, port, &[]);
    let (o, v) = get(&srv.server(), 1, out.path(), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("no datagram from multicast group") && err.contains("by unicast"),
        "{err}"
    );
    assert!(file_copy(out.path(), 1, 1) == data);
    let c = &copies(&v)[0];
    let m = &c["multicast"];
    assert!(m["fallback"].is_string(), "{m}");
    assert_eq!(m["unicast_datagrams"], c["datagrams_expected"], "{c}");
}

/// A member that joins a running transmission gets the blocks from its first on from the
/// group and those before it by unicast; the first member gets everything from the group.
#[test]
fn a_late_joiner_gets_what_it_missed_by_unicast() {
    if !common::loopback_multicast() {
        return;
    }
    let (group, port) = group();
    let (dir, out, data) = setup(32 << 20);
    let srv = group_server(
        dir.path(),
        &group,
        port,
        &["--multicast-gather", "0", "--multicast-rate", "200M"],
    );
    let server = srv.server();
    let first_out = tempfile::tempdir().unwrap();
    let first = {
        let server = server.clone();
        let path = first_out.path().to_path_buf();
        std::thread::spawn(move || get(&server, 1, &path, &[]))
    };
    std::thread::sleep(Duration::from_millis(500));
    let (o, v) = get(&server, 1, out.path(), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (o1, v1) = first.join().unwrap();
    assert!(
        o1.status.success(),
        "{}",
        String::from_utf8_lossy(&o1.stderr)
    );
    assert!(file_copy(out.path(), 1, 1) == data);
    assert!(file_copy(first_out.path(), 1, 1) == data);
    let late = &copies(&v)[0]["multicast"];
    let early = &copies(&v1)[0]["multicast"];
    let first_block = late["first_block"].as_u64().unwrap();
    assert!(first_block > 0, "joined late: {late}");
    assert_eq!(early["first_block"], 0);
    assert!(
        late["unicast_datagrams"].as_u64().unwrap() >= first_block,
        "the blocks before its first came by unicast: {late}"
    );
    assert!(late["sources"].as_u64().unwrap() > 0, "{late}");
    // The server sums up what its members fetched by unicast once both are done.
    let t = Instant::now();
    let line = loop {
        let log = srv.log();
        if let Some(l) = log.lines().find(|l| l.contains("every member done")) {
            break l.to_string();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let bytes: u64 = line
        .split(" repaired ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(line.contains("2 sessions") && bytes > 0, "{line}");
}

/// Blast over multicast: every datagram once, nothing repaired, the loss measured per
/// receiver (and no partial copy kept).
#[test]
fn blast_over_multicast_repairs_nothing_and_measures_loss() {
    if !common::loopback_multicast() {
        return;
    }
    let (group, port) = group();
    let Some(_loss) = Drop_::new(port, 50) else {
        return;
    };
    let (dir, out, _) = setup(16 << 20);
    let mut srv = group_server(dir.path(), &group, port, &[]);
    let (o, v) = get(&srv.server(), 2, out.path(), &["--mode", "blast"]);
    assert!(!o.status.success(), "5% loss, nothing repaired");
    for c in copies(&v) {
        let m = &c["multicast"];
        assert!(c["datagrams_lost"].as_u64().unwrap() > 0, "{c}");
        assert_eq!(m["repairs"], 0, "{m}");
        assert_eq!(m["unicast_datagrams"], 0, "{m}");
        assert_eq!(c["complete"], false);
    }
    assert_eq!(
        common::files_in(out.path()),
        1,
        "only the report: no partial copy"
    );
    let t = Instant::now();
    while !srv.log().contains("members, ") && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = srv.stop();
    assert!(log.contains(" 0 repairs"), "{log}");
}

/// A member that loses more than a block's repairs can heal (40%) is not held to the group:
/// what the repairs could not rebuild comes by unicast, and the copy is whole.
#[test]
fn a_member_losing_too_much_finishes_by_unicast() {
    if !common::loopback_multicast() {
        return;
    }
    let (group, port) = group();
    let Some(_loss) = Drop_::new(port, 400) else {
        return;
    };
    let (dir, out, data) = setup(8 << 20);
    let srv = group_server(dir.path(), &group, port, &[]);
    let (o, v) = get(&srv.server(), 1, out.path(), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(file_copy(out.path(), 1, 1) == data);
    let m = &copies(&v)[0]["multicast"];
    assert!(m["unicast_datagrams"].as_u64().unwrap() > 0, "{m}");
}

/// A transmission of a `mib` MiB file at `rate` to hosts on a LAN losing `losses` (per
/// thousand) each: every copy compared with the file; each host's `get --json` report, and
/// the server's log once its group summary is in.
fn lan_run(losses: &[u32], mib: usize, rate: &str) -> Option<(Vec<Value>, String)> {
    lan_run_on(losses, mib, rate, LAN_SENDER, "239.255.78.1:7000")
}

/// [`lan_run`] with the server at `sender` (IPv4 or IPv6) and the group `group`.
fn lan_run_on(
    losses: &[u32],
    mib: usize,
    rate: &str,
    sender: &str,
    group: &str,
) -> Option<(Vec<Value>, String)> {
    let mut lan = Lan::with_losses(losses)?;
    let server = std::net::SocketAddr::new(sender.parse().unwrap(), 6969).to_string();
    let (dir, _, data) = setup(mib << 20);
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = lan.command(&lan.sender.clone(), BIN);
    cmd.args(["serve", "--dir"])
        .arg(dir.path())
        .args(["--bind", &server])
        .args(["--multicast", group, "--multicast-if", sender])
        // Every receiver's GET within the gathering: a host losing 20% may lose its RETRY or
        // META and ask again (100, 200, 400 ms later); at 500 ms one such host once came after
        // the group had started and took the whole file by unicast as a late joiner.
        .args(["--multicast-rate", rate, "--multicast-gather", "2s"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log.reopen().unwrap()));
    lan.spawn(cmd);
    let t = Instant::now();
    while !std::fs::read_to_string(log.path())
        .unwrap()
        .contains("[MULTICAST]")
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "server never started: {}",
            std::fs::read_to_string(log.path()).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let outs: Vec<tempfile::TempDir> = losses
        .iter()
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let runs: Vec<_> = lan
        .receivers
        .clone()
        .into_iter()
        .zip(outs.iter().map(|d| d.path().to_path_buf()))
        .map(|(ns, out)| {
            let mut c = lan.command(&ns, BIN);
            c.args(["get", NAME, "--server", &server, "--multicast"])
                .arg("--out")
                .arg(&out)
                .args(["--quiet", "--timeout", "10s", "--json"])
                .arg(out.join("report.json"));
            std::thread::spawn(move || c.output().unwrap())
        })
        .collect();
    let mut reports = Vec::new();
    for (run, out) in runs.into_iter().zip(&outs) {
        let o = run.join().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(std::fs::read(out.path().join(NAME)).unwrap() == data);
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
                .unwrap();
        reports.push(copies(&v)[0].clone());
    }
    let t = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(log.path()).unwrap();
        if text.contains("members, ") || t.elapsed() > Duration::from_secs(5) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Some((reports, text))
}

/// The repairs a group summary line counts.
fn repairs_in(log: &str) -> (u64, String) {
    let line = log
        .lines()
        .find(|l| l.contains("members, "))
        .unwrap_or_else(|| panic!("no group summary: {log}"))
        .to_string();
    let repairs = line
        .split(" repairs (")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    (repairs, line)
}

/// Five hosts on a LAN, each losing 2% of what reaches it, independently: every copy whole,
/// each rebuilt its own losses, and the group sent far fewer repairs than the union of the
/// losses would cost (1-(0.98)^5 = 9.6% of the file): one repair heals a different loss at
/// each receiver.
#[test]
fn five_hosts_with_independent_loss_get_whole_copies_for_few_repairs() {
    let Some((reports, log)) = lan_run(&[20; 5], 16, "500M") else {
        return;
    };
    let mut losses = 0;
    for c in &reports {
        let m = &c["multicast"];
        assert!(m["rebuilt"].as_u64().unwrap() > 0, "{m}");
        losses += m["rebuilt"].as_u64().unwrap() + m["unicast_datagrams"].as_u64().unwrap();
    }
    let (repairs, line) = repairs_in(&log);
    let datagrams = (16u64 << 20).div_ceil(1440);
    eprintln!(
        "measured: 5 hosts x 2% loss, {datagrams} datagrams: {repairs} repairs for {losses} losses in all ({:.1}% of the file)",
        100.0 * repairs as f64 / datagrams as f64
    );
    assert!(
        (repairs as f64) < 0.08 * datagrams as f64,
        "repairs should cost well under the union of the losses: {line}"
    );
    assert!(line.contains("5 members"), "{line}");
}

/// Three hosts losing 1% and one losing 20%: the lossy one is no longer served (the log says
/// so) and finishes whole by its session; the others take the file from the group.
#[test]
fn a_host_losing_far_more_than_the_rest_is_moved_to_unicast() {
    let Some((reports, log)) = lan_run(&[10, 10, 10, 200], 32, "500M") else {
        return;
    };
    assert!(log.contains("no more repairs for it"), "{log}");
    let lossy = &reports[3]["multicast"];
    assert!(lossy["unicast_datagrams"].as_u64().unwrap() > 0, "{lossy}");
    for c in &reports[..3] {
        let m = &c["multicast"];
        assert!(m["sources"].as_u64().unwrap() > 0, "{m}");
    }
    let (repairs, line) = repairs_in(&log);
    eprintln!("measured: 3 hosts x 1% + 1 x 20%: {line}");
    assert!(
        (repairs as f64) < 0.12 * (32u64 << 20).div_ceil(1440) as f64,
        "{line}"
    );
}

/// The same over IPv6: an ff15:: group, two hosts, every copy whole from the group.
#[test]
fn an_ipv6_group_works() {
    let Some((reports, log)) = lan_run_on(&[0, 0], 8, "500M", LAN_SENDER_V6, "[ff15::78]:7000")
    else {
        return;
    };
    for c in &reports {
        let m = &c["multicast"];
        assert_eq!(m["group"], "[ff15::78]:7000", "{m}");
        assert!(m["sources"].as_u64().unwrap() > 0, "{m}");
        assert_eq!(m["unicast_datagrams"], 0, "{m}");
    }
    assert!(log.contains("2 members"), "{log}");
}

/// The answer to a multicast GET (JOIN and META) is at most three times the GET, as every
/// answer to a request: a one-letter name asks too little for an IPv6 group's JOIN, and is
/// served by unicast; with an IPv4 group its JOIN fits.
#[test]
fn a_multicast_get_is_answered_with_at_most_three_times_its_size() {
    if !common::loopback_multicast() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), random_bytes(100_000)).unwrap();
    for (group, joins) in [("239.255.77.250", true), ("[ff15::7a]", false)] {
        let port = common::free_port().to_string();
        let g = format!("{group}:{port}");
        let srv = serve(dir.path(), &["--multicast", &g]);
        let mut c = RawClient::new(srv.addr);
        let token = c.token();
        let get = Message::Get {
            token,
            request_id: 7,
            mode: Mode::Reliable,
            window_bytes: 1 << 20,
            max_datagram: 0,
            flags: get_flags::MULTICAST,
            name: "f",
        };
        let request = get.to_vec().len();
        let first = c.get(&get);
        let mut answer = first.len();
        let join = matches!(Message::parse(&first), Ok(Message::Join(_)));
        if join {
            let meta = c.recv_control().unwrap();
            assert!(matches!(Message::parse(&meta), Ok(Message::Meta(_))));
            answer += meta.len();
        }
        assert_eq!(join, joins, "{group}");
        assert!(
            answer <= 3 * request,
            "{answer} bytes for a {request}-byte GET"
        );
    }
}

/// A transmission is a thread: at most MAX_TRANSMISSIONS run at once, and a multicast GET of
/// one more file is served by unicast (META without JOIN).
#[test]
fn transmissions_are_bounded_and_one_more_file_goes_by_unicast() {
    if !common::loopback_multicast() {
        return;
    }
    let max = ringblast::server::group::MAX_TRANSMISSIONS;
    let dir = tempfile::tempdir().unwrap();
    for i in 0..=max {
        std::fs::write(dir.path().join(format!("file{i:02}")), random_bytes(10_000)).unwrap();
    }
    let (group, port) = group();
    // A long gathering window: every transmission is still waiting when the last GET comes.
    let srv = group_server(dir.path(), &group, port, &["--multicast-gather", "10s"]);
    let mut joined = 0;
    for i in 0..=max {
        // A client each: no answer to an earlier GET is left in its socket.
        let mut c = RawClient::new(srv.addr);
        let name = format!("file{i:02}");
        let get = Message::Get {
            token: c.token(),
            request_id: i as u32 + 1,
            mode: Mode::Reliable,
            window_bytes: 1 << 20,
            max_datagram: 0,
            flags: get_flags::MULTICAST,
            name: &name,
        };
        let first = c.get(&get);
        match Message::parse(&first) {
            Ok(Message::Join(_)) => {
                joined += 1;
                let _meta = c.recv_control().unwrap();
            }
            Ok(Message::Meta(_)) => assert_eq!(i, max, "only the one past the bound"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(joined, max);
}

/// A server that authenticates its clients seals its transmission with a key of its own,
/// which each member gets sealed with its connection's key (GROUP_KEY before JOIN): the
/// members take the file from the group, whole; every group datagram was sealed (a member
/// counts none unauthenticated), and the log says both the connection and the group were.
#[test]
fn sealed_members_take_the_file_from_the_group_with_its_key() {
    if !common::loopback_multicast() {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let k = |n: &str| keys.path().join(n).to_str().unwrap().to_string();
    ringblast::keys::write_key_pair(Path::new(&k("server")), "server").unwrap();
    ringblast::keys::write_key_pair(Path::new(&k("member")), "member").unwrap();
    std::fs::copy(k("member.pub"), k("authorized")).unwrap();
    let (group, port) = group();
    let (dir, out, data) = setup(8 << 20);
    let (server_key, authorized) = (k("server"), k("authorized"));
    let mut srv = group_server(
        dir.path(),
        &group,
        port,
        &["--identity", &server_key, "--authorized", &authorized],
    );
    let (member, pin) = (k("member"), k("server.pub"));
    let (o, v) = get(
        &srv.server(),
        3,
        out.path(),
        &["--identity", &member, "--server-key", &pin],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for c in whole_from_the_group(out.path(), 3, &data, &v) {
        assert_eq!(c["unauthenticated"].as_u64(), Some(0), "{c}");
    }
    let log = srv.stop();
    assert!(log.contains("[GROUP") && log.contains("sealed"), "{log}");
}
