//! Hosts on one machine: network namespaces joined by veth pairs (`ip netns`, `ip link`), for
//! tests of what crosses a real link (MTU, fragmentation, GSO/GRO, IPv6).
//!
//! Needs root and iproute2; [`Hosts::two`] returns `None` after saying why when they are
//! missing, so the test skips. Everything a `Hosts` creates (namespaces, their veths, the
//! processes started in them) is removed when it is dropped, failed test or not; namespaces
//! left by a killed test run (their name holds its pid) are removed by the next one.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Prefix of every namespace these tests create.
const PREFIX: &str = "rbt";

/// Server side IPv4/IPv6 addresses, client side, on the link between them.
pub const SERVER_V4: &str = "10.77.0.1";
pub const CLIENT_V4: &str = "10.77.0.2";
pub const SERVER_V6: &str = "fd77::1";
pub const CLIENT_V6: &str = "fd77::2";

/// Two hosts, a server and a client, joined by one veth pair.
pub struct Hosts {
    pub server: String,
    pub client: String,
    children: Vec<Child>,
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"))
}

fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether namespaces can be made here (checked once per test process); if not, says why
/// and the test skips (fails in CI).
#[allow(dead_code)]
pub fn available() -> bool {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    match WHY.get_or_init(unavailable) {
        Some(why) => {
            ringblast::skip(why);
            false
        }
        None => true,
    }
}

/// Why namespaces cannot be made here, if they cannot.
fn unavailable() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("");
    if euid != "0" {
        return Some("not root (network namespaces need it)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => {}
        _ => return Some("no `ip` command (iproute2)".into()),
    }
    let probe = format!("{PREFIX}probe{}", std::process::id());
    if !ip(&["netns", "add", &probe]).status.success() {
        return Some("`ip netns add` failed".into());
    }
    ip(&["netns", "del", &probe]);
    None
}

/// Removes namespaces of earlier runs whose process is gone.
fn remove_stale() {
    let list = String::from_utf8_lossy(&ip(&["netns", "list"]).stdout).to_string();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let alive = !pid.is_empty() && std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive && !pid.is_empty() {
            kill_all_in(name);
            ip(&["netns", "del", name]);
        }
    }
}

/// `program` run inside namespace `ns`.
fn in_ns(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

/// Starts `cmd` and keeps it in `children` (killed when they go).
fn keep(children: &mut Vec<Child>, mut cmd: Command) -> &mut Child {
    let child = cmd.spawn().expect("spawn in a namespace");
    children.push(child);
    children.last_mut().expect("just pushed")
}

fn kill_all_in(ns: &str) {
    let pids = String::from_utf8_lossy(&ip(&["netns", "pids", ns]).stdout).to_string();
    for pid in pids.split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
}

impl Hosts {
    /// A server and a client namespace joined by a veth pair of `mtu`, with IPv4 and IPv6
    /// addresses ([`SERVER_V4`] ... [`CLIENT_V6`]). `None` (after a message) when namespaces
    /// cannot be made here.
    pub fn two(mtu: u32) -> Option<Hosts> {
        Self::two_with(mtu, mtu)
    }

    /// Like [`Hosts::two`], with another MTU on each end of the link.
    pub fn two_with(server_mtu: u32, client_mtu: u32) -> Option<Hosts> {
        static WHY: OnceLock<Option<String>> = OnceLock::new();
        let why = WHY.get_or_init(|| {
            let why = unavailable();
            if why.is_none() {
                remove_stale();
            }
            why
        });
        if let Some(why) = why {
            ringblast::skip(why);
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{pid}x{n}");
        let hosts = Hosts {
            server: format!("{PREFIX}{tag}s"),
            client: format!("{PREFIX}{tag}c"),
            children: Vec::new(),
        };
        // veth names live in the root namespace first: short (15 bytes) and unique.
        let (va, vb) = (
            format!("rb{}a{n}", pid % 100_000),
            format!("rb{}b{n}", pid % 100_000),
        );
        ip_ok(&["netns", "add", &hosts.server]);
        ip_ok(&["netns", "add", &hosts.client]);
        ip_ok(&[
            "link",
            "add",
            &va,
            "netns",
            &hosts.server,
            "type",
            "veth",
            "peer",
            "name",
            &vb,
            "netns",
            &hosts.client,
        ]);
        for (ns, dev, v4, v6, mtu) in [
            (&hosts.server, &va, SERVER_V4, SERVER_V6, server_mtu),
            (&hosts.client, &vb, CLIENT_V4, CLIENT_V6, client_mtu),
        ] {
            ip_ok(&["-n", ns, "link", "set", "lo", "up"]);
            ip_ok(&["-n", ns, "link", "set", dev, "mtu", &mtu.to_string(), "up"]);
            ip_ok(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev]);
            ip_ok(&[
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
        }
        Some(hosts)
    }

    /// `program args` run inside namespace `ns`.
    pub fn command(&self, ns: &str, program: &str) -> Command {
        in_ns(ns, program)
    }

    /// Waits (at most 10 s) until a server at `server` answers `list` from the client.
    #[allow(dead_code)]
    pub fn wait_listing(&self, server: &str) {
        let t = std::time::Instant::now();
        while !in_ns(&self.client, crate::common::BIN)
            .args(["list", "--server", server, "--timeout", "0.5"])
            .output()
            .unwrap()
            .status
            .success()
        {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(10),
                "the server never answered"
            );
        }
    }

    /// Starts `cmd` and keeps it, to be killed when the hosts go.
    pub fn spawn(&mut self, cmd: Command) -> &mut Child {
        keep(&mut self.children, cmd)
    }

    /// Stops every process started with [`Hosts::spawn`] and hands them back (their piped
    /// output can still be read).
    pub fn stop_all(&mut self) -> Vec<Child> {
        let mut children = std::mem::take(&mut self.children);
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        children
    }

    /// A counter of `/proc/net/snmp` inside `ns`, e.g. ("Ip", "ReasmReqds").
    pub fn snmp(&self, ns: &str, group: &str, field: &str) -> u64 {
        let out = self
            .command(ns, "cat")
            .arg("/proc/net/snmp")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let prefix = format!("{group}:");
        let mut rows = text.lines().filter(|l| l.starts_with(&prefix));
        let (names, values) = (rows.next().unwrap_or(""), rows.next().unwrap_or(""));
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == field)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("{group} {field} not in /proc/net/snmp of {ns}"))
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.server, &self.client] {
            kill_all_in(ns);
            // Deleting a namespace deletes the veth end in it, and with it the pair.
            ip(&["netns", "del", ns]);
        }
    }
}

/// A LAN on one machine, for multicast: a sender and `k` receivers, each a namespace with a
/// veth into one bridge in a switch namespace (which floods groups: `mcast_snooping 0`).
/// Addresses 10.78.0.1 and fd78::1 (sender), 10.78.0.10 + i and fd78::(10 + i) (receiver i).
/// With `loss_permille`, each
/// receiver drops that share of incoming UDP at random (nftables, independently), and the
/// sender's veth segments UDP GSO bursts in software so the drops see single datagrams.
pub struct Lan {
    pub sender: String,
    pub receivers: Vec<String>,
    switch: String,
    children: Vec<Child>,
}

pub const LAN_SENDER: &str = "10.78.0.1";
/// The sender's IPv6 address (receiver i has fd78::(10 + i)).
pub const LAN_SENDER_V6: &str = "fd78::1";

/// Whether `program` can be run (`-V`/`--version` answers).
fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Lan {
    /// `None` (after a message) when namespaces, nftables or ethtool are missing.
    pub fn new(k: usize, loss_permille: u32) -> Option<Lan> {
        Lan::with_losses(&vec![loss_permille; k])
    }

    /// A receiver per entry of `losses`, each losing that many datagrams in a thousand.
    pub fn with_losses(losses: &[u32]) -> Option<Lan> {
        let k = losses.len();
        let lossy = losses.iter().any(|&l| l > 0);
        // Namespaces at all (and stale ones removed): as for two hosts.
        drop(Hosts::two(1500)?);
        if lossy && !(have("nft", "--version") && have("ethtool", "--version")) {
            ringblast::skip("no nft or ethtool (Debian: nftables, ethtool) for per-host loss");
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{pid}m{n}");
        let lan = Lan {
            sender: format!("{PREFIX}{tag}s"),
            receivers: (0..k).map(|i| format!("{PREFIX}{tag}r{i}")).collect(),
            switch: format!("{PREFIX}{tag}w"),
            children: Vec::new(),
        };
        ip_ok(&["netns", "add", &lan.switch]);
        ip_ok(&["-n", &lan.switch, "link", "add", "br0", "type", "bridge"]);
        ip_ok(&[
            "-n",
            &lan.switch,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip_ok(&["-n", &lan.switch, "link", "set", "br0", "up"]);
        let hosts: Vec<(String, String)> = std::iter::once((lan.sender.clone(), LAN_SENDER.into()))
            .chain(
                lan.receivers
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (r.clone(), format!("10.78.0.{}", 10 + i))),
            )
            .collect();
        for (j, (ns, addr)) in hosts.iter().enumerate() {
            ip_ok(&["netns", "add", ns]);
            let port = format!("p{j}");
            ip_ok(&[
                "-n",
                &lan.switch,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            ]);
            ip_ok(&[
                "-n",
                &lan.switch,
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ]);
            ip_ok(&["-n", ns, "link", "set", "lo", "up"]);
            ip_ok(&["-n", ns, "link", "set", "eth0", "up"]);
            ip_ok(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            let v6 = format!("fd78::{}/64", addr.rsplit('.').next().expect("dotted"));
            ip_ok(&["-n", ns, "-6", "addr", "add", &v6, "dev", "eth0", "nodad"]);
        }
        if lossy {
            let out = lan
                .command(&lan.sender, "ethtool")
                .args(["-K", "eth0", "tx-udp-segmentation", "off"])
                .output()
                .unwrap();
            assert!(out.status.success(), "ethtool: {out:?}");
            for (r, &loss_permille) in lan.receivers.iter().zip(losses) {
                let rule = format!(
                    "add table inet rb; add chain inet rb in {{ type filter hook input priority 0; }}; add rule inet rb in meta l4proto udp numgen random mod 1000 < {loss_permille} drop"
                );
                let out = lan.command(r, "nft").arg(&rule).output().unwrap();
                assert!(out.status.success(), "nft: {out:?}");
            }
        }
        Some(lan)
    }

    /// `program` run inside namespace `ns`.
    pub fn command(&self, ns: &str, program: &str) -> Command {
        in_ns(ns, program)
    }

    /// Starts `cmd` and keeps it, to be killed when the LAN goes.
    pub fn spawn(&mut self, cmd: Command) -> &mut Child {
        keep(&mut self.children, cmd)
    }

    /// Bytes the sender's interface has sent.
    pub fn sender_tx_bytes(&self) -> u64 {
        let out = self
            .command(&self.sender, "cat")
            .arg("/sys/class/net/eth0/statistics/tx_bytes")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in std::iter::once(&self.sender)
            .chain(self.receivers.iter())
            .chain(std::iter::once(&self.switch))
        {
            kill_all_in(ns);
            ip(&["netns", "del", ns]);
        }
    }
}
