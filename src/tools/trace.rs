//! `ringblast trace FILE`: reads what `serve --trace` wrote and lists its sessions, or plots
//! one (`--svg OUT`): four panels against time, sharing the time axis (the pacing and
//! delivery rates; the smoothed and minimum RTT; inflight and the window; resends so far, with
//! a tick for each new loss event), and a dashed line with its name wherever the controller
//! changed state. Plain SVG, no plotting library.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use super::bench::chart::esc;
use crate::protocol::Status;

/// One line of a trace, as `server::trace::Sample` writes it: the sender's `STATUS` and when.
#[derive(Debug, Clone, Deserialize)]
pub struct Line {
    pub t_ms: f64,
    pub state: String,
    #[serde(default)]
    pub sent: u64,
    #[serde(default)]
    pub acked: u64,
    #[serde(flatten)]
    pub status: Status,
    #[serde(default)]
    pub capacity_bps: Option<u64>,
    #[serde(default)]
    pub end: bool,
}

/// The lines of a trace file, by session (in time order); lines that do not parse are
/// counted, not fatal (a trace cut short by a crash still plots).
pub fn read(path: &Path) -> anyhow::Result<(BTreeMap<String, Vec<Line>>, usize)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut by = BTreeMap::<String, Vec<Line>>::new();
    let mut bad = 0;
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Line>(l) {
            Ok(x) => by
                .entry(format!("{:08x}", x.status.session))
                .or_default()
                .push(x),
            Err(_) => bad += 1,
        }
    }
    for v in by.values_mut() {
        v.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
    }
    Ok((by, bad))
}

/// One session's summary line for the list.
pub fn describe(session: &str, lines: &[Line]) -> String {
    let (first, last) = (&lines[0], &lines[lines.len() - 1]);
    let states: Vec<&str> = lines
        .iter()
        .map(|l| l.state.as_str())
        .fold(Vec::new(), |mut v, s| {
            if v.last() != Some(&s) {
                v.push(s);
            }
            v
        });
    format!(
        "{session}  {:>6} samples  {:>9.1} ms .. {:>9.1} ms  {} resent of {} sent  states: {}",
        lines.len(),
        first.t_ms,
        last.t_ms,
        last.status.retransmitted,
        last.sent,
        states.join(" > ")
    )
}

const W: f64 = 960.0;
const PANEL: f64 = 170.0;
const GAP: f64 = 34.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 92.0;
const COLORS: [&str; 3] = ["#1f77b4", "#d62728", "#2ca02c"];

fn nice_max(max: f64) -> f64 {
    if max.is_nan() || max <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * mag)
}

/// A series of a panel: its name and its value at a line (NaN: none there, a gap).
type Series<'a> = (&'a str, &'a dyn Fn(&Line) -> f64);

/// A panel: `series` (name, value of a line) drawn against time, `unit` on its axis, which
/// stops at `cap` times the largest value of the second series where that is smaller (the
/// pacing rate before the first RTT sample would flatten everything else: it is clipped).
struct Panel<'a> {
    title: &'a str,
    unit: &'a str,
    series: &'a [Series<'a>],
    cap: Option<f64>,
}

/// The SVG of one session's trace; `title` says where it was measured.
pub fn plot(title: &str, session: &str, lines: &[Line]) -> String {
    let t0 = lines.first().map_or(0.0, |l| l.t_ms);
    let t1 = lines.last().map_or(1.0, |l| l.t_ms).max(t0 + 1.0);
    let secs = (t1 - t0) / 1e3;
    let tmax = nice_max(secs);
    let panels = [
        Panel {
            title: "rate",
            unit: "Mbit/s",
            series: &[
                ("pacing", &|l: &Line| l.status.pacing_bps as f64 / 1e6),
                ("delivery estimate", &|l: &Line| {
                    l.status.delivery_bps as f64 / 1e6
                }),
                ("capacity (trains)", &|l: &Line| {
                    l.capacity_bps.map_or(f64::NAN, |c| c as f64 / 1e6)
                }),
            ],
            cap: Some(3.0),
        },
        Panel {
            title: "round trip",
            unit: "ms",
            series: &[
                ("smoothed RTT", &|l: &Line| l.status.srtt_us as f64 / 1e3),
                ("min RTT", &|l: &Line| l.status.min_rtt_us as f64 / 1e3),
            ],
            cap: None,
        },
        Panel {
            title: "in flight",
            unit: "datagrams",
            series: &[
                ("inflight", &|l: &Line| l.status.inflight as f64),
                ("window", &|l: &Line| l.status.cwnd as f64),
            ],
            cap: None,
        },
        Panel {
            title: "resent so far",
            unit: "datagrams",
            series: &[
                ("resent", &|l: &Line| l.status.retransmitted as f64),
                ("spurious", &|l: &Line| l.status.spurious as f64),
            ],
            cap: None,
        },
    ];
    let h = TOP + panels.len() as f64 * (PANEL + GAP) + 30.0;
    let x = |t_ms: f64| LEFT + (t_ms - t0) / 1e3 / tmax * (W - LEFT - RIGHT);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r##"<text x="{}" y="20" font-size="15" text-anchor="middle">session {} - sender state over time</text><text x="{}" y="38" text-anchor="middle" fill="#444">{}</text>"##,
        W / 2.0,
        esc(session),
        W / 2.0,
        esc(title)
    );
    for (pi, p) in panels.iter().enumerate() {
        let top = TOP + pi as f64 * (PANEL + GAP);
        let bottom = top + PANEL;
        let all = lines
            .iter()
            .flat_map(|l| p.series.iter().map(move |(_, f)| f(l)))
            .filter(|v| !v.is_nan())
            .fold(0.0, f64::max);
        let second = lines.iter().map(|l| (p.series[1].1)(l)).fold(0.0, f64::max);
        let ymax = nice_max(match p.cap {
            Some(c) if second > 0.0 => all.min(c * second),
            _ => all,
        });
        let y = |v: f64| bottom - v.min(ymax) / ymax * PANEL;
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{top}" width="{}" height="{PANEL}" fill="none" stroke="#999"/>"##,
            W - LEFT - RIGHT
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" font-weight="bold">{}</text>"##,
            W - RIGHT + 10.0,
            top + 10.0,
            esc(p.title)
        );
        for k in 0..=4 {
            let v = ymax * k as f64 / 4.0;
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" text-anchor="end" fill="#444">{}</text><line x1="{LEFT}" x2="{}" y1="{}" y2="{}" stroke="#eee"/>"##,
                LEFT - 6.0,
                y(v) + 4.0,
                trim(v),
                W - RIGHT,
                y(v),
                y(v)
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle" fill="#444">{}</text>"##,
            top + PANEL / 2.0,
            top + PANEL / 2.0,
            esc(p.unit)
        );
        for (si, (name, f)) in p.series.iter().enumerate() {
            let mut d = String::new();
            let mut gap = true;
            for l in lines {
                let v = f(l);
                if v.is_nan() {
                    gap = true;
                    continue;
                }
                let _ = write!(
                    d,
                    "{}{:.1},{:.1} ",
                    if gap { "M" } else { "L" },
                    x(l.t_ms),
                    y(v)
                );
                gap = false;
            }
            if d.is_empty() {
                continue;
            }
            let _ = writeln!(
                s,
                r#"<path d="{d}" fill="none" stroke="{}" stroke-width="1.3"/>"#,
                COLORS[si]
            );
            let ly = top + 30.0 + si as f64 * 18.0;
            let _ = writeln!(
                s,
                r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
                W - RIGHT + 10.0,
                W - RIGHT + 30.0,
                COLORS[si],
                W - RIGHT + 36.0,
                ly + 4.0,
                esc(name)
            );
        }
        if pi == 3 {
            // A tick at the bottom for each new loss event.
            let mut last = lines.first().map_or(0, |l| l.status.loss_events);
            for l in lines {
                if l.status.loss_events > last {
                    let _ = writeln!(
                        s,
                        r##"<line x1="{0:.1}" x2="{0:.1}" y1="{1}" y2="{2}" stroke="#ff7f0e" stroke-width="1.5"/>"##,
                        x(l.t_ms),
                        bottom,
                        bottom - 10.0
                    );
                    last = l.status.loss_events;
                }
            }
            let ly = top + 76.0;
            let _ = writeln!(
                s,
                r##"<line x1="{}" x2="{}" y1="{ly}" y2="{}" stroke="#ff7f0e" stroke-width="2"/><text x="{}" y="{}">loss event</text>"##,
                W - RIGHT + 20.0,
                W - RIGHT + 20.0,
                ly - 10.0,
                W - RIGHT + 36.0,
                ly - 1.0
            );
        }
    }
    // The controller's state changes, across every panel.
    let bottom = TOP + panels.len() as f64 * (PANEL + GAP) - GAP;
    let mut last = "";
    let mut n = 0;
    for l in lines {
        if l.state != last {
            // Staggered over three rows, so close changes stay readable.
            let label_y = TOP - 8.0 - (n % 3) as f64 * 13.0;
            let _ = writeln!(
                s,
                r##"<line x1="{0:.1}" x2="{0:.1}" y1="{1}" y2="{2}" stroke="#888" stroke-dasharray="3,3"/><text x="{3:.1}" y="{4}" fill="#555" font-size="11">{5}</text>"##,
                x(l.t_ms),
                label_y + 3.0,
                bottom,
                x(l.t_ms) + 3.0,
                label_y,
                esc(&l.state)
            );
            last = &l.state;
            n += 1;
        }
    }
    for k in 0..=5 {
        let t = tmax * k as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#444">{}</text>"##,
            LEFT + t / tmax * (W - LEFT - RIGHT),
            bottom + 16.0,
            trim(t)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#444">seconds since the session's first sample</text>"##,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        bottom + 32.0
    );
    s.push_str("</svg>\n");
    s
}

/// A number as an axis shows it: no more digits than it needs.
fn trim(v: f64) -> String {
    if v == v.round() {
        format!("{v:.0}")
    } else if (v * 10.0) == (v * 10.0).round() {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(t: f64, state: &str, losses: u32) -> Line {
        Line {
            t_ms: t,
            state: state.into(),
            sent: t as u64 * 10,
            acked: t as u64 * 9,
            status: Status {
                session: 0xabcd,
                pacing_bps: (t * 1e6) as u64,
                delivery_bps: (t * 9e5) as u64,
                srtt_us: 200_000,
                min_rtt_us: 199_000,
                inflight: t as u32,
                cwnd: t as u32 + 5,
                loss_events: losses,
                retransmitted: losses * 3,
                spurious: 0,
            },
            // Measured from the sixth sample on.
            capacity_bps: (t >= 50.0).then_some(1_000_000_000),
            end: false,
        }
    }

    #[test]
    fn a_trace_plots_four_panels_its_state_changes_and_loss_ticks() {
        let lines: Vec<Line> = (0..200)
            .map(|i| {
                let state = if i < 50 { "startup" } else { "probe_bw" };
                line(i as f64 * 10.0, state, i / 40)
            })
            .collect();
        let svg = plot("relay 200 ms", "0000abcd", &lines);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            svg.matches("<path").count(),
            9,
            "two lines in each of four panels, and the capacity"
        );
        // The capacity's line starts where it was first measured.
        let capacity = svg
            .lines()
            .find(|l| l.contains("#2ca02c") && l.contains("<path"));
        let first_x: f64 = capacity
            .unwrap()
            .split(['M', ','])
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(first_x > LEFT + 1.0, "{first_x}");
        // Two states: two dashed lines, each named.
        assert_eq!(svg.matches("stroke-dasharray").count(), 2);
        assert!(svg.contains(">startup<") && svg.contains(">probe_bw<"));
        // Loss events went 0 -> 4: four ticks (and the legend's).
        assert_eq!(svg.matches("#ff7f0e").count(), 5);
        assert!(describe("0000abcd", &lines).contains("startup > probe_bw"));
    }

    #[test]
    fn a_trace_file_is_read_by_session_and_bad_lines_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        let good = r#"{"t_ms":2.0,"session":"00000001","state":"startup","sent":1,"acked":0,"pacing_bps":1,"delivery_bps":1,"srtt_us":1,"min_rtt_us":1,"inflight":1,"cwnd":1,"loss_events":0,"retransmitted":0,"spurious":0}"#;
        let earlier = good.replace("2.0", "1.0");
        let other = good.replace("00000001", "00000002");
        std::fs::write(&p, format!("{good}\n{earlier}\nnot json\n{other}\n")).unwrap();
        let (by, bad) = read(&p).unwrap();
        assert_eq!(bad, 1);
        assert_eq!(by.len(), 2);
        assert_eq!(by["00000001"][0].t_ms, 1.0);
    }
}
