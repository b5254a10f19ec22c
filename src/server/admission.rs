//! Admission: who may ask the server for work, and how much. The addresses allowed at all
//! (`serve --allow CIDR`); a token bucket per source IP for
//! requests (HELLO, LIST, GET) and one per session for ACKs, so neither a request flood nor
//! one client's ACK storm can monopolise the control thread; and the record of the tokens
//! already spent, so a token seen on the wire cannot start a second transfer.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::protocol::token::issued_us;
use crate::protocol::TOKEN_LEN;

/// An address prefix (`10.0.0.0/8`, `2001:db8::/32`, or one address): `serve --allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside. An IPv4 address seen as IPv4-mapped IPv6 (a server bound to
    /// `[::]`) is matched as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    /// `ADDR/PREFIX` or a lone address (all its bits). Bits set past the prefix are refused
    /// (`10.1.2.3/8` is most likely a typo for `10.1.2.3/32` or `10.0.0.0/8`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("bad address {addr:?} in {s:?} (e.g. 10.0.0.0/8, 2001:db8::/32)")
        })?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("bad prefix length in {s:?} (0-{max})"))?,
        };
        let cidr = Cidr { addr, prefix };
        let host_bits = match addr {
            IpAddr::V4(a) => {
                u32::from(a) as u128
                    & !(u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0) as u128)
            }
            IpAddr::V6(a) => {
                u128::from(a) & !u128::MAX.checked_shl(128 - prefix as u32).unwrap_or(0)
            }
        };
        if host_bits != 0 {
            return Err(format!(
                "{s:?} has bits set past its /{prefix} prefix: give the network (e.g. 10.0.0.0/8) or one address"
            ));
        }
        Ok(cidr)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A token bucket: `rate` tokens per second, up to `burst`.
#[derive(Debug, Clone)]
pub struct RateBudget {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateBudget {
    /// Starts full. `burst` below 1 would refuse everything forever: it is raised to 1.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        let burst = burst.max(1.0);
        RateBudget {
            rate: rate.max(0.0),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn last_used(&self) -> Instant {
        self.last
    }
}

/// Requests per source IP: `rate` per second on average, twice that in a burst. Over budget,
/// a request is dropped; its sender is told with a short "busy" at most every 100 ms, so the
/// answers cannot become a flood themselves.
pub struct RequestBudgets {
    rate: f64,
    per_ip: HashMap<IpAddr, (RateBudget, Option<Instant>)>,
    /// The budget all addresses share that arrive while [`MAX_TRACKED_IPS`] are tracked.
    others: (RateBudget, Option<Instant>),
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Over budget: drop it.
    No,
    /// Over budget: drop it, and tell the sender (rate-limited).
    NoAndTell,
}

/// Most addresses with a budget of their own. A flood from more (spoofed) sources does not
/// grow the table: they share one budget (of the same rate) until the periodic
/// [`RequestBudgets::forget_idle`] has dropped tracked ones that went quiet.
pub const MAX_TRACKED_IPS: usize = 65_536;

/// Forget an address after this long without a request.
const FORGET_AFTER: Duration = Duration::from_secs(10);
/// At most one "busy" answer per address this often.
const TELL_EVERY: Duration = Duration::from_millis(100);

impl RequestBudgets {
    pub fn new(rate: f64) -> Self {
        RequestBudgets {
            rate,
            per_ip: HashMap::new(),
            others: (RateBudget::new(rate, 2.0 * rate, Instant::now()), None),
        }
    }

    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Admit {
        let rate = self.rate;
        let (budget, told) = if self.per_ip.len() < MAX_TRACKED_IPS || self.per_ip.contains_key(&ip)
        {
            self.per_ip
                .entry(ip)
                .or_insert_with(|| (RateBudget::new(rate, 2.0 * rate, now), None))
        } else {
            &mut self.others
        };
        if budget.take(now) {
            return Admit::Yes;
        }
        if told.is_none_or(|t| now.saturating_duration_since(t) >= TELL_EVERY) {
            *told = Some(now);
            Admit::NoAndTell
        } else {
            Admit::No
        }
    }

    /// Drops the state of addresses quiet for a while.
    pub fn forget_idle(&mut self, now: Instant) {
        self.per_ip
            .retain(|_, (b, _)| now.saturating_duration_since(b.last_used()) < FORGET_AFTER);
    }
}

/// Most spent tokens remembered. Beyond, the oldest are forgotten and every token issued no
/// later than the newest forgotten one is refused (its holder asks for a fresh one): a token
/// is never good twice, whatever the load.
pub const MAX_SPENT_TOKENS: usize = 1 << 18;

/// Tokens already used for a GET, each bound to the request that used it: the same request
/// again (its META was lost, the server was busy) may use it; any other request may not. A
/// GET with a token someone saw on the wire, replayed in its owner's name, starts nothing.
#[derive(Default)]
pub struct SpentTokens {
    /// Token (its first 8 bytes are its issue time in µs, big-endian: the map is in issue
    /// order)
    /// -> the request that spent it.
    spent: BTreeMap<[u8; TOKEN_LEN], (SocketAddr, u32)>,
    /// Tokens issued at or before this (µs) are refused: their record may have been forgotten.
    floor_us: u64,
}

/// Why a token cannot be spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// Another request used it already.
    Used,
    /// Too old to tell (see [`MAX_SPENT_TOKENS`]): ask for a fresh one.
    Forgotten,
}

impl SpentTokens {
    /// Spends `token` (valid: the caller checked it) for request `request_id` from `peer`.
    pub fn spend(
        &mut self,
        token: &[u8; TOKEN_LEN],
        peer: SocketAddr,
        request_id: u32,
    ) -> Result<(), Spent> {
        if let Some(&owner) = self.spent.get(token) {
            return if owner == (peer, request_id) {
                Ok(())
            } else {
                Err(Spent::Used)
            };
        }
        if issued_us(token) <= self.floor_us {
            return Err(Spent::Forgotten);
        }
        self.spent.insert(*token, (peer, request_id));
        while self.spent.len() > MAX_SPENT_TOKENS {
            if let Some((oldest, _)) = self.spent.pop_first() {
                self.floor_us = self.floor_us.max(issued_us(&oldest));
            }
        }
        Ok(())
    }

    /// Forgets tokens issued before `oldest_valid_us`: they are refused as expired anyway.
    pub fn forget_expired(&mut self, oldest_valid_us: u64) {
        while let Some((t, _)) = self.spent.first_key_value() {
            if issued_us(t) >= oldest_valid_us {
                break;
            }
            self.spent.pop_first();
        }
    }

    pub fn len(&self) -> usize {
        self.spent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_prefixes_parse_and_match() {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(c("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!c("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(c("192.168.1.7").contains(ip("192.168.1.7")));
        assert!(!c("192.168.1.7").contains(ip("192.168.1.8")));
        assert!(c("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(
            !c("0.0.0.0/0").contains(ip("::1")),
            "IPv4 prefixes hold no IPv6 address"
        );
        // An IPv4 client of a server bound to [::] arrives IPv4-mapped.
        assert!(c("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        assert!(c("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!c("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(c("::/0").contains(ip("fe80::1")));
        assert_eq!(c("10.0.0.0/8").to_string(), "10.0.0.0/8");
        for bad in [
            "10.1.2.3/8",
            "10.0.0.0/33",
            "2001:db8::1/32",
            "host/8",
            "10.0.0.0/x",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    fn token(issued_us: u64, tag: u8) -> [u8; TOKEN_LEN] {
        let mut t = [tag; TOKEN_LEN];
        t[..8].copy_from_slice(&issued_us.to_be_bytes());
        t
    }

    #[test]
    fn a_token_starts_one_request_only() {
        let mut s = SpentTokens::default();
        let (a, b): (SocketAddr, SocketAddr) = (
            "10.0.0.1:5000".parse().unwrap(),
            "10.0.0.2:5000".parse().unwrap(),
        );
        let t = token(1000, 1);
        assert_eq!(s.spend(&t, a, 7), Ok(()));
        // The same request again (a resent GET) may.
        assert_eq!(s.spend(&t, a, 7), Ok(()));
        // Another request, from anywhere, may not.
        assert_eq!(s.spend(&t, a, 8), Err(Spent::Used));
        assert_eq!(s.spend(&t, b, 7), Err(Spent::Used));
        assert_eq!(s.spend(&token(1000, 2), a, 8), Ok(()));
        s.forget_expired(1001);
        assert!(s.is_empty());
    }

    #[test]
    fn past_its_bound_the_record_forgets_the_oldest_and_refuses_their_age() {
        let mut s = SpentTokens::default();
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        for i in 0..=MAX_SPENT_TOKENS as u64 {
            assert_eq!(
                s.spend(&token(10 + i / 4, (i % 4) as u8), a, i as u32),
                Ok(())
            );
        }
        assert_eq!(s.len(), MAX_SPENT_TOKENS);
        // The forgotten one's age is refused now, even for a token never seen.
        assert_eq!(s.spend(&token(10, 9), a, 1), Err(Spent::Forgotten));
        assert_eq!(s.spend(&token(10, 0), a, 0), Err(Spent::Forgotten));
        assert_eq!(s.spend(&token(1 << 40, 0), a, 0), Ok(()));
    }

    #[test]
    fn budget_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = RateBudget::new(100.0, 10.0, t0);
        assert_eq!((0..20).filter(|_| b.take(t0)).count(), 10);
        assert!(b.take(t0 + Duration::from_millis(10)));
        assert!(!b.take(t0 + Duration::from_millis(10)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| b.take(later)).count(), 10);
    }

    #[test]
    fn a_tiny_rate_still_admits_requests_as_it_refills() {
        // --requests-per-ip 0.4 used to give a burst of 0.8 tokens: never a whole one, so every
        // request was refused forever. The CLI refuses such values; the budget itself copes.
        let t0 = Instant::now();
        let mut r = RequestBudgets::new(0.4);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(r.admit(ip, t0), Admit::Yes);
        assert_eq!(r.admit(ip, t0), Admit::NoAndTell);
        assert_eq!(r.admit(ip, t0 + Duration::from_millis(50)), Admit::No);
        assert_eq!(r.admit(ip, t0 + Duration::from_secs(3)), Admit::Yes);
    }

    #[test]
    fn a_flood_from_more_addresses_than_tracked_shares_one_budget() {
        let t0 = Instant::now();
        let mut r = RequestBudgets::new(10.0);
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        for i in 0..MAX_TRACKED_IPS as u32 {
            assert_eq!(r.admit(ip(i), t0), Admit::Yes);
        }
        // The table is full of busy addresses: newcomers share one budget of 20 (2 x 10/s)
        // instead of growing it.
        let admitted = (0..1000u32)
            .filter(|i| r.admit(ip(1_000_000 + i), t0) == Admit::Yes)
            .count();
        assert_eq!(admitted, 20);
        assert_eq!(r.per_ip.len(), MAX_TRACKED_IPS);
        // A tracked address keeps its own budget.
        assert_eq!(r.admit(ip(5), t0), Admit::Yes);
        // Once the tracked ones have gone quiet (and the sweep forgot them), a newcomer gets
        // its own again.
        let later = t0 + Duration::from_secs(11);
        r.forget_idle(later);
        assert_eq!(r.admit(ip(2_000_000), later), Admit::Yes);
        assert_eq!(r.per_ip.len(), 1);
    }

    #[test]
    fn idle_addresses_are_forgotten() {
        let t0 = Instant::now();
        let mut r = RequestBudgets::new(10.0);
        r.admit("10.0.0.1".parse().unwrap(), t0);
        r.forget_idle(t0 + Duration::from_secs(5));
        assert_eq!(r.per_ip.len(), 1);
        r.forget_idle(t0 + Duration::from_secs(11));
        assert!(r.per_ip.is_empty());
    }
}
