//! Value parsers of the command line: sizes, rates, durations, probabilities and bounded
//! counts. Each refuses what makes no sense with a message that says what would, so nothing is
//! clamped silently later.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::builder::RangedU64ValueParser;

use crate::protocol::pacer::MIN_RATE_BPS;

/// A count between `min` and `max` (clap's message names the range).
pub fn count(min: u64, max: u64) -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(min..=max)
}

/// A rate like iperf3's `-b`: bits per second with an optional k/M/G suffix (powers of 1000),
/// e.g. `500M`, `2G`, `100k`; at least 1 kbit/s.
pub fn rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    // tc's spelling too: 1gbit, 100mbit, 800Mbit/s.
    let lower = s.to_ascii_lowercase();
    let s = match ["bit/s", "bits", "bit", "bps"]
        .iter()
        .find(|suffix| lower.ends_with(*suffix) && lower.len() > suffix.len())
    {
        Some(suffix) => &s[..s.len() - suffix.len()],
        None => s,
    };
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        Some('g' | 'G') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad rate {s:?}: expected bits/s like 800M or 2.5G"))?;
    let bps = v * mult;
    if !(bps.is_finite() && bps >= MIN_RATE_BPS as f64 && bps < 1e15) {
        return Err(format!(
            "bad rate {s:?}: between 1k ({MIN_RATE_BPS} bit/s) and 1000T"
        ));
    }
    Ok(bps as u64)
}

/// An address prefix for `serve --allow`: `10.0.0.0/8`, `2001:db8::/32`, or one address.
pub fn cidr(s: &str) -> Result<crate::server::admission::Cidr, String> {
    s.parse()
}

/// A size like `100MiB`, `250MB`, `1GiB`, `4096` (bytes).
pub fn size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "gb" => 1e9,
        "t" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "tb" => 1e12,
        other => {
            return Err(format!(
                "bad size unit {other:?} in {s:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    let bytes = v * mult;
    if !(bytes.is_finite() && bytes < 2f64.powi(63)) {
        return Err(format!("bad size {s:?}: too large"));
    }
    Ok(bytes as u64)
}

/// The port a server address means when it names none.
pub const DEFAULT_PORT: u16 = 6969;

/// A server address: `10.0.0.1:6969`, `[2001:db8::1]:6969`, a host name (`localhost:6969`),
/// any of them without a port (6969), or an IPv6 link-local address with its interface
/// (`[fe80::1%eth0]:6969` or `%2`). A link-local address without one is refused: it is
/// ambiguous on a host with several links.
pub fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    let addr = parse_addr(t)?;
    if let SocketAddr::V6(v6) = addr {
        let link_local = (v6.ip().segments()[0] & 0xffc0) == 0xfe80;
        if link_local && v6.scope_id() == 0 {
            return Err(format!(
                "{t}: a link-local address needs its interface, e.g. [{}%eth0]:{}",
                v6.ip(),
                v6.port()
            ));
        }
    }
    Ok(addr)
}

fn parse_addr(t: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    // An address without a port: bare, or IPv6 in a pair of brackets ("[::1" is a typo, not
    // an address).
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let bracketed = t.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
    if let Some(Ok(ip)) = bracketed.map(str::parse::<std::net::Ipv6Addr>) {
        return Ok(SocketAddr::new(ip.into(), DEFAULT_PORT));
    }
    // [v6%interface]:port or [v6%interface]: the interface by name.
    if let Some(rest) = t.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("bad address {t:?}: missing ]"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("bad port {p:?} in {t:?}"))?,
            None if after.is_empty() => DEFAULT_PORT,
            None => return Err(format!("bad address {t:?}")),
        };
        let (ip, scope) = inside.split_once('%').unwrap_or((inside, ""));
        let ip: std::net::Ipv6Addr = ip
            .parse()
            .map_err(|_| format!("bad IPv6 address {ip:?} in {t:?}"))?;
        let scope_id = if scope.is_empty() {
            0
        } else {
            match scope.parse::<u32>() {
                Ok(n) => n,
                Err(_) => nix::net::if_::if_nametoindex(scope)
                    .map_err(|_| format!("{t}: no network interface named {scope:?}"))?,
            }
        };
        return Ok(SocketAddr::V6(std::net::SocketAddrV6::new(
            ip, port, 0, scope_id,
        )));
    }
    // A host name, with or without a port.
    let with_port = if t.contains(':') {
        t.to_string()
    } else {
        format!("{t}:{DEFAULT_PORT}")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {t:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {t:?}: no address"))
}

/// A multicast group: `239.255.77.1`, `239.255.77.1:7000`, `ff15::77`, `[ff15::77]:7000`
/// (port 6970 if none). Anything but a multicast address is refused.
pub fn group_addr(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    let default_port = crate::server::group::DEFAULT_GROUP_PORT;
    let addr = if let Ok(ip) = t.parse::<IpAddr>() {
        SocketAddr::new(ip, default_port)
    } else if let Some(Ok(ip)) = t
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .map(str::parse::<std::net::Ipv6Addr>)
    {
        SocketAddr::new(ip.into(), default_port)
    } else {
        t.parse::<SocketAddr>()
            .map_err(|_| format!("bad group {t:?}: a multicast address, e.g. 239.255.77.1 or 239.255.77.1:7000 or [ff15::77]:7000"))?
    };
    if !addr.ip().is_multicast() {
        return Err(format!(
            "{t} is not a multicast address (IPv4 224.0.0.0/4, e.g. 239.255.77.1; IPv6 ff00::/8)"
        ));
    }
    if addr.port() == 0 {
        return Err(format!("{t}: the group needs a port"));
    }
    Ok(addr)
}

/// A receive window: a size of at least 64 KiB (one of the largest datagrams) and at most 4 GiB.
pub fn window(s: &str) -> Result<u64, String> {
    let v = size(s)?;
    if !(65_536..=(4u64 << 30) - 1).contains(&v) {
        return Err(format!("bad window {s:?}: between 64KiB and 4GiB"));
    }
    Ok(v)
}

/// A duration: a number with a unit (`25ms`, `0.2s`, `1.5m`, `300us`), or a bare number of
/// seconds (`5`, `0.5`). Positive, at most a day.
pub fn duration(s: &str) -> Result<Duration, String> {
    let d = duration_or_zero(s)?;
    if d.is_zero() {
        return Err(format!("bad duration {s:?}: must be positive"));
    }
    Ok(d)
}

/// Like [`duration`], and zero is allowed.
pub fn duration_or_zero(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: e.g. 5 (seconds), 0.5s, 25ms"))?;
    let secs = match unit.trim() {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "m" | "min" => v * 60.0,
        other => {
            return Err(format!(
                "bad duration unit {other:?} in {s:?} (use us, ms, s or m)"
            ))
        }
    };
    if !(secs.is_finite() && (0.0..=86_400.0).contains(&secs)) {
        return Err(format!("bad duration {s:?}: at most a day"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A delay: a duration with its unit (`20ms`, `0.1s`); a bare number is refused (other than
/// 0), since the relay's `--delay` used to count milliseconds.
pub fn delay(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.parse::<f64>().is_ok_and(|v| v != 0.0) {
        return Err(format!("bad delay {s:?}: give a unit, e.g. {t}ms or {t}s"));
    }
    duration_or_zero(s)
}

/// A probability: a percentage (`5%`, `0%`-`100%`) or a fraction below 1 (`0.05`). A bare
/// number of 1 or more is refused: `1` could mean 1% or 100%.
pub fn probability(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let forms = "a percentage (5%, between 0% and 100%) or a fraction below 1 (0.05)";
    let v = match s.strip_suffix('%') {
        Some(p) => {
            let v = p
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("bad probability {s:?}: give {forms}"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("bad probability {s:?}: give {forms}"));
            }
            v / 100.0
        }
        None => {
            let v = s
                .parse::<f64>()
                .map_err(|_| format!("bad probability {s:?}: give {forms}"))?;
            if v >= 1.0 {
                return Err(format!(
                    "ambiguous probability {s:?}: {v}% or {}%? give {forms}",
                    v * 100.0
                ));
            }
            if !(0.0..1.0).contains(&v) {
                return Err(format!("bad probability {s:?}: give {forms}"));
            }
            v
        }
    };
    Ok(v)
}

/// A rate of requests per second: at least 1 (below that, a source could never make one).
pub fn per_second(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("bad rate {s:?}: a number per second, e.g. 500"))?;
    if !(v.is_finite() && (1.0..=1e9).contains(&v)) {
        return Err(format!("bad rate {s:?}: at least 1 per second"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(rate("500M"), Ok(500_000_000));
        assert_eq!(rate("2.5G"), Ok(2_500_000_000));
        assert_eq!(rate("100k"), Ok(100_000));
        assert_eq!(rate("1k"), Ok(1000));
        assert_eq!(rate("1gbit"), Ok(1_000_000_000));
        assert_eq!(rate("100Mbit/s"), Ok(100_000_000));
        assert_eq!(rate("800mbps"), Ok(800_000_000));
        for bad in ["fast", "-1M", "0", "0.5", "999", "inf", "NaN"] {
            assert!(rate(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(size("100MiB"), Ok(100 << 20));
        assert_eq!(size("250MB"), Ok(250_000_000));
        assert_eq!(size("1GiB"), Ok(1 << 30));
        assert_eq!(size("4096"), Ok(4096));
        assert_eq!(size("1TiB"), Ok(1 << 40));
        assert!(size("1XB").is_err());
        assert!(size("99999999999TB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("25ms"), Ok(Duration::from_millis(25)));
        assert_eq!(duration("0.2s"), Ok(Duration::from_millis(200)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("300us"), Ok(Duration::from_micros(300)));
        for bad in ["0", "-1", "x", "5h", "1e30", "2d"] {
            assert!(duration(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(duration_or_zero("0"), Ok(Duration::ZERO));
        assert_eq!(delay("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(delay("0"), Ok(Duration::ZERO));
        assert!(delay("20").unwrap_err().contains("20ms"));
    }

    #[test]
    fn addresses() {
        let a = |s: &str| socket_addr(s).map(|a| a.to_string());
        assert_eq!(a("10.0.0.1:7000").unwrap(), "10.0.0.1:7000");
        assert_eq!(a("10.0.0.1").unwrap(), "10.0.0.1:6969");
        assert_eq!(a("[2001:db8::1]:7").unwrap(), "[2001:db8::1]:7");
        assert_eq!(a("2001:db8::1").unwrap(), "[2001:db8::1]:6969");
        assert_eq!(a("[2001:db8::1]").unwrap(), "[2001:db8::1]:6969");
        assert_eq!(a("[fe80::1%2]:80").unwrap(), "[fe80::1%2]:80");
        assert_eq!(a("[fe80::1%lo]:80").unwrap(), "[fe80::1%1]:80");
        assert!(a("localhost:6969").unwrap().ends_with(":6969"));
        assert!(a("localhost").unwrap().ends_with(":6969"));
        let e = a("[fe80::1]:80").unwrap_err();
        assert!(e.contains("needs its interface"), "{e}");
        assert!(a("[fe80::1%nosuchif0]:80")
            .unwrap_err()
            .contains("no network interface"));
        assert!(a("no.such.host.invalid")
            .unwrap_err()
            .contains("cannot resolve"));
        assert!(a("10.0.0.1:99999").is_err());
        // Brackets come in pairs and hold IPv6 only.
        for typo in ["[::1", "::1]", "[[::1]]", "[10.0.0.1]", "[10.0.0.1]:80"] {
            assert!(a(typo).is_err(), "{typo} accepted as {:?}", a(typo));
        }
        assert!(a("[::1").unwrap_err().contains("missing ]"));
    }

    #[test]
    fn probabilities_and_request_rates() {
        assert_eq!(probability("0.05"), Ok(0.05));
        assert_eq!(probability("0.01"), Ok(0.01));
        assert_eq!(probability("1%"), Ok(0.01));
        assert_eq!(probability("20%"), Ok(0.2));
        assert_eq!(probability("100%"), Ok(1.0));
        assert_eq!(probability("0"), Ok(0.0));
        // Issue 19.16: a bare 1 meant 100% (while 5 was refused): every bare number of 1 or
        // more is ambiguous, and the error names the forms taken.
        for bad in ["1", "1.0", "5", "50"] {
            let e = probability(bad).unwrap_err();
            assert!(
                e.contains("ambiguous") && e.contains("0.05") && e.contains("5%"),
                "{e}"
            );
        }
        assert!(probability("120%").is_err());
        assert!(probability("-0.1").is_err());
        assert!(probability("x").unwrap_err().contains("5%"));
        assert_eq!(per_second("500"), Ok(500.0));
        for bad in ["0.4", "0", "-3", "inf", "x"] {
            assert!(per_second(bad).is_err(), "{bad} accepted");
        }
    }
}
