//! A copy's handshake, from its first HELLO to the META that answers its GET: the token
//! round trip, the GET (resent with backoff while unanswered, asked again later while the
//! server is busy, kept waiting while it prepares the file), as a state machine with no
//! socket and no clock (datagrams and `now` in, requests out into an [`Outbox`]).
//!
//! The sub-clients of one `get` share a [`Together`]: at most [`MAX_HANDSHAKES`] are in this
//! phase at once, and one refused or unanswered keeps waiting while the others' copies keep
//! arriving (the server is making progress for this `get`; the wait is a queue).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::connection::{begin_handshake, finish_handshake};
use super::connection::{next_backoff, server_error, Resend};
use super::edge::Outbox;
use super::window::window_for_buffer;
use super::{ClientError, GetConfig};
use crate::protocol::noise::Handshake as NoiseHandshake;
use crate::protocol::seal::Opener;
use crate::protocol::{
    foreign_version, get_flags, ErrorCode, Join, Message, Meta, DATA_HEADER_LEN, TOKEN_LEN,
};
use crate::server::engine::EngineKind;

/// Most sub-clients of one `get` between their first HELLO and their META at once: the rest
/// wait their turn without asking (and without their timeout running), so ten thousand
/// sub-clients do not spend the server's per-address request budget on resends.
pub(super) const MAX_HANDSHAKES: usize = 128;
/// Tokens a sub-client asks for again when the server refuses one (expired while busy).
const TOKEN_RENEWALS: u8 = 3;
/// How long a META that came without its JOIN waits for one (the JOIN was lost, or the
/// server has no group).
const JOIN_WAIT: Duration = Duration::from_millis(300);
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
    gone: OnceLock<String>,
    /// The server answered a multicast GET without a group (said once per `get`).
    no_group: std::sync::atomic::AtomicBool,
}

impl Together {
    pub(super) fn new(epoch: Instant) -> Arc<Together> {
        Arc::new(Together {
            handshakes: AtomicUsize::new(0),
            last_done_ns: AtomicU64::new(0),
            epoch,
            gone: OnceLock::new(),
            no_group: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Takes one of the [`MAX_HANDSHAKES`] places, if one is free.
    pub(super) fn try_begin_handshake(&self) -> bool {
        self.handshakes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_HANDSHAKES).then_some(n + 1)
            })
            .is_ok()
    }

    pub(super) fn end_handshake(&self) {
        self.handshakes.fetch_sub(1, Ordering::AcqRel);
    }

    /// A copy arrived verified at `now`.
    pub(super) fn copy_done(&self, now: Instant) {
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
    pub(super) fn give_up(&self, why: &ClientError) {
        let _ = self.gone.set(why.to_string());
    }

    /// `server` serves this copy by unicast though multicast was asked for: one line says
    /// so, for the whole `get`.
    pub(super) fn no_group(&self, server: SocketAddr) {
        if !self.no_group.swap(true, Ordering::AcqRel) {
            tracing::warn!("{server} offers no multicast group for this file: going on by unicast");
        }
    }

    /// Why the server was given up on, if it was.
    pub(super) fn gone(&self) -> Option<&str> {
        self.gone.get().map(String::as_str)
    }
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
    busy: Backoff,
    /// When the server first answered WAIT (preparing the file).
    waiting_since: Option<Instant>,
    /// Tokens already asked for again.
    renewals: u8,
}

enum Phase {
    /// HELLO sent; waiting for RETRY with a token.
    Token {
        nonce: u64,
        req: Resend,
        /// Busy answers so far (the request budget of our address).
        busy: Backoff,
        renewals: u8,
    },
    /// HS_INIT sent (an authenticating client); waiting for HS_REPLY.
    Secure {
        nonce: u64,
        token: [u8; TOKEN_LEN],
        noise: Box<NoiseHandshake>,
        req: Resend,
        busy: Backoff,
        renewals: u8,
    },
    /// GET sent; waiting for META.
    Get { get: GetRequest, req: Resend },
    /// META came without the JOIN a multicast GET asked for: the GET goes once more (the
    /// server answers it again, JOIN first) and META is held until `until` for the JOIN.
    Joining { meta: Meta, until: Instant },
    /// The server is busy: ask again at `until`.
    Busy { again: Again, until: Instant },
    /// Over (META came, or an error): nothing more to do.
    Done,
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

/// One copy's handshake.
pub(super) struct Handshake {
    cfg: Arc<GetConfig>,
    together: Arc<Together>,
    /// For log lines: which sub-client.
    id: usize,
    phase: Phase,
    /// The GET's window (bytes): sized for the largest datagram, the size not known yet.
    window_bytes: u32,
    /// The largest datagram this client takes.
    max_datagram: usize,
    /// The encoded GET, for resends.
    get_bytes: Vec<u8>,
    /// Times the server answered busy.
    pub(super) busy_retries: u32,
    /// The multicast group the server put this copy in (a `JOIN` before the META).
    pub(super) join: Option<Join>,
    /// A sealed transmission's key (`GROUP_KEY`, before its JOIN): group, key, IV.
    pub(super) group_key: Option<(u32, [u8; 16], [u8; 12])>,
    rng: StdRng,
    /// The encoded HS_INIT, for resends.
    init_bytes: Vec<u8>,
    /// The encoded HS_FINISH: resent with the GET until the server answers it (sealed).
    finish_bytes: Vec<u8>,
    /// The opener of the server's sealed datagrams, once the handshake made one: the
    /// sub-client takes it (from then on only sealed datagrams are believed).
    pub(super) opener: Option<Opener>,
}

impl Handshake {
    /// Sends HELLO. `rcvbuf`: the receive buffer the kernel granted; `max_datagram`: the
    /// largest datagram this client takes (its path's); `seed`: of nonces, request ids and
    /// backoff jitter.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn begin(
        cfg: Arc<GetConfig>,
        together: Arc<Together>,
        id: usize,
        rcvbuf: usize,
        max_datagram: usize,
        seed: u64,
        now: Instant,
        out: &mut Outbox,
    ) -> Handshake {
        // Before META the datagram size is not known: the window is sized for the largest.
        let payload_guess = (max_datagram - DATA_HEADER_LEN) as u32;
        let window = window_for_buffer(rcvbuf, payload_guess, cfg.window_bytes);
        let mut h = Handshake {
            cfg,
            together,
            id,
            phase: Phase::Done,
            window_bytes: (window as u64 * payload_guess as u64).min(u32::MAX as u64) as u32,
            max_datagram,
            get_bytes: Vec::new(),
            busy_retries: 0,
            join: None,
            group_key: None,
            rng: StdRng::seed_from_u64(seed),
            init_bytes: Vec::new(),
            finish_bytes: Vec::new(),
            opener: None,
        };
        h.hello(Backoff::default(), 0, now, out);
        h
    }

    /// Asks for a token (again, after `busy` answers and `renewals` refused tokens).
    fn hello(&mut self, busy: Backoff, renewals: u8, now: Instant, out: &mut Outbox) {
        let nonce: u64 = self.rng.random();
        self.phase = Phase::Token {
            nonce,
            req: Resend::new(now, "waiting for a token"),
            busy,
            renewals,
        };
        out.push(&Message::Hello { nonce });
    }

    /// With a token, an authenticating client begins its handshake (HS_INIT, padded like
    /// HELLO); an open one asks for the file.
    fn with_token(
        &mut self,
        get: GetRequest,
        busy: Backoff,
        now: Instant,
        out: &mut Outbox,
    ) -> Result<(), ClientError> {
        let Some(sec) = self.cfg.security.clone() else {
            self.send_get(get, now, out);
            return Ok(());
        };
        let nonce: u64 = self.rng.random();
        let (noise, init) =
            begin_handshake(&sec, get.token, nonce).map_err(|e| ClientError::Auth {
                server: self.cfg.server,
                why: format!("cannot begin a handshake: {e}"),
            })?;
        self.init_bytes = init;
        out.push_bytes(&self.init_bytes);
        self.phase = Phase::Secure {
            nonce,
            token: get.token,
            noise: Box::new(noise),
            req: Resend::new(now, "waiting for the server's handshake"),
            busy,
            renewals: get.renewals,
        };
        Ok(())
    }

    /// The server's handshake message: its key checked (pinned, known, or first met), the
    /// third message and the keys made, and the GET sent sealed.
    fn on_reply(
        &mut self,
        conn: u32,
        noise_msg: &[u8],
        now: Instant,
        out: &mut Outbox,
    ) -> Result<(), ClientError> {
        let Phase::Secure {
            noise,
            renewals,
            token,
            ..
        } = std::mem::replace(&mut self.phase, Phase::Done)
        else {
            unreachable!("an HS_REPLY is taken in the secure phase only")
        };
        let sec = self.cfg.security.clone().expect("a secure handshake");
        let done = finish_handshake(*noise, &sec, self.cfg.server, conn, noise_msg)?;
        self.finish_bytes = done.finish;
        out.push_plain(&self.finish_bytes);
        out.seal_with(done.sealer);
        self.opener = Some(done.opener);
        let get = GetRequest {
            token,
            request_id: self.rng.random(),
            busy: Backoff::default(),
            waiting_since: None,
            renewals,
        };
        self.send_get(get, now, out);
        Ok(())
    }

    fn send_get(&mut self, get: GetRequest, now: Instant, out: &mut Outbox) {
        self.get_bytes.clear();
        Message::Get {
            token: get.token,
            request_id: get.request_id,
            mode: self.cfg.mode,
            window_bytes: self.window_bytes,
            max_datagram: self.max_datagram as u16,
            flags: if self.cfg.multicast {
                get_flags::MULTICAST
            } else {
                0
            } | match self.cfg.engine {
                None => 0,
                Some(EngineKind::Uring) => get_flags::ENGINE_URING,
                Some(EngineKind::Threads) => get_flags::ENGINE_THREADS,
            },
            name: &self.cfg.file,
        }
        .encode(&mut self.get_bytes);
        out.push_bytes(&self.get_bytes);
        self.phase = Phase::Get {
            get,
            req: Resend::new(now, "waiting for the file"),
        };
    }

    /// When [`Handshake::on_timer`] has something to do, if no datagram comes first.
    pub(super) fn deadline(&self) -> Option<Instant> {
        let timeout = self.cfg.timeout;
        match &self.phase {
            Phase::Token { req, .. } | Phase::Get { req, .. } | Phase::Secure { req, .. } => {
                Some(req.deadline(timeout))
            }
            Phase::Busy { until, .. } | Phase::Joining { until, .. } => Some(*until),
            Phase::Done => None,
        }
    }

    /// The deadline came: a request resent, a busy server asked again, the server given up
    /// on (silent for the timeout while no other copy of this `get` arrived either), or a
    /// META that waited for its JOIN long enough (returned: the copy goes by unicast).
    pub(super) fn on_timer(
        &mut self,
        now: Instant,
        out: &mut Outbox,
    ) -> Result<Option<Meta>, ClientError> {
        let (server, timeout) = (self.cfg.server, self.cfg.timeout);
        match &mut self.phase {
            Phase::Joining { until, .. } if now < *until => {}
            Phase::Joining { meta, .. } => {
                let meta = *meta;
                self.phase = Phase::Done;
                return Ok(Some(meta));
            }
            Phase::Token { nonce, req, .. } => {
                if due(req, &self.together, now, timeout, server)? {
                    out.push(&Message::Hello { nonce: *nonce });
                }
            }
            Phase::Secure { req, .. } => {
                if due(req, &self.together, now, timeout, server)? {
                    out.push_bytes(&self.init_bytes);
                }
            }
            Phase::Get { req, .. } => {
                if due(req, &self.together, now, timeout, server)? {
                    // The server may not have the connection yet (its third message lost).
                    if !self.finish_bytes.is_empty() {
                        out.push_plain(&self.finish_bytes);
                    }
                    out.push_bytes(&self.get_bytes);
                }
            }
            Phase::Busy { until, .. } if now < *until => {}
            Phase::Busy { .. } => {
                let Phase::Busy { again, .. } = std::mem::replace(&mut self.phase, Phase::Done)
                else {
                    unreachable!("matched above")
                };
                match again {
                    Again::Hello { busy, renewals } => self.hello(busy, renewals, now, out),
                    Again::Get(get) => self.send_get(get, now, out),
                }
            }
            Phase::Done => {}
        }
        Ok(None)
    }

    /// One datagram from the server. Returns the META that answers our GET.
    pub(super) fn on_datagram(
        &mut self,
        d: &[u8],
        now: Instant,
        out: &mut Outbox,
    ) -> Result<Option<Meta>, ClientError> {
        if let Some(theirs) = foreign_version(d) {
            return Err(ClientError::Version {
                server: self.cfg.server,
                theirs,
                ours: crate::protocol::VERSION,
            });
        }
        let Ok(msg) = Message::parse(d) else {
            return Ok(None);
        };
        let wait_limit = self.cfg.timeout * WAIT_TIMEOUTS;
        match (&mut self.phase, msg) {
            (
                Phase::Token {
                    nonce, renewals, ..
                },
                Message::Retry { nonce: n, token },
            ) if n == *nonce => {
                let get = GetRequest {
                    token,
                    request_id: self.rng.random(),
                    busy: Backoff::default(),
                    waiting_since: None,
                    renewals: *renewals,
                };
                self.with_token(get, Backoff::default(), now, out)?;
            }
            (
                Phase::Secure { nonce, .. },
                Message::HandshakeReply {
                    nonce: n,
                    conn,
                    noise,
                },
            ) if n == *nonce => {
                self.on_reply(conn, noise, now, out)?;
            }
            (
                Phase::Secure {
                    nonce, renewals, ..
                },
                Message::Error {
                    request_id,
                    code,
                    text,
                },
            ) if request_id == *nonce as u32 => {
                if code == ErrorCode::BadToken && *renewals < TOKEN_RENEWALS {
                    let renewals = *renewals + 1;
                    self.hello(Backoff::default(), renewals, now, out);
                } else {
                    return Err(server_error(code, text));
                }
            }
            // A key the server does not know is told before any GET is answered (sealed:
            // only the server could have said it).
            (
                Phase::Get { .. },
                Message::Error {
                    request_id: 0,
                    code: ErrorCode::NotAuthorized,
                    text,
                },
            ) if out.is_sealing() => {
                return Err(ClientError::Auth {
                    server: self.cfg.server,
                    why: crate::report::escape(text),
                });
            }
            (
                Phase::Token { nonce, .. } | Phase::Secure { nonce, .. },
                Message::Busy {
                    request_id,
                    retry_after_ms,
                    text,
                },
            ) if request_id == *nonce as u32 => {
                let asked = Duration::from_millis(retry_after_ms as u64);
                self.busy(asked, text, now)?;
            }
            (Phase::Get { get, req }, Message::Wait { request_id })
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
            }
            (
                Phase::Get { get, .. },
                Message::Busy {
                    request_id,
                    retry_after_ms,
                    text,
                },
            ) if request_id == get.request_id => {
                let asked = Duration::from_millis(retry_after_ms as u64);
                self.busy(asked, text, now)?;
            }
            (
                Phase::Get { get, .. },
                Message::Error {
                    request_id,
                    code,
                    text,
                },
            ) if request_id == get.request_id => {
                if code == ErrorCode::BadToken && get.renewals < TOKEN_RENEWALS {
                    // Expired while we were busy, or too old to tell: a new one.
                    let renewals = get.renewals + 1;
                    self.hello(Backoff::default(), renewals, now, out);
                } else {
                    return Err(server_error(code, text));
                }
            }
            // A sealed transmission's key comes before its JOIN (only ever sealed: once
            // sealing, nothing else reaches here).
            (Phase::Get { .. } | Phase::Joining { .. }, Message::GroupKey { group, key, iv })
                if self.cfg.multicast && out.is_sealing() =>
            {
                self.group_key = Some((group, key, iv));
            }
            // A sealed connection's JOIN without its key is not one (the key was lost: the
            // META that follows without a JOIN asks again).
            (_, Message::Join(j))
                if out.is_sealing() && self.group_key.is_none_or(|(g, ..)| g != j.group) => {}
            // The group comes before the META that completes the answer.
            (Phase::Get { get, .. }, Message::Join(j))
                if j.request_id == get.request_id && self.cfg.multicast =>
            {
                self.join = Some(j);
            }
            (Phase::Joining { meta, .. }, Message::Join(j)) if j.request_id == meta.request_id => {
                let meta = *meta;
                self.join = Some(j);
                self.phase = Phase::Done;
                return Ok(Some(meta));
            }
            // A META repeated because our GET was resent: the first one counts.
            (Phase::Get { get, .. }, Message::Meta(meta)) if meta.request_id == get.request_id => {
                if self.cfg.multicast && self.join.is_none() {
                    // Its JOIN may have been lost: ask once more before going by unicast.
                    out.push_bytes(&self.get_bytes);
                    self.phase = Phase::Joining {
                        meta,
                        until: now + JOIN_WAIT,
                    };
                    return Ok(None);
                }
                self.phase = Phase::Done;
                return Ok(Some(meta));
            }
            _ => {}
        }
        Ok(None)
    }

    /// The server has no room (for our GET, or for our address's requests: a HELLO): ask
    /// again after the time it names, backing off. Given up once it has been busy for the
    /// whole timeout with no other copy of this `get` arriving meanwhile (while they arrive,
    /// places come free, and the wait is a queue, not a refusal).
    fn busy(&mut self, asked: Duration, text: &str, now: Instant) -> Result<(), ClientError> {
        let (mut backoff, mut again) = match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Get { get, .. } => (get.busy, Again::Get(get)),
            Phase::Token { busy, renewals, .. } | Phase::Secure { busy, renewals, .. } => {
                (busy, Again::Hello { busy, renewals })
            }
            _ => unreachable!("busy is an answer to GET, HELLO or HS_INIT"),
        };
        let since = *backoff.since.get_or_insert(now);
        let waited = now.saturating_duration_since(since);
        let timeout = self.cfg.timeout;
        if waited >= timeout && !self.together.progress_within(timeout, now) {
            return Err(ClientError::Busy {
                server: self.cfg.server,
                text: crate::report::escape(text),
                secs: waited.as_secs_f64(),
                tries: self.busy_retries + 1,
            });
        }
        backoff.wait = next_backoff(backoff.wait, asked, self.rng.random());
        self.busy_retries += 1;
        tracing::debug!(
            "client {}: {}; asking again in {:?}",
            self.id,
            crate::report::escape(text),
            backoff.wait
        );
        match &mut again {
            Again::Hello { busy, .. } => *busy = backoff,
            Again::Get(get) => get.busy = backoff,
        }
        self.phase = Phase::Busy {
            again,
            until: now + backoff.wait,
        };
        Ok(())
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
    server: SocketAddr,
) -> Result<bool, ClientError> {
    match req.due(now, timeout, server) {
        Err(_) if together.progress_within(timeout, now) => {
            req.still_waiting(now);
            req.due(now, timeout, server)
        }
        r => r,
    }
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
