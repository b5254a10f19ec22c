//! Admission: who may ask the server for work, and how much. A token bucket per source IP for
//! requests (HELLO, LIST, GET) and one per session for ACKs, so neither a request flood nor
//! one client's ACK storm can monopolise the control thread.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

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

#[cfg(test)]
mod tests {
    use super::*;

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
