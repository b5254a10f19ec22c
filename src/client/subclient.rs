//! One sub-client, one copy, from start to end, as a state machine that a receive thread
//! (`pool.rs`) drives with the batches its socket receives and the deadlines it names: a token
//! (HELLO, RETRY), the GET (asked again, backing off, while the server is busy), the server's
//! META checked against what this client will allocate, the data phase (`receive.rs`), the
//! whole-file checks, and the verified copy renamed into place (or removed: a partial or
//! unverified copy is never left under any name).

use std::net::UdpSocket;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::connection::{next_backoff, send_to_server, server_error, Resend};
use super::receive::{DataIo, DataReceiver, Progress};
use super::sink::Sink;
use super::window::window_for_buffer;
use super::{copy_path, ClientError, GetConfig, Verify};
use crate::protocol::layout::{datagram_count, manifest_hash, DatagramSize};
use crate::protocol::{
    foreign_version, is_data, unix_ns, DoneStatus, ErrorCode, Message, Meta, DATA_HEADER_LEN,
    MAX_DATAGRAM, MAX_DATAGRAMS, MIN_PAYLOAD, TOKEN_LEN, VERSION,
};
use crate::report::copy::{ClientHists, CopyReport};
use crate::report::live::Live;
use crate::sys::recvmmsg::{enable_timestamps, RecvBatch};
use crate::sys::socket;

/// DONE is sent this many times: it is not acknowledged.
const DONE_REPEATS: usize = 3;
/// Most data datagrams kept while waiting for META (it was lost and the GET resent).
const MAX_EARLY: usize = 256;
/// Most sub-clients of one `get` between their first HELLO and their META at once: the rest
/// wait their turn without asking (and without their timeout running), so ten thousand
/// sub-clients do not spend the server's per-address request budget on resends.
pub(super) const MAX_HANDSHAKES: usize = 128;
/// How often a sub-client waiting for its turn looks again.
const TURN_POLL: Duration = Duration::from_millis(2);
/// Tokens a sub-client asks for again when the server refuses one (expired while busy).
const TOKEN_RENEWALS: u8 = 3;
/// Timeouts the server may answer WAIT (preparing the file) for: 60 s by default, after
/// which the copy is given up.
const WAIT_TIMEOUTS: u32 = 12;

/// What the sub-clients of one `get` share: the handshakes in flight, when a copy last
/// arrived (the server is making progress for this `get`: those waiting their turn, refused
/// busy or unanswered because their requests were dropped, keep waiting while copies arrive),
/// and why the server was given up on (the sub-clients not started yet do not start).
pub(super) struct Together {
    handshakes: AtomicUsize,
    /// When a copy last arrived verified, ns after `epoch` (0: none yet).
    last_done_ns: AtomicU64,
    epoch: Instant,
    gone: std::sync::OnceLock<String>,
}

impl Together {
    pub(super) fn new() -> Arc<Together> {
        Arc::new(Together {
            handshakes: AtomicUsize::new(0),
            last_done_ns: AtomicU64::new(0),
            epoch: Instant::now(),
            gone: std::sync::OnceLock::new(),
        })
    }

    fn try_begin_handshake(&self) -> bool {
        self.handshakes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_HANDSHAKES).then_some(n + 1)
            })
            .is_ok()
    }

    fn end_handshake(&self) {
        self.handshakes.fetch_sub(1, Ordering::AcqRel);
    }

    fn copy_done(&self, now: Instant) {
        let ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        self.last_done_ns.fetch_max(ns.max(1), Ordering::AcqRel);
    }

    /// Whether a copy arrived within `within` of `now`.
    fn progress_within(&self, within: Duration, now: Instant) -> bool {
        match self.last_done_ns.load(Ordering::Acquire) {
            0 => false,
            ns => now.saturating_duration_since(self.epoch + Duration::from_nanos(ns)) < within,
        }
    }

    /// The server was given up on, for `why`: the sub-clients not started yet will not.
    fn give_up(&self, why: &ClientError) {
        let _ = self.gone.set(why.to_string());
    }
}

/// [`Resend::due`], except that a request left unanswered while other copies of the same
/// `get` keep arriving is not the server's silence (its answer was dropped by the address's
/// request budget, or it waits its turn): the wait goes on, resending.
fn due(
    req: &mut Resend,
    together: &Together,
    now: Instant,
    timeout: Duration,
    server: std::net::SocketAddr,
) -> Result<bool, ClientError> {
    match req.due(now, timeout, server) {
        Err(_) if together.progress_within(timeout, now) => {
            req.still_waiting(now);
            req.due(now, timeout, server)
        }
        r => r,
    }
}

/// One copy's whole life.
pub(super) struct SubClient {
    pub(super) id: usize,
    clients: usize,
    cfg: Arc<GetConfig>,
    pub(super) sock: UdpSocket,
    live: Arc<Live>,
    together: Arc<Together>,
    /// This sub-client holds one of the [`MAX_HANDSHAKES`] places.
    in_handshake: bool,
    pub(super) report: CopyReport,
    /// The temporary file while it exists.
    temp: Option<PathBuf>,
    phase: Phase,
    start: Instant,
    /// What the kernel granted for the receive buffer.
    rcvbuf: usize,
    /// The largest datagram this client takes (its path's, or `--datagram-size`).
    max_datagram: usize,
    /// An encoded request, kept for resends.
    out: Vec<u8>,
}

enum Phase {
    /// Sockets are open; nothing sent yet: waiting for a place among the handshakes in flight,
    /// looked for again at `retry_at`.
    New {
        retry_at: Instant,
    },
    /// HELLO sent; waiting for RETRY with a token.
    Token {
        nonce: u64,
        req: Resend,
        /// Busy answers so far (the request budget of our address).
        busy: Backoff,
        /// Tokens already asked for again.
        renewals: u8,
    },
    /// GET sent; waiting for META. Data that comes first (META was lost) is kept.
    Get {
        get: GetRequest,
        req: Resend,
        early: Vec<(Vec<u8>, u64)>,
    },
    /// The server is busy: ask again at `until`.
    Busy {
        again: Again,
        until: Instant,
    },
    Data(Box<Transfer>),
    Ended,
}

/// What a busy server is asked again.
enum Again {
    /// A token (a HELLO refused by our address's request budget).
    Hello {
        busy: Backoff,
        renewals: u8,
    },
    Get(GetRequest),
}

/// A busy server's answers so far: since when, and the last wait.
#[derive(Clone, Copy, Default)]
struct Backoff {
    since: Option<Instant>,
    wait: Duration,
}

struct GetRequest {
    token: [u8; TOKEN_LEN],
    request_id: u32,
    window_bytes: u32,
    busy: Backoff,
    /// When the server first answered WAIT (preparing the file).
    waiting_since: Option<Instant>,
    /// Tokens already asked for again.
    renewals: u8,
}

struct Transfer {
    meta: Meta,
    rx: DataReceiver,
    sink: Sink,
}

/// What an answer to a control request makes of the sub-client.
enum Next {
    Stay,
    Get([u8; TOKEN_LEN]),
    Busy(Duration, String),
    /// The token was refused: ask for a new one.
    Renew,
    Meta(Meta),
}

impl SubClient {
    /// Opens sub-client `id`'s socket (of `clients`); nothing is sent until
    /// [`SubClient::start`]. Fails only if the socket cannot be had.
    pub(super) fn new(
        cfg: Arc<GetConfig>,
        id: usize,
        clients: usize,
        live: Arc<Live>,
        together: Arc<Together>,
    ) -> std::io::Result<SubClient> {
        let sock = socket::connected(cfg.server)?;
        Ok(SubClient {
            id,
            clients,
            report: CopyReport {
                id,
                server_port: cfg.server.port(),
                local_port: sock.local_addr()?.port(),
                hists: ClientHists::empty(),
                ..Default::default()
            },
            cfg,
            sock,
            live,
            together,
            in_handshake: false,
            temp: None,
            phase: Phase::New {
                retry_at: Instant::now(),
            },
            start: Instant::now(),
            rcvbuf: 0,
            max_datagram: MAX_DATAGRAM,
            out: Vec::with_capacity(1280),
        })
    }

    /// Starts the copy if a place among the handshakes in flight is free (else looks again
    /// a little later): sizes the receive buffer, finds the largest datagram the path takes,
    /// sends HELLO.
    pub(super) fn start(&mut self, now: Instant) {
        if let Some(why) = self.together.gone.get() {
            let e = ClientError::NotStarted(why.clone());
            return self.end(Err(e), now);
        }
        if !self.together.try_begin_handshake() {
            self.phase = Phase::New {
                retry_at: now + TURN_POLL,
            };
            return;
        }
        self.in_handshake = true;
        self.start = now;
        let r = (|| {
            self.rcvbuf = socket::set_recv_buffer(&self.sock, self.cfg.recv_buffer)?;
            self.max_datagram = max_datagram(&self.cfg, &self.sock)?;
            // Kernel receive timestamps make delay and gaps per datagram; without them (an
            // old kernel) the batch's return time stands in.
            let _ = enable_timestamps(&self.sock);
            self.hello(Backoff::default(), 0, now)
        })();
        if let Err(e) = r {
            self.end(Err(e), now);
        }
    }

    /// Asks for a token (again, after `busy` answers and `renewals` refused tokens).
    fn hello(&mut self, busy: Backoff, renewals: u8, now: Instant) -> Result<(), ClientError> {
        let nonce: u64 = rand::random();
        self.phase = Phase::Token {
            nonce,
            req: Resend::new(now, "waiting for a token"),
            busy,
            renewals,
        };
        self.encode_and_send(&Message::Hello { nonce })
    }

    /// This sub-client's handshake is over (data, or the end): its place goes to the next.
    fn leave_handshake(&mut self) {
        if std::mem::take(&mut self.in_handshake) {
            self.together.end_handshake();
        }
    }

    /// Whether the user asked every copy to stop.
    pub(super) fn stop_asked(&self) -> bool {
        self.cfg
            .stop
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Stops the copy where it is: the server is told (it frees the session at once), the
    /// temporary file removed, and the report says how far it got.
    pub(super) fn interrupt(&mut self, now: Instant) {
        let e = match &self.phase {
            Phase::Ended => return,
            Phase::Data(t) => ClientError::Interrupted {
                got: t.rx.counts.bytes_intact,
                of: t.meta.file_size,
            },
            _ => ClientError::InterruptedEarly,
        };
        self.end(Err(e), now);
    }

    /// The report, once the copy has ended (or when it cannot go on).
    pub(super) fn take_report(&mut self) -> CopyReport {
        std::mem::take(&mut self.report)
    }

    pub(super) fn is_ended(&self) -> bool {
        matches!(self.phase, Phase::Ended)
    }

    /// When [`SubClient::on_timer`] has something to do, if no datagram comes first.
    pub(super) fn deadline(&self) -> Option<Instant> {
        let timeout = self.cfg.timeout;
        match &self.phase {
            Phase::New { retry_at } => Some(*retry_at),
            Phase::Ended => None,
            Phase::Token { req, .. } | Phase::Get { req, .. } => Some(req.deadline(timeout)),
            Phase::Busy { until, .. } => Some(*until),
            Phase::Data(t) => Some(t.rx.deadline(timeout)),
        }
    }

    /// `n` datagrams arrived (in `batch`), read at `now`.
    pub(super) fn on_batch(&mut self, batch: &RecvBatch, n: usize, now: Instant) {
        let r = match &mut self.phase {
            Phase::Data(t) => {
                let io = DataIo {
                    sock: &self.sock,
                    server: self.cfg.server,
                    sink: &t.sink,
                    live: &self.live.clients[self.id - 1],
                };
                match t.rx.on_batch(batch, n, &io, now) {
                    Ok(Progress::Going) => return,
                    Ok(Progress::Finished) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Phase::Ended => return,
            _ => {
                // META may come in one batch with the data that follows it: the batch is read
                // to its end first (that data is kept as early), then the transfer begins.
                let batch_ns = unix_ns();
                let mut r = Ok(None);
                for i in 0..n {
                    if let Some(d) = batch.datagram(i) {
                        let arrival = batch.timestamp_ns(i).unwrap_or(batch_ns);
                        match self.on_control(d, arrival, now) {
                            Ok(None) => {}
                            Ok(Some(meta)) => r = Ok(Some(meta)),
                            Err(e) => {
                                r = Err(e);
                                break;
                            }
                        }
                    }
                }
                match r {
                    Ok(None) => return,
                    Ok(Some(meta)) => match self.begin_data(meta, now) {
                        Ok(Progress::Going) => return,
                        Ok(Progress::Finished) => Ok(()),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                }
            }
        };
        self.end(r, now);
    }

    /// The socket failed (`ECONNREFUSED`: nothing listens at the server's address).
    pub(super) fn on_recv_error(&mut self, e: std::io::Error, now: Instant) {
        let e = if e.kind() == std::io::ErrorKind::ConnectionRefused {
            ClientError::Refused {
                server: self.cfg.server,
            }
        } else {
            e.into()
        };
        self.end(Err(e), now);
    }

    /// The deadline came; `socket_empty`: a receive just found nothing queued.
    pub(super) fn on_timer(&mut self, empty_at: Option<u64>, now: Instant) {
        let (server, timeout) = (self.cfg.server, self.cfg.timeout);
        let r = match &mut self.phase {
            Phase::Ended => return,
            Phase::New { .. } => return self.start(now),
            Phase::Token { nonce, req, .. } => match due(req, &self.together, now, timeout, server)
            {
                Ok(true) => {
                    let nonce = *nonce;
                    self.encode_and_send(&Message::Hello { nonce })
                }
                Ok(false) => Ok(()),
                Err(e) => Err(e),
            },
            Phase::Get { req, .. } => match due(req, &self.together, now, timeout, server) {
                Ok(true) => send_to_server(&self.sock, server, &self.out),
                Ok(false) => Ok(()),
                Err(e) => Err(e),
            },
            Phase::Busy { until, .. } if now < *until => Ok(()),
            Phase::Busy { .. } => {
                let Phase::Busy { again, .. } = std::mem::replace(&mut self.phase, Phase::Ended)
                else {
                    unreachable!("matched above")
                };
                match again {
                    Again::Hello { busy, renewals } => self.hello(busy, renewals, now),
                    Again::Get(get) => self.send_get(get, now),
                }
            }
            Phase::Data(t) => {
                let io = DataIo {
                    sock: &self.sock,
                    server,
                    sink: &t.sink,
                    live: &self.live.clients[self.id - 1],
                };
                match t.rx.on_timer(&io, timeout, empty_at, now) {
                    Ok(Progress::Going) => return,
                    Ok(Progress::Finished) => return self.end(Ok(()), now),
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = r {
            self.end(Err(e), now);
        }
    }

    fn encode_and_send(&mut self, msg: &Message<'_>) -> Result<(), ClientError> {
        self.out.clear();
        msg.encode(&mut self.out);
        send_to_server(&self.sock, self.cfg.server, &self.out)
    }

    /// One datagram before the data phase. Returns the META that answers our GET, for the
    /// caller to begin the transfer with once it has read the rest of the batch.
    fn on_control(
        &mut self,
        d: &[u8],
        arrival_ns: u64,
        now: Instant,
    ) -> Result<Option<Meta>, ClientError> {
        if let Phase::Get { early, .. } = &mut self.phase {
            if is_data(d) {
                if early.len() < MAX_EARLY {
                    early.push((d.to_vec(), arrival_ns));
                }
                return Ok(None);
            }
        }
        if let Some(theirs) = foreign_version(d) {
            return Err(ClientError::Version {
                server: self.cfg.server,
                theirs,
                ours: VERSION,
            });
        }
        let Ok(msg) = Message::parse(d) else {
            return Ok(None);
        };
        let wait_limit = self.cfg.timeout * WAIT_TIMEOUTS;
        let next = match (&mut self.phase, msg) {
            (Phase::Token { nonce, .. }, Message::Retry { nonce: n, token }) if n == *nonce => {
                Next::Get(token)
            }
            (
                Phase::Token { nonce, .. },
                Message::Busy {
                    request_id,
                    retry_after_ms,
                    text,
                },
            ) if request_id == *nonce as u32 => Next::Busy(
                Duration::from_millis(retry_after_ms as u64),
                text.to_string(),
            ),
            (Phase::Get { get, req, .. }, Message::Wait { request_id })
                if request_id == get.request_id =>
            {
                // The server is preparing the file: it is alive, but not for ever.
                let since = *get.waiting_since.get_or_insert(now);
                let waited = now.saturating_duration_since(since);
                if waited >= wait_limit {
                    return Err(ClientError::Waited {
                        server: self.cfg.server,
                        secs: waited.as_secs_f64(),
                    });
                }
                req.alive(now);
                Next::Stay
            }
            (
                Phase::Get { get, .. },
                Message::Error {
                    request_id,
                    code: ErrorCode::BadToken,
                    ..
                },
            ) if request_id == get.request_id && get.renewals < TOKEN_RENEWALS => Next::Renew,
            (
                Phase::Get { get, .. },
                Message::Busy {
                    request_id,
                    retry_after_ms,
                    text,
                },
            ) if request_id == get.request_id => Next::Busy(
                Duration::from_millis(retry_after_ms as u64),
                text.to_string(),
            ),
            (
                Phase::Get { get, .. },
                Message::Error {
                    request_id,
                    code,
                    text,
                },
            ) if request_id == get.request_id => return Err(server_error(code, text)),
            // A META repeated because our GET was resent: the first one counts.
            (Phase::Get { get, .. }, Message::Meta(meta)) if meta.request_id == get.request_id => {
                Next::Meta(meta)
            }
            _ => Next::Stay,
        };
        match next {
            Next::Stay => Ok(None),
            Next::Renew => {
                let renewals = match &self.phase {
                    Phase::Get { get, .. } => get.renewals + 1,
                    _ => TOKEN_RENEWALS,
                };
                self.hello(Backoff::default(), renewals, now).map(|()| None)
            }
            Next::Get(token) => {
                // Before META the datagram size is not known: the window is sized for the
                // largest.
                let payload_guess = (self.max_datagram - DATA_HEADER_LEN) as u32;
                let window = window_for_buffer(self.rcvbuf, payload_guess, self.cfg.window_bytes);
                let renewals = match &self.phase {
                    Phase::Token { renewals, .. } => *renewals,
                    _ => 0,
                };
                let get = GetRequest {
                    token,
                    request_id: rand::random(),
                    window_bytes: (window as u64 * payload_guess as u64).min(u32::MAX as u64)
                        as u32,
                    busy: Backoff::default(),
                    waiting_since: None,
                    renewals,
                };
                self.send_get(get, now).map(|()| None)
            }
            Next::Busy(asked, text) => self.busy(asked, text, now).map(|()| None),
            Next::Meta(meta) => Ok(Some(meta)),
        }
    }

    fn send_get(&mut self, get: GetRequest, now: Instant) -> Result<(), ClientError> {
        let cfg = self.cfg.clone();
        let r = self.encode_and_send(&Message::Get {
            token: get.token,
            request_id: get.request_id,
            mode: cfg.mode,
            window_bytes: get.window_bytes,
            max_datagram: self.max_datagram as u16,
            name: &cfg.file,
        });
        self.phase = Phase::Get {
            get,
            req: Resend::new(now, "waiting for the file"),
            early: Vec::new(),
        };
        r
    }

    /// The server has no room (for our GET, or for our address's requests: a HELLO): ask
    /// again after the time it names, backing off. Given up once it has been busy for the
    /// whole timeout with no other copy of this `get` ending meanwhile (while they end,
    /// places come free, and the wait is a queue, not a refusal).
    fn busy(&mut self, asked: Duration, text: String, now: Instant) -> Result<(), ClientError> {
        let (mut backoff, mut again) = match std::mem::replace(&mut self.phase, Phase::Ended) {
            Phase::Get { get, .. } => (get.busy, Again::Get(get)),
            Phase::Token { busy, renewals, .. } => (busy, Again::Hello { busy, renewals }),
            _ => unreachable!("busy is an answer to GET or HELLO"),
        };
        let since = *backoff.since.get_or_insert(now);
        let waited = now.saturating_duration_since(since);
        let timeout = self.cfg.timeout;
        if waited >= timeout && !self.together.progress_within(timeout, now) {
            return Err(ClientError::Busy {
                server: self.cfg.server,
                text: crate::report::escape(&text),
                secs: waited.as_secs_f64(),
                tries: self.report.busy_retries + 1,
            });
        }
        backoff.wait = next_backoff(backoff.wait, asked, rand::random());
        self.report.busy_retries += 1;
        tracing::debug!(
            "client {}: {}; asking again in {:?}",
            self.id,
            crate::report::escape(&text),
            backoff.wait
        );
        let until = now + backoff.wait;
        match &mut again {
            Again::Hello { busy, .. } => *busy = backoff,
            Again::Get(get) => get.busy = backoff,
        }
        self.phase = Phase::Busy { again, until };
        Ok(())
    }

    /// META came: the copy's file, window and receiver are set up, and what arrived early
    /// is taken in.
    fn begin_data(&mut self, meta: Meta, now: Instant) -> Result<Progress, ClientError> {
        let Phase::Get { early, .. } = std::mem::replace(&mut self.phase, Phase::Ended) else {
            unreachable!("META is an answer to GET")
        };
        self.leave_handshake();
        let cfg = self.cfg.clone();
        let sink = match self.prepare(&meta) {
            Ok(sink) => sink,
            Err(e) => {
                // The server has a session for us already: it is told at once, not left to
                // its idle timeout.
                for _ in 0..DONE_REPEATS {
                    let _ = self.encode_and_send(&Message::Done {
                        session: meta.session,
                        status: DoneStatus::Incomplete,
                    });
                }
                return Err(e);
            }
        };
        let window = window_for_buffer(self.rcvbuf, meta.payload_size, cfg.window_bytes);
        tracing::debug!(
            "client {}: receive buffer {} KiB, window {window} datagrams",
            self.id,
            self.rcvbuf / 1024
        );
        // Credit never passes the end of the file, whatever the window.
        let window_max =
            (cfg.window_max_bytes / meta.payload_size.max(1) as u64).min(u32::MAX as u64) as u32;
        let mut rx = DataReceiver::new(&meta, window, window_max, now);
        self.live
            .total_bytes
            .fetch_add(meta.file_size, Ordering::Relaxed);
        rx.absorb_early(&early, &sink)?;
        let io = DataIo {
            sock: &self.sock,
            server: cfg.server,
            sink: &sink,
            live: &self.live.clients[self.id - 1],
        };
        let progress = rx.check_end(&io, now)?;
        if progress == Progress::Going {
            // The server sends nothing until it hears from us at this address.
            rx.first_ack(&io, now)?;
        }
        self.phase = Phase::Data(Box::new(Transfer { meta, rx, sink }));
        Ok(progress)
    }

    /// What META asks of this client, checked and made ready: the output file (and its
    /// directory), GRO.
    fn prepare(&mut self, meta: &Meta) -> Result<Sink, ClientError> {
        let cfg = self.cfg.clone();
        check_meta(&cfg, meta, self.max_datagram)?;
        self.report.began = true;
        self.report.file_size = meta.file_size;
        self.report.datagram_size = meta.payload_size as usize + DATA_HEADER_LEN;
        // Coalesced receives from here on: what arrived before META was read one by one.
        self.report.gro = cfg.gro && socket::enable_gro(&self.sock);
        let Some(dir) = &cfg.out_dir else {
            return Ok(Sink::discard());
        };
        std::fs::create_dir_all(dir).map_err(|error| ClientError::Path {
            what: "cannot create the output directory",
            path: dir.clone(),
            error,
        })?;
        let final_path = copy_path(dir, &cfg.file, self.id, self.clients);
        let hash = cfg.verify == Verify::Content;
        let (sink, temp) = Sink::create(dir, &final_path, meta.file_size, hash, cfg.write_path)
            .map_err(|(error, path)| ClientError::Path {
                what: "cannot create the copy",
                path,
                error,
            })?;
        self.temp = Some(temp);
        Ok(sink)
    }

    /// The copy is over, one way or another: the report is filled in, the server told (once
    /// there is a session), the copy verified and renamed, or removed.
    fn end(&mut self, outcome: Result<(), ClientError>, now: Instant) {
        self.leave_handshake();
        let phase = std::mem::replace(&mut self.phase, Phase::Ended);
        let r = match phase {
            Phase::Data(t) => outcome.and(self.finish(*t)),
            _ => outcome,
        };
        match &r {
            Ok(()) => self.together.copy_done(now),
            // The server is gone, refuses us, or made no progress for this whole `get` for a
            // timeout: the sub-clients still waiting for their turn will not ask it.
            Err(
                e @ (ClientError::ServerSilent { .. }
                | ClientError::Refused { .. }
                | ClientError::Version { .. }
                | ClientError::Busy { .. }),
            ) => self.together.give_up(e),
            Err(_) => {}
        }
        if let Err(e) = r {
            self.report.error = Some(e.to_string());
        }
        if let Some(temp) = self.temp.take() {
            // Never leave a partial or unverified copy behind under any name.
            let _ = std::fs::remove_file(temp);
        }
        self.report.duration_s = now
            .max(Instant::now())
            .saturating_duration_since(self.start)
            .as_secs_f64();
        self.report.finish();
    }

    /// The data phase's counts into the report, DONE to the server, and the whole-file
    /// checks. Runs whatever ended the data phase (DONE goes in any case).
    fn finish(&mut self, t: Transfer) -> Result<(), ClientError> {
        let Transfer { meta, mut rx, sink } = t;
        let r = &mut self.report;
        r.file_size = meta.file_size;
        r.datagrams_expected = rx.tracker.total() as u64;
        r.datagrams_lost = rx.tracker.missing() as u64;
        r.complete = rx.tracker.is_complete();
        let c = &rx.counts;
        r.bytes_received = c.bytes_received;
        r.bytes_intact = c.bytes_intact;
        r.datagrams_received = c.datagrams_received;
        r.retransmitted = c.retransmitted;
        r.duplicates = c.duplicates;
        r.corrupt = c.corrupt;
        r.malformed = c.malformed;
        r.recv_calls = c.recv_calls;
        r.hists = std::mem::take(&mut rx.hists);
        r.sender = rx.status;
        let manifest_ok = r.complete
            && manifest_hash(meta.file_size, meta.payload_size, &rx.crcs) == meta.manifest_hash;
        drop(rx);
        // Tell the server we are done, whatever happened (it is not acknowledged).
        let status = if manifest_ok {
            DoneStatus::Complete
        } else {
            DoneStatus::Incomplete
        };
        for _ in 0..DONE_REPEATS {
            let _ = self.encode_and_send(&Message::Done {
                session: meta.session,
                status,
            });
        }
        let r = &mut self.report;
        if !r.complete {
            return Err(ClientError::Incomplete(format!(
                "{} of {} datagrams lost ({} of {} bytes intact)",
                r.datagrams_lost, r.datagrams_expected, r.bytes_intact, meta.file_size
            )));
        }
        if !manifest_ok {
            return Err(ClientError::Verification(
                "whole-file manifest hash mismatch: copy discarded".into(),
            ));
        }
        let hash = sink.finish();
        self.report.written_direct = sink.direct_bytes();
        let content_ok = match hash? {
            Some(hash) => hash == meta.content_hash,
            None => true,
        };
        if !content_ok {
            return Err(ClientError::Verification(
                "BLAKE3 content hash mismatch: copy discarded".into(),
            ));
        }
        self.report.hash_ok = true;
        if let (Some(dir), Some(_)) = (&self.cfg.out_dir, &self.temp) {
            let final_path = copy_path(dir, &self.cfg.file, self.id, self.clients);
            sink.place(&final_path).map_err(|error| ClientError::Path {
                what: "cannot put the verified copy at",
                path: final_path.clone(),
                error,
            })?;
            self.temp = None;
            self.report.path = Some(final_path);
        }
        tracing::debug!(
            "client {}: verified in {:.3} s",
            self.id,
            self.start.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

impl Drop for SubClient {
    /// Even when its thread panics, a copy leaves no temporary file behind.
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// The largest datagram this client takes from the server: its path MTU to the server less
/// the IP and UDP headers (auto), or `--datagram-size` if the path carries that whole.
fn max_datagram(cfg: &GetConfig, sock: &UdpSocket) -> Result<usize, ClientError> {
    let mtu = socket::path_mtu(sock)?;
    let path_max = socket::datagram_size_for_mtu(mtu, &cfg.server);
    match cfg.datagram_size {
        DatagramSize::Auto => Ok(path_max.min(MAX_DATAGRAM)),
        DatagramSize::Fixed(n) if n <= path_max => Ok(n),
        DatagramSize::Fixed(n) => Err(ClientError::AbovePathMtu {
            asked: n,
            server: cfg.server,
            mtu,
            max: path_max,
        }),
    }
}

/// Refuses a META that would make this client allocate without bound, or that does not match
/// what was asked.
fn check_meta(cfg: &GetConfig, m: &Meta, max_datagram: usize) -> Result<(), ClientError> {
    if m.payload_size as usize + DATA_HEADER_LEN > max_datagram {
        return Err(ClientError::BadMeta(format!(
            "{}-byte datagrams, over the {max_datagram} this client takes",
            m.payload_size as usize + DATA_HEADER_LEN
        )));
    }
    if m.file_size > cfg.max_size {
        return Err(ClientError::BadMeta(format!(
            "a {} byte file, over the {} byte limit (--max-size)",
            m.file_size, cfg.max_size
        )));
    }
    if m.payload_size < MIN_PAYLOAD {
        return Err(ClientError::BadMeta(format!(
            "{} byte payloads, under the {MIN_PAYLOAD} byte minimum",
            m.payload_size
        )));
    }
    let datagrams = datagram_count(m.file_size, m.payload_size);
    if datagrams > MAX_DATAGRAMS {
        return Err(ClientError::BadMeta(format!(
            "{datagrams} datagrams, over the {MAX_DATAGRAMS} a client tracks (use a larger datagram size)"
        )));
    }
    if m.mode != cfg.mode {
        return Err(ClientError::BadMeta(format!(
            "mode {} instead of {}",
            m.mode.as_str(),
            cfg.mode.as_str()
        )));
    }
    Ok(())
}
