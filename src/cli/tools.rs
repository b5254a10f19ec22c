//! `ringblast bench`, `ringblast relay` and `ringblast demo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;

use super::{values, EngineArg, ModeArg};
use crate::protocol::Mode;
use crate::report::logging;
use crate::server::engine::EngineKind;
use crate::tools::bench::{self, BenchConfig};
use crate::tools::demo::{self, DemoConfig};
use crate::tools::relay::{Impairments, Relay, RelayConfig};

#[derive(Args)]
pub struct BenchArgs {
    /// Sub-client counts to measure, comma-separated (each 1-1000).
    #[arg(long, value_delimiter = ',', default_value = "1,5,10",
          value_parser = values::count(1, 1000))]
    clients: Vec<usize>,
    /// File sizes, comma-separated (generated in --files if missing).
    #[arg(long, value_delimiter = ',', value_parser = values::size, default_value = "100MiB,250MiB")]
    sizes: Vec<u64>,
    /// Engines to measure, comma-separated: uring, threads.
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
    /// Repetitions of each cell (1-100); the medians are reported.
    #[arg(long, default_value_t = 3, value_parser = values::count(1, 100))]
    reps: usize,
    /// Directory for the results.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Directory of the generated files.
    #[arg(long, default_value = "files")]
    files: PathBuf,
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
}

/// `bench --delivery`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeliveryArg {
    Unicast,
    Multicast,
}

impl From<BenchArgs> for BenchConfig {
    fn from(a: BenchArgs) -> BenchConfig {
        BenchConfig {
            clients: a.clients,
            sizes: a.sizes,
            engines: a.engines.into_iter().map(EngineKind::from).collect(),
            modes: a.modes.into_iter().map(Mode::from).collect(),
            reps: a.reps,
            out: a.out,
            files: a.files,
            recv_buffer: a.recv_buffer.min(usize::MAX as u64) as usize,
            deliveries: a
                .delivery
                .into_iter()
                .map(|d| match d {
                    DeliveryArg::Unicast => bench::Delivery::Unicast,
                    DeliveryArg::Multicast => bench::Delivery::Multicast,
                })
                .collect(),
            multicast_rate_bps: a.multicast_rate,
            stop: None,
        }
    }
}

impl BenchArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        logging::init("warn");
        let mut cfg = BenchConfig::from(self);
        // Ctrl-C: the run under way is dropped, the runs measured are kept, written and shown.
        cfg.stop = Some(crate::sys::stop_on_signals());
        let (runs, cells) = bench::run(&cfg)?;
        print!("{}", bench::table(&cells));
        println!(
            "results: {}/results.csv, results.json, throughput.svg, loss.svg",
            cfg.out.display()
        );
        if let Some(sig) = crate::sys::stop_signal() {
            eprintln!(
                "ringblast: interrupted: {} runs measured and kept in {}",
                runs.len(),
                cfg.out.display()
            );
            return Ok(ExitCode::from((128 + sig).clamp(0, 255) as u8));
        }
        Ok(ExitCode::SUCCESS)
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
