//! Live progress of running sub-clients: counters they publish once per receive batch, read
//! by an interval reporter (`get -i SECONDS`, like iperf3) or a progress bar on a terminal.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What one sub-client has done so far, and what its sender last said of its controller.
#[derive(Debug, Default)]
pub struct ClientLive {
    pub bytes_intact: AtomicU64,
    pub datagrams: AtomicU64,
    pub retransmitted: AtomicU64,
    /// Datagrams missing below the highest one seen (holes waiting for repair).
    pub holes: AtomicU64,
    pub pacing_bps: AtomicU64,
    pub srtt_us: AtomicU64,
    pub min_rtt_us: AtomicU64,
    pub inflight: AtomicU64,
    pub loss_events: AtomicU64,
    pub spurious: AtomicU64,
    /// The sender has reported at least once (before, there is nothing to show).
    pub has_status: AtomicBool,
}

impl ClientLive {
    /// Publishes the sender's latest `STATUS`.
    pub fn set_status(&self, st: &crate::protocol::Status) {
        self.pacing_bps.store(st.pacing_bps, Ordering::Relaxed);
        self.srtt_us.store(st.srtt_us as u64, Ordering::Relaxed);
        self.min_rtt_us
            .store(st.min_rtt_us as u64, Ordering::Relaxed);
        self.inflight.store(st.inflight as u64, Ordering::Relaxed);
        self.loss_events
            .store(st.loss_events as u64, Ordering::Relaxed);
        self.spurious.store(st.spurious as u64, Ordering::Relaxed);
        self.has_status.store(true, Ordering::Release);
    }

    /// The sender's view, as an interval line's tail: "-" for what it has not measured yet
    /// (before its first report, a pacing rate or RTT of 0 is no measurement).
    fn controller(&self) -> String {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let reported = self.has_status.load(Ordering::Acquire);
        let measured = |v: u64, shown: String| {
            if reported && v > 0 {
                shown
            } else {
                "-".to_string()
            }
        };
        let count = |a: &AtomicU64| {
            if reported {
                load(a).to_string()
            } else {
                "-".to_string()
            }
        };
        let pacing = load(&self.pacing_bps);
        let (srtt, min) = (load(&self.srtt_us), load(&self.min_rtt_us));
        format!(
            " | pacing {:>12} rtt {:>9} min {:>9} inflight {:>6} losses {:>4} spurious {:>4}",
            measured(pacing, super::bits_per_second(pacing as f64)),
            measured(srtt, format!("{srtt} us")),
            measured(min, format!("{min} us")),
            count(&self.inflight),
            count(&self.loss_events),
            count(&self.spurious)
        )
    }
}

/// The counters of every sub-client of one `get`.
#[derive(Debug)]
pub struct Live {
    pub clients: Vec<ClientLive>,
    /// Bytes all copies will hold when complete (0 until known).
    pub total_bytes: AtomicU64,
}

impl Live {
    pub fn new(clients: usize) -> Arc<Live> {
        Arc::new(Live {
            clients: (0..clients).map(|_| ClientLive::default()).collect(),
            total_bytes: AtomicU64::new(0),
        })
    }
}

#[derive(Clone, Copy, Default)]
struct Snap {
    bytes: u64,
    datagrams: u64,
    retransmitted: u64,
}

fn snap(c: &ClientLive) -> Snap {
    Snap {
        bytes: c.bytes_intact.load(Ordering::Relaxed),
        datagrams: c.datagrams.load(Ordering::Relaxed),
        retransmitted: c.retransmitted.load(Ordering::Relaxed),
    }
}

fn line(id: &str, from: f64, to: f64, d: Snap, holes: u64) -> String {
    let secs = (to - from).max(1e-9);
    format!(
        "[{id:>3}] {from:6.2}-{to:6.2} s {:>10.2} MiB {:>9.1} MiB/s {:>9} dgrams {:>7} holes {:>7} retrans",
        d.bytes as f64 / super::MIB,
        d.bytes as f64 / super::MIB / secs,
        d.datagrams,
        holes,
        d.retransmitted
    )
}

/// Starts the reporter: interval lines every `interval` (on stdout, or on stderr with
/// `to_stderr`: when stdout carries JSON), or else a progress bar on stderr when it is a
/// terminal and `quiet` is off. Stops when `done` is set.
pub fn spawn_reporter(
    live: Arc<Live>,
    interval: Option<Duration>,
    quiet: bool,
    to_stderr: bool,
    done: Arc<AtomicBool>,
) -> Option<JoinHandle<()>> {
    if interval.is_none() && (quiet || !std::io::stderr().is_terminal()) {
        return None;
    }
    std::thread::Builder::new()
        .name("reporter".into())
        .spawn(move || match interval {
            Some(every) => intervals(&live, every, to_stderr, &done),
            None => progress_bar(&live, &done),
        })
        .ok()
}

fn intervals(live: &Live, every: Duration, to_stderr: bool, done: &AtomicBool) {
    let say = |line: &str| {
        if to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let start = Instant::now();
    let mut last: Vec<Snap> = vec![Snap::default(); live.clients.len()];
    let mut last_t = 0.0;
    say("[ ID] interval            transfer             rate     datagrams         holes       retrans | the sender's congestion controller");
    loop {
        let deadline = Instant::now() + every;
        while Instant::now() < deadline && !done.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(10).min(every));
        }
        let finished = done.load(Ordering::Acquire);
        let t = start.elapsed().as_secs_f64();
        let mut sum = Snap::default();
        let mut sum_holes = 0;
        for (i, c) in live.clients.iter().enumerate() {
            let now = snap(c);
            let d = Snap {
                bytes: now.bytes - last[i].bytes,
                datagrams: now.datagrams - last[i].datagrams,
                retransmitted: now.retransmitted - last[i].retransmitted,
            };
            let holes = c.holes.load(Ordering::Relaxed);
            if live.clients.len() > 1 {
                say(&format!(
                    "{}{}",
                    line(&(i + 1).to_string(), last_t, t, d, holes),
                    c.controller()
                ));
            }
            sum.bytes += d.bytes;
            sum.datagrams += d.datagrams;
            sum.retransmitted += d.retransmitted;
            sum_holes += holes;
            last[i] = now;
        }
        let tail = if live.clients.len() == 1 {
            live.clients[0].controller()
        } else {
            String::new()
        };
        say(&format!("{}{tail}", line("SUM", last_t, t, sum, sum_holes)));
        last_t = t;
        if finished {
            return;
        }
    }
}

fn progress_bar(live: &Live, done: &AtomicBool) {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    while !done.load(Ordering::Acquire) {
        bar.set_length(live.total_bytes.load(Ordering::Relaxed));
        bar.set_position(
            live.clients
                .iter()
                .map(|c| c.bytes_intact.load(Ordering::Relaxed))
                .sum(),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 19.18: before the sender's first report, `-i` showed pacing 0 and rtt 0 as if
    /// measured; it says "-" until there is a measurement.
    #[test]
    fn what_the_sender_has_not_measured_shows_as_a_dash() {
        let c = ClientLive::default();
        let before = c.controller();
        assert!(
            !before.contains("0 us") && !before.contains("bit/s"),
            "{before}"
        );
        assert!(before.contains("pacing            -"), "{before}");
        c.set_status(&crate::protocol::Status {
            pacing_bps: 943_000_000,
            srtt_us: 120,
            min_rtt_us: 80,
            ..Default::default()
        });
        let after = c.controller();
        assert!(
            after.contains("943 Mbit/s") && after.contains("120 us"),
            "{after}"
        );
    }
}
