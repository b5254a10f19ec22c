//! ringblast: send files over UDP from one server to many clients, as fast as Linux allows,
//! every byte verified, every transfer measured.
//!
//! Data flows one way: socket -> [`wire`] parse -> [`session`] / [`receiver`] logic ->
//! [`engine`]. Raw syscalls live in [`sys`] and [`engine::uring`]; everything else is safe code.
#![deny(unsafe_code)]

pub mod bench;
pub mod client;
pub mod demo;
pub mod engine;
pub mod files;
pub mod legacy;
pub mod live;
pub mod logging;
pub mod receiver;
pub mod relay;
pub mod report;
pub mod server;
pub mod session;
pub mod stats;
pub mod sys;
pub mod token;
pub mod wire;

/// Parses a rate like iperf3's `-b`: bits per second with an optional k/M/G suffix (powers
/// of 1000), e.g. `500M`, `2G`, `100k`.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        Some('g' | 'G') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad rate {s:?}: expected bits/s like 800M or 2.5G"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("bad rate {s:?}: must be positive"));
    }
    Ok((v * mult) as u64)
}

/// Parses a size like `100MiB`, `250MB`, `1GiB`, `4096` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
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
    Ok((v * mult) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_sizes() {
        assert_eq!(parse_rate("500M"), Ok(500_000_000));
        assert_eq!(parse_rate("2.5G"), Ok(2_500_000_000));
        assert_eq!(parse_rate("100k"), Ok(100_000));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("-1M").is_err());
        assert_eq!(parse_size("100MiB"), Ok(100 << 20));
        assert_eq!(parse_size("250MB"), Ok(250_000_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert!(parse_size("1XB").is_err());
    }
}
