//! `ringblast get`: the client, its table, its JSON, its exit status.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

use super::{values, ModeArg};

/// `--verify`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyArg {
    /// BLAKE3 of the written file against the server's content hash (plus the manifest).
    Content,
    /// The manifest: every datagram's CRC32C, in order, against the server's manifest hash.
    Manifest,
}

impl From<VerifyArg> for Verify {
    fn from(v: VerifyArg) -> Verify {
        match v {
            VerifyArg::Content => Verify::Content,
            VerifyArg::Manifest => Verify::Manifest,
        }
    }
}

/// `--write-path`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum WritePathArg {
    /// Payloads gathered in 4 MiB chunks in memory, each written with O_DIRECT and hashed
    /// from memory.
    Direct,
    /// Every payload written through the page cache as it arrives; the hash reads it back.
    Buffered,
}

impl From<WritePathArg> for WritePath {
    fn from(w: WritePathArg) -> WritePath {
        match w {
            WritePathArg::Direct => WritePath::Direct,
            WritePathArg::Buffered => WritePath::Buffered,
        }
    }
}
use crate::client::{self, GetConfig, Verify, WritePath};
use crate::protocol::layout::DatagramSize;
use crate::report::{json, logging, table};

#[derive(Args)]
pub struct GetArgs {
    /// Name of the file on the server (see `ringblast list`).
    file: String,
    /// The server: address or host name, port (default 6969).
    #[arg(long, default_value = "127.0.0.1:6969", value_parser = values::socket_addr)]
    server: SocketAddr,
    /// Sub-clients (1-10000), each with its own socket, fetching its own whole copy.
    #[arg(long, default_value_t = 1, value_parser = values::count(1, 10_000))]
    clients: usize,
    /// Receive threads the sub-clients share; each waits on its sockets with epoll and
    /// receives with recvmmsg [default: one per sub-client up to 8 per core, beyond that
    /// one per core].
    #[arg(long, value_parser = values::count(1, 1024))]
    threads: Option<usize>,
    /// Directory for the copies: DIR/FILE for one client, DIR/FILE.1 .. DIR/FILE.N.
    #[arg(long, default_value = "received", conflicts_with = "discard")]
    out: PathBuf,
    /// Replace copies already in --out (without it, `get` refuses to start if one exists).
    #[arg(long, conflicts_with = "discard")]
    force: bool,
    /// Receive, check and count everything, but write no file (compare with iperf3).
    #[arg(long)]
    discard: bool,
    /// reliable: loss repaired, flow-controlled, every byte verified; blast: the lab's
    /// semantics, every datagram sent once and loss measured.
    #[arg(long, value_enum, default_value_t = ModeArg::Reliable)]
    mode: ModeArg,
    /// Fail when the server has been silent this long (e.g. 5, 500ms).
    #[arg(long, value_parser = values::duration, default_value = "5s")]
    timeout: Duration,
    /// Receive window: how many bytes past the first missing datagram the server may send
    /// (flow control). Given, it is fixed. Default: 32MiB for one client, less for more
    /// (256MiB in all) and no more than the kernel's receive buffer holds, then growing to 4
    /// bandwidth-delay products as the sender measures the path (at most 256MiB; 1GiB in all).
    #[arg(long, value_parser = values::window)]
    window: Option<u64>,
    /// Largest datagram to receive, header included: auto = the path MTU to the server less
    /// the IP and UDP headers, or bytes (544-65507, refused if the path cannot carry it).
    #[arg(long, default_value = "auto", value_parser = DatagramSize::from_str)]
    datagram_size: DatagramSize,
    /// Receive one datagram per buffer instead of coalesced ones (UDP GRO), to compare.
    #[arg(long)]
    no_gro: bool,
    /// Take the file from the server's multicast group (serve --multicast): one
    /// transmission for every client asking for the same file at about the same time,
    /// lost datagrams rebuilt from erasure-coded repairs, the rest fetched by unicast. By
    /// unicast, with one line saying so, where the server has no group or none of its
    /// datagrams arrive (the network must carry the group: TTL, IGMP snooping, routes).
    #[arg(long)]
    multicast: bool,
    /// The server's send engine to ask for: uring or threads (the lab's baseline). The
    /// server must offer it (serve --engines uring,threads) or it refuses with an error
    /// [default: the server's].
    #[arg(long, value_enum)]
    engine: Option<super::EngineArg>,
    /// Final check: content = BLAKE3 of the written file (and the manifest);
    /// manifest = every datagram's CRC32C against the server's manifest hash only
    /// [default: content when writing files, manifest with --discard].
    #[arg(long, value_enum)]
    verify: Option<VerifyArg>,
    /// How copies reach the disk: direct = gathered in 4 MiB chunks in memory (256MiB at
    /// most in all), each written with O_DIRECT around the page cache and hashed from memory
    /// (through the page cache where the file system refuses O_DIRECT or that memory is in
    /// use); buffered = every payload written through the page cache as it arrives, the
    /// hash reading it back.
    #[arg(long, value_enum, default_value_t = WritePathArg::Direct, conflicts_with = "discard")]
    write_path: WritePathArg,
    /// Refuse a file larger than this (bounds the memory a server can make us use).
    #[arg(long, value_parser = values::size, default_value = "1TiB")]
    max_size: u64,
    /// Also write the results as one JSON object to PATH ("-": stdout, instead of the
    /// table).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Report bytes, rate, holes and retransmissions every interval, per sub-client and in
    /// sum, like iperf3's -i (e.g. 1, 0.5s, 200ms).
    #[arg(short = 'i', long = "interval", value_parser = values::duration, value_name = "DURATION")]
    interval: Option<Duration>,
    /// No progress bar (it is shown only on a terminal anyway).
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    security: super::security::ClientSecurityArgs,
}

impl GetArgs {
    fn json_to_stdout(&self) -> bool {
        self.json.as_deref() == Some(Path::new("-"))
    }

    /// The client's config, or why these options cannot go together.
    pub fn config(&self) -> anyhow::Result<GetConfig> {
        if self.discard && self.verify == Some(VerifyArg::Content) {
            anyhow::bail!("--verify content needs the written file; with --discard only --verify manifest is possible");
        }
        let mut cfg = GetConfig::new(self.server, &self.file);
        cfg.clients = self.clients;
        cfg.threads = self.threads.unwrap_or(0);
        cfg.force = self.force;
        cfg.out_dir = (!self.discard).then(|| self.out.clone());
        cfg.mode = self.mode.into();
        cfg.timeout = self.timeout;
        cfg.window_bytes = self.window.unwrap_or(0);
        cfg.datagram_size = self.datagram_size;
        cfg.gro = !self.no_gro;
        cfg.multicast = self.multicast;
        cfg.engine = self.engine.map(Into::into);
        cfg.security = self.security.security(self.server)?;
        cfg.verify = self.verify.map_or(
            if self.discard {
                Verify::Manifest
            } else {
                Verify::Content
            },
            Verify::from,
        );
        cfg.write_path = self.write_path.into();
        cfg.max_size = self.max_size;
        cfg.interval = self.interval;
        cfg.quiet = self.quiet || self.json_to_stdout();
        // stdout is the JSON's alone then: interval lines go to stderr.
        cfg.intervals_to_stderr = self.json_to_stdout();
        Ok(cfg)
    }

    pub fn run(self) -> anyhow::Result<ExitCode> {
        logging::init("warn");
        let mut cfg = self.config()?;
        // Ctrl-C or SIGTERM: every copy stops, removes its temporary file and tells the
        // server; the table says how far each got. A second one exits at once.
        cfg.stop = Some(crate::sys::stop_on_signals());
        // A results file that cannot be written is refused before the transfer, not after.
        if let Some(path) = self.json.as_deref().filter(|_| !self.json_to_stdout()) {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        }
        let reports = client::get(&cfg)?;
        let to_stdout = self.json_to_stdout();
        if let Some(path) = &self.json {
            let text =
                serde_json::to_string_pretty(&json::get_json(&self.file, cfg.mode, &reports))?;
            if to_stdout {
                println!("{text}");
            } else {
                std::fs::write(path, text + "\n")
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            }
        }
        // No table of zeros when no copy even began (no such file, no server): the one-line
        // reason below says it all.
        let began = reports.iter().any(|r| r.began);
        if !to_stdout && began {
            print!("{}", table::table(&self.file, &reports));
        }
        if let Some(sig) = crate::sys::stop_signal() {
            let stopped = reports.iter().filter(|r| !r.ok()).count();
            eprintln!(
                "ringblast: interrupted: {stopped} of {} copies stopped, their partial files removed",
                reports.len()
            );
            return Ok(ExitCode::from((128 + sig).clamp(0, 255) as u8));
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
}
