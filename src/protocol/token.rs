//! Stateless address-validation tokens (as QUIC Retry tokens or DTLS cookies).
//!
//! Before the server sends anything bigger than a request, the client must echo a token that
//! only the server could have minted for the client's address: a spoofed source address never
//! sees its token, so it cannot turn the server into an amplifier. The server keeps no state
//! per token: `token = issued_at_us:u64 ‖ MAC(key, address ‖ issued_at_us)[..16]`, where the
//! issue time (Unix µs) is unique per token (a second token in the same microsecond is
//! stamped one later): two tokens are never the same, even for one address and port reused
//! at once, which matters because a token starts one request only. No clock is read here: the
//! caller says what time it is, so expiry is tested without waiting.

use std::net::SocketAddr;
use std::time::Duration;

use super::limits::TOKEN_LEN;

/// How long a token stays valid after it was issued.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// Mints and checks tokens with a random per-process key.
pub struct TokenKey {
    key: [u8; 32],
    lifetime: Duration,
    /// The last issue time stamped (µs): the next is later.
    last_issued_us: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// The MAC does not match this address (forged, or minted for someone else).
    Invalid,
    /// Older than the lifetime, or issued in the future.
    Expired,
}

impl TokenKey {
    pub fn random(lifetime: Duration) -> Self {
        TokenKey {
            key: rand::random(),
            lifetime,
            last_issued_us: 0,
        }
    }

    fn mac(&self, addr: &SocketAddr, issued_us: u64) -> [u8; 16] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        match addr {
            SocketAddr::V4(a) => {
                h.update(&[4]);
                h.update(&a.ip().octets());
            }
            SocketAddr::V6(a) => {
                h.update(&[6]);
                h.update(&a.ip().octets());
            }
        }
        h.update(&addr.port().to_be_bytes());
        h.update(&issued_us.to_be_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        out
    }

    /// A token for `addr`, issued at `now_us` (Unix µs; later if another token was issued
    /// then), valid for the key's lifetime.
    pub fn mint(&mut self, addr: &SocketAddr, now_us: u64) -> [u8; TOKEN_LEN] {
        let issued_us = now_us.max(self.last_issued_us + 1);
        self.last_issued_us = issued_us;
        let mut t = [0u8; TOKEN_LEN];
        t[..8].copy_from_slice(&issued_us.to_be_bytes());
        t[8..].copy_from_slice(&self.mac(addr, issued_us));
        t
    }

    /// Checks that `token` was minted by this key for `addr` and has not expired at `now_us`
    /// (Unix µs).
    pub fn check(
        &self,
        addr: &SocketAddr,
        token: &[u8; TOKEN_LEN],
        now_us: u64,
    ) -> Result<(), TokenError> {
        let issued_us = issued_us(token);
        // Compare all 16 bytes without an early exit, so timing says nothing about the MAC.
        let expect = self.mac(addr, issued_us);
        let diff = expect
            .iter()
            .zip(&token[8..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(TokenError::Invalid);
        }
        let now = now_us;
        // Allow one second of clock step backwards.
        if issued_us > now + 1_000_000
            || now.saturating_sub(issued_us) > self.lifetime.as_micros() as u64
        {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

/// When `token` says it was issued (Unix µs): its first 8 bytes, whether or not its MAC holds.
pub fn issued_us(token: &[u8; TOKEN_LEN]) -> u64 {
    u64::from_be_bytes(token[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_binds_address_and_time() {
        let mut k = TokenKey::random(Duration::from_secs(60));
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let now = 1_700_000_000_000_000;
        let t = k.mint(&a, now);
        assert_eq!(k.check(&a, &t, now + 5), Ok(()));
        assert_eq!(k.check(&b, &t, now + 5), Err(TokenError::Invalid));
        // Another server (another key) does not accept it.
        let other = TokenKey::random(Duration::from_secs(60));
        assert_eq!(other.check(&a, &t, now), Err(TokenError::Invalid));
        // A flipped bit anywhere invalidates it.
        for i in 0..TOKEN_LEN {
            let mut bad = t;
            bad[i] ^= 1;
            assert!(k.check(&a, &bad, now).is_err(), "bit flip at {i} accepted");
        }
    }

    #[test]
    fn expired_token_is_refused() {
        let mut k = TokenKey::random(Duration::from_secs(60));
        let a: SocketAddr = "[::1]:9".parse().unwrap();
        let now = 1_700_000_000_000_000;
        let t = k.mint(&a, now);
        assert_eq!(k.check(&a, &t, now + 60_000_000), Ok(()));
        assert_eq!(k.check(&a, &t, now + 60_000_001), Err(TokenError::Expired));
        // From the future (a clock stepped back): one second of slack, no more.
        assert_eq!(k.check(&a, &t, now - 1_000_000), Ok(()));
        assert_eq!(k.check(&a, &t, now - 1_000_001), Err(TokenError::Expired));
    }

    /// A token starts one request only: two minted for one address (a port reused at once)
    /// in the same microsecond must differ.
    #[test]
    fn no_two_tokens_are_the_same() {
        let mut k = TokenKey::random(Duration::from_secs(60));
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let now = 1_700_000_000_000_000;
        let (t1, t2) = (k.mint(&a, now), k.mint(&a, now));
        assert_ne!(t1, t2);
        assert_eq!(
            (k.check(&a, &t1, now), k.check(&a, &t2, now)),
            (Ok(()), Ok(()))
        );
    }
}
