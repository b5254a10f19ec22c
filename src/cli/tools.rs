//! `ringblast bench`, `ringblast relay` and `ringblast demo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use super::{values, EngineArg, ModeArg};
use crate::protocol::Mode;
use crate::report::logging;
use crate::server::engine::EngineKind;
use crate::tools::bench::path::{Impair, PathSpec, Testbed};
use crate::tools::bench::{self, BenchConfig};
use crate::tools::demo::{self, DemoConfig};
use crate::tools::relay::{Impairments, Relay, RelayConfig};

#[derive(Args)]
pub struct BenchArgs {
    /// Sub-client counts to measure, comma-separated (each 1-1000).
    #[arg(long, value_delimiter = ',', default_value = "1,5,10",
          value_parser = values::count(1, 1000))]
    clients: Vec<usize>,
    /// File sizes, comma-separated (files on disk are made in --files if missing; generated
    /// ones are gen-SIZE on the server).
    #[arg(long, value_delimiter = ',', value_parser = values::size, default_value = "100MiB,250MiB")]
    sizes: Vec<u64>,
    /// Engines to measure, comma-separated: uring, threads. Each GET names its engine: one
    /// server offers them all (serve --engines uring,threads for --server).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "uring,threads"
    )]
    engines: Vec<EngineArg>,
    /// Modes to measure, comma-separated: reliable, blast.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "reliable,blast"
    )]
    modes: Vec<ModeArg>,
    /// Repetitions of each cell (1-100); the medians are reported, with their spread.
    #[arg(long, default_value_t = 3, value_parser = values::count(1, 100))]
    reps: usize,
    /// Directory for the results.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Directory of the files on disk (source files).
    #[arg(long, default_value = "files")]
    files: PathBuf,
    /// Where the files come from, comma-separated: files (on disk, in --files; with --server,
    /// the server's SIZE.bin files, as bench or demo made them there) or generated (the
    /// server's gen-SIZE, from memory); both to compare them
    /// [default: files; generated with --server or --path].
    #[arg(long, value_enum, value_delimiter = ',')]
    sources: Vec<SourceArg>,
    /// Receive buffer each sub-client asks for (the lab's Python client had the
    /// kernel default, 208KiB: try it to see the lab's losses in blast mode).
    #[arg(long, value_parser = values::size, default_value = "48MiB")]
    recv_buffer: u64,
    /// How copies travel, comma-separated: unicast (a session per sub-client, the file sent
    /// N times), multicast (one group transmission for all N, on loopback: needs
    /// `ip link set lo multicast on`). Both compare the time until all N are done and the
    /// bytes the server sent (uring engine).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "unicast")]
    delivery: Vec<DeliveryArg>,
    /// The group's pace in multicast runs, bits/s (e.g. 2G).
    #[arg(long, value_parser = values::rate, default_value = "2G")]
    multicast_rate: u64,
    /// Measure against a server running on another host (HOST[:PORT], port 6969 if none):
    /// start it there with `serve --generated --engines uring,threads --bind 0.0.0.0`. Its
    /// generated files are fetched; its CPU is not measured from here.
    #[arg(long, value_parser = values::socket_addr, conflicts_with = "path")]
    server: Option<SocketAddr>,
    /// The path to measure across, built on this machine (root): loopback (a server in this
    /// process), veth:MTU (two network namespaces joined by a veth pair, e.g. veth:1500),
    /// router:RATE (a third, router namespace shaping the link with tc tbf, e.g.
    /// router:1gbit). Everything made is removed at the end, on a failure and on Ctrl-C.
    #[arg(long, default_value = "loopback")]
    path: PathSpec,
    /// Delay added on the path by a `ringblast relay` (e.g. 20ms; veth and router paths).
    #[arg(long, value_parser = values::delay, default_value = "0")]
    delay: Duration,
    /// Loss the relay adds per datagram and direction (e.g. 1%).
    #[arg(long, value_parser = values::probability, default_value = "0")]
    loss: f64,
    /// Datagrams the relay holds back ~1-2 ms so later ones overtake them (e.g. 1%).
    #[arg(long, value_parser = values::probability, default_value = "0")]
    reorder: f64,
    /// Compare two result directories instead of measuring: B's medians over A's per cell,
    /// flagged where the spreads over repetitions overlap.
    #[arg(long, num_args = 2, value_names = ["DIR_A", "DIR_B"], conflicts_with_all = ["server", "path"])]
    compare: Option<Vec<PathBuf>>,
    /// (For `--path`: what the results call the path the bench runs across.)
    #[arg(long, hide = true)]
    path_name: Option<String>,
    /// (For `--path`: what is known of the server's machine.)
    #[arg(long, hide = true)]
    server_machine: Option<String>,
    /// (For `--path`: the server's process, whose CPU time /proc gives.)
    #[arg(long, hide = true)]
    server_pid: Option<u32>,
    /// (For `--path`: where that server writes its sessions, `serve --json`.)
    #[arg(long, hide = true)]
    server_sessions: Option<PathBuf>,
}

/// `bench --delivery`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeliveryArg {
    Unicast,
    Multicast,
}

/// `bench --sources`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceArg {
    /// Files on disk, in --files (made there if missing), read from the page cache.
    Files,
    /// The server's generated files (gen-SIZE), from memory.
    Generated,
}

impl From<SourceArg> for bench::Source {
    fn from(s: SourceArg) -> bench::Source {
        match s {
            SourceArg::Files => bench::Source::Files,
            SourceArg::Generated => bench::Source::Generated,
        }
    }
}

impl From<&BenchArgs> for BenchConfig {
    fn from(a: &BenchArgs) -> BenchConfig {
        let remote = a.server.is_some() || a.path != PathSpec::Loopback;
        BenchConfig {
            clients: a.clients.clone(),
            sizes: a.sizes.clone(),
            engines: a.engines.iter().map(|&e| EngineKind::from(e)).collect(),
            modes: a.modes.iter().map(|&m| Mode::from(m)).collect(),
            reps: a.reps,
            out: a.out.clone(),
            files: a.files.clone(),
            recv_buffer: a.recv_buffer.min(usize::MAX as u64) as usize,
            deliveries: a
                .delivery
                .iter()
                .map(|d| match d {
                    DeliveryArg::Unicast => bench::Delivery::Unicast,
                    DeliveryArg::Multicast => bench::Delivery::Multicast,
                })
                .collect(),
            multicast_rate_bps: a.multicast_rate,
            stop: None,
            server: a.server,
            sources: match (a.sources.is_empty(), remote) {
                (true, false) => vec![bench::Source::Files],
                (true, true) => vec![bench::Source::Generated],
                (false, _) => a.sources.iter().map(|&s| s.into()).collect(),
            },
            path: a.path_name.clone().unwrap_or_else(|| match a.server {
                Some(addr) => format!("to {addr}"),
                None => bench::path::label(a.path, &a.impairments()),
            }),
            server_machine: a.server_machine.clone(),
            server_pid: a.server_pid,
            server_sessions: a.server_sessions.clone(),
        }
    }
}

impl BenchArgs {
    fn impairments(&self) -> Impair {
        Impair {
            delay: self.delay,
            loss: self.loss,
            reorder: self.reorder,
        }
    }

    pub fn run(self) -> anyhow::Result<ExitCode> {
        logging::init("warn");
        if let Some(dirs) = &self.compare {
            print!("{}", bench::compare::compare(&dirs[0], &dirs[1])?);
            return Ok(ExitCode::SUCCESS);
        }
        let stop = crate::sys::stop_on_signals();
        if self.path != PathSpec::Loopback {
            return self.run_across_path(stop);
        }
        if self.impairments() != Impair::default() {
            anyhow::bail!(
                "--delay, --loss and --reorder need a path with a relay on it: --path veth:1500 or router:RATE"
            );
        }
        let mut cfg = BenchConfig::from(&self);
        // Ctrl-C: the run under way is dropped, the runs measured are kept, written and shown.
        cfg.stop = Some(stop);
        let results = bench::run(&cfg)?;
        print!("{}", bench::table(&results.cells));
        println!(
            "results: {}/results.csv, results.json, throughput.svg, per_client.svg, loss.svg, latency.svg, server_latency.svg",
            cfg.out.display()
        );
        if let Some(sig) = crate::sys::stop_signal() {
            eprintln!(
                "ringblast: interrupted: {} runs measured and kept in {}",
                results.runs.len(),
                cfg.out.display()
            );
            return Ok(ExitCode::from((128 + sig).clamp(0, 255) as u8));
        }
        Ok(ExitCode::SUCCESS)
    }

    /// `--path veth:MTU | router:RATE`: builds the namespaces, serves in one, runs this bench
    /// with `--server` in the other, removes everything (also on a failure or a stop).
    fn run_across_path(
        self,
        stop: &'static std::sync::atomic::AtomicBool,
    ) -> anyhow::Result<ExitCode> {
        if self.delivery.contains(&DeliveryArg::Multicast) {
            anyhow::bail!("--delivery multicast runs on loopback only (--path loopback)");
        }
        let imp = self.impairments();
        let files = self.sources.contains(&SourceArg::Files);
        if files {
            // Made here, served from this machine's disk by the server in its namespace.
            for &size in &self.sizes {
                crate::tools::demo::ensure_file(&self.files, size)?;
            }
        }
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("cannot create {}", self.out.display()))?;
        let mut bed = Testbed::build(self.path, &imp)?;
        let engines: Vec<&str> = self
            .engines
            .iter()
            .map(|&e| EngineKind::from(e).as_str())
            .collect();
        let max = self.sizes.iter().copied().max().unwrap_or(1).max(1);
        let dir = files.then_some(self.files.as_path());
        let sessions = self.out.join("server-sessions.jsonl");
        bed.start(
            &engines.join(","),
            max,
            dir,
            &imp,
            &self.out.join("server.log"),
            &sessions,
        )?;
        let label = bench::path::label(self.path, &imp);
        eprintln!(
            "bench across {label}: server in namespace {}, reached at {}, clients in {} (server log: {})",
            bed.server_ns,
            bed.server_addr,
            bed.client_ns,
            self.out.join("server.log").display()
        );
        let list = |v: Vec<String>| v.join(",");
        let mut args: Vec<String> = vec![
            "bench".into(),
            "--server".into(),
            bed.server_addr.to_string(),
            "--sources".into(),
            if files {
                self.sources
                    .iter()
                    .map(|&s| bench::Source::from(s).as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            } else {
                "generated".into()
            },
            "--clients".into(),
            list(self.clients.iter().map(|c| c.to_string()).collect()),
            "--sizes".into(),
            list(self.sizes.iter().map(|s| s.to_string()).collect()),
            "--engines".into(),
            engines.join(","),
            "--modes".into(),
            list(
                self.modes
                    .iter()
                    .map(|&m| Mode::from(m).as_str().to_string())
                    .collect(),
            ),
            "--reps".into(),
            self.reps.to_string(),
            "--recv-buffer".into(),
            self.recv_buffer.to_string(),
            "--path-name".into(),
            label,
            "--server-machine".into(),
            format!(
                "this machine, namespace {} ({})",
                bed.server_ns,
                bench::output_machine()
            ),
            "--server-pid".into(),
            bed.server_pid().to_string(),
            "--server-sessions".into(),
            sessions.display().to_string(),
            "--out".into(),
        ];
        args.push(self.out.display().to_string());
        let code = bed.run_client(&args, stop)?;
        drop(bed);
        // Stopped here: the exit status names the signal this process got.
        let code = crate::sys::stop_signal().map_or(code, |sig| 128 + sig);
        Ok(ExitCode::from(code.clamp(0, 255) as u8))
    }
}

#[derive(Args)]
pub struct RelayArgs {
    /// Where clients send (give this to `get --server`).
    #[arg(long, value_parser = values::socket_addr)]
    listen: SocketAddr,
    /// The server.
    #[arg(long, value_parser = values::socket_addr)]
    to: SocketAddr,
    /// Drop probability per datagram and direction: a percentage (5%) or a fraction below 1
    /// (0.05); a bare 1 or more is refused as ambiguous.
    #[arg(long, value_parser = values::probability, default_value = "0")]
    loss: f64,
    /// Probability of holding a datagram back ~1-2 ms so later ones overtake it.
    #[arg(long, value_parser = values::probability, default_value = "0")]
    reorder: f64,
    /// Probability of sending a datagram twice.
    #[arg(long, value_parser = values::probability, default_value = "0")]
    duplicate: f64,
    /// Probability of flipping one bit of a datagram.
    #[arg(long, value_parser = values::probability, default_value = "0")]
    corrupt: f64,
    /// Probability of also sending a garbage datagram (random, truncated, or a valid
    /// header with random contents) beside a real one.
    #[arg(long, value_parser = values::probability, default_value = "0")]
    garbage: f64,
    /// Delay added to every datagram, with its unit (e.g. 20ms, 0.1s).
    #[arg(long, value_parser = values::delay, default_value = "0")]
    delay: Duration,
    /// Rate limit per direction, bits/s (e.g. 1G); excess queues (up to --queue), then is
    /// dropped.
    #[arg(long, value_parser = values::rate)]
    rate: Option<u64>,
    /// Bytes the rate limiter queues per direction before it drops (a tail-drop queue).
    #[arg(long, value_parser = values::size, default_value = "8MiB")]
    queue: u64,
    /// Seed of the impairments: the same seed and traffic give the same result.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after this long (e.g. 30, 2m) [default: at Ctrl-C].
    #[arg(long, value_parser = values::duration)]
    duration: Option<Duration>,
}

impl From<&RelayArgs> for RelayConfig {
    fn from(a: &RelayArgs) -> RelayConfig {
        RelayConfig {
            listen: a.listen,
            to: a.to,
            impair: Impairments {
                loss: a.loss,
                reorder: a.reorder,
                duplicate: a.duplicate,
                corrupt: a.corrupt,
                garbage: a.garbage,
                delay: a.delay,
                rate_bps: a.rate,
                queue_bytes: a.queue.min(usize::MAX as u64) as usize,
                drop_first: Vec::new(),
            },
            seed: a.seed,
        }
    }
}

impl RelayArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        logging::init("info");
        let relay = Relay::start(RelayConfig::from(&self))?;
        let pct = |p: f64| format!("{}%", p * 100.0);
        eprintln!(
            "relay {} -> {}: loss {}, reorder {}, duplicate {}, corrupt {}, garbage {}, delay {:?}, rate {}, queue {:.1} MiB, seed {}",
            relay.local_addr(),
            self.to,
            pct(self.loss),
            pct(self.reorder),
            pct(self.duplicate),
            pct(self.corrupt),
            pct(self.garbage),
            self.delay,
            self.rate.map_or("unlimited".to_string(), |r| crate::report::bits_per_second(r as f64)),
            self.queue as f64 / crate::report::MIB,
            self.seed
        );
        let stop = crate::sys::stop_on_signals();
        if let Some(d) = self.duration {
            let deadline = Instant::now() + d;
            while Instant::now() < deadline && !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(50));
            }
            stop.store(true, Ordering::Release);
        }
        print!("{}", relay.wait_for(stop));
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Args)]
pub struct DemoArgs {
    /// Directory holding the generated file (created if absent).
    #[arg(long, default_value = "files")]
    dir: PathBuf,
    /// Size of the generated file.
    #[arg(long, value_parser = values::size, default_value = "100MiB")]
    size: u64,
    /// Sub-clients fetching it at once (1-1000).
    #[arg(long, default_value_t = 5, value_parser = values::count(1, 1000))]
    clients: usize,
    /// reliable (loss repaired, verified) or blast (sent once, loss measured).
    #[arg(long, value_enum, default_value_t = ModeArg::Reliable)]
    mode: ModeArg,
    /// Send engine of the demo's server (see `serve --help`).
    #[arg(long, value_enum, default_value_t = EngineArg::Uring)]
    engine: EngineArg,
}

impl DemoArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        logging::init("warn");
        let ok = demo::run(&DemoConfig {
            dir: self.dir,
            size: self.size,
            clients: self.clients,
            mode: self.mode.into(),
            engine: self.engine.into(),
        })?;
        Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

#[derive(Args)]
pub struct TraceArgs {
    /// A trace `serve --trace FILE` wrote.
    file: PathBuf,
    /// The session to plot (8 hex digits, as logs show it) [default: the one with the most
    /// samples].
    #[arg(long)]
    session: Option<String>,
    /// Plot the session into this SVG: rates, RTT, inflight and window, resends and loss
    /// events against time, and the controller's state changes. Without it, the sessions in
    /// the file are listed.
    #[arg(long, value_name = "OUT")]
    svg: Option<PathBuf>,
    /// A second title line for the plot: where it was measured.
    #[arg(long, default_value = "")]
    title: String,
}

impl TraceArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let (by, bad) = crate::tools::trace::read(&self.file)?;
        if bad > 0 {
            eprintln!(
                "{bad} lines of {} could not be read (skipped)",
                self.file.display()
            );
        }
        let Some(svg) = self.svg else {
            for (id, lines) in &by {
                println!("{}", crate::tools::trace::describe(id, lines));
            }
            if by.is_empty() {
                eprintln!("(no samples in {})", self.file.display());
            }
            return Ok(ExitCode::SUCCESS);
        };
        let (id, lines) = match &self.session {
            Some(id) => by
                .get_key_value(id.to_lowercase().as_str())
                .ok_or_else(|| anyhow::anyhow!("no session {id} in {}", self.file.display()))?,
            None => by
                .iter()
                .max_by_key(|(_, l)| l.len())
                .ok_or_else(|| anyhow::anyhow!("no samples in {}", self.file.display()))?,
        };
        std::fs::write(&svg, crate::tools::trace::plot(&self.title, id, lines))
            .with_context(|| format!("cannot write {}", svg.display()))?;
        println!("{}", crate::tools::trace::describe(id, lines));
        println!("plotted into {}", svg.display());
        Ok(ExitCode::SUCCESS)
    }
}
