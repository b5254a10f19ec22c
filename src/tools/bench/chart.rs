//! Plain SVG line charts: the lab's figures (goodput and loss against the number of clients,
//! with the spread over repetitions) and latency percentiles, drawn without a plotting
//! library: x values are shared ticks, one line per series, a legend on the right.

use std::fmt::Write as _;

/// A "nice" axis maximum and step for values up to `max`.
fn nice_axis(max: f64) -> (f64, f64) {
    if max.is_nan() || max <= 0.0 {
        return (1.0, 0.2);
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

/// Text made safe inside SVG.
pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One line of a chart: `(x, y, low, high)` points, the low-high spread drawn as a bar.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64, f64, f64)>,
}

/// A plain SVG line chart: x values are shared ticks (client counts), one line per series,
/// each point's spread (the lowest and highest of its repetitions) drawn as a vertical bar.
pub fn spread_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    chart(title, x_label, y_label, series, &|x| format!("{x}"))
}

/// Percentiles from the median up against "nines" (x = -log10(1 - q)): 1 is p90, 2 is p99, 3
/// is p99.9, the maximum at the right; the tail of a latency distribution spreads out where
/// it matters.
pub fn percentile_chart(
    title: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let spread: Vec<Series> = series
        .iter()
        .map(|(name, pts)| Series {
            name: name.clone(),
            // From the median up (the tail is what differs); the maximum drawn at p99.999.
            points: pts
                .iter()
                .filter(|&&(q, _)| q >= 0.5)
                .map(|&(q, y)| {
                    let x = -(1.0 - q.min(0.99999)).log10();
                    (x, y, y, y)
                })
                .collect(),
        })
        .collect();
    chart(title, "percentile", y_label, &spread, &|x| {
        if x >= 4.99 {
            return "max".to_string();
        }
        let q = 100.0 * (1.0 - 10f64.powf(-x));
        format!("p{}", (q * 1000.0).round() / 1000.0)
    })
}

fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    x_tick: &dyn Fn(f64) -> String,
) -> String {
    const W: f64 = 860.0;
    const H: f64 = 440.0;
    let (l, r, t, b) = (80.0, 220.0, 56.0, 60.0);
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    ];
    let mut xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.dedup();
    let ymax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1.max(p.3)))
        .fold(0.0, f64::max);
    let (ytop, ystep) = nice_axis(ymax);
    let (xmin, xmax) = (
        xs.first().copied().unwrap_or(0.0),
        xs.last().copied().unwrap_or(1.0),
    );
    let px = |x: f64| {
        if xmax > xmin {
            l + (x - xmin) / (xmax - xmin) * (W - l - r)
        } else {
            l + (W - l - r) / 2.0
        }
    };
    let py = |y: f64| H - b - y / ytop * (H - t - b);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    // What was measured, then where (after " - "), on a line of its own.
    let (what, where_) = title.split_once(" - ").unwrap_or((title, ""));
    let _ = writeln!(
        s,
        r##"<text x="{}" y="20" font-size="15" text-anchor="middle">{}</text><text x="{}" y="38" text-anchor="middle" fill="#444">{}</text>"##,
        W / 2.0,
        esc(what),
        W / 2.0,
        esc(where_)
    );
    let mut y = 0.0;
    while y <= ytop + 1e-9 {
        let _ = writeln!(
            s,
            r##"<line x1="{l}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - r,
            py(y),
            py(y),
            l - 6.0,
            py(y) + 4.0,
            if ystep < 1.0 {
                format!("{y:.2}")
            } else {
                format!("{y:.0}")
            }
        );
        y += ystep;
    }
    for x in &xs {
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{}" y2="{}" stroke="#ddd"/><text x="{:.1}" y="{}" text-anchor="middle">{}</text>"##,
            px(*x),
            px(*x),
            t,
            H - b,
            px(*x),
            H - b + 18.0,
            esc(&x_tick(*x))
        );
    }
    let _ = writeln!(
        s,
        r#"<line x1="{l}" x2="{l}" y1="{t}" y2="{}" stroke="black"/><line x1="{l}" x2="{}" y1="{}" y2="{}" stroke="black"/>"#,
        H - b,
        W - r,
        H - b,
        H - b
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (W - r + l) / 2.0,
        H - 18.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(22,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (H - b + t) / 2.0,
        esc(y_label)
    );
    for (i, Series { name, points: pts }) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y, _, _)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for (x, y, lo, hi) in pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{c}"/>"#,
                px(*x),
                py(*y)
            );
            if hi > lo {
                // The spread over repetitions: a bar from the lowest to the highest.
                let _ = writeln!(
                    s,
                    r#"<path class="spread" d="M{x:.1},{:.1}V{:.1}M{:.1},{:.1}h8M{:.1},{:.1}h8" stroke="{c}" stroke-width="1.5"/>"#,
                    py(*lo),
                    py(*hi),
                    px(*x) - 4.0,
                    py(*lo),
                    px(*x) - 4.0,
                    py(*hi),
                    x = px(*x)
                );
            }
        }
        let ly = t + 10.0 + i as f64 * 20.0;
        let _ = writeln!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            W - r + 15.0,
            W - r + 40.0,
            W - r + 46.0,
            ly + 4.0,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_nice() {
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        let (top, step) = nice_axis(3481.0);
        assert!(
            top >= 3481.0 && step > 0.0 && top / step <= 6.0,
            "{top} {step}"
        );
    }

    #[test]
    fn chart_is_wellformed_svg() {
        let flat = |name: &str, pts: &[(f64, f64)]| Series {
            name: name.into(),
            points: pts.iter().map(|&(x, y)| (x, y, y, y)).collect(),
        };
        let svg = spread_chart(
            "t <&>",
            "x",
            "y",
            &[
                flat("a", &[(1.0, 2.0), (5.0, 3.0)]),
                flat("b", &[(1.0, 0.0)]),
            ],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;&amp;&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        let spread = spread_chart(
            "s",
            "x",
            "y",
            &[Series {
                name: "a".into(),
                points: vec![(1.0, 2.0, 1.5, 2.5), (2.0, 3.0, 3.0, 3.0)],
            }],
        );
        assert_eq!(spread.matches(r#"class="spread""#).count(), 1, "{spread}");
        let p = percentile_chart("p", "us", &[("a".into(), vec![(0.5, 10.0), (0.99, 90.0)])]);
        assert!(p.contains(">p50<") && p.contains(">p99<"), "{p}");
    }
}
