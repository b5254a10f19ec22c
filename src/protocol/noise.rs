//! The handshake before sealed datagrams (`serve --authorized`/`--psk`): Noise XX with
//! X25519, AES-GCM and SHA-256 (`snow`), three messages:
//!
//! ```text
//! client -> server   e                      (padded by the caller, like HELLO: the answer
//! server -> client   e, ee, s, es            stays within three times the request)
//! client -> server   s, se                  (the client's static key, encrypted)
//! ```
//!
//! Each side learns the other's static public key during the handshake: the client checks
//! the server's against its pin or its known-servers file, the server the client's against
//! its authorized keys, and either may refuse before a file name or byte is sent. The
//! transport keys come from Noise's split: one secret per direction, expanded with HKDF-SHA256
//! (salt: the handshake hash) into the AEAD key and IV of [`super::seal`].

use ring::hkdf;
use snow::{Builder, HandshakeState};

use super::seal::{Cipher, DirectionKey};

/// The Noise protocol name; also the prologue's first part, so a peer speaking anything else
/// fails the handshake.
pub const PATTERN: &str = "Noise_XX_25519_AESGCM_SHA256";
/// The pre-shared-key mode's (`--psk`): the same three messages, the key mixed in with the
/// third (XXpsk3), so only peers holding it finish; the static keys are then whatever each
/// side has (a fresh one per run where it has none), and the key alone authorizes.
pub const PSK_PATTERN: &str = "Noise_XXpsk3_25519_AESGCM_SHA256";
/// Bytes of a pre-shared key.
pub const PSK_LEN: usize = 32;

/// The prologue both sides bind: the protocol and its version (a peer of another version
/// never finishes a handshake with this one).
pub fn prologue() -> Vec<u8> {
    format!("ringblast {}", super::VERSION).into_bytes()
}
/// Largest handshake message (the second: 32 + 48 + 16 bytes, and a payload).
pub const MAX_HANDSHAKE_MESSAGE: usize = 1024;

/// A static X25519 key pair (`ringblast keygen`).
#[derive(Clone)]
pub struct StaticKey {
    pub private: [u8; 32],
    pub public: [u8; 32],
}

/// Shows the public half only: a private key never reaches a log.
impl std::fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl StaticKey {
    pub fn generate() -> StaticKey {
        let kp = builder().generate_keypair().expect("X25519 key generation");
        StaticKey {
            private: kp.private.try_into().expect("32-byte X25519 key"),
            public: kp.public.try_into().expect("32-byte X25519 key"),
        }
    }
}

fn builder() -> Builder<'static> {
    Builder::new(PATTERN.parse().expect("a valid Noise pattern"))
}

/// The builder of a handshake: XX, or XXpsk3 with `psk`.
fn builder_for(psk: Option<&[u8; PSK_LEN]>) -> Result<Builder<'_>, snow::Error> {
    match psk {
        None => Ok(builder()),
        Some(k) => Builder::new(PSK_PATTERN.parse().expect("a valid Noise pattern")).psk(3, k),
    }
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake message refused: {0}")]
    Noise(String),
    #[error("handshake message out of turn")]
    OutOfTurn,
}

fn noise(e: snow::Error) -> HandshakeError {
    HandshakeError::Noise(e.to_string())
}

/// What a finished handshake gives each side.
pub struct Session {
    /// The peer's static public key, as the handshake proved it.
    pub peer: [u8; 32],
    /// This side's sealing key and the peer's.
    pub send: DirectionKey,
    pub receive: DirectionKey,
    /// The handshake hash: both sides have the same; it names this handshake.
    pub hash: [u8; 32],
}

/// One side of a handshake in progress.
pub struct Handshake {
    state: HandshakeState,
    initiator: bool,
}

impl Handshake {
    /// The client's side. `prologue` binds context both sides must agree on (the protocol
    /// version, the server's address as the client dialled it is not: NATs change it).
    pub fn initiator(
        local: &StaticKey,
        prologue: &[u8],
        psk: Option<&[u8; PSK_LEN]>,
    ) -> Result<Handshake, HandshakeError> {
        Self::new(local, prologue, psk, true)
    }

    /// The server's side.
    pub fn responder(
        local: &StaticKey,
        prologue: &[u8],
        psk: Option<&[u8; PSK_LEN]>,
    ) -> Result<Handshake, HandshakeError> {
        Self::new(local, prologue, psk, false)
    }

    fn new(
        local: &StaticKey,
        prologue: &[u8],
        psk: Option<&[u8; PSK_LEN]>,
        initiator: bool,
    ) -> Result<Handshake, HandshakeError> {
        let b = builder_for(psk)
            .and_then(|b| b.local_private_key(&local.private))
            .and_then(|b| b.prologue(prologue))
            .map_err(noise)?;
        let state = match initiator {
            true => b.build_initiator(),
            false => b.build_responder(),
        }
        .map_err(noise)?;
        Ok(Handshake { state, initiator })
    }

    /// Writes this side's next message into `out`; returns its length.
    pub fn write(&mut self, out: &mut [u8]) -> Result<usize, HandshakeError> {
        if !self.state.is_my_turn() || self.state.is_handshake_finished() {
            return Err(HandshakeError::OutOfTurn);
        }
        self.state.write_message(&[], out).map_err(noise)
    }

    /// Reads the peer's next message. A message that fails leaves this side unusable (Noise
    /// has no retry): the caller drops the handshake.
    pub fn read(&mut self, msg: &[u8]) -> Result<(), HandshakeError> {
        if self.state.is_my_turn() || self.state.is_handshake_finished() {
            return Err(HandshakeError::OutOfTurn);
        }
        let mut payload = [0u8; MAX_HANDSHAKE_MESSAGE];
        self.state.read_message(msg, &mut payload).map_err(noise)?;
        Ok(())
    }

    /// The peer's static key once a message carried it (the server's after the second
    /// message, the client's after the third): check it before going on.
    pub fn peer(&self) -> Option<[u8; 32]> {
        self.state.get_remote_static()?.try_into().ok()
    }

    pub fn is_finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    /// The keys of a finished handshake, for [`super::seal`] with `cipher`.
    pub fn finish(mut self, cipher: Cipher) -> Result<Session, HandshakeError> {
        if !self.state.is_handshake_finished() {
            return Err(HandshakeError::OutOfTurn);
        }
        let peer = self.peer().ok_or(HandshakeError::OutOfTurn)?;
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&self.state.get_handshake_hash()[..32]);
        // Noise's split: the initiator's sending secret first.
        let (c2s, s2c) = self.state.dangerously_get_raw_split();
        let c2s = expand(cipher, &hash, &c2s, b"ringblast client to server");
        let s2c = expand(cipher, &hash, &s2c, b"ringblast server to client");
        let (send, receive) = if self.initiator {
            (c2s, s2c)
        } else {
            (s2c, c2s)
        };
        Ok(Session {
            peer,
            send,
            receive,
            hash,
        })
    }
}

/// HKDF-SHA256 of `secret` (salt: the handshake hash) into a key of `cipher` and an IV.
fn expand(cipher: Cipher, hash: &[u8; 32], secret: &[u8; 32], label: &[u8]) -> DirectionKey {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, hash).extract(secret);
    let mut key = vec![0u8; cipher.key_len()];
    let mut iv = [0u8; 12];
    prk.expand(&[label, b" key"], Len(key.len()))
        .and_then(|okm| okm.fill(&mut key))
        .expect("HKDF output within its limit");
    prk.expand(&[label, b" iv"], Len(iv.len()))
        .and_then(|okm| okm.fill(&mut iv))
        .expect("HKDF output within its limit");
    DirectionKey { cipher, key, iv }
}

#[cfg(test)]
mod tests {
    use super::super::seal::{Opener, Sealer, SEALED_HEADER_LEN, TAG_LEN};
    use super::*;

    /// Runs the three messages between `client` and `server`.
    fn run(client: &mut Handshake, server: &mut Handshake) -> Result<(), HandshakeError> {
        let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
        let n = client.write(&mut buf)?;
        server.read(&buf[..n])?;
        let n = server.write(&mut buf)?;
        client.read(&buf[..n])?;
        let n = client.write(&mut buf)?;
        server.read(&buf[..n])?;
        Ok(())
    }

    #[test]
    fn a_handshake_gives_both_sides_the_peer_key_and_matching_seals() {
        let (ck, sk) = (StaticKey::generate(), StaticKey::generate());
        let mut c = Handshake::initiator(&ck, b"ringblast 6", None).unwrap();
        let mut s = Handshake::responder(&sk, b"ringblast 6", None).unwrap();
        run(&mut c, &mut s).unwrap();
        let (c, s) = (
            c.finish(Cipher::Aes128Gcm).unwrap(),
            s.finish(Cipher::Aes128Gcm).unwrap(),
        );
        assert_eq!((c.peer, s.peer), (sk.public, ck.public));
        assert_eq!(c.hash, s.hash);
        assert_ne!(c.send.key, c.receive.key, "a key per direction");
        // What the client seals, the server opens, and the other way round.
        for (from, to) in [(&c.send, &s.receive), (&s.send, &c.receive)] {
            let sealer = Sealer::new(from, 5, 0);
            let mut opener = Opener::new(to, 5, 0);
            let mut d = vec![0u8; SEALED_HEADER_LEN + 3 + TAG_LEN];
            d[SEALED_HEADER_LEN..SEALED_HEADER_LEN + 3].copy_from_slice(b"GET");
            let n = sealer.seal_in_place(&mut d, 3).unwrap();
            assert_eq!(opener.open_in_place(&mut d[..n]), Ok(3));
        }
    }

    #[test]
    fn a_tampered_message_or_another_prologue_fails_the_handshake() {
        let (ck, sk) = (StaticKey::generate(), StaticKey::generate());
        let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
        // The second message altered on the way: the client refuses it.
        let mut c = Handshake::initiator(&ck, b"p", None).unwrap();
        let mut s = Handshake::responder(&sk, b"p", None).unwrap();
        let n = c.write(&mut buf).unwrap();
        s.read(&buf[..n]).unwrap();
        let n = s.write(&mut buf).unwrap();
        buf[n - 1] ^= 1;
        assert!(matches!(c.read(&buf[..n]), Err(HandshakeError::Noise(_))));
        // Peers that disagree on the prologue (another protocol version) never finish.
        let mut c = Handshake::initiator(&ck, b"ringblast 6", None).unwrap();
        let mut s = Handshake::responder(&sk, b"ringblast 7", None).unwrap();
        assert!(run(&mut c, &mut s).is_err());
        // Out of turn.
        let mut s = Handshake::responder(&sk, b"p", None).unwrap();
        assert_eq!(s.write(&mut buf), Err(HandshakeError::OutOfTurn));
    }

    /// The three messages carried as HS_INIT, HS_REPLY and HS_FINISH, encoded and parsed on
    /// the way: the handshake finishes, and the server's answer to a 1200-byte HS_INIT is a
    /// fraction of it (the 3x amplification bound).
    #[test]
    fn the_handshake_crosses_the_wire_in_its_messages() {
        use super::super::Message;
        let (ck, sk) = (StaticKey::generate(), StaticKey::generate());
        let mut c = Handshake::initiator(&ck, b"p", None).unwrap();
        let mut s = Handshake::responder(&sk, b"p", None).unwrap();
        let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
        let n = c.write(&mut buf).unwrap();
        let init = Message::HandshakeInit {
            token: [1; super::super::TOKEN_LEN],
            nonce: 9,
            noise: &buf[..n],
        }
        .to_vec();
        let Message::HandshakeInit { noise, .. } = Message::parse(&init).unwrap() else {
            panic!("not an HS_INIT");
        };
        s.read(noise).unwrap();
        let n = s.write(&mut buf).unwrap();
        let reply = Message::HandshakeReply {
            nonce: 9,
            conn: 77,
            noise: &buf[..n],
        }
        .to_vec();
        assert!(
            reply.len() * 3 <= init.len(),
            "{} vs {}",
            reply.len(),
            init.len()
        );
        let Message::HandshakeReply { noise, .. } = Message::parse(&reply).unwrap() else {
            panic!("not an HS_REPLY");
        };
        c.read(noise).unwrap();
        assert_eq!(c.peer(), Some(sk.public));
        let n = c.write(&mut buf).unwrap();
        let finish = Message::HandshakeFinish {
            conn: 77,
            noise: &buf[..n],
        }
        .to_vec();
        let Message::HandshakeFinish { noise, .. } = Message::parse(&finish).unwrap() else {
            panic!("not an HS_FINISH");
        };
        s.read(noise).unwrap();
        assert!(c.is_finished() && s.is_finished());
        assert_eq!(s.peer(), Some(ck.public));
    }

    #[test]
    fn a_pre_shared_key_finishes_only_between_holders() {
        let (ck, sk) = (StaticKey::generate(), StaticKey::generate());
        let (k1, k2) = ([7u8; PSK_LEN], [8u8; PSK_LEN]);
        let mut c = Handshake::initiator(&ck, b"p", Some(&k1)).unwrap();
        let mut s = Handshake::responder(&sk, b"p", Some(&k1)).unwrap();
        run(&mut c, &mut s).unwrap();
        let (c, s) = (
            c.finish(Cipher::Aes128Gcm).unwrap(),
            s.finish(Cipher::Aes128Gcm).unwrap(),
        );
        assert_eq!(c.send.key, s.receive.key);
        // Another key, or none on one side: the third message is refused.
        let mut c = Handshake::initiator(&ck, b"p", Some(&k1)).unwrap();
        let mut s = Handshake::responder(&sk, b"p", Some(&k2)).unwrap();
        assert!(run(&mut c, &mut s).is_err());
        let mut c = Handshake::initiator(&ck, b"p", None).unwrap();
        let mut s = Handshake::responder(&sk, b"p", Some(&k1)).unwrap();
        assert!(run(&mut c, &mut s).is_err());
    }

    /// A man in the middle with its own key finishes a handshake with the client, but the
    /// key the client learns is not the server's: the pin check (the caller's) catches it.
    #[test]
    fn the_client_learns_which_key_it_talked_to() {
        let (ck, sk, mitm) = (
            StaticKey::generate(),
            StaticKey::generate(),
            StaticKey::generate(),
        );
        let mut c = Handshake::initiator(&ck, b"p", None).unwrap();
        let mut m = Handshake::responder(&mitm, b"p", None).unwrap();
        run(&mut c, &mut m).unwrap();
        assert_eq!(c.peer(), Some(mitm.public));
        assert_ne!(c.peer(), Some(sk.public));
    }
}
