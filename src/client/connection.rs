//! A socket connected to the server, and the control exchanges over it: requests resent with
//! backoff until the answer comes, the address-validation round trip, and the error a server's
//! `ERROR` means for the user.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::ClientError;
use crate::protocol::{
    foreign_version, is_data, unix_ns, ErrorCode, Message, MAX_DATAGRAM, TOKEN_LEN, VERSION,
};
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
    /// Data datagrams that arrived while a request was waiting for its answer, with their
    /// arrival time (Unix ns); kept (up to [`MAX_EARLY`]) while `keep_early` is set.
    pub(super) early: Vec<(Vec<u8>, u64)>,
    pub(super) keep_early: bool,
}

/// Most data datagrams kept while waiting for META (16 MiB at the largest datagram size).
const MAX_EARLY: usize = 256;

/// What a reply means to the request waiting for it.
pub(super) enum Reply<T> {
    Done(T),
    /// The server is alive and working on it: keep waiting, reset the silence clock.
    Alive,
    Ignore,
}

impl Connection {
    pub(super) fn open(server: SocketAddr) -> io::Result<Connection> {
        let any: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let sock = UdpSocket::bind(any)?;
        sock.connect(server)?;
        Ok(Connection {
            sock,
            server,
            buf: vec![0; MAX_DATAGRAM + 1],
            out: Vec::with_capacity(2048),
            early: Vec::new(),
            keep_early: false,
        })
    }

    pub(super) fn send(&mut self, msg: &Message<'_>) -> Result<(), ClientError> {
        self.out.clear();
        msg.encode(&mut self.out);
        match socket::retry_eintr(|| self.sock.send(&self.out)) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Err(ClientError::Refused {
                server: self.server,
            }),
            // A full buffer loses this one; the caller's retry or next ACK covers it.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e.into()),
        }
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
        let mut alive_at = Instant::now();
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            self.send(msg)?;
            let resend_at = Instant::now() + delay;
            delay = (delay * 2).min(MAX_RETRY_DELAY);
            loop {
                let now = Instant::now();
                if now.duration_since(alive_at) >= timeout {
                    return Err(ClientError::ServerSilent {
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
                        return Err(ClientError::Refused {
                            server: self.server,
                        })
                    }
                    Err(e) => return Err(e.into()),
                };
                if self.keep_early && is_data(&self.buf[..n]) {
                    if self.early.len() < MAX_EARLY {
                        self.early.push((self.buf[..n].to_vec(), unix_ns()));
                    }
                    continue;
                }
                if let Some(theirs) = foreign_version(&self.buf[..n]) {
                    return Err(ClientError::Version {
                        server: self.server,
                        theirs,
                        ours: VERSION,
                    });
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

pub(super) fn server_error(code: ErrorCode, text: &str) -> ClientError {
    ClientError::Server(match code {
        ErrorCode::NotFound | ErrorCode::BadName | ErrorCode::Busy | ErrorCode::Internal => {
            text.to_string()
        }
        other => format!("{text} ({other:?})"),
    })
}
