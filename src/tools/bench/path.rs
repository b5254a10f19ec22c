//! `bench --path`: the matrix across a path this machine builds (root). `veth:MTU` is two
//! network namespaces joined by a veth pair of that MTU; `router:RATE` puts a third, router
//! namespace between them whose egress towards the client is shaped with `tc tbf` (a switch
//! port: the sender feels no backpressure); `--delay`, `--loss`, `--reorder` add a
//! `ringblast relay` on the way (in the router, or the server's namespace). The server
//! (`serve --generated --engines ...`) runs in one namespace and this bench, re-run with
//! `--server`, in the other; everything made is removed when the bench ends, fails, or is
//! stopped (Ctrl-C / SIGTERM: the cells measured are kept).

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

/// A path `bench --path` can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathSpec {
    /// The server in this process, on loopback (no namespaces).
    Loopback,
    /// Two namespaces joined by a veth pair of this MTU.
    Veth { mtu: u32 },
    /// Server - router - client, MTU 1500, the router's egress to the client shaped to
    /// `rate_bps` with tbf.
    Router { rate_bps: u64 },
}

impl FromStr for PathSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
        match (kind, arg) {
            ("loopback", "") => Ok(PathSpec::Loopback),
            ("veth", mtu) => {
                let mtu: u32 = mtu.parse().map_err(|_| {
                    format!("bad path {s:?}: veth:MTU with MTU in bytes (e.g. veth:1500)")
                })?;
                if !(1280..=65535).contains(&mtu) {
                    return Err(format!("bad path {s:?}: the MTU must be 1280-65535"));
                }
                Ok(PathSpec::Veth { mtu })
            }
            ("router", rate) => {
                let rate_bps = crate::cli::values::rate(rate).map_err(|e| {
                    format!("bad path {s:?}: router:RATE with a rate in bits/s (e.g. router:1gbit): {e}")
                })?;
                Ok(PathSpec::Router { rate_bps })
            }
            _ => Err(format!(
                "bad path {s:?}: loopback, veth:MTU (veth:1500) or router:RATE (router:1gbit)"
            )),
        }
    }
}

impl fmt::Display for PathSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathSpec::Loopback => write!(f, "loopback"),
            PathSpec::Veth { mtu } => write!(f, "veth:{mtu}"),
            // tc's spelling, as the user would give it.
            PathSpec::Router { rate_bps } => match *rate_bps {
                r if r % 1_000_000_000 == 0 => write!(f, "router:{}gbit", r / 1_000_000_000),
                r if r % 1_000_000 == 0 => write!(f, "router:{}mbit", r / 1_000_000),
                r if r % 1_000 == 0 => write!(f, "router:{}kbit", r / 1_000),
                r => write!(f, "router:{r}bit"),
            },
        }
    }
}

/// Impairments a relay adds on the path (`--delay`, `--loss`, `--reorder`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impair {
    pub delay: Duration,
    pub loss: f64,
    pub reorder: f64,
}

impl Impair {
    fn any(&self) -> bool {
        !self.delay.is_zero() || self.loss > 0.0 || self.reorder > 0.0
    }
}

/// What the results call a path with its impairments (`router:1 Gbit/s, delay 20ms, loss 1%`).
pub fn label(spec: PathSpec, imp: &Impair) -> String {
    let mut s = spec.to_string();
    if !imp.delay.is_zero() {
        s += &format!(" delay {:?}", imp.delay);
    }
    if imp.loss > 0.0 {
        s += &format!(" loss {}%", imp.loss * 100.0);
    }
    if imp.reorder > 0.0 {
        s += &format!(" reorder {}%", imp.reorder * 100.0);
    }
    s
}

/// Runs `ip` with `args`; an error names the command and what it said.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        anyhow::bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Namespaces made for one bench, and the processes started in them: all removed on drop.
pub struct Testbed {
    namespaces: Vec<String>,
    children: Vec<Child>,
    /// The client's namespace, and where it reaches the server (directly or via the relay).
    pub client_ns: String,
    pub server_ns: String,
    pub server_addr: SocketAddr,
    /// What the server's namespace binds.
    server_bind: SocketAddr,
    /// The namespace and address of the relay, if there is one.
    relay: Option<(String, SocketAddr)>,
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            remove_namespace(ns);
        }
    }
}

/// Removes namespace `ns`, what still runs inside first (a namespace with processes lives on
/// after `ip netns del`).
fn remove_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _ = ip(&["netns", "del", ns]);
}

/// Removes the namespaces of benches whose process is gone (killed before they could).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for name in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        let Some(rest) = name.strip_prefix("rbb") else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            remove_namespace(name);
        }
    }
}

/// The prefix of every namespace and interface a bench of this process makes.
pub fn tag() -> String {
    format!("rbb{}", std::process::id())
}

impl Testbed {
    /// Builds `spec` (not loopback). Fails with one line without root.
    pub fn build(spec: PathSpec, imp: &Impair) -> anyhow::Result<Testbed> {
        if !nix::unistd::geteuid().is_root() {
            anyhow::bail!(
                "bench --path {spec} builds network namespaces: run it as root (or run `serve --generated` on another host and `bench --server HOST` here)"
            );
        }
        remove_stale();
        let tag = tag();
        let (s, c, r) = (format!("{tag}s"), format!("{tag}c"), format!("{tag}r"));
        let mut bed = Testbed {
            namespaces: Vec::new(),
            children: Vec::new(),
            client_ns: c.clone(),
            server_ns: s.clone(),
            server_addr: "10.79.1.1:6969".parse().expect("literal"),
            server_bind: "10.79.1.1:6969".parse().expect("literal"),
            relay: None,
        };
        for ns in [&s, &c] {
            ip(&["netns", "add", ns])?;
            bed.namespaces.push(ns.clone());
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let (sdev, cdev) = (format!("{tag}sa"), format!("{tag}ca"));
        match spec {
            PathSpec::Loopback => anyhow::bail!("loopback needs no namespaces"),
            PathSpec::Veth { mtu } => {
                let mtu = mtu.to_string();
                ip(&[
                    "link", "add", &sdev, "netns", &s, "type", "veth", "peer", "name", &cdev,
                    "netns", &c,
                ])?;
                ip(&["-n", &s, "link", "set", &sdev, "mtu", &mtu, "up"])?;
                ip(&["-n", &c, "link", "set", &cdev, "mtu", &mtu, "up"])?;
                ip(&["-n", &s, "addr", "add", "10.79.1.1/24", "dev", &sdev])?;
                ip(&["-n", &c, "addr", "add", "10.79.1.2/24", "dev", &cdev])?;
                if imp.any() {
                    bed.relay = Some((s.clone(), "10.79.1.1:7000".parse().expect("literal")));
                }
            }
            PathSpec::Router { rate_bps } => {
                ip(&["netns", "add", &r])?;
                bed.namespaces.push(r.clone());
                ip(&["-n", &r, "link", "set", "lo", "up"])?;
                let (rs, rc) = (format!("{tag}rs"), format!("{tag}rc"));
                ip(&[
                    "link", "add", &sdev, "netns", &s, "type", "veth", "peer", "name", &rs,
                    "netns", &r,
                ])?;
                ip(&[
                    "link", "add", &cdev, "netns", &c, "type", "veth", "peer", "name", &rc,
                    "netns", &r,
                ])?;
                for (ns, dev, addr) in [
                    (&s, &sdev, "10.79.1.1/24"),
                    (&r, &rs, "10.79.1.254/24"),
                    (&r, &rc, "10.79.2.254/24"),
                    (&c, &cdev, "10.79.2.2/24"),
                ] {
                    ip(&["-n", ns, "link", "set", dev, "mtu", "1500", "up"])?;
                    ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
                }
                ip(&["-n", &s, "route", "add", "default", "via", "10.79.1.254"])?;
                ip(&["-n", &c, "route", "add", "default", "via", "10.79.2.254"])?;
                let fwd = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &r,
                        "sysctl",
                        "-qw",
                        "net.ipv4.ip_forward=1",
                    ])
                    .status()
                    .context("cannot run sysctl in the router namespace")?;
                if !fwd.success() {
                    anyhow::bail!("cannot turn forwarding on in the router namespace");
                }
                // A 256 KB bucket and a 50 ms queue: benches/bottleneck.sh's switch port.
                let rate = rate_bps.to_string();
                let tc = Command::new("ip")
                    .args([
                        "netns", "exec", &r, "tc", "qdisc", "add", "dev", &rc, "root",
                    ])
                    .args(["tbf", "rate", &format!("{rate}bit"), "burst", "256kb"])
                    .args(["latency", "50ms"])
                    .output()
                    .context("cannot run tc (iproute2)")?;
                if !tc.status.success() {
                    anyhow::bail!(
                        "tc tbf on the router: {}",
                        String::from_utf8_lossy(&tc.stderr).trim()
                    );
                }
                if imp.any() {
                    ip(&["-n", &r, "addr", "add", "10.79.2.253/24", "dev", &rc])?;
                    bed.relay = Some((r.clone(), "10.79.2.253:7000".parse().expect("literal")));
                }
            }
        }
        Ok(bed)
    }

    /// `ringblast ARGS` inside namespace `ns`.
    fn command(ns: &str, args: &[String]) -> anyhow::Result<Command> {
        let exe = std::env::current_exe().context("cannot find this program's path")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(exe).args(args);
        Ok(cmd)
    }

    /// Starts the server (and the relay), its log to `log` and its sessions (`serve --json`)
    /// to `sessions`; waits until it answers `list`.
    pub fn start(
        &mut self,
        engines: &str,
        generated_max: u64,
        dir: Option<&std::path::Path>,
        imp: &Impair,
        log: &std::path::Path,
        sessions: &std::path::Path,
    ) -> anyhow::Result<()> {
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("cannot write {}", log.display()))?;
        let sessions_file = std::fs::File::create(sessions)
            .with_context(|| format!("cannot write {}", sessions.display()))?;
        let mut args: Vec<String> = [
            "serve",
            "--generated",
            "--generated-max",
            &generated_max.to_string(),
            "--engines",
            engines,
            "--bind",
            &self.server_bind.to_string(),
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(dir) = dir {
            args.push("--dir".into());
            args.push(dir.display().to_string());
        }
        let child = Self::command(&self.server_ns, &args)?
            .stdin(Stdio::null())
            .stdout(sessions_file)
            .stderr(log_file)
            // Its own process group: the terminal's Ctrl-C reaches the bench, which stops
            // it when the cells measured are written.
            .process_group(0)
            .spawn()
            .context("cannot start the server")?;
        self.children.push(child);
        if let Some((ns, listen)) = self.relay.clone() {
            let args: Vec<String> = vec![
                "relay".into(),
                "--listen".into(),
                listen.to_string(),
                "--to".into(),
                self.server_bind.to_string(),
                "--delay".into(),
                format!("{}us", imp.delay.as_micros()),
                "--loss".into(),
                imp.loss.to_string(),
                "--reorder".into(),
                imp.reorder.to_string(),
            ];
            let child = Self::command(&ns, &args)?
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .context("cannot start the relay")?;
            self.children.push(child);
            self.server_addr = listen;
        }
        // Up when `list` answers from the client's side.
        let t = Instant::now();
        loop {
            let probe = Self::command(
                &self.client_ns,
                &[
                    "list".into(),
                    "--server".into(),
                    self.server_addr.to_string(),
                    "--timeout".into(),
                    "0.5".into(),
                ],
            )?
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
            if probe.success() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.children.first_mut().map(|c| c.try_wait()) {
                anyhow::bail!(
                    "the server in namespace {} exited ({status}): see {}",
                    self.server_ns,
                    log.display()
                );
            }
            if t.elapsed() > Duration::from_secs(15) {
                anyhow::bail!(
                    "the server in namespace {} never answered: see {}",
                    self.server_ns,
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's process id (`ip netns exec` becomes the program it runs).
    pub fn server_pid(&self) -> u32 {
        self.children.first().map_or(0, |c| c.id())
    }

    /// Runs `bench ARGS` in the client's namespace to its end. A stop (`stop` set by Ctrl-C
    /// or SIGTERM here) is passed on as SIGINT: it writes the cells measured and ends.
    /// Returns its exit code.
    pub fn run_client(&mut self, args: &[String], stop: &AtomicBool) -> anyhow::Result<i32> {
        let mut child = Self::command(&self.client_ns, args)?
            .process_group(0)
            .spawn()
            .context("cannot start the bench in the client namespace")?;
        let mut told = false;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code().unwrap_or(1));
            }
            if stop.load(Ordering::Acquire) && !told {
                told = true;
                // `ip netns exec` runs the bench as its own child: the whole group is told.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_and_print() {
        assert_eq!("loopback".parse(), Ok(PathSpec::Loopback));
        assert_eq!("veth:1500".parse(), Ok(PathSpec::Veth { mtu: 1500 }));
        assert_eq!(
            "router:1gbit".parse(),
            Ok(PathSpec::Router {
                rate_bps: 1_000_000_000
            })
        );
        for bad in [
            "veth",
            "veth:100",
            "router",
            "router:fast",
            "wifi:1",
            "loopback:1",
        ] {
            assert!(bad.parse::<PathSpec>().is_err(), "{bad}");
        }
        assert_eq!(PathSpec::Veth { mtu: 9000 }.to_string(), "veth:9000");
        for spelled in ["router:1gbit", "router:200mbit", "router:1500kbit"] {
            assert_eq!(spelled.parse::<PathSpec>().unwrap().to_string(), spelled);
        }
        let imp = Impair {
            delay: Duration::from_millis(20),
            loss: 0.01,
            reorder: 0.0,
        };
        assert_eq!(
            label(PathSpec::Veth { mtu: 1500 }, &imp),
            "veth:1500 delay 20ms loss 1%"
        );
    }
}
