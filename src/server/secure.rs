//! The server's authenticated connections (`serve --identity --authorized`, or `--psk`): the
//! handshakes in progress and the connections they made, bounded, with no socket (the
//! control thread feeds it messages and sends what it returns).
//!
//! A handshake starts with an `HS_INIT` that carries a valid, unspent token (the address was
//! validated by the HELLO/RETRY round trip, exactly as a GET's is), so a flood of them comes
//! from addresses that receive, within their request budget. Each costs two X25519 operations
//! and at most [`MAX_HANDSHAKES`] wait for their third message (the oldest goes first, and
//! any older than [`HANDSHAKE_LIFETIME`]). The `HS_REPLY` is about a tenth of the padded
//! `HS_INIT`: no amplification. A repeated `HS_INIT` (its reply lost) gets the same reply.
//! `HS_FINISH` proves the client's static key; a key not authorized is refused (sealed, so
//! the client can believe it) and nothing else follows. A connection lives while its client
//! is heard, at most [`MAX_CONNECTIONS`]; one idle for twice the idle timeout is forgotten.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::keys::{fingerprint, AuthorizedKey, ServerSecurity};
use crate::protocol::noise::{prologue, Handshake, MAX_HANDSHAKE_MESSAGE};
use crate::protocol::seal::{Cipher, OpenError, Opener, Sealer};
use crate::protocol::Message;

/// Handshakes waiting for their third message at once.
pub const MAX_HANDSHAKES: usize = 4096;
/// How long a handshake waits for its third message.
pub const HANDSHAKE_LIFETIME: Duration = Duration::from_secs(10);
/// Connections at once.
pub const MAX_CONNECTIONS: usize = 65_536;

struct PendingHandshake {
    peer: SocketAddr,
    nonce: u64,
    hs: Handshake,
    /// The encoded HS_REPLY, sent again if the HS_INIT comes again.
    reply: Vec<u8>,
    at: Instant,
}

/// An authenticated client: its keys and what it may read.
pub struct Connection {
    pub id: u32,
    pub peer: SocketAddr,
    pub client: AuthorizedKey,
    opener: Opener,
    pub sealer: Arc<Sealer>,
    last_heard: Instant,
}

/// What an `HS_INIT` came to.
pub enum InitOutcome {
    /// Send this `HS_REPLY`.
    Reply(Vec<u8>),
    /// The Noise message was refused (counted; not answered).
    Refused,
}

/// What an `HS_FINISH` came to.
pub enum FinishOutcome {
    /// A connection, made now (or already made by an earlier copy of this message).
    Connected { id: u32, new: bool },
    /// The handshake finished but the key is not authorized: tell the client (sealed).
    Unauthorized { key: [u8; 32], sealer: Box<Sealer> },
    /// Unknown connection, another address, or a message Noise refused: dropped.
    Dropped,
}

/// A sealed datagram, opened: the connection it came on, and where its plaintext is.
pub struct Opened {
    pub conn: u32,
    pub len: usize,
}

/// Why a sealed datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedDrop {
    /// No such connection (expired, or never made).
    UnknownConnection,
    /// From another address than the connection's.
    WrongAddress,
    Open(OpenError),
}

pub struct Secure {
    pub security: Arc<ServerSecurity>,
    pending: HashMap<u32, PendingHandshake>,
    /// Pending handshakes, oldest first (ids; some may be finished already).
    order: VecDeque<u32>,
    by_init: HashMap<(SocketAddr, u64), u32>,
    conns: HashMap<u32, Connection>,
    by_peer: HashMap<SocketAddr, u32>,
    cipher: Cipher,
}

impl Secure {
    pub fn new(security: Arc<ServerSecurity>) -> Self {
        Secure {
            security,
            pending: HashMap::new(),
            order: VecDeque::new(),
            by_init: HashMap::new(),
            conns: HashMap::new(),
            by_peer: HashMap::new(),
            cipher: Cipher::Aes128Gcm,
        }
    }

    /// Handshakes in progress, connections.
    pub fn counts(&self) -> (usize, usize) {
        (self.pending.len(), self.conns.len())
    }

    fn fresh_id(&self) -> u32 {
        loop {
            let id: u32 = rand::random();
            if id != 0 && !self.pending.contains_key(&id) && !self.conns.contains_key(&id) {
                return id;
            }
        }
    }

    /// A repeated `HS_INIT` (same address and nonce): its reply again.
    pub fn repeated_init(&self, peer: SocketAddr, nonce: u64) -> Option<Vec<u8>> {
        let id = self.by_init.get(&(peer, nonce))?;
        self.pending.get(id).map(|p| p.reply.clone())
    }

    /// The first message of a handshake, from a validated address (its token checked and
    /// spent by the caller).
    pub fn init(
        &mut self,
        peer: SocketAddr,
        nonce: u64,
        noise: &[u8],
        now: Instant,
    ) -> InitOutcome {
        // Full: the oldest handshake makes room (as a SYN cache does).
        self.expire_handshakes(now);
        let sec = &self.security;
        let Ok(mut hs) = Handshake::responder(&sec.identity, &prologue(), sec.psk.as_ref()) else {
            return InitOutcome::Refused;
        };
        let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
        let Ok(n) = hs.read(noise).and_then(|()| hs.write(&mut buf)) else {
            return InitOutcome::Refused;
        };
        let id = self.fresh_id();
        let reply = Message::HandshakeReply {
            nonce,
            conn: id,
            noise: &buf[..n],
        }
        .to_vec();
        self.pending.insert(
            id,
            PendingHandshake {
                peer,
                nonce,
                hs,
                reply: reply.clone(),
                at: now,
            },
        );
        self.order.push_back(id);
        self.by_init.insert((peer, nonce), id);
        InitOutcome::Reply(reply)
    }

    fn expire_handshakes(&mut self, now: Instant) {
        while let Some(&id) = self.order.front() {
            let old = match self.pending.get(&id) {
                Some(p) => {
                    now.saturating_duration_since(p.at) >= HANDSHAKE_LIFETIME
                        || self.pending.len() >= MAX_HANDSHAKES
                }
                None => true,
            };
            if !old {
                break;
            }
            self.order.pop_front();
            if let Some(p) = self.pending.remove(&id) {
                self.by_init.remove(&(p.peer, p.nonce));
            }
        }
    }

    /// The third message: the client's key, checked against the authorized keys.
    pub fn finish(
        &mut self,
        peer: SocketAddr,
        conn: u32,
        noise: &[u8],
        now: Instant,
    ) -> FinishOutcome {
        if let Some(c) = self.conns.get(&conn) {
            // A copy of the message that made it (the client resends it with its first
            // request until answered).
            return match c.peer == peer {
                true => FinishOutcome::Connected {
                    id: conn,
                    new: false,
                },
                false => FinishOutcome::Dropped,
            };
        }
        match self.pending.get(&conn) {
            Some(p) if p.peer == peer => {}
            _ => return FinishOutcome::Dropped,
        }
        let p = self.pending.remove(&conn).expect("checked");
        self.by_init.remove(&(p.peer, p.nonce));
        let mut hs = p.hs;
        if hs.read(noise).is_err() {
            return FinishOutcome::Dropped;
        }
        let Ok(keys) = hs.finish(self.cipher) else {
            return FinishOutcome::Dropped;
        };
        let sealer = Sealer::new(&keys.send, conn, 0);
        let Some(client) = self.security.client(&keys.peer) else {
            return FinishOutcome::Unauthorized {
                key: keys.peer,
                sealer: Box::new(sealer),
            };
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            // The least recently heard goes.
            if let Some(old) = self
                .conns
                .values()
                .min_by_key(|c| c.last_heard)
                .map(|c| c.id)
            {
                self.forget(old);
            }
        }
        // An address has one connection: a client that reconnects from it replaces it.
        if let Some(old) = self.by_peer.get(&peer).copied() {
            self.forget(old);
        }
        self.conns.insert(
            conn,
            Connection {
                id: conn,
                peer,
                client,
                opener: Opener::new(&keys.receive, conn, 0),
                sealer: Arc::new(sealer),
                last_heard: now,
            },
        );
        self.by_peer.insert(peer, conn);
        FinishOutcome::Connected {
            id: conn,
            new: true,
        }
    }

    fn forget(&mut self, id: u32) {
        if let Some(c) = self.conns.remove(&id) {
            if self.by_peer.get(&c.peer) == Some(&id) {
                self.by_peer.remove(&c.peer);
            }
        }
    }

    /// Opens a sealed datagram from `peer` in place.
    pub fn open(
        &mut self,
        peer: SocketAddr,
        dgram: &mut [u8],
        now: Instant,
    ) -> Result<Opened, SealedDrop> {
        let id = Opener::connection_of(dgram).ok_or(SealedDrop::Open(OpenError::Truncated))?;
        let c = self
            .conns
            .get_mut(&id)
            .ok_or(SealedDrop::UnknownConnection)?;
        if c.peer != peer {
            return Err(SealedDrop::WrongAddress);
        }
        let len = c.opener.open_in_place(dgram).map_err(SealedDrop::Open)?;
        c.last_heard = now;
        Ok(Opened { conn: id, len })
    }

    pub fn connection(&self, id: u32) -> Option<&Connection> {
        self.conns.get(&id)
    }

    /// The sealer of `peer`'s connection: everything the server sends it goes sealed (but
    /// the answers to the handshake's own plaintext steps).
    pub fn sealer_of(&self, peer: SocketAddr) -> Option<&Arc<Sealer>> {
        let id = self.by_peer.get(&peer)?;
        self.conns.get(id).map(|c| &c.sealer)
    }

    /// Forgets handshakes past their lifetime and connections silent for `idle` whose
    /// address has no session (`busy`).
    pub fn sweep(&mut self, now: Instant, idle: Duration, busy: impl Fn(SocketAddr) -> bool) {
        self.expire_handshakes(now);
        let stale: Vec<u32> = self
            .conns
            .values()
            .filter(|c| now.saturating_duration_since(c.last_heard) >= idle && !busy(c.peer))
            .map(|c| c.id)
            .collect();
        for id in stale {
            self.forget(id);
        }
    }
}

/// How a client's key is named in the log.
pub fn client_name(c: &AuthorizedKey) -> String {
    match c.comment.is_empty() {
        true => fingerprint(&c.key),
        false => format!(
            "{} ({})",
            fingerprint(&c.key),
            crate::report::escape(&c.comment)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Authorized;
    use crate::protocol::noise::StaticKey;
    use crate::protocol::seal::{SEALED_HEADER_LEN, TAG_LEN};

    fn server(authorized: &[[u8; 32]]) -> (Secure, StaticKey) {
        let identity = StaticKey::generate();
        let text: String = authorized
            .iter()
            .map(|k| format!("{} files=gen-* test\n", crate::keys::public_line(k)))
            .collect();
        let sec = ServerSecurity {
            identity: identity.clone(),
            authorized: Some(Authorized::parse(&text).unwrap()),
            psk: None,
        };
        (Secure::new(Arc::new(sec)), identity)
    }

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Runs a client's side against `s`: the connection's outcome and the client's keys.
    fn connect(
        s: &mut Secure,
        client: &StaticKey,
        from: SocketAddr,
        now: Instant,
    ) -> (FinishOutcome, Option<crate::protocol::noise::Session>) {
        let mut c = Handshake::initiator(client, &prologue(), None).unwrap();
        let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
        let n = c.write(&mut buf).unwrap();
        let InitOutcome::Reply(reply) = s.init(from, 1, &buf[..n], now) else {
            panic!("no reply");
        };
        let Ok(Message::HandshakeReply { conn, noise, .. }) = Message::parse(&reply) else {
            panic!("not a reply");
        };
        c.read(noise).unwrap();
        let n = c.write(&mut buf).unwrap();
        let out = s.finish(from, conn, &buf[..n], now);
        (out, c.finish(Cipher::Aes128Gcm).ok())
    }

    #[test]
    fn an_authorized_key_connects_and_its_datagrams_open_once() {
        let ck = StaticKey::generate();
        let (mut s, _) = server(&[ck.public]);
        let now = Instant::now();
        let (out, keys) = connect(&mut s, &ck, peer(1000), now);
        let FinishOutcome::Connected { id, new: true } = out else {
            panic!("not connected");
        };
        let keys = keys.unwrap();
        assert!(s.connection(id).unwrap().client.may_read("gen-1GiB"));
        assert!(!s.connection(id).unwrap().client.may_read("secret"));
        let sealer = Sealer::new(&keys.send, id, 0);
        let mut d = vec![0u8; SEALED_HEADER_LEN + 5 + TAG_LEN];
        d[SEALED_HEADER_LEN..SEALED_HEADER_LEN + 5].copy_from_slice(b"hello");
        sealer.seal_in_place(&mut d, 5).unwrap();
        let copy = d.clone();
        // From another address: not opened (and not spent).
        assert_eq!(
            s.open(peer(1001), &mut d.clone(), now).err(),
            Some(SealedDrop::WrongAddress)
        );
        let o = s.open(peer(1000), &mut d, now).unwrap();
        assert_eq!((o.conn, o.len), (id, 5));
        assert_eq!(&d[SEALED_HEADER_LEN..SEALED_HEADER_LEN + 5], b"hello");
        // Replayed.
        assert_eq!(
            s.open(peer(1000), &mut copy.clone(), now).err(),
            Some(SealedDrop::Open(OpenError::Replayed))
        );
        // The server's sealer for that address opens with the client's keys.
        let mut back = vec![0u8; SEALED_HEADER_LEN + 2 + TAG_LEN];
        s.sealer_of(peer(1000))
            .unwrap()
            .seal_in_place(&mut back, 2)
            .unwrap();
        assert_eq!(
            Opener::new(&keys.receive, id, 0).open_in_place(&mut back),
            Ok(2)
        );
    }

    #[test]
    fn an_unknown_key_is_refused_and_connects_nothing() {
        let (mut s, _) = server(&[StaticKey::generate().public]);
        let stranger = StaticKey::generate();
        let (out, _) = connect(&mut s, &stranger, peer(2000), Instant::now());
        let FinishOutcome::Unauthorized { key, .. } = out else {
            panic!("connected an unknown key");
        };
        assert_eq!(key, stranger.public);
        assert_eq!(s.counts(), (0, 0));
        assert!(s.sealer_of(peer(2000)).is_none());
    }

    #[test]
    fn handshakes_are_bounded_and_expire() {
        let ck = StaticKey::generate();
        let (mut s, _) = server(&[ck.public]);
        let now = Instant::now();
        let mut c = Handshake::initiator(&ck, &prologue(), None).unwrap();
        let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
        let n = c.write(&mut buf).unwrap();
        for port in 0..(MAX_HANDSHAKES + 100) as u16 {
            assert!(matches!(
                s.init(peer(port), 7, &buf[..n], now),
                InitOutcome::Reply(_)
            ));
            assert!(s.counts().0 <= MAX_HANDSHAKES);
        }
        // The same HS_INIT again: the same reply, no new handshake.
        let last = peer((MAX_HANDSHAKES + 99) as u16);
        let again = s.repeated_init(last, 7).unwrap();
        let before = s.counts().0;
        assert_eq!(s.repeated_init(last, 7).unwrap(), again);
        assert_eq!(s.counts().0, before);
        s.sweep(now + HANDSHAKE_LIFETIME, Duration::from_secs(1), |_| false);
        assert_eq!(s.counts(), (0, 0));
        // Garbage is refused without a handshake kept.
        assert!(matches!(
            s.init(peer(1), 8, b"not noise", now),
            InitOutcome::Refused
        ));
        assert_eq!(s.counts().0, 0);
    }

    #[test]
    fn idle_connections_go_unless_their_address_has_a_session() {
        let ck = StaticKey::generate();
        let (mut s, _) = server(&[ck.public]);
        let now = Instant::now();
        connect(&mut s, &ck, peer(1), now);
        connect(&mut s, &ck, peer(2), now);
        let idle = Duration::from_secs(20);
        s.sweep(now + idle, idle, |p| p == peer(2));
        assert!(s.sealer_of(peer(1)).is_none());
        assert!(s.sealer_of(peer(2)).is_some());
        // A client reconnecting from its address replaces its connection.
        let (out, _) = connect(&mut s, &ck, peer(2), now);
        assert!(matches!(out, FinishOutcome::Connected { new: true, .. }));
        assert_eq!(s.counts().1, 1);
    }
}
