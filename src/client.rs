//! The client: `list`, and `get` with N sub-clients that each fetch the whole file.
//!
//! Each sub-client has its own socket (connected to the server's one port, so the kernel
//! filters everything else), its own thread and its own copy. It validates its address with a
//! token, asks for the file, then receives data with `recvmmsg` batches: every datagram is
//! length- and range-checked, its CRC32C verified, recorded in a [`LossTracker`] and written at
//! its offset. Feedback (`ACK`: cumulative point, credit, NACK ranges) goes back every quarter
//! window and whenever the socket runs dry. A copy is written under a temporary name and
//! renamed only once the whole file verifies; otherwise it is removed.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::files::{datagram_count, manifest_hash, payload_len, validate_name};
use crate::live::{spawn_reporter, ClientLive, Live};
use crate::receiver::LossTracker;
use crate::stats::Hist;
use crate::sys::hugebuf::HugeBuf;
use crate::sys::recvmmsg::{enable_timestamps, is_timeout, RecvBatch, BATCH};
use crate::sys::socket;
use crate::wire::{
    ack_flags, data_flags, Ack, DataHeader, DoneStatus, ErrorCode, Message, Meta, Mode, NackRange,
    MAX_DATAGRAM, MAX_NACK_RANGES, MAX_PAYLOAD, TOKEN_LEN,
};

/// How often an idle receiver re-sends its ACK (tail probe, lost-ACK recovery, keepalive).
const ACK_INTERVAL: Duration = Duration::from_millis(2);
/// First resend delay for control requests; doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);
/// DONE is sent this many times: it is not acknowledged.
const DONE_REPEATS: usize = 3;

/// How a copy is verified at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Verify {
    /// BLAKE3 of the written file against the server's content hash (plus the manifest).
    Content,
    /// The manifest: every datagram's CRC32C, in order, against the server's manifest hash.
    Manifest,
}

/// What `ringblast get` is asked to do.
#[derive(Debug, Clone)]
pub struct GetConfig {
    pub server: SocketAddr,
    pub file: String,
    pub clients: usize,
    /// Where copies go; `None` with `--discard`.
    pub out_dir: Option<PathBuf>,
    pub mode: Mode,
    /// The server is declared gone after this long without a word from it.
    pub timeout: Duration,
    /// Largest receive window in datagrams (the credit granted beyond the cumulative point);
    /// smaller if the kernel grants a receive buffer that cannot hold it. 0: the default
    /// for this many clients ([`default_window`]).
    pub window: u32,
    /// Kernel receive buffer asked for, bytes.
    pub recv_buffer: usize,
    pub verify: Verify,
    /// Largest file size a server may announce (bounds memory: 4 bytes per datagram).
    pub max_size: u64,
    /// Print interval reports this often (like iperf3's -i).
    pub interval: Option<Duration>,
    /// No progress bar.
    pub quiet: bool,
}

impl GetConfig {
    pub fn new(server: SocketAddr, file: impl Into<String>) -> Self {
        GetConfig {
            server,
            file: file.into(),
            clients: 1,
            out_dir: None,
            mode: Mode::Reliable,
            timeout: Duration::from_secs(5),
            window: 0,
            recv_buffer: 48 << 20,
            verify: Verify::Content,
            max_size: 1 << 40,
            interval: None,
            quiet: true,
        }
    }
}

/// Largest default window: 512 datagrams, 32 MiB at the default datagram size. Measured on
/// loopback (1 GiB, one client, median of 5): 64 -> 3.0, 128 -> 3.0, 256 -> 3.2,
/// 512 -> 3.4, 1024 -> 3.7 GiB/s; fewer stalls waiting for credit, more kernel memory.
pub const DEFAULT_WINDOW: u32 = 512;
/// The default windows of all sub-clients together stay under this many datagrams (256 MiB
/// of socket buffers at the default datagram size).
pub const DEFAULT_TOTAL_WINDOW: u32 = 4096;

/// The default window for each of `clients` sub-clients.
pub fn default_window(clients: usize) -> u32 {
    (DEFAULT_TOTAL_WINDOW / clients.max(1) as u32).clamp(64, DEFAULT_WINDOW)
}
/// Most datagrams a file may take: the receiver keeps a CRC (4 bytes) and a bit for each, so
/// this bounds what any server can make a client allocate to 2^27 * 4.125 B = 528 MiB.
pub const MAX_DATAGRAMS: u64 = 1 << 27;
/// Smallest payload per datagram a client accepts (with MAX_DATAGRAMS: files up to 64 GiB even
/// at this size, and up to 8 TiB at the default).
pub const MIN_PAYLOAD: u32 = 512;

/// The window (datagrams) a receive buffer of `granted` bytes can hold without dropping.
/// Measured on loopback: the kernel charges a 65507-byte datagram about 66.6 KB of buffer,
/// and a 1472-byte one about 2.3 KB (its bookkeeping), hence payload + header + 2 KiB.
/// Three quarters of that, so the ACK's round trip does not overflow it.
pub fn window_for_buffer(granted: usize, payload_size: u32, requested: u32) -> u32 {
    let per_datagram = payload_size as usize + crate::wire::DATA_HEADER_LEN + 2048;
    let fits = (granted / per_datagram * 3 / 4).max(4);
    requested.min(fits.min(u32::MAX as usize) as u32).max(1)
}

/// Why a sub-client failed. One line each, for the user.
#[derive(Debug, Error)]
pub enum FetchError {
    #[error("no answer from {server} for {secs:.1} s ({stage})")]
    ServerSilent {
        server: SocketAddr,
        secs: f64,
        stage: &'static str,
    },
    #[error("{server} refused the connection: no server is listening there (or it stopped)")]
    Refused { server: SocketAddr },
    #[error("server error: {0}")]
    Server(String),
    #[error("server announced {0}")]
    BadMeta(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// What a sub-client measures, per datagram, in microseconds (batch: datagrams per call).
#[derive(Debug, Clone, Default)]
pub struct ClientHists {
    /// Kernel receive time minus the sender's timestamp (same host or synchronised clocks).
    pub one_way_delay_us: Hist,
    /// Between consecutive datagrams' kernel receive times.
    pub inter_arrival_us: Hist,
    /// Datagrams per `recvmmsg` call.
    pub recv_batch: Hist,
    /// From the arrival that revealed a hole to the arrival of the datagram that filled it.
    pub repair_us: Hist,
}

impl ClientHists {
    pub fn merge(&mut self, o: &ClientHists) {
        self.one_way_delay_us.merge(&o.one_way_delay_us);
        self.inter_arrival_us.merge(&o.inter_arrival_us);
        self.recv_batch.merge(&o.recv_batch);
        self.repair_us.merge(&o.repair_us);
    }
}

/// The outcome of one sub-client, like one block of the lab's log.
#[derive(Debug, Clone, Default)]
pub struct CopyReport {
    pub id: usize,
    pub local_port: u16,
    pub server_port: u16,
    pub file_size: u64,
    /// Payload bytes of every data datagram that arrived (duplicates and corrupt included).
    pub bytes_received: u64,
    /// Distinct file bytes that arrived with a valid CRC.
    pub bytes_intact: u64,
    pub datagrams_expected: u64,
    pub datagrams_received: u64,
    /// Datagrams never received (0 for a complete copy).
    pub datagrams_lost: u64,
    /// Retransmissions received.
    pub retransmitted: u64,
    pub duplicates: u64,
    /// Datagrams whose CRC32C failed.
    pub corrupt: u64,
    /// Datagrams that were not valid for this session.
    pub malformed: u64,
    pub complete: bool,
    pub hash_ok: bool,
    /// From the first request to the end of verification.
    pub duration_s: f64,
    /// Where the verified copy is (`None` with --discard or on failure).
    pub path: Option<PathBuf>,
    pub error: Option<String>,
    pub hists: ClientHists,
    /// CPU seconds this sub-client's thread used (user + system).
    pub cpu_s: f64,
}

impl CopyReport {
    /// Verified bytes per second (0 if the copy did not verify).
    pub fn goodput_bps(&self) -> f64 {
        if self.hash_ok && self.duration_s > 0.0 {
            self.bytes_intact as f64 * 8.0 / self.duration_s
        } else {
            0.0
        }
    }

    pub fn ok(&self) -> bool {
        self.error.is_none() && self.complete && self.hash_ok
    }
}

/// A socket connected to the server, for the control exchanges.
struct Conn {
    sock: UdpSocket,
    server: SocketAddr,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// Data datagrams that arrived while a request was waiting for its answer, with their
    /// arrival time (Unix ns); kept (up to [`MAX_EARLY`]) while `keep_early` is set.
    early: Vec<(Vec<u8>, u64)>,
    keep_early: bool,
}

/// Most data datagrams kept while waiting for META (16 MiB at the largest datagram size).
const MAX_EARLY: usize = 256;

/// What a reply means to the request waiting for it.
enum Reply<T> {
    Done(T),
    /// The server is alive and working on it: keep waiting, reset the silence clock.
    Alive,
    Ignore,
}

impl Conn {
    fn open(server: SocketAddr) -> io::Result<Conn> {
        let any: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let sock = UdpSocket::bind(any)?;
        sock.connect(server)?;
        Ok(Conn {
            sock,
            server,
            buf: vec![0; MAX_DATAGRAM + 1],
            out: Vec::with_capacity(2048),
            early: Vec::new(),
            keep_early: false,
        })
    }

    fn send(&mut self, msg: &Message<'_>) -> Result<(), FetchError> {
        self.out.clear();
        msg.encode(&mut self.out);
        match socket::retry_eintr(|| self.sock.send(&self.out)) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Err(FetchError::Refused {
                server: self.server,
            }),
            // A full buffer loses this one; the caller's retry or next ACK covers it.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends `msg` and waits for a reply `accept` takes, resending with backoff; fails after
    /// `timeout` without any sign of life from the server.
    fn request<T>(
        &mut self,
        msg: &Message<'_>,
        timeout: Duration,
        stage: &'static str,
        mut accept: impl FnMut(&Message<'_>) -> Reply<T>,
    ) -> Result<T, FetchError> {
        let mut alive_at = Instant::now();
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            self.send(msg)?;
            let resend_at = Instant::now() + delay;
            delay = (delay * 2).min(MAX_RETRY_DELAY);
            loop {
                let now = Instant::now();
                if now.duration_since(alive_at) >= timeout {
                    return Err(FetchError::ServerSilent {
                        server: self.server,
                        secs: timeout.as_secs_f64(),
                        stage,
                    });
                }
                if now >= resend_at {
                    break;
                }
                let wait = (resend_at - now).min(timeout - now.duration_since(alive_at));
                self.sock
                    .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
                let n = match socket::retry_eintr(|| self.sock.recv(&mut self.buf)) {
                    Ok(n) => n,
                    Err(e) if is_timeout(&e) => continue,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        return Err(FetchError::Refused {
                            server: self.server,
                        })
                    }
                    Err(e) => return Err(e.into()),
                };
                if self.keep_early && crate::wire::is_data(&self.buf[..n]) {
                    if self.early.len() < MAX_EARLY {
                        self.early
                            .push((self.buf[..n].to_vec(), crate::engine::unix_ns()));
                    }
                    continue;
                }
                let Ok(reply) = Message::parse(&self.buf[..n]) else {
                    continue;
                };
                match accept(&reply) {
                    Reply::Done(t) => return Ok(t),
                    Reply::Alive => {
                        alive_at = Instant::now();
                        delay = FIRST_RETRY_DELAY;
                    }
                    Reply::Ignore => {}
                }
            }
        }
    }

    /// The address-validation round trip: HELLO (padded) -> RETRY with our token.
    fn token(&mut self, timeout: Duration) -> Result<[u8; TOKEN_LEN], FetchError> {
        let nonce: u64 = rand::random();
        self.request(
            &Message::Hello { nonce },
            timeout,
            "waiting for a token",
            |m| match m {
                Message::Retry { nonce: n, token } if *n == nonce => Reply::Done(*token),
                _ => Reply::Ignore,
            },
        )
    }
}

fn server_error(code: ErrorCode, text: &str) -> FetchError {
    FetchError::Server(match code {
        ErrorCode::NotFound | ErrorCode::BadName | ErrorCode::Busy | ErrorCode::Internal => {
            text.to_string()
        }
        other => format!("{text} ({other:?})"),
    })
}

/// `ringblast list`: the server's files and sizes.
pub fn list(server: SocketAddr, timeout: Duration) -> Result<Vec<(String, u64)>, FetchError> {
    let mut conn = Conn::open(server)?;
    let token = conn.token(timeout)?;
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

/// `ringblast get`: starts every sub-client at once and waits for all of them.
pub fn get(cfg: &GetConfig) -> Result<Vec<CopyReport>, FetchError> {
    validate_name(&cfg.file).map_err(|e| FetchError::Server(e.to_string()))?;
    if let Some(dir) = &cfg.out_dir {
        std::fs::create_dir_all(dir)?;
    }
    let clients = cfg.clients.max(1);
    let mut cfg = cfg.clone();
    if cfg.window == 0 {
        cfg.window = default_window(clients);
    }
    let cfg = &cfg;
    let barrier = Arc::new(Barrier::new(clients));
    let live = Live::new(clients);
    let done = Arc::new(AtomicBool::new(false));
    let reporter = spawn_reporter(live.clone(), cfg.interval, cfg.quiet, done.clone());
    let handles: Vec<_> = (1..=clients)
        .map(|id| {
            let cfg = cfg.clone();
            let barrier = barrier.clone();
            let live = live.clone();
            std::thread::Builder::new()
                .name(format!("client-{id}"))
                .spawn(move || fetch(&cfg, id, clients, &barrier, &live))
        })
        .collect::<Result<_, _>>()?;
    let joined: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
    done.store(true, Ordering::Release);
    if let Some(r) = reporter {
        let _ = r.join();
    }
    Ok(joined
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            h.unwrap_or_else(|_| CopyReport {
                id: i + 1,
                error: Some("sub-client panicked".into()),
                ..Default::default()
            })
        })
        .collect())
}

fn fetch(cfg: &GetConfig, id: usize, clients: usize, barrier: &Barrier, live: &Live) -> CopyReport {
    let mut f = Fetch {
        report: CopyReport {
            id,
            server_port: cfg.server.port(),
            ..Default::default()
        },
        temp: None,
    };
    let conn = Conn::open(cfg.server);
    barrier.wait();
    let cpu_start = crate::stats::cpu_time(true);
    let start = Instant::now();
    let result = conn
        .map_err(FetchError::from)
        .and_then(|conn| f.run(cfg, conn, id, clients, start, live));
    f.report.duration_s = start.elapsed().as_secs_f64();
    f.report.cpu_s = (crate::stats::cpu_time(true).saturating_sub(cpu_start)).as_secs_f64();
    if let Err(e) = result {
        f.report.error = Some(e.to_string());
    }
    if let Some(temp) = f.temp.take() {
        // Never leave a partial or unverified copy behind under any name.
        let _ = std::fs::remove_file(temp);
    }
    f.report
}

struct Fetch {
    report: CopyReport,
    /// The temporary file while it exists.
    temp: Option<PathBuf>,
}

/// The output of one sub-client: a temporary file, or nothing (--discard).
struct Sink {
    file: Option<File>,
}

impl Sink {
    /// Writes consecutive payloads starting at `offset`, in as few syscalls as possible.
    fn write_run(&self, offset: u64, run: &[IoSlice<'_>]) -> io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if run.is_empty() {
            return Ok(());
        }
        let want: usize = run.iter().map(|s| s.len()).sum();
        let done =
            nix::sys::uio::pwritev(file, run, offset as libc::off_t).map_err(io::Error::from)?;
        if done < want {
            // Short write: finish the rest piece by piece.
            let mut pos = 0usize;
            for s in run {
                let end = pos + s.len();
                if end > done {
                    let skip = done.saturating_sub(pos);
                    file.write_all_at(&s[skip..], offset + (pos + skip) as u64)?;
                }
                pos = end;
            }
        }
        Ok(())
    }
}

impl Fetch {
    fn run(
        &mut self,
        cfg: &GetConfig,
        mut conn: Conn,
        id: usize,
        clients: usize,
        start: Instant,
        live: &Live,
    ) -> Result<(), FetchError> {
        self.report.local_port = conn.sock.local_addr()?.port();
        let rcvbuf = socket::set_recv_buffer(&conn.sock, cfg.recv_buffer)?;
        // Before META the datagram size is unknown: ask for what the largest would allow.
        let initial_window = window_for_buffer(rcvbuf, MAX_PAYLOAD as u32, cfg.window);
        let token = conn.token(cfg.timeout)?;
        let request_id: u32 = rand::random();
        let get = Message::Get {
            token,
            request_id,
            mode: cfg.mode,
            window: initial_window,
            name: &cfg.file,
        };
        conn.keep_early = true;
        let meta = conn.request(&get, cfg.timeout, "waiting for the file", |m| match m {
            Message::Meta(meta) if meta.request_id == request_id => Reply::Done(Ok(*meta)),
            Message::Wait { request_id: r } if *r == request_id => Reply::Alive,
            Message::Error {
                request_id: r,
                code,
                text,
            } if *r == request_id => Reply::Done(Err(server_error(*code, text))),
            _ => Reply::Ignore,
        })??;
        self.check_meta(cfg, &meta)?;
        let sink = match &cfg.out_dir {
            Some(dir) => {
                let final_path = copy_path(dir, &cfg.file, id, clients);
                let temp = dir.join(format!(
                    ".{}.{}.part",
                    final_path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or("copy"),
                    std::process::id()
                ));
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&temp)?;
                self.temp = Some(temp);
                file.set_len(meta.file_size)?;
                Sink { file: Some(file) }
            }
            None => Sink { file: None },
        };
        let window = window_for_buffer(rcvbuf, meta.payload_size, cfg.window);
        tracing::debug!(
            "client {id}: receive buffer {} KiB, window {window} datagrams",
            rcvbuf / 1024
        );
        let mut rx = Receive::new(&meta, window);
        live.total_bytes
            .fetch_add(meta.file_size, Ordering::Relaxed);
        conn.keep_early = false;
        let early = std::mem::take(&mut conn.early);
        let outcome = rx
            .absorb_early(&early, &sink)
            .and_then(|()| rx.run(&mut conn, &sink, cfg, &live.clients[id - 1]));
        drop(early);
        self.report.file_size = meta.file_size;
        self.report.datagrams_expected = rx.tracker.total() as u64;
        self.report.datagrams_lost = rx.tracker.missing() as u64;
        self.report.complete = rx.tracker.is_complete();
        let c = &rx.counts;
        self.report.bytes_received = c.bytes_received;
        self.report.bytes_intact = c.bytes_intact;
        self.report.datagrams_received = c.datagrams_received;
        self.report.retransmitted = c.retransmitted;
        self.report.duplicates = c.duplicates;
        self.report.corrupt = c.corrupt;
        self.report.malformed = c.malformed;
        self.report.hists = std::mem::take(&mut rx.hists);
        let manifest_ok = self.report.complete
            && manifest_hash(meta.file_size, meta.payload_size, &rx.crcs) == meta.manifest_hash;
        // Tell the server we are done, whatever happened (it is not acknowledged).
        let status = if manifest_ok {
            DoneStatus::Complete
        } else {
            DoneStatus::Incomplete
        };
        for _ in 0..DONE_REPEATS {
            let _ = conn.send(&Message::Done {
                session: meta.session,
                status,
            });
        }
        outcome?;
        if !self.report.complete {
            return Err(FetchError::Server(format!(
                "transfer ended incomplete: {} of {} datagrams lost ({} of {} bytes intact)",
                self.report.datagrams_lost,
                self.report.datagrams_expected,
                self.report.bytes_intact,
                meta.file_size
            )));
        }
        if !manifest_ok {
            return Err(FetchError::Server(
                "whole-file manifest hash mismatch: copy discarded".into(),
            ));
        }
        let content_ok = match (&sink.file, cfg.verify) {
            (Some(file), Verify::Content) => {
                content_hash(file, meta.file_size)? == meta.content_hash
            }
            _ => true,
        };
        if !content_ok {
            return Err(FetchError::Server(
                "BLAKE3 content hash mismatch: copy discarded".into(),
            ));
        }
        self.report.hash_ok = true;
        if let (Some(dir), Some(temp)) = (&cfg.out_dir, self.temp.take()) {
            let final_path = copy_path(dir, &cfg.file, id, clients);
            std::fs::rename(&temp, &final_path)?;
            self.report.path = Some(final_path);
        }
        tracing::debug!(
            "client {id}: verified in {:.3} s",
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn check_meta(&self, cfg: &GetConfig, m: &Meta) -> Result<(), FetchError> {
        if m.file_size > cfg.max_size {
            return Err(FetchError::BadMeta(format!(
                "a {} byte file, over the {} byte limit (--max-size)",
                m.file_size, cfg.max_size
            )));
        }
        if m.payload_size < MIN_PAYLOAD {
            return Err(FetchError::BadMeta(format!(
                "{} byte payloads, under the {MIN_PAYLOAD} byte minimum",
                m.payload_size
            )));
        }
        let datagrams = datagram_count(m.file_size, m.payload_size);
        if datagrams > MAX_DATAGRAMS {
            return Err(FetchError::BadMeta(format!(
                "{datagrams} datagrams, over the {MAX_DATAGRAMS} a client tracks (use a larger datagram size)"
            )));
        }
        if m.mode != cfg.mode {
            return Err(FetchError::BadMeta(format!(
                "mode {} instead of {}",
                m.mode.as_str(),
                cfg.mode.as_str()
            )));
        }
        Ok(())
    }
}

/// BLAKE3 of the first `len` bytes of `file`, on all cores. Reads in large chunks rather than
/// mapping the file: faulting in a fresh map page by page costs more than the copy on a VM.
fn content_hash(file: &File, len: u64) -> io::Result<[u8; 32]> {
    const CHUNK: usize = 8 << 20;
    let mut h = blake3::Hasher::new();
    let mut buf = HugeBuf::new(CHUNK.min(len as usize).max(1));
    let mut pos = 0u64;
    while pos < len {
        let n = ((len - pos) as usize).min(CHUNK);
        file.read_exact_at(&mut buf.as_mut_slice()[..n], pos)?;
        h.update_rayon(&buf.as_slice()[..n]);
        pos += n as u64;
    }
    Ok(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_fits_the_granted_buffer() {
        // 8 MiB granted (rmem_max 4 MiB, unprivileged): holds 126 full datagrams.
        let w = window_for_buffer(8 << 20, MAX_PAYLOAD as u32, 128);
        assert!((64..=126 * 3 / 4 + 1).contains(&w), "{w}");
        assert_eq!(window_for_buffer(64 << 20, MAX_PAYLOAD as u32, 128), 128);
        assert_eq!(window_for_buffer(1, MAX_PAYLOAD as u32, 128), 4);
        assert_eq!(window_for_buffer(64 << 20, MAX_PAYLOAD as u32, 0), 1);
    }

    #[test]
    fn default_windows_share_a_budget() {
        assert_eq!(default_window(1), 512);
        assert_eq!(default_window(10), 409);
        assert_eq!(default_window(20), 204);
        assert_eq!(default_window(1000), 64);
    }
}

#[derive(Debug, Default)]
struct Counts {
    bytes_received: u64,
    bytes_intact: u64,
    datagrams_received: u64,
    retransmitted: u64,
    duplicates: u64,
    corrupt: u64,
    malformed: u64,
}

/// The data phase of one sub-client.
struct Receive {
    meta: Meta,
    tracker: LossTracker,
    crcs: Vec<u32>,
    counts: Counts,
    window: u32,
    /// Send timestamp of the newest datagram and when it arrived (echoed for RTT).
    echo_ts_ns: u64,
    echo_at: Instant,
    /// When the receiver last looked at its socket (what the next ACK describes).
    observed_at: Instant,
    end_seen: bool,
    /// The server said our session no longer exists.
    session_gone: Option<String>,
    hists: ClientHists,
    last_arrival_ns: u64,
    /// Holes seen open: start -> (end, when the arrival that revealed them came, Unix ns).
    holes: std::collections::BTreeMap<u32, (u32, u64)>,
    ranges: Vec<NackRange>,
    scratch: Vec<u8>,
}

impl Receive {
    fn new(meta: &Meta, window: u32) -> Self {
        let total = datagram_count(meta.file_size, meta.payload_size) as u32;
        Receive {
            meta: *meta,
            tracker: LossTracker::new(total),
            crcs: vec![0; total as usize],
            counts: Counts::default(),
            window,
            echo_ts_ns: 0,
            echo_at: Instant::now(),
            observed_at: Instant::now(),
            end_seen: false,
            session_gone: None,
            hists: ClientHists::default(),
            last_arrival_ns: 0,
            holes: std::collections::BTreeMap::new(),
            ranges: Vec::with_capacity(MAX_NACK_RANGES),
            scratch: Vec::with_capacity(MAX_NACK_RANGES * 8),
        }
    }

    fn run(
        &mut self,
        conn: &mut Conn,
        sink: &Sink,
        cfg: &GetConfig,
        live: &ClientLive,
    ) -> Result<(), FetchError> {
        conn.sock.set_read_timeout(Some(ACK_INTERVAL))?;
        // Kernel receive timestamps make delay and gaps per datagram; without them (an old
        // kernel) the batch's return time stands in.
        let _ = enable_timestamps(&conn.sock);
        let mut batch = RecvBatch::new();
        let ack_every = (self.window / 4).max(1) as u64;
        let mut since_ack = 0u64;
        let mut last_ack = Instant::now();
        let mut heard_at = Instant::now();
        let blast = self.meta.mode == Mode::Blast;
        while !self.tracker.is_complete() {
            let received = batch.recv(&conn.sock);
            // The state an ACK reports is the state at this instant: its echo delay is
            // measured to here, not to when it is sent, or a descheduled thread would make
            // data that arrived meanwhile look lost (and resent for nothing).
            self.observed_at = Instant::now();
            let idle = match received {
                Ok(n) => {
                    heard_at = Instant::now();
                    since_ack += self.absorb(&batch, n, sink)?;
                    self.publish(live);
                    false
                }
                Err(e) if is_timeout(&e) => true,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    return Err(FetchError::Refused {
                        server: conn.server,
                    })
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(text) = self.session_gone.take() {
                return Err(FetchError::Server(format!(
                    "the server dropped this transfer: {text}"
                )));
            }
            if blast && self.end_seen && idle {
                // Every datagram was sent once and the socket is drained: what is missing
                // now is lost.
                break;
            }
            let silent = heard_at.elapsed();
            if silent >= cfg.timeout {
                if blast && self.counts.datagrams_received > 0 {
                    tracing::debug!("blast transfer ended by idle timeout (no END marker)");
                    break;
                }
                return Err(FetchError::ServerSilent {
                    server: conn.server,
                    secs: silent.as_secs_f64(),
                    stage: "during the transfer",
                });
            }
            if since_ack >= ack_every || (idle && last_ack.elapsed() >= ACK_INTERVAL) {
                self.send_ack(conn, idle)?;
                since_ack = 0;
                last_ack = Instant::now();
            }
        }
        Ok(())
    }

    /// Checks, records and writes the data datagrams of one batch. Returns how many new
    /// datagrams were accepted.
    fn absorb(&mut self, batch: &RecvBatch, n: usize, sink: &Sink) -> Result<u64, FetchError> {
        let batch_ns = crate::engine::unix_ns();
        self.hists.recv_batch.record(n as u64);
        let mut run: Vec<IoSlice<'_>> = Vec::with_capacity(BATCH);
        let mut run_start = 0u64;
        let mut run_end = 0u64;
        let mut accepted = 0;
        for i in 0..n {
            let Some(d) = batch.datagram(i) else {
                self.counts.malformed += 1;
                continue;
            };
            let arrival = batch.timestamp_ns(i).unwrap_or(batch_ns);
            let Some((offset, payload)) = self.accept(d, arrival) else {
                continue;
            };
            accepted += 1;
            if offset != run_end || run.is_empty() {
                sink.write_run(run_start, &run)?;
                run.clear();
                run_start = offset;
            }
            run.push(IoSlice::new(payload));
            run_end = offset + payload.len() as u64;
        }
        sink.write_run(run_start, &run)?;
        Ok(accepted)
    }

    /// Checks one datagram that arrived at `arrival_ns`: control messages are handled, data is
    /// validated against the session, counted, CRC-checked and recorded. Returns the offset and
    /// payload of new intact data, to be written.
    fn accept<'d>(&mut self, d: &'d [u8], arrival_ns: u64) -> Option<(u64, &'d [u8])> {
        let payload_size = self.meta.payload_size as u64;
        let (h, payload) = match DataHeader::parse(d) {
            Ok(x) => x,
            Err(_) => {
                self.control(d);
                return None;
            }
        };
        let index = h.offset / payload_size;
        let valid = h.session == self.meta.session
            && h.offset % payload_size == 0
            && index < self.tracker.total() as u64
            && payload.len() == payload_len(self.meta.file_size, self.meta.payload_size, index);
        if !valid {
            self.counts.malformed += 1;
            return None;
        }
        let index = index as u32;
        self.record_arrival(arrival_ns, h.send_ts_ns);
        self.counts.datagrams_received += 1;
        self.counts.bytes_received += payload.len() as u64;
        if h.flags & data_flags::RETRANSMIT != 0 {
            self.counts.retransmitted += 1;
        }
        if self.tracker.contains(index) {
            self.counts.duplicates += 1;
            return None;
        }
        let crc = crc32c::crc32c(payload);
        if !DataHeader::crc_ok(d, crc) {
            self.counts.corrupt += 1;
            return None;
        }
        self.note_holes(index, arrival_ns);
        self.tracker.insert(index);
        self.crcs[index as usize] = crc;
        self.counts.bytes_intact += payload.len() as u64;
        self.echo_ts_ns = h.send_ts_ns;
        self.echo_at = Instant::now();
        Some((h.offset, payload))
    }

    /// Data that arrived before META (it was lost and the GET resent): checked and written
    /// now that the session is known, instead of being thrown away.
    fn absorb_early(&mut self, early: &[(Vec<u8>, u64)], sink: &Sink) -> Result<(), FetchError> {
        for (d, arrival) in early {
            if let Some((offset, payload)) = self.accept(d, *arrival) {
                sink.write_run(offset, &[IoSlice::new(payload)])?;
            }
        }
        Ok(())
    }

    fn publish(&self, live: &ClientLive) {
        let t = &self.tracker;
        live.bytes_intact
            .store(self.counts.bytes_intact, Ordering::Relaxed);
        live.datagrams
            .store(self.counts.datagrams_received, Ordering::Relaxed);
        live.retransmitted
            .store(self.counts.retransmitted, Ordering::Relaxed);
        // Everything received lies below seen_end: the rest of that range is holes.
        live.holes
            .store((t.seen_end() - t.received()) as u64, Ordering::Relaxed);
    }

    fn record_arrival(&mut self, arrival_ns: u64, send_ts_ns: u64) {
        if let Some(d) = arrival_ns.checked_sub(send_ts_ns) {
            self.hists.one_way_delay_us.record(d / 1000);
        }
        if self.last_arrival_ns != 0 {
            let gap = arrival_ns.saturating_sub(self.last_arrival_ns);
            self.hists.inter_arrival_us.record(gap / 1000);
        }
        self.last_arrival_ns = arrival_ns;
    }

    /// Before `index` is recorded: a jump past `seen_end` opens a hole (remember when), an
    /// index below it fills one (how long it took).
    fn note_holes(&mut self, index: u32, arrival_ns: u64) {
        let seen_end = self.tracker.seen_end();
        if index > seen_end {
            self.holes.insert(seen_end, (index, arrival_ns));
        } else if index < seen_end {
            if let Some((_, &(end, opened))) = self.holes.range(..=index).next_back() {
                if index < end {
                    let us = arrival_ns.saturating_sub(opened) / 1000;
                    self.hists.repair_us.record(us);
                }
            }
        }
    }

    /// A non-data datagram during the transfer.
    fn control(&mut self, d: &[u8]) {
        match Message::parse(d) {
            Ok(Message::End { session, .. }) if session == self.meta.session => {
                self.end_seen = true
            }
            Ok(Message::Error {
                code: ErrorCode::NoSession | ErrorCode::FileChanged | ErrorCode::Internal,
                text,
                ..
            }) => self.session_gone = Some(text.to_string()),
            // A repeated META (our GET was resent) or a late RETRY: harmless.
            Ok(Message::Meta(_)) | Ok(Message::Retry { .. }) | Ok(Message::Wait { .. }) => {}
            _ => self.counts.malformed += 1,
        }
    }

    fn send_ack(&mut self, conn: &mut Conn, idle: bool) -> Result<(), FetchError> {
        let t = &self.tracker;
        self.ranges.clear();
        t.nack_ranges(t.seen_end(), MAX_NACK_RANGES, &mut self.ranges);
        let credit = t.recv_next().saturating_add(self.window).min(t.total());
        let delay_us = self
            .observed_at
            .saturating_duration_since(self.echo_at)
            .as_micros()
            .min(u32::MAX as u128) as u32;
        let ack = Ack::new(
            self.meta.session,
            t.recv_next(),
            credit,
            t.seen_end(),
            self.echo_ts_ns,
            delay_us,
            if idle { ack_flags::IDLE } else { 0 },
            &self.ranges,
            &mut self.scratch,
        );
        conn.send(&Message::Ack(ack))
    }
}
