//! The `ringblast` command line: one `clap::Args` struct per subcommand, each converting into
//! the config of what it runs, with every value checked by its parser (`values.rs`).

pub mod get;
pub mod security;
pub mod serve;
pub mod tools;
pub mod values;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::protocol::Mode;

#[derive(Parser)]
#[command(
    name = "ringblast",
    version,
    about = "Send files over UDP from one server to many clients: io_uring sender, recvmmsg receiver, every byte verified, every transfer measured.",
    after_help = "Start with `ringblast demo`. Typical use:\n  ringblast serve --dir files\n  ringblast list\n  ringblast get 100MiB.bin --clients 5 --out received\nDurations take a unit (25ms, 0.5s, 2m) or are seconds; rates are bits/s (800M, 2G); sizes take KiB, MiB, GiB or KB, MB, GB.\nLogs go to stderr: RUST_LOG sets their level (RUST_LOG=debug ringblast get ...; serve logs at info, the rest at warn), NO_COLOR=1 turns colour off."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the regular files directly inside a directory, on one UDP port.
    Serve(serve::ServeArgs),
    /// List the files a server offers, with their sizes.
    List(serve::ListArgs),
    /// Fetch FILE with N sub-clients at once; each copy is verified before it is kept.
    Get(get::GetArgs),
    /// The lab's experiment matrix: clients x sizes for each engine and mode, repeated, on
    /// loopback, against a server on another host (--server) or across a path it builds
    /// (--path veth:1500, router:1gbit); writes results.csv, results.json and plots, prints
    /// the medians and the uring/threads ratios (--compare sets two runs side by side).
    Bench(tools::BenchArgs),
    /// A UDP relay that impairs traffic both ways (no netem needed): forwards each client's
    /// flow to the server and back, and prints what it did when stopped (Ctrl-C).
    Relay(tools::RelayArgs),
    /// List the sessions in a trace `serve --trace` wrote, or plot one (--svg): rates, RTT,
    /// inflight, resends and the controller's states against time.
    Trace(tools::TraceArgs),
    /// Make a key pair (FILE, FILE.pub) for serve --identity / get --identity, or a
    /// pre-shared key (--psk).
    Keygen(security::KeygenArgs),
    /// One command: generate a file, serve it on loopback, fetch it with 5 sub-clients and
    /// print the lab's table.
    ///
    /// The file is made in --dir (kept for the next run); the copies go to a temporary
    /// directory (TMPDIR/ringblast-demo-PID) and are removed once verified.
    Demo(tools::DemoArgs),
}

/// `--engine`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum EngineArg {
    /// mmap + io_uring: one ring per session, batched sends, a bounded worker pool.
    Uring,
    /// The lab's baseline: one OS thread per session, read() then one blocking sendto() per
    /// datagram, no batching, no mmap.
    Threads,
}

impl From<EngineArg> for crate::server::engine::EngineKind {
    fn from(e: EngineArg) -> Self {
        match e {
            EngineArg::Uring => Self::Uring,
            EngineArg::Threads => Self::Threads,
        }
    }
}

/// `--mode`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
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

/// Parses the command line and runs it; errors are one line on stderr.
pub fn main() -> ExitCode {
    crate::sys::default_sigpipe();
    if let Err(e) = crate::sys::raise_fd_limit() {
        tracing::debug!("cannot raise the open-file limit: {e}");
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(a) => a.run(),
        Command::List(a) => a.run(),
        Command::Get(a) => a.run(),
        Command::Bench(a) => a.run(),
        Command::Relay(a) => a.run(),
        Command::Demo(a) => a.run(),
        Command::Keygen(a) => a.run(),
        Command::Trace(a) => a.run(),
    };
    match result {
        Ok(code) => code,
        // Stopped by Ctrl-C or SIGTERM (what it was doing cleaned up): 128 + the signal.
        Err(e) if crate::sys::stop_signal().is_some() => {
            eprintln!("ringblast: interrupted: {e:#}");
            ExitCode::from((128 + crate::sys::stop_signal().unwrap_or(2)).clamp(0, 255) as u8)
        }
        Err(e) => {
            eprintln!("ringblast: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_option_of_every_subcommand_has_help() {
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            assert!(
                sub.get_about().is_some(),
                "{} has no description",
                sub.get_name()
            );
            for arg in sub.get_arguments() {
                if arg.get_id() == "help" {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "{} {} has no help line",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }
}
