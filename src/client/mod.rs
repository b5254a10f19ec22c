//! The client: `list`, and `get` with N sub-clients that each fetch the whole file.
//!
//! Each sub-client has its own socket (connected to the server's one port, so the kernel
//! filters everything else) and its own copy. Its logic (`subclient.rs`, `handshake.rs`,
//! `receive.rs`) is a state machine with no socket and no clock: a bounded pool of receive
//! threads (`threads.rs`: epoll, one `recvmmsg` buffer per thread) feeds it what arrived and the
//! time, and sends what it queued (`edge.rs`). It validates its address with a token, asks
//! for the file (again later if the server is busy), answers META with its first ACK, then
//! takes data batch by batch: every datagram is length- and range-checked, its CRC32C
//! verified, recorded in a [`LossTracker`](crate::protocol::loss::LossTracker) and written at
//! its offset (`sink.rs`). Feedback (`ACK`: cumulative point, credit from `window.rs`, NACK
//! ranges) goes back every quarter window and whenever the socket runs dry. A copy is written
//! under a temporary name and renamed only once the whole file verifies; otherwise removed.

mod connection;
mod edge;
pub mod group;
mod handshake;
mod receive;
mod sink;
mod subclient;
mod threads;
pub mod window;
mod write;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::protocol::layout::{validate_name, BadName, DatagramSize};
use crate::protocol::{Message, Mode};
use crate::report::copy::CopyReport;
use crate::report::live::{spawn_reporter, Live};
use connection::{server_error, Connection, Reply};
use subclient::SubClient;
use window::{auto_window_max_bytes, default_window_bytes};

/// How a copy is verified at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// BLAKE3 of the written file against the server's content hash (plus the manifest).
    Content,
    /// The manifest: every datagram's CRC32C, in order, against the server's manifest hash.
    Manifest,
}

/// How a copy is written to its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePath {
    /// Payloads are gathered in 4 MiB chunks in memory (256 MiB at most for the whole run)
    /// and each whole chunk is written with O_DIRECT and hashed from memory; through the page
    /// cache where the file system refuses O_DIRECT or the memory is used up.
    Direct,
    /// Every payload is written through the page cache as it arrives; the hash reads it back.
    Buffered,
}

impl WritePath {
    pub fn as_str(self) -> &'static str {
        match self {
            WritePath::Direct => "direct",
            WritePath::Buffered => "buffered",
        }
    }
}

/// What `ringblast get` is asked to do.
#[derive(Debug, Clone)]
pub struct GetConfig {
    pub server: SocketAddr,
    pub file: String,
    pub clients: usize,
    /// Receive threads the sub-clients share (0: [`default_threads`]; never more than
    /// sub-clients).
    pub threads: usize,
    /// Where copies go; `None` with `--discard`.
    pub out_dir: Option<PathBuf>,
    pub mode: Mode,
    /// The server is declared gone after this long without a word from it.
    pub timeout: Duration,
    /// Largest receive window in bytes (the credit granted beyond the cumulative point);
    /// smaller if the kernel grants a receive buffer that cannot hold it. 0: the default
    /// for this many clients ([`window::default_window_bytes`]).
    pub window_bytes: u64,
    /// How far the window may grow once the path's bandwidth-delay product is known (from
    /// the sender's `STATUS`): with the default window (`window_bytes` 0), `get` sets it
    /// from [`window::auto_window_max_bytes`]; an explicit window is also the most.
    pub window_max_bytes: u64,
    /// The largest datagram this client takes: auto (its path MTU to the server less the IP
    /// and UDP headers) or fixed. The server picks the session's size up to it.
    pub datagram_size: DatagramSize,
    /// Receive coalesced datagrams (`UDP_GRO`) where the kernel can.
    pub gro: bool,
    /// Kernel receive buffer asked for, bytes.
    pub recv_buffer: usize,
    pub verify: Verify,
    /// How copies are written.
    pub write_path: WritePath,
    /// Largest file size a server may announce (bounds memory: 4 bytes per datagram).
    pub max_size: u64,
    /// Print interval reports this often (like iperf3's -i).
    pub interval: Option<Duration>,
    /// No progress bar.
    pub quiet: bool,
    /// Interval lines go to stderr (stdout carries the JSON).
    pub intervals_to_stderr: bool,
    /// Replace copies that already exist (otherwise `get` refuses to start).
    pub force: bool,
    /// Set (by a signal handler) to stop every copy: each removes its temporary file, tells
    /// the server, and reports how far it got.
    pub stop: Option<&'static AtomicBool>,
    /// Ask to take the file from the server's multicast group (`get --multicast`); by
    /// unicast where the server has none or no group datagram arrives.
    pub multicast: bool,
    /// The server's send engine to ask for (`get --engine`); `None`: the server's default.
    pub engine: Option<crate::server::engine::EngineKind>,
    /// Authenticate (`get --identity`, `--psk`) and have every datagram sealed; `None`: open.
    pub security: Option<Arc<crate::keys::ClientSecurity>>,
}

impl GetConfig {
    pub fn new(server: SocketAddr, file: impl Into<String>) -> Self {
        GetConfig {
            server,
            file: file.into(),
            clients: 1,
            threads: 0,
            out_dir: None,
            mode: Mode::Reliable,
            timeout: Duration::from_secs(5),
            window_bytes: 0,
            window_max_bytes: 0,
            datagram_size: DatagramSize::Auto,
            gro: true,
            recv_buffer: 48 << 20,
            verify: Verify::Content,
            write_path: WritePath::Direct,
            max_size: 1 << 40,
            interval: None,
            quiet: true,
            intervals_to_stderr: false,
            force: false,
            stop: None,
            multicast: false,
            engine: None,
            security: None,
        }
    }
}

/// Why a sub-client (or `list`) failed. One line each, for the user.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("no answer from {server} for {secs:.1} s ({stage})")]
    ServerSilent {
        server: SocketAddr,
        secs: f64,
        stage: &'static str,
    },
    /// Datagrams kept coming but none brought anything new (duplicates, corrupt ones).
    #[error("no progress from {server} for {secs:.1} s: {datagrams} datagrams received meanwhile, none of them new intact data (duplicates or corrupt)")]
    NoProgress {
        server: SocketAddr,
        secs: f64,
        datagrams: u64,
    },
    /// The open-file limit cannot hold what the copies need.
    #[error("--clients {clients} needs {needed} open files ({per_copy} per copy, and the receive threads'); this process may open {available} more (ulimit -n {limit}): raise the limit (ulimit -n) or use fewer clients")]
    FdLimit {
        clients: usize,
        per_copy: &'static str,
        needed: u64,
        available: u64,
        limit: u64,
    },
    /// Another sub-client found the server gone (or full for the whole timeout) before this
    /// one's turn came.
    #[error("not started: {0}")]
    NotStarted(String),
    /// The server answered WAIT (preparing the file) for too long.
    #[error("{server} kept asking to wait for {secs:.0} s (preparing the file): given up")]
    Waited { server: SocketAddr, secs: f64 },
    #[error("{server}: {why}")]
    Auth { server: SocketAddr, why: String },
    #[error("{server} refused the connection: no server is listening there (or it stopped)")]
    Refused { server: SocketAddr },
    /// What the server said.
    #[error("server error: {0}")]
    Server(String),
    /// The server had no room for the whole timeout.
    #[error("{server} stayed busy for {secs:.1} s ({tries} tries): {text}")]
    Busy {
        server: SocketAddr,
        text: String,
        secs: f64,
        tries: u32,
    },
    #[error("server announced {0}")]
    BadMeta(String),
    /// Refused here, before asking any server.
    #[error(transparent)]
    BadName(#[from] BadName),
    /// Blast mode's loss, or a reliable transfer cut short.
    #[error("transfer ended incomplete: {0}")]
    Incomplete(String),
    #[error("verification failed: {0}")]
    Verification(String),
    /// The server runs another release of ringblast.
    #[error("{server} speaks ringblast protocol version {theirs}, this client speaks {ours}: run the same release on both sides")]
    Version {
        server: SocketAddr,
        theirs: u8,
        ours: u8,
    },
    /// `--datagram-size` larger than the path to the server carries whole.
    #[error("--datagram-size {asked} is above what the path to {server} carries whole (MTU {mtu}: at most {max}); use --datagram-size auto or smaller")]
    AbovePathMtu {
        asked: usize,
        server: SocketAddr,
        mtu: usize,
        max: usize,
    },
    /// Stopped by the user (Ctrl-C, SIGTERM).
    #[error("interrupted: {got} of {of} bytes")]
    Interrupted { got: u64, of: u64 },
    #[error("interrupted before the transfer began")]
    InterruptedEarly,
    #[error("cannot start sub-client {id} of {clients}: {error}")]
    Spawn {
        id: usize,
        clients: usize,
        error: io::Error,
    },
    /// A local file or directory that could not be used.
    #[error("{what} {}: {error}", path.display())]
    Path {
        what: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// `ringblast list`: the server's files and sizes.
/// The files `server` serves (to this client: with `security`, those its key may read).
pub fn list(
    server: SocketAddr,
    timeout: Duration,
    security: Option<&crate::keys::ClientSecurity>,
) -> Result<Vec<(String, u64)>, ClientError> {
    let mut conn = Connection::open(server)?;
    let token = conn.token(timeout)?;
    if let Some(sec) = security {
        conn.authenticate(sec, token, timeout)?;
    }
    let mut files = Vec::new();
    loop {
        let start = files.len() as u32;
        let (total, page) = conn.request(
            &Message::List { token, start },
            timeout,
            "listing",
            |m| match m {
                Message::Listing {
                    total,
                    start: s,
                    entries,
                } if *s == start => Reply::Done(Ok((
                    *total,
                    entries
                        .iter()
                        .map(|e| (e.name.to_string(), e.size))
                        .collect::<Vec<_>>(),
                ))),
                Message::Error { code, text, .. } => Reply::Done(Err(server_error(*code, text))),
                _ => Reply::Ignore,
            },
        )??;
        let got = page.len();
        files.extend(page);
        if got == 0 || files.len() >= total as usize {
            return Ok(files);
        }
    }
}

/// The final path of sub-client `id`'s copy: DIR/FILE for one client, DIR/FILE.i for several.
pub fn copy_path(dir: &Path, file: &str, id: usize, clients: usize) -> PathBuf {
    if clients == 1 {
        dir.join(file)
    } else {
        dir.join(format!("{file}.{id}"))
    }
}

/// Sub-clients per core up to which each gets a receive thread of its own.
const OWN_THREAD_PER_CORE: usize = 8;

/// Receive threads for `clients` sub-clients on `cores` cores: one each up to
/// [`OWN_THREAD_PER_CORE`] per core (the lab's N sub-clients; on a host shared with the
/// server, as on loopback, each keeps its share of the CPU: 10 sub-clients on 2 threads got
/// 12% less than on 10), then one per core, each driving many sockets (1000 sub-clients on 2
/// threads finish a third sooner than on 8: the server gets the CPU they leave).
pub fn default_threads(clients: usize, cores: usize) -> usize {
    let cores = cores.max(1);
    if clients <= OWN_THREAD_PER_CORE * cores {
        clients.max(1)
    } else {
        cores
    }
}

/// `ringblast get`: opens every sub-client's socket, then starts them all at once on the
/// receive threads, and waits for all of them.
pub fn get(cfg: &GetConfig) -> Result<Vec<CopyReport>, ClientError> {
    validate_name(&cfg.file)?;
    // The output directory, if this run will be the one to make it.
    let out_dir_made = cfg.out_dir.clone().filter(|d| !d.exists());
    if let Some(dir) = &cfg.out_dir {
        // Made when the first copy begins (a missing file leaves no empty directory behind);
        // something in the way is refused before anything is asked.
        if dir.exists() && !dir.is_dir() {
            return Err(ClientError::Path {
                what: "cannot write copies into",
                path: dir.clone(),
                error: io::Error::new(io::ErrorKind::AlreadyExists, "it is not a directory"),
            });
        }
        if !cfg.force {
            let clients = cfg.clients.max(1);
            if let Some(path) = (1..=clients)
                .map(|id| copy_path(dir, &cfg.file, id, clients))
                .find(|p| p.exists())
            {
                return Err(ClientError::Path {
                    what: "a copy is already at",
                    path,
                    error: io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "remove it, or use --force to replace it",
                    ),
                });
            }
        }
        for path in sink::remove_stale_parts(dir, &cfg.file) {
            tracing::warn!(
                "removed {}: a partial copy left by a process that is gone",
                path.display()
            );
        }
    }
    let clients = cfg.clients.max(1);
    let mut cfg = cfg.clone();
    if cfg.window_bytes == 0 {
        cfg.window_bytes = default_window_bytes(clients);
        cfg.window_max_bytes = auto_window_max_bytes(clients);
    }
    cfg.window_max_bytes = cfg.window_max_bytes.max(cfg.window_bytes);
    let threads = match cfg.threads {
        0 => default_threads(
            clients,
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        ),
        n => n,
    };
    let spare_fds = check_fd_budget(&cfg, clients, threads)?;
    let cfg = Arc::new(cfg);
    let now = std::time::Instant::now();
    let shared = subclient::Shared {
        live: Live::new(clients),
        together: handshake::Together::new(now),
        writes: write::WriteEngine::new(spare_fds),
    };
    let live = shared.live.clone();
    // Every socket first: one that cannot be opened (the open-file limit) stops the run
    // before any request goes out.
    let mut subs = Vec::with_capacity(clients);
    for id in 1..=clients {
        let (sock, facts) = threads::open_socket(&cfg).map_err(|error| ClientError::Spawn {
            id,
            clients,
            error,
        })?;
        let port = sock
            .local_addr()
            .map_err(|error| ClientError::Spawn { id, clients, error })?
            .port();
        let sub = SubClient::new(
            cfg.clone(),
            &shared,
            id,
            clients,
            facts,
            port,
            rand::random(),
            now,
        );
        subs.push(threads::Driven::new(sock, sub));
    }
    let done = Arc::new(AtomicBool::new(false));
    let reporter = spawn_reporter(
        live.clone(),
        cfg.interval,
        cfg.quiet,
        cfg.intervals_to_stderr,
        done.clone(),
    );
    let reports = threads::run(subs, threads);
    done.store(true, Ordering::Release);
    if let Some(r) = reporter {
        let _ = r.join();
    }
    // A directory this run made for copies that all failed goes too: nothing is left behind.
    if let Some(dir) = out_dir_made {
        if reports.iter().all(|r| r.path.is_none()) {
            let _ = std::fs::remove_dir(&dir);
        }
    }
    Ok(reports)
}

/// Descriptors kept free for what a run opens besides its copies (the results file, a host
/// name lookup).
const FD_SLACK: u64 = 8;

/// Refuses, before any socket is opened or any request sent, a run whose copies cannot all
/// get the descriptors they need (a socket each, a file each when written, an epoll per
/// receive thread that serves several). Returns how many copies may take a second descriptor
/// to be written with O_DIRECT: what is left, at most a quarter of the limit. (A copy
/// failing midway for want of a descriptor, after its request went out, is what this
/// prevents.)
fn check_fd_budget(cfg: &GetConfig, clients: usize, threads: usize) -> Result<usize, ClientError> {
    let limit = crate::sys::fd_limit();
    if limit == 0 || limit >= i32::MAX as u64 {
        return Ok(usize::MAX);
    }
    let in_use = crate::sys::open_fds();
    let writes = cfg.out_dir.is_some();
    let threads = threads.clamp(1, clients.max(1));
    let epolls = threads.min(clients.saturating_sub(threads)) as u64;
    let needed = clients as u64 * (1 + writes as u64) + epolls + FD_SLACK;
    let available = limit.saturating_sub(in_use);
    if needed > available {
        return Err(ClientError::FdLimit {
            clients,
            per_copy: if writes {
                "a socket and a file"
            } else {
                "a socket"
            },
            needed,
            available,
            limit,
        });
    }
    Ok((available - needed).min(limit / 4) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_sub_clients_get_a_thread_each_and_many_share_one_per_core() {
        assert_eq!(default_threads(1, 2), 1);
        assert_eq!(default_threads(10, 2), 10);
        assert_eq!(default_threads(16, 2), 16);
        assert_eq!(default_threads(17, 2), 2);
        assert_eq!(default_threads(1000, 2), 2);
        assert_eq!(default_threads(1000, 64), 64);
        assert_eq!(default_threads(0, 0), 1);
    }

    #[test]
    fn a_bad_name_is_refused_here_and_not_blamed_on_the_server() {
        let cfg = GetConfig::new("127.0.0.1:9".parse().unwrap(), "../etc/passwd");
        let e = get(&cfg).unwrap_err().to_string();
        assert!(e.starts_with("bad file name"), "{e}");
        assert!(!e.contains("server"), "{e}");
    }
}
