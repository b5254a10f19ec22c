//! A socket connected to the server, and the control exchanges over it: requests resent with
//! backoff until the answer comes, the address-validation round trip, and the error a server's
//! `ERROR` means for the user.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::ClientError;
use crate::keys::ClientSecurity;
use crate::protocol::noise::{
    prologue, Handshake as NoiseHandshake, HandshakeError, MAX_HANDSHAKE_MESSAGE,
};
use crate::protocol::seal::{Cipher, Opener, Sealer, SEALED_HEADER_LEN};
use crate::protocol::{foreign_version, ErrorCode, Message, MAX_DATAGRAM, TOKEN_LEN, VERSION};
use crate::sys::recvmmsg::is_timeout;
use crate::sys::socket;

/// First resend delay for control requests; doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// A socket connected to the server, for the control exchanges.
pub(super) struct Connection {
    pub(super) sock: UdpSocket,
    pub(super) server: SocketAddr,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// Once authenticated: requests go sealed, only sealed answers are believed, and the
    /// handshake's third message goes before each request until one is answered.
    sealer: Option<Sealer>,
    opener: Option<Opener>,
    finish: Vec<u8>,
}

/// What a reply means to the request waiting for it.
pub(super) enum Reply<T> {
    Done(T),
    Ignore,
}

impl Connection {
    pub(super) fn open(server: SocketAddr) -> io::Result<Connection> {
        let sock = socket::connected(server)?;
        Ok(Connection {
            sock,
            server,
            buf: vec![0; MAX_DATAGRAM + 1],
            out: Vec::with_capacity(2048),
            sealer: None,
            opener: None,
            finish: Vec::new(),
        })
    }

    pub(super) fn send(&mut self, msg: &Message<'_>) -> Result<(), ClientError> {
        self.out.clear();
        let Some(sealer) = &self.sealer else {
            msg.encode(&mut self.out);
            return send_to_server(&self.sock, self.server, &self.out);
        };
        if !self.finish.is_empty() {
            send_to_server(&self.sock, self.server, &self.finish)?;
        }
        self.out.resize(SEALED_HEADER_LEN, 0);
        msg.encode(&mut self.out);
        if sealer.seal_vec(&mut self.out).is_err() {
            return Ok(());
        }
        send_to_server(&self.sock, self.server, &self.out)
    }

    /// Authenticates (the handshake after the token): the server's key checked as `sec`
    /// says, then every request sealed.
    pub(super) fn authenticate(
        &mut self,
        sec: &ClientSecurity,
        token: [u8; TOKEN_LEN],
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let server = self.server;
        let failed = |e: HandshakeError| ClientError::Auth {
            server,
            why: format!("the server's handshake failed ({e})"),
        };
        let mut noise = NoiseHandshake::initiator(&sec.identity, &prologue(), sec.psk.as_ref())
            .map_err(failed)?;
        let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
        let n = noise.write(&mut buf).map_err(failed)?;
        let nonce: u64 = rand::random();
        let init = Message::HandshakeInit {
            token,
            nonce,
            noise: &buf[..n],
        };
        let reply = self.request(
            &init,
            timeout,
            "waiting for the server's handshake",
            |m| match m {
                Message::HandshakeReply {
                    nonce: n,
                    conn,
                    noise,
                } if *n == nonce => Reply::Done(Ok((*conn, noise.to_vec()))),
                Message::Error {
                    request_id,
                    code,
                    text,
                } if *request_id == nonce as u32 => Reply::Done(Err(server_error(*code, text))),
                _ => Reply::Ignore,
            },
        )??;
        let (conn, msg) = reply;
        let done = finish_handshake(noise, sec, server, conn, &msg)?;
        self.finish = done.finish;
        self.sealer = Some(done.sealer);
        self.opener = Some(done.opener);
        Ok(())
    }

    /// Sends `msg` and waits for a reply `accept` takes, resending with backoff; fails after
    /// `timeout` without any sign of life from the server.
    pub(super) fn request<T>(
        &mut self,
        msg: &Message<'_>,
        timeout: Duration,
        stage: &'static str,
        mut accept: impl FnMut(&Message<'_>) -> Reply<T>,
    ) -> Result<T, ClientError> {
        let mut req = Resend::new(Instant::now(), stage);
        self.send(msg)?;
        loop {
            let now = Instant::now();
            if req.due(now, timeout, self.server)? {
                self.send(msg)?;
                continue;
            }
            let wait = req.deadline(timeout).saturating_duration_since(now);
            self.sock
                .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
            let n = match socket::retry_eintr(|| self.sock.recv(&mut self.buf)) {
                Ok(n) => n,
                Err(e) if is_timeout(&e) => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    return Err(ClientError::Refused {
                        server: self.server,
                    })
                }
                Err(e) => return Err(e.into()),
            };
            let plain = match &mut self.opener {
                Some(o) => match o.open_in_place(&mut self.buf[..n]) {
                    // Answered: the server has the connection.
                    Ok(len) => {
                        self.finish.clear();
                        SEALED_HEADER_LEN..SEALED_HEADER_LEN + len
                    }
                    Err(_) => continue,
                },
                None => 0..n,
            };
            if let Some(theirs) = foreign_version(&self.buf[plain.clone()]) {
                return Err(ClientError::Version {
                    server: self.server,
                    theirs,
                    ours: VERSION,
                });
            }
            let Ok(reply) = Message::parse(&self.buf[plain]) else {
                continue;
            };
            match accept(&reply) {
                Reply::Done(t) => return Ok(t),
                Reply::Ignore => {}
            }
        }
    }

    /// The address-validation round trip: HELLO (padded) -> RETRY with our token.
    pub(super) fn token(&mut self, timeout: Duration) -> Result<[u8; TOKEN_LEN], ClientError> {
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

/// The client's first handshake message: the Noise state and the encoded (padded) HS_INIT.
pub(super) fn begin_handshake(
    sec: &ClientSecurity,
    token: [u8; TOKEN_LEN],
    nonce: u64,
) -> Result<(NoiseHandshake, Vec<u8>), HandshakeError> {
    let mut noise = NoiseHandshake::initiator(&sec.identity, &prologue(), sec.psk.as_ref())?;
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    let n = noise.write(&mut buf)?;
    let init = Message::HandshakeInit {
        token,
        nonce,
        noise: &buf[..n],
    }
    .to_vec();
    Ok((noise, init))
}

/// What the client has once the server's handshake message checked out.
pub(super) struct Handshaken {
    /// The encoded HS_FINISH (sent in plaintext until a sealed answer comes).
    pub(super) finish: Vec<u8>,
    pub(super) sealer: Sealer,
    pub(super) opener: Opener,
}

/// The server's handshake message `msg` for connection `conn`: read, the server's key checked
/// as `sec` says (pinned, known, first met), the third message and the keys made.
pub(super) fn finish_handshake(
    mut noise: NoiseHandshake,
    sec: &ClientSecurity,
    server: SocketAddr,
    conn: u32,
    msg: &[u8],
) -> Result<Handshaken, ClientError> {
    let failed = |e| handshake_failed(sec, server, e);
    noise.read(msg).map_err(failed)?;
    let key = noise
        .peer()
        .ok_or_else(|| failed(HandshakeError::OutOfTurn))?;
    sec.trust
        .check(&key)
        .map_err(|why| ClientError::Auth { server, why })?;
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    let n = noise.write(&mut buf).map_err(failed)?;
    let finish = Message::HandshakeFinish {
        conn,
        noise: &buf[..n],
    }
    .to_vec();
    let keys = noise.finish(Cipher::Aes128Gcm).map_err(failed)?;
    Ok(Handshaken {
        finish,
        sealer: Sealer::new(&keys.send, conn, 0),
        opener: Opener::new(&keys.receive, conn, 0),
    })
}

fn handshake_failed(sec: &ClientSecurity, server: SocketAddr, e: HandshakeError) -> ClientError {
    ClientError::Auth {
        server,
        why: format!(
            "the server's handshake failed ({e}){}",
            if sec.psk.is_some() {
                ": does it hold the same pre-shared key (--psk)?"
            } else {
                ""
            }
        ),
    }
}

/// Sends one encoded message on a socket connected to `server`.
pub(super) fn send_to_server(
    sock: &UdpSocket,
    server: SocketAddr,
    bytes: &[u8],
) -> Result<(), ClientError> {
    match socket::retry_eintr(|| sock.send(bytes)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err(ClientError::Refused { server })
        }
        // A full buffer loses this one; the caller's retry or next ACK covers it.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A request resent with backoff until its answer comes; the server is declared gone after
/// the timeout without a sign of life.
pub(super) struct Resend {
    resend_at: Instant,
    delay: Duration,
    alive_at: Instant,
    stage: &'static str,
}

impl Resend {
    pub(super) fn new(now: Instant, stage: &'static str) -> Self {
        Resend {
            resend_at: now + FIRST_RETRY_DELAY,
            delay: FIRST_RETRY_DELAY * 2,
            alive_at: now,
            stage,
        }
    }

    /// Whether to send again now; an error once the server has been silent too long.
    pub(super) fn due(
        &mut self,
        now: Instant,
        timeout: Duration,
        server: SocketAddr,
    ) -> Result<bool, ClientError> {
        if now.saturating_duration_since(self.alive_at) >= timeout {
            return Err(ClientError::ServerSilent {
                server,
                secs: timeout.as_secs_f64(),
                stage: self.stage,
            });
        }
        if now < self.resend_at {
            return Ok(false);
        }
        self.resend_at = now + self.delay;
        self.delay = (self.delay * 2).min(MAX_RETRY_DELAY);
        Ok(true)
    }

    /// The request is still waiting, for a reason the caller knows is not the server's
    /// silence: the silence clock starts again, the backoff goes on.
    pub(super) fn still_waiting(&mut self, now: Instant) {
        self.alive_at = now;
    }

    /// The server is working on it: the silence clock and the backoff start again.
    pub(super) fn alive(&mut self, now: Instant) {
        self.alive_at = now;
        self.delay = FIRST_RETRY_DELAY;
    }

    pub(super) fn deadline(&self, timeout: Duration) -> Instant {
        self.resend_at.min(self.alive_at + timeout)
    }
}

/// Longest wait between two requests to a busy server.
const MAX_BUSY_BACKOFF: Duration = Duration::from_secs(2);

/// The wait before asking a busy server again: at least what it asked for, twice the last
/// wait, at most [`MAX_BUSY_BACKOFF`], and spread by `jitter` (0-1: a quarter either way) so
/// that a thousand sub-clients refused at once do not all come back at once.
pub(super) fn next_backoff(last: Duration, asked: Duration, jitter: f64) -> Duration {
    let base = asked.max(last * 2).min(MAX_BUSY_BACKOFF);
    base.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// The error a server's `ERROR` means for the user. Its text is the server's to choose, so
/// control characters are shown escaped: a server cannot move the cursor, rewrite a line or
/// fake an "intact" one on the user's terminal.
pub(super) fn server_error(code: ErrorCode, text: &str) -> ClientError {
    let text = &crate::report::escape(text);
    ClientError::Server(match code {
        ErrorCode::NotFound
        | ErrorCode::BadName
        | ErrorCode::Internal
        | ErrorCode::EngineNotOffered => text.to_string(),
        other => format!("{text} ({other:?})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_server_is_asked_again_later_each_time_within_bounds() {
        let ms = Duration::from_millis;
        // At least what the server asked, doubling, at most 2 s, a quarter either way.
        assert_eq!(next_backoff(Duration::ZERO, ms(200), 0.5), ms(200));
        assert_eq!(next_backoff(ms(200), ms(200), 0.5), ms(400));
        assert_eq!(next_backoff(ms(400), ms(100), 0.5), ms(800));
        assert_eq!(next_backoff(ms(1600), ms(100), 0.5), MAX_BUSY_BACKOFF);
        assert_eq!(next_backoff(ms(200), ms(200), 0.0), ms(300));
        assert_eq!(next_backoff(ms(200), ms(200), 1.0), ms(500));
        // A server asking for an hour is not believed past the cap.
        assert_eq!(next_backoff(ms(0), ms(3_600_000), 0.5), MAX_BUSY_BACKOFF);
    }

    #[test]
    fn a_request_is_resent_with_backoff_and_given_up_after_the_timeout() {
        let (timeout, server) = (Duration::from_secs(2), "127.0.0.1:9".parse().unwrap());
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut r = Resend::new(t0, "waiting");
        assert!(!r.due(ms(50), timeout, server).unwrap());
        assert!(r.due(ms(100), timeout, server).unwrap());
        assert!(!r.due(ms(250), timeout, server).unwrap());
        assert!(r.due(ms(300), timeout, server).unwrap());
        assert!(r.due(ms(700), timeout, server).unwrap());
        // A sign of life restarts the silence clock.
        r.alive(ms(1500));
        assert!(r.due(ms(3000), timeout, server).is_ok());
        let e = r.due(ms(3500), timeout, server).unwrap_err().to_string();
        assert!(e.contains("no answer") && e.contains("waiting"), "{e}");
        assert!(r.deadline(timeout) <= ms(3500));
    }
}
