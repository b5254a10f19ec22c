//! The `ringblast` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use ringblast::client::{self, GetConfig, Verify};
use ringblast::engine::EngineKind;
use ringblast::server::{Server, ServerConfig};
use ringblast::wire::{Mode, MAX_DATAGRAM};
use ringblast::{demo, logging, parse_rate, parse_size, report};

#[derive(Parser)]
#[command(
    name = "ringblast",
    version,
    about = "Send files over UDP from one server to many clients: io_uring sender, recvmmsg receiver, every byte verified, every transfer measured.",
    after_help = "Start with `ringblast demo`. Typical use:\n  ringblast serve --dir files\n  ringblast list\n  ringblast get 100MiB.bin --clients 5 --out received"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    /// Loss repaired (selective repeat) and flow-controlled: every byte arrives, verified.
    Reliable,
    /// The lab's semantics: every datagram sent once, nothing repaired, loss measured.
    Blast,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Reliable => Mode::Reliable,
            ModeArg::Blast => Mode::Blast,
        }
    }
}

fn secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("bad duration {s:?}: seconds, e.g. 5 or 0.5"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("bad duration {s:?}: must be positive"));
    }
    Ok(Duration::from_secs_f64(v))
}

#[derive(Subcommand)]
enum Command {
    /// Serve the regular files directly inside a directory, on one UDP port.
    Serve {
        /// Directory whose regular files are served (symlinks and subdirectories are not).
        #[arg(long, default_value = "files")]
        dir: PathBuf,
        /// Address and port to listen on. Every message of every client uses this one port.
        #[arg(long, default_value = "127.0.0.1:6969")]
        bind: SocketAddr,
        /// Send engine: uring = mmap + io_uring, one ring per session, batched sends, a fixed
        /// worker pool; threads = the lab's baseline, one thread per client, read() + sendto()
        /// per datagram.
        #[arg(long, value_enum, default_value_t = EngineKind::Uring)]
        engine: EngineKind,
        /// Worker threads driving the rings [default: number of cores].
        #[arg(long)]
        workers: Option<usize>,
        /// Pace each session at this rate, bits/s like iperf3's -b (e.g. 800M, 2G).
        /// Default: as fast as the receiver's credit allows.
        #[arg(long, value_parser = parse_rate)]
        rate: Option<u64>,
        /// Drop a session whose client has been silent this many seconds.
        #[arg(long, value_parser = secs, default_value = "10")]
        idle_timeout: Duration,
        /// Datagram size on the wire, header included (use ~1472 on a 1500-byte MTU link).
        #[arg(long, default_value_t = MAX_DATAGRAM)]
        datagram_size: usize,
        /// Most concurrent sessions; further requests get a "busy" answer.
        #[arg(long, default_value_t = 256)]
        max_sessions: usize,
        /// Requests (HELLO, LIST, GET) per second one source IP may make (twice that in a
        /// burst); beyond it they are dropped with a short "busy" answer.
        #[arg(long, default_value_t = 500.0)]
        requests_per_ip: f64,
        /// Print one JSON object per finished session on stdout (logs stay on stderr).
        #[arg(long)]
        json: bool,
        /// Also answer the lab's text protocol (LIST, !CONFIG :file :n, TRANSFER; raw
        /// datagrams, no header) so its Python clients work unchanged. Off by default: it has
        /// no address validation, so anyone can make the server blast a file at any address.
        #[arg(long)]
        legacy: bool,
    },
    /// List the files a server offers, with their sizes.
    List {
        #[arg(long, default_value = "127.0.0.1:6969")]
        server: SocketAddr,
        /// Give up after this many seconds without an answer.
        #[arg(long, value_parser = secs, default_value = "5")]
        timeout: Duration,
    },
    /// Fetch FILE with N sub-clients at once; each copy is verified before it is kept.
    Get {
        /// Name of the file on the server (see `ringblast list`).
        file: String,
        #[arg(long, default_value = "127.0.0.1:6969")]
        server: SocketAddr,
        /// Sub-clients, each with its own socket, fetching its own whole copy.
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Directory for the copies: DIR/FILE for one client, DIR/FILE.1 .. DIR/FILE.N.
        #[arg(long, default_value = "received", conflicts_with = "discard")]
        out: PathBuf,
        /// Receive, check and count everything, but write no file (compare with iperf3).
        #[arg(long)]
        discard: bool,
        #[arg(long, value_enum, default_value_t = ModeArg::Reliable)]
        mode: ModeArg,
        /// Fail when the server has been silent this many seconds.
        #[arg(long, value_parser = secs, default_value = "5")]
        timeout: Duration,
        /// Receive window in datagrams: how far ahead of the first missing datagram the
        /// server may send (flow control). Default: 512 for one client, less for more
        /// (4096 in all), and never more than the kernel's receive buffer holds.
        #[arg(long)]
        window: Option<u32>,
        /// Final check: content = BLAKE3 of the written file (and the manifest);
        /// manifest = every datagram's CRC32C against the server's manifest hash only.
        /// With --discard only the manifest can be checked.
        #[arg(long, value_enum)]
        verify: Option<Verify>,
        /// Refuse a file larger than this (bounds the memory a server can make us use).
        #[arg(long, value_parser = parse_size, default_value = "1TiB")]
        max_size: u64,
        /// Also write the results as one JSON object to PATH ("-": stdout, instead of the
        /// table).
        #[arg(long, value_name = "PATH")]
        json: Option<PathBuf>,
        /// Report bytes, rate, holes and retransmissions every SECONDS, per sub-client and in
        /// sum (like iperf3's -i).
        #[arg(short = 'i', long = "interval", value_parser = secs, value_name = "SECONDS")]
        interval: Option<Duration>,
        /// No progress bar (it is shown only on a terminal anyway).
        #[arg(short, long)]
        quiet: bool,
    },
    /// The lab's experiment matrix: clients x sizes for each engine and mode, repeated;
    /// writes results.csv, results.json, throughput.svg, loss.svg and prints the medians.
    Bench {
        #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
        clients: Vec<usize>,
        /// File sizes (generated in --files if missing).
        #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = "100MiB,250MiB")]
        sizes: Vec<u64>,
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "uring,threads"
        )]
        engines: Vec<EngineKind>,
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "reliable,blast"
        )]
        modes: Vec<ModeArg>,
        /// Repetitions of each cell; the medians are reported.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Directory for the results.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
        /// Directory of the generated files.
        #[arg(long, default_value = "files")]
        files: PathBuf,
        /// Receive buffer each sub-client asks for (the lab's Python client had the
        /// kernel default, 208KiB: try it to see the lab's losses in blast mode).
        #[arg(long, value_parser = parse_size, default_value = "48MiB")]
        recv_buffer: u64,
    },
    /// A UDP relay that impairs traffic both ways (no netem needed): forwards each client's
    /// flow to the server and back, and prints what it did when stopped (Ctrl-C).
    Relay {
        /// Where clients send (give this to `get --server`).
        #[arg(long)]
        listen: SocketAddr,
        /// The server.
        #[arg(long)]
        to: SocketAddr,
        /// Drop probability per datagram and direction: 0.05 or 5%.
        #[arg(long, value_parser = ringblast::relay::parse_probability, default_value = "0")]
        loss: f64,
        /// Probability of holding a datagram back ~1-2 ms so later ones overtake it.
        #[arg(long, value_parser = ringblast::relay::parse_probability, default_value = "0")]
        reorder: f64,
        /// Probability of sending a datagram twice.
        #[arg(long, value_parser = ringblast::relay::parse_probability, default_value = "0")]
        duplicate: f64,
        /// Probability of flipping one bit of a datagram.
        #[arg(long, value_parser = ringblast::relay::parse_probability, default_value = "0")]
        corrupt: f64,
        /// Probability of also sending a garbage datagram (random, truncated, or a valid
        /// header with random contents) beside a real one.
        #[arg(long, value_parser = ringblast::relay::parse_probability, default_value = "0")]
        garbage: f64,
        /// Delay added to every datagram, milliseconds.
        #[arg(long, default_value_t = 0.0)]
        delay: f64,
        /// Rate limit per direction, bits/s (e.g. 1G); excess queues, then drops.
        #[arg(long, value_parser = parse_rate)]
        rate: Option<u64>,
        /// Seed of the impairments: the same seed and traffic give the same result.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Stop after this many seconds (default: at Ctrl-C).
        #[arg(long, value_parser = secs)]
        duration: Option<Duration>,
    },
    /// One command: generate a file, serve it on loopback, fetch it with 5 sub-clients and
    /// print the lab's table.
    Demo {
        /// Directory holding the generated file (created if absent).
        #[arg(long, default_value = "files")]
        dir: PathBuf,
        /// Size of the generated file.
        #[arg(long, value_parser = parse_size, default_value = "100MiB")]
        size: u64,
        #[arg(long, default_value_t = 5)]
        clients: usize,
        #[arg(long, value_enum, default_value_t = ModeArg::Reliable)]
        mode: ModeArg,
    },
}

fn main() -> ExitCode {
    ringblast::sys::default_sigpipe();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringblast: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            dir,
            bind,
            engine,
            workers,
            rate,
            idle_timeout,
            datagram_size,
            max_sessions,
            json,
            legacy,
            requests_per_ip,
        } => {
            logging::init("info");
            let defaults = ServerConfig::default();
            let server = Server::start(ServerConfig {
                dir,
                bind,
                engine,
                workers: workers.unwrap_or(defaults.workers).max(1),
                datagram_size,
                idle_timeout,
                rate_bps: rate,
                max_sessions: max_sessions.max(1),
                json,
                legacy,
                requests_per_ip: if requests_per_ip.is_finite() && requests_per_ip > 0.0 {
                    requests_per_ip
                } else {
                    anyhow::bail!("--requests-per-ip must be a positive number");
                },
                ..defaults
            })?;
            server.wait();
            Ok(ExitCode::SUCCESS)
        }
        Command::List { server, timeout } => {
            logging::init("warn");
            let files = client::list(server, timeout)?;
            for (name, size) in &files {
                println!("{size:>14}  {name}");
            }
            if files.is_empty() {
                eprintln!("(no files served at {server})");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Get {
            file,
            server,
            clients,
            out,
            discard,
            mode,
            timeout,
            window,
            verify,
            max_size,
            json,
            interval,
            quiet,
        } => {
            logging::init("warn");
            if discard && verify == Some(Verify::Content) {
                anyhow::bail!("--verify content needs the written file; with --discard only --verify manifest is possible");
            }
            if clients == 0 {
                anyhow::bail!("--clients must be at least 1");
            }
            let mut cfg = GetConfig::new(server, &file);
            cfg.clients = clients;
            cfg.out_dir = (!discard).then_some(out);
            cfg.mode = mode.into();
            cfg.timeout = timeout;
            cfg.window = window.map_or(0, |w| w.max(1));
            cfg.verify = verify.unwrap_or(if discard {
                Verify::Manifest
            } else {
                Verify::Content
            });
            cfg.max_size = max_size;
            cfg.interval = interval;
            cfg.quiet = quiet || json.as_deref() == Some(std::path::Path::new("-"));
            let reports = client::get(&cfg)?;
            let to_stdout = json.as_deref() == Some(std::path::Path::new("-"));
            if let Some(path) = &json {
                let text =
                    serde_json::to_string_pretty(&report::get_json(&file, cfg.mode, &reports))?;
                if to_stdout {
                    println!("{text}");
                } else {
                    std::fs::write(path, text + "\n")
                        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                }
            }
            if !to_stdout {
                print!("{}", report::table(&file, &reports));
            }
            let failed: Vec<_> = reports.iter().filter(|r| !r.ok()).collect();
            if failed.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            let first = failed[0]
                .error
                .clone()
                .unwrap_or_else(|| "incomplete".into());
            eprintln!(
                "ringblast: error: {} of {} copies failed; client {}: {first}",
                failed.len(),
                reports.len(),
                failed[0].id
            );
            Ok(ExitCode::FAILURE)
        }
        Command::Bench {
            clients,
            sizes,
            engines,
            modes,
            reps,
            out,
            files,
            recv_buffer,
        } => {
            logging::init("warn");
            if clients.contains(&0) || reps == 0 {
                anyhow::bail!("--clients values and --reps must be at least 1");
            }
            let cfg = ringblast::bench::BenchConfig {
                clients,
                sizes,
                engines,
                modes: modes.into_iter().map(Mode::from).collect(),
                reps,
                out: out.clone(),
                files,
                recv_buffer: recv_buffer as usize,
            };
            let (_, cells) = ringblast::bench::run(&cfg)?;
            print!("{}", ringblast::bench::table(&cells));
            println!(
                "results: {}/results.csv, results.json, throughput.svg, loss.svg",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Relay {
            listen,
            to,
            loss,
            reorder,
            duplicate,
            corrupt,
            garbage,
            delay,
            rate,
            seed,
            duration,
        } => {
            logging::init("info");
            if !(delay.is_finite() && delay >= 0.0) {
                anyhow::bail!("--delay must be a non-negative number of milliseconds");
            }
            let relay = ringblast::relay::Relay::start(ringblast::relay::RelayConfig {
                listen,
                to,
                loss,
                reorder,
                duplicate,
                corrupt,
                garbage,
                delay: Duration::from_secs_f64(delay / 1000.0),
                rate_bps: rate,
                seed,
                drop_first: Vec::new(),
            })?;
            eprintln!(
                "relay {} -> {to}: loss {loss}, reorder {reorder}, duplicate {duplicate}, corrupt {corrupt}, garbage {garbage}, delay {delay} ms, rate {}, seed {seed}",
                relay.local_addr(),
                rate.map_or("unlimited".to_string(), |r| format!("{r} bit/s"))
            );
            let stop = ringblast::sys::stop_on_signals();
            if let Some(d) = duration {
                let deadline = std::time::Instant::now() + d;
                while std::time::Instant::now() < deadline
                    && !stop.load(std::sync::atomic::Ordering::Acquire)
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                stop.store(true, std::sync::atomic::Ordering::Release);
            }
            let stats = relay.wait_for(stop);
            print!("{stats}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            dir,
            size,
            clients,
            mode,
        } => {
            logging::init("warn");
            let ok = demo::run(&demo::DemoConfig {
                dir,
                size,
                clients: clients.max(1),
                mode: mode.into(),
            })?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
