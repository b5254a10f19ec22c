//! Reporting: what people read (the lab's table, live interval lines, logs) and what scripts
//! read (JSON), from counters and histograms the data paths fill in. Reports read results;
//! they never reach into the hot path.

pub mod copy;
pub mod cpu;
pub mod hist;
pub mod json;
pub mod live;
pub mod logging;
pub mod table;

/// Bytes in a MiB: amounts of data and transfer rates are in MiB and MiB/s everywhere (the
/// table, interval lines, logs, bench); network rates (pacing, links) in bits per second.
pub const MIB: f64 = 1024.0 * 1024.0;

/// A network rate in bits per second, with the prefix that keeps it readable (3 significant
/// digits): "950 Mbit/s", "1.80 Gbit/s", "12.3 kbit/s".
pub fn bits_per_second(bps: f64) -> String {
    let (v, unit) = match bps {
        b if b >= 1e12 => (b / 1e12, "Tbit/s"),
        b if b >= 1e9 => (b / 1e9, "Gbit/s"),
        b if b >= 1e6 => (b / 1e6, "Mbit/s"),
        b if b >= 1e3 => (b / 1e3, "kbit/s"),
        b => (b, "bit/s"),
    };
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$} {unit}")
}

/// `n` `what`, with an s when `n` is not 1: "1 datagram", "3 datagrams".
pub fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `text` safe for a terminal or a log line: control characters (escape sequences, `\r`,
/// tabs, newlines) are shown escaped (`\u{1b}`, `\r`), never passed through. For whatever a
/// peer chose: file names, a server's error texts.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_and_counts_read_naturally() {
        assert_eq!(super::bits_per_second(943e6), "943 Mbit/s");
        assert_eq!(super::bits_per_second(1.798681e12), "1.80 Tbit/s");
        assert_eq!(super::bits_per_second(12_345.0), "12.3 kbit/s");
        assert_eq!(super::plural(1, "datagram"), "1 datagram");
        assert_eq!(super::plural(0, "flow"), "0 flows");
    }

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(super::escape("a\tb\r\u{1b}[2Jc é"), "a\\tb\\r\\u{1b}[2Jc é");
        assert_eq!(super::escape("plain.bin"), "plain.bin");
    }
}
