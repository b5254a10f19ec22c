//! Sealed datagrams (issue 23): after a handshake, every datagram in either direction is
//! authenticated and encrypted with that direction's key. Socket-free, like the rest of
//! `protocol/`: the wiring into the handshake, the server and the client comes on top.
//!
//! ```text
//!  0    2     3      4        5         9                 17
//!  | RB | ver | 19   | phase  | conn u32 | packet number u64 | ciphertext (a whole ringblast
//!  |    |     |SEALED| u8     |          |                   | message or DATA) | tag [16]
//! ```
//!
//! The 17-byte header is the associated data: authenticated, not encrypted (the receiver
//! needs the connection and the packet number to find the key and build the nonce). The nonce
//! is the direction's 12-byte IV with the packet number XORed into its last 8 bytes (TLS 1.3,
//! QUIC), so a nonce is never used twice under a key as long as packet numbers are not: the
//! [`Sealer`] numbers every datagram it seals, a retransmission included, and refuses to go
//! past 2^62 (long before the AEAD's own limits, a fresh key is due). The [`Opener`] drops
//! and counts what it cannot authenticate, and after authentication what it has already seen
//! or what is older than its window (4096 packet numbers): a replay is never acted on twice.
//!
//! The AEAD is AES-128-GCM where the CPU has AES instructions, chosen by measurement
//! (`cargo bench --features bench --bench micro -- seal`, `ring` 0.17, one core of this
//! project's 2-vCPU AMD EPYC VM, 2026-12-05): sealing 1452-byte messages at 4.9 GiB/s and
//! 61440-byte ones at 9.0 GiB/s (opening 5.0 and 9.6), ChaCha20-Poly1305 at 1.8 and 2.5 GiB/s
//! (1.9 and 2.5): AES-GCM is 2.7-3.7x faster here. ChaCha20-Poly1305 stays for CPUs without.
//!
//! The server's data datagrams are sealed out of place ([`Sealer::seal_from`]): the payload
//! is read where it lies (the file's map) and written encrypted into the datagram, which ring
//! cannot do; aws-lc-rs can (`seal_in_place_scatter`), and both make the same bytes. Measured
//! on the same VM (`cargo bench --features bench --bench micro -- "seal/(copy\+seal|seal_from)"`,
//! one core, 2026-12-06, payloads taken in turn from a 256 MiB image, cold in the cache as a
//! large file's are): copying a 1452-byte payload then sealing it in place with ring took 405
//! ns, sealing it from where it lies 290 ns (61440 bytes: 10.6 and 7.6 µs); the copy's cold
//! read hides in the cipher's. In place ring was the faster here (a throwaway comparison at
//! 1440 bytes: 231 vs 257 ns sealing, 253 vs 299 opening), so everything else stays with ring.

use std::sync::atomic::{AtomicU64, Ordering};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};

use super::{kind, MAGIC, VERSION};

/// Bytes before the ciphertext: magic, version, kind, key phase, connection, packet number.
pub const SEALED_HEADER_LEN: usize = 17;
/// The AEAD tag after it.
pub const TAG_LEN: usize = 16;
/// Bytes sealing adds to a datagram.
pub const SEAL_OVERHEAD: usize = SEALED_HEADER_LEN + TAG_LEN;
/// Packet numbers a sealer hands out at most: far below where either AEAD weakens, and a
/// bound a connection rekeys (or ends) before.
pub const MAX_PACKET_NUMBER: u64 = 1 << 62;
/// Packet numbers behind the highest one seen that may still arrive (reordered) once.
pub const REPLAY_WINDOW: u64 = 4096;

/// The AEAD a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    Aes128Gcm,
    ChaCha20Poly1305,
}

impl Cipher {
    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Cipher::Aes128Gcm => &aead::AES_128_GCM,
            Cipher::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    fn scatter_algorithm(self) -> &'static aws_lc_rs::aead::Algorithm {
        match self {
            Cipher::Aes128Gcm => &aws_lc_rs::aead::AES_128_GCM,
            Cipher::ChaCha20Poly1305 => &aws_lc_rs::aead::CHACHA20_POLY1305,
        }
    }

    /// Key bytes it takes.
    pub fn key_len(self) -> usize {
        self.algorithm().key_len()
    }
}

/// Why a sealed datagram was not opened (each counted by the caller, none acted on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Shorter than a header and a tag.
    Truncated,
    /// Not a sealed datagram of this version, or of another connection or key phase.
    NotOurs,
    /// The tag did not verify: altered, forged, or sealed with another key.
    Forged,
    /// Authentic, but its packet number was already opened.
    Replayed,
    /// Authentic, but older than the replay window.
    TooOld,
}

/// Why nothing was sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    /// The buffer cannot hold the header, the message and the tag.
    NoRoom,
    /// The key has sealed [`MAX_PACKET_NUMBER`] datagrams: a new key is due.
    Exhausted,
}

/// One direction's key and IV, as the handshake derives them.
pub struct DirectionKey {
    pub cipher: Cipher,
    pub key: Vec<u8>,
    pub iv: [u8; NONCE_LEN],
}

impl DirectionKey {
    /// An AES-128-GCM key and IV (a sealed multicast transmission's, `GROUP_KEY`).
    pub fn aes128(key: [u8; 16], iv: [u8; NONCE_LEN]) -> DirectionKey {
        DirectionKey {
            cipher: Cipher::Aes128Gcm,
            key: key.to_vec(),
            iv,
        }
    }
}

fn nonce_bytes(iv: &[u8; NONCE_LEN], pn: u64) -> [u8; NONCE_LEN] {
    let mut n = *iv;
    for (b, p) in n[4..].iter_mut().zip(pn.to_be_bytes()) {
        *b ^= p;
    }
    n
}

fn nonce(iv: &[u8; NONCE_LEN], pn: u64) -> Nonce {
    Nonce::assume_unique_for_key(nonce_bytes(iv, pn))
}

fn less_safe(k: &DirectionKey) -> LessSafeKey {
    LessSafeKey::new(
        UnboundKey::new(k.cipher.algorithm(), &k.key).expect("a key of the cipher's length"),
    )
}

/// Seals this side's datagrams: each gets the next packet number. Shared (`&self`) by the
/// threads that send to one peer (the server's control thread and the engine worker of the
/// peer's session): the packet number is taken atomically, so no two datagrams get the same.
pub struct Sealer {
    key: LessSafeKey,
    /// The same key in aws-lc-rs, which seals out of place ([`Sealer::seal_from`]).
    scatter: aws_lc_rs::aead::LessSafeKey,
    iv: [u8; NONCE_LEN],
    conn: u32,
    phase: u8,
    next_pn: AtomicU64,
}

impl Sealer {
    pub fn new(k: &DirectionKey, conn: u32, phase: u8) -> Self {
        Sealer {
            key: less_safe(k),
            scatter: aws_lc_rs::aead::LessSafeKey::new(
                aws_lc_rs::aead::UnboundKey::new(k.cipher.scatter_algorithm(), &k.key)
                    .expect("a key of the cipher's length"),
            ),
            iv: k.iv,
            conn,
            phase,
            next_pn: AtomicU64::new(0),
        }
    }

    /// Packet numbers used so far.
    pub fn sealed(&self) -> u64 {
        self.next_pn.load(Ordering::Relaxed).min(MAX_PACKET_NUMBER)
    }

    /// The connection it seals for.
    pub fn connection(&self) -> u32 {
        self.conn
    }

    /// Seals in place: `buf[SEALED_HEADER_LEN..SEALED_HEADER_LEN + len]` holds the message;
    /// the header is written before it and the tag after it. Returns the datagram's length.
    /// Nothing is allocated.
    pub fn seal_in_place(&self, buf: &mut [u8], len: usize) -> Result<usize, SealError> {
        let total = SEALED_HEADER_LEN + len + TAG_LEN;
        if buf.len() < total {
            return Err(SealError::NoRoom);
        }
        let (head, rest) = buf.split_at_mut(SEALED_HEADER_LEN);
        let pn = self.head(head)?;
        let (msg, tag_out) = rest[..len + TAG_LEN].split_at_mut(len);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(&self.iv, pn), Aad::from(&*head), msg)
            .expect("a message within the AEAD's length limit");
        tag_out.copy_from_slice(tag.as_ref());
        Ok(total)
    }

    /// Seals out of place: the message is `buf[SEALED_HEADER_LEN..SEALED_HEADER_LEN +
    /// prefix]` (a DATA header, sealed in place) followed by `rest` (a payload, read where it
    /// lies: in the file's map), encrypted into `buf` after the prefix; the header is written
    /// before and the tag after. The same datagram [`Sealer::seal_in_place`] makes of the
    /// same message (the same packet number), without first copying `rest` into `buf`.
    /// Returns the datagram's length.
    pub fn seal_from(
        &self,
        buf: &mut [u8],
        prefix: usize,
        rest: &[u8],
    ) -> Result<usize, SealError> {
        let len = prefix + rest.len();
        let total = SEALED_HEADER_LEN + len + TAG_LEN;
        if buf.len() < total {
            return Err(SealError::NoRoom);
        }
        let (head, body) = buf.split_at_mut(SEALED_HEADER_LEN);
        let pn = self.head(head)?;
        let (pre, out) = body[..len + TAG_LEN].split_at_mut(prefix);
        self.scatter
            .seal_in_place_scatter(
                aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce_bytes(&self.iv, pn)),
                aws_lc_rs::aead::Aad::from(&*head),
                pre,
                rest,
                out,
            )
            .expect("a message within the AEAD's length limit");
        Ok(total)
    }

    /// Takes the next packet number and writes the header (`head`: [`SEALED_HEADER_LEN`]
    /// bytes) that carries it.
    fn head(&self, head: &mut [u8]) -> Result<u64, SealError> {
        // Taken once, whoever else seals at the same time; past the limit it stays past it.
        let pn = self.next_pn.fetch_add(1, Ordering::Relaxed);
        if pn >= MAX_PACKET_NUMBER {
            self.next_pn.store(MAX_PACKET_NUMBER, Ordering::Relaxed);
            return Err(SealError::Exhausted);
        }
        head[..2].copy_from_slice(&MAGIC);
        head[2] = VERSION;
        head[3] = kind::SEALED;
        head[4] = self.phase;
        head[5..9].copy_from_slice(&self.conn.to_be_bytes());
        head[9..17].copy_from_slice(&pn.to_be_bytes());
        Ok(pn)
    }
}

impl Sealer {
    /// Seals a growable buffer: `out` holds [`SEALED_HEADER_LEN`] bytes of room for the
    /// header, then the message; the tag is appended and all of it sealed in place.
    pub fn seal_vec(&self, out: &mut Vec<u8>) -> Result<(), SealError> {
        let len = out
            .len()
            .checked_sub(SEALED_HEADER_LEN)
            .ok_or(SealError::NoRoom)?;
        out.resize(out.len() + TAG_LEN, 0);
        self.seal_in_place(out, len).map(drop)
    }
}

/// Opens the other side's datagrams, each packet number once.
pub struct Opener {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    conn: u32,
    phase: u8,
    /// The highest packet number opened, plus one (0: none yet).
    top: u64,
    /// Bit `pn % REPLAY_WINDOW` set: `pn` (within the window below `top`) was opened.
    seen: Box<[u64; (REPLAY_WINDOW / 64) as usize]>,
}

impl Opener {
    pub fn new(k: &DirectionKey, conn: u32, phase: u8) -> Self {
        Opener {
            key: less_safe(k),
            iv: k.iv,
            conn,
            phase,
            top: 0,
            seen: Box::new([0; (REPLAY_WINDOW / 64) as usize]),
        }
    }

    /// The connection a sealed datagram names, before any key is tried (to find its opener).
    pub fn connection_of(dgram: &[u8]) -> Option<u32> {
        (dgram.len() >= SEALED_HEADER_LEN + TAG_LEN
            && dgram[..2] == MAGIC
            && dgram[2] == VERSION
            && dgram[3] == kind::SEALED)
            .then(|| u32::from_be_bytes([dgram[5], dgram[6], dgram[7], dgram[8]]))
    }

    fn bit(pn: u64) -> (usize, u64) {
        let i = pn % REPLAY_WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    /// Opens `dgram` in place: on success the plaintext message is `dgram[SEALED_HEADER_LEN..
    /// SEALED_HEADER_LEN + returned length]`. A datagram that does not authenticate changes
    /// nothing (not even the replay window); one that does is opened once.
    pub fn open_in_place(&mut self, dgram: &mut [u8]) -> Result<usize, OpenError> {
        if dgram.len() < SEALED_HEADER_LEN + TAG_LEN {
            return Err(OpenError::Truncated);
        }
        if Self::connection_of(dgram) != Some(self.conn) || dgram[4] != self.phase {
            return Err(OpenError::NotOurs);
        }
        let mut pn_bytes = [0u8; 8];
        pn_bytes.copy_from_slice(&dgram[9..17]);
        let pn = u64::from_be_bytes(pn_bytes);
        if pn >= MAX_PACKET_NUMBER {
            return Err(OpenError::Forged);
        }
        // Cheap checks first: a replay of an old datagram costs no decryption.
        if pn + REPLAY_WINDOW < self.top {
            return Err(OpenError::TooOld);
        }
        let (w, b) = Self::bit(pn);
        if pn < self.top && self.seen[w] & b != 0 {
            return Err(OpenError::Replayed);
        }
        let (head, body) = dgram.split_at_mut(SEALED_HEADER_LEN);
        let plain = self
            .key
            .open_in_place(nonce(&self.iv, pn), Aad::from(&*head), body)
            .map_err(|_| OpenError::Forged)?;
        let len = plain.len();
        // Authentic: slide the window up to it, then mark it.
        if pn >= self.top {
            let advance = pn + 1 - self.top;
            if advance >= REPLAY_WINDOW {
                self.seen.fill(0);
            } else {
                for old in self.top..pn + 1 {
                    let (w, b) = Self::bit(old);
                    self.seen[w] &= !b;
                }
            }
            self.top = pn + 1;
        }
        self.seen[w] |= b;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(cipher: Cipher, seed: u8) -> DirectionKey {
        DirectionKey {
            cipher,
            key: vec![seed; cipher.key_len()],
            iv: [seed ^ 0x5a; NONCE_LEN],
        }
    }

    /// Seals `msg` with `s` into a fresh buffer.
    fn seal(s: &Sealer, msg: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; SEALED_HEADER_LEN + msg.len() + TAG_LEN];
        buf[SEALED_HEADER_LEN..SEALED_HEADER_LEN + msg.len()].copy_from_slice(msg);
        let n = s.seal_in_place(&mut buf, msg.len()).unwrap();
        buf.truncate(n);
        buf
    }

    fn open(o: &mut Opener, dgram: &[u8]) -> Result<Vec<u8>, OpenError> {
        let mut d = dgram.to_vec();
        let n = o.open_in_place(&mut d)?;
        Ok(d[SEALED_HEADER_LEN..SEALED_HEADER_LEN + n].to_vec())
    }

    #[test]
    fn both_ciphers_seal_and_open_and_nothing_else_opens() {
        for cipher in [Cipher::Aes128Gcm, Cipher::ChaCha20Poly1305] {
            let k = keys(cipher, 7);
            let (s, mut o) = (Sealer::new(&k, 42, 0), Opener::new(&k, 42, 0));
            let d = seal(&s, b"a ringblast message");
            assert_eq!(Opener::connection_of(&d), Some(42));
            assert_eq!(open(&mut o, &d).unwrap(), b"a ringblast message");
            // The same datagram again: a replay.
            assert_eq!(open(&mut o, &d), Err(OpenError::Replayed));
            // Another key, another connection, another phase.
            let mut other = Opener::new(&keys(cipher, 8), 42, 0);
            assert_eq!(open(&mut other, &seal(&s, b"x")), Err(OpenError::Forged));
            let mut elsewhere = Opener::new(&k, 43, 0);
            assert_eq!(
                open(&mut elsewhere, &seal(&s, b"x")),
                Err(OpenError::NotOurs)
            );
            let mut later = Opener::new(&k, 42, 1);
            assert_eq!(open(&mut later, &seal(&s, b"x")), Err(OpenError::NotOurs));
            assert_eq!(
                open(&mut o, &d[..SEALED_HEADER_LEN + TAG_LEN - 1]),
                Err(OpenError::Truncated)
            );
        }
    }

    #[test]
    fn a_sealer_numbers_every_datagram_and_stops_before_reuse() {
        let k = keys(Cipher::Aes128Gcm, 1);
        let s = Sealer::new(&k, 1, 0);
        let a = seal(&s, b"same bytes");
        let b = seal(&s, b"same bytes");
        // A resend of the same message is a new packet number and another ciphertext.
        assert_ne!(a[9..17], b[9..17]);
        assert_ne!(a[SEALED_HEADER_LEN..], b[SEALED_HEADER_LEN..]);
        assert_eq!(s.sealed(), 2);
        let mut small = [0u8; SEALED_HEADER_LEN + TAG_LEN + 3];
        assert_eq!(s.seal_in_place(&mut small, 4), Err(SealError::NoRoom));
        // A growable buffer: the room, the message, then the tag appended.
        let mut v = vec![0u8; SEALED_HEADER_LEN];
        v.extend_from_slice(b"grown");
        let t = Sealer::new(&k, 2, 0);
        t.seal_vec(&mut v).unwrap();
        assert_eq!(v.len(), SEALED_HEADER_LEN + 5 + TAG_LEN);
        let mut o = Opener::new(&k, 2, 0);
        assert_eq!(o.open_in_place(&mut v), Ok(5));
        assert_eq!(t.seal_vec(&mut vec![0u8; 3]), Err(SealError::NoRoom));
        s.next_pn.store(MAX_PACKET_NUMBER, Ordering::Relaxed);
        assert_eq!(
            s.seal_in_place(&mut [0u8; 64], 1),
            Err(SealError::Exhausted)
        );
    }

    #[test]
    fn reordering_within_the_window_opens_once_and_older_is_refused() {
        let k = keys(Cipher::ChaCha20Poly1305, 3);
        let (s, mut o) = (Sealer::new(&k, 9, 0), Opener::new(&k, 9, 0));
        let all: Vec<Vec<u8>> = (0..REPLAY_WINDOW + 10)
            .map(|i| seal(&s, &i.to_be_bytes()))
            .collect();
        // 5 first, then 0..5 late: each once.
        assert!(open(&mut o, &all[5]).is_ok());
        for d in &all[..5] {
            assert!(open(&mut o, d).is_ok());
            assert_eq!(open(&mut o, d), Err(OpenError::Replayed));
        }
        // Far ahead: everything more than a window behind it is too old, even unseen ones.
        let last = all.len() - 1;
        assert!(open(&mut o, &all[last]).is_ok());
        assert_eq!(open(&mut o, &all[6]), Err(OpenError::TooOld));
        assert!(open(&mut o, &all[last - 100]).is_ok());
        assert_eq!(open(&mut o, &all[last - 100]), Err(OpenError::Replayed));
        assert!(open(&mut o, &all[last - REPLAY_WINDOW as usize + 1]).is_ok());
    }

    proptest! {
        /// Any message round-trips; any one bit flipped anywhere is refused without effect:
        /// the original still opens afterwards.
        #[test]
        fn one_flipped_bit_anywhere_is_refused(
            msg in proptest::collection::vec(any::<u8>(), 0..1500),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
            chacha in any::<bool>(),
        ) {
            let cipher = if chacha { Cipher::ChaCha20Poly1305 } else { Cipher::Aes128Gcm };
            let k = keys(cipher, 5);
            let (s, mut o) = (Sealer::new(&k, 77, 0), Opener::new(&k, 77, 0));
            let d = seal(&s, &msg);
            let mut bad = d.clone();
            let i = flip.index(bad.len());
            bad[i] ^= 1 << bit;
            prop_assert!(open(&mut o, &bad).is_err());
            prop_assert_eq!(open(&mut o, &d).unwrap(), msg);
        }

        /// Sealing out of place (a DATA header in the buffer, the payload read where it lies)
        /// makes the very datagram sealing the same message in place makes, with either
        /// cipher, and it opens to that message.
        #[test]
        fn sealing_from_elsewhere_makes_the_same_datagram(
            prefix in proptest::collection::vec(any::<u8>(), 0..40),
            rest in proptest::collection::vec(any::<u8>(), 0..1500),
            skip in 0u64..5,
            chacha in any::<bool>(),
        ) {
            let cipher = if chacha { Cipher::ChaCha20Poly1305 } else { Cipher::Aes128Gcm };
            let k = keys(cipher, 9);
            let (inplace, from) = (Sealer::new(&k, 5, 0), Sealer::new(&k, 5, 0));
            for _ in 0..skip {
                seal(&inplace, b"");
                seal(&from, b"");
            }
            let msg = [prefix.as_slice(), rest.as_slice()].concat();
            let want = seal(&inplace, &msg);
            let mut buf = vec![0u8; want.len() + 7];
            buf[SEALED_HEADER_LEN..SEALED_HEADER_LEN + prefix.len()].copy_from_slice(&prefix);
            let n = from.seal_from(&mut buf, prefix.len(), &rest).unwrap();
            prop_assert_eq!(&buf[..n], want.as_slice());
            let mut o = Opener::new(&k, 5, 0);
            prop_assert_eq!(open(&mut o, &buf[..n]).unwrap(), msg);
            // No room: nothing sealed, no packet number spent.
            let mut small = vec![0u8; n - 1];
            prop_assert_eq!(from.seal_from(&mut small, prefix.len(), &rest), Err(SealError::NoRoom));
            prop_assert_eq!(from.sealed(), inplace.sealed());
        }

        /// Bytes from the network never panic the opener, and never open.
        #[test]
        fn arbitrary_bytes_never_open(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let k = keys(Cipher::Aes128Gcm, 6);
            let mut o = Opener::new(&k, 1, 0);
            let mut b = bytes.clone();
            prop_assert!(o.open_in_place(&mut b).is_err());
            if b.len() >= SEALED_HEADER_LEN + TAG_LEN {
                b[..2].copy_from_slice(&MAGIC);
                b[2] = VERSION;
                b[3] = kind::SEALED;
                b[4] = 0;
                b[5..9].copy_from_slice(&1u32.to_be_bytes());
                prop_assert!(o.open_in_place(&mut b).is_err());
            }
        }

        /// Whatever order packet numbers arrive in, each authentic one opens at most once,
        /// and every one inside the window of the highest opens.
        #[test]
        fn each_packet_number_opens_at_most_once(order in proptest::collection::vec(0u64..64, 1..200)) {
            let k = keys(Cipher::Aes128Gcm, 2);
            let s = Sealer::new(&k, 3, 0);
            let all: Vec<Vec<u8>> = (0..64u64).map(|i| seal(&s, &i.to_be_bytes())).collect();
            let mut o = Opener::new(&k, 3, 0);
            let mut opened = std::collections::HashSet::new();
            for &i in &order {
                let first = opened.insert(i);
                let r = open(&mut o, &all[i as usize]);
                prop_assert_eq!(r.is_ok(), first, "pn {} first {}", i, first);
            }
        }
    }
}
