//! What the control thread does on its own clock: the sweep every 50 ms (silent clients,
//! changed files, suspect datagrams, STATUS to clients, spent tokens, the log's summaries),
//! and the log lines and `serve --json` objects of the sessions the engines finished.

use super::*;

impl Control {
    /// Logs every session the engines finished (and prints it with `serve --json`): what
    /// happened on one line, how it was sent on a second.
    pub(super) fn report_finished(&mut self) {
        use crate::report::{bits_per_second, escape, plural, MIB};
        while let Ok(s) = self.summaries.try_recv() {
            if let Some(t) = &self.tracer {
                t.record(Sample {
                    t_ms: t.t_ms(Instant::now()),
                    state: "end",
                    sent: s.datagrams_sent,
                    acked: s.datagrams_acked,
                    status: s.congestion,
                    capacity_bps: None,
                    end: true,
                });
            }
            if let (Some(m), Some((host, record))) = (&mut self.paths, s.path) {
                m.remember(host, record, Instant::now());
            }
            if let (Some(g), Ok(id)) = (&mut self.groups, u32::from_str_radix(&s.session, 16)) {
                g.leave(id, s.bytes_sent);
            }
            // What went wrong, and what else is worth a word.
            let mut notes = String::new();
            if s.send_errors > 0 {
                notes += &format!(", {}", plural(s.send_errors, "send error"));
            }
            if let Some(p) = &s.gso_fallback {
                notes += &format!("; {p}");
            }
            if let Some(p) = &s.problem {
                notes += &format!(": {p}");
            }
            if let Some(bps) = s.path_recalled_bps {
                notes += &format!(
                    "; started from the path's record ({})",
                    bits_per_second(bps)
                );
            }
            tracing::info!(
                "[SESSION {}] {} {} to {} ({} {}): {}; {} bytes in {:.3} s ({:.1} MiB/s), {} of {} bytes, {} resent ({} spurious), {}, {}{}",
                s.session,
                escape(&s.file),
                s.mode,
                s.peer,
                s.engine,
                s.send_path,
                s.outcome,
                s.bytes_sent,
                s.duration_s,
                s.bytes_sent as f64 / s.duration_s.max(1e-9) / MIB,
                plural(s.datagrams_sent, "datagram"),
                s.datagram_size,
                s.retransmitted,
                s.congestion.spurious,
                plural(s.congestion.loss_events as u64, "loss event"),
                plural(s.probes, "probe"),
                notes,
            );
            let pacing = match s.congestion.pacing_bps {
                0 => "unpaced".to_string(),
                bps => format!("pacing {}", bits_per_second(bps as f64)),
            };
            let rtt = match s.congestion.srtt_us {
                0 => "rtt -".to_string(),
                us => format!("rtt {us} us (min {} us)", s.congestion.min_rtt_us),
            };
            tracing::info!(
                "[SESSION {}] sent: {} spliced, {} of up to {}, {} io_uring_enter; {}: {pacing}, {rtt}; send latency us p50 {} p99 {} max {}",
                s.session,
                s.spliced_datagrams,
                plural(s.send_calls, "send call"),
                plural(s.gso_segments, "datagram"),
                s.io_uring_enters,
                s.controller,
                s.send_latency_us.p50,
                s.send_latency_us.p99,
                s.send_latency_us.max,
            );
            if self.cfg.json {
                if let Ok(line) = serde_json::to_string(&s) {
                    // One object per line; a closed stdout must not take the server down.
                    use std::io::Write;
                    let _ = writeln!(std::io::stdout().lock(), "{line}");
                }
            }
        }
    }

    /// Re-reads the datagrams sessions resent again and again: one whose file no longer
    /// matches its CRC (written in place, its size and times restored) ends the session "file
    /// changed", instead of resending data the client must refuse, for ever.
    fn check_suspects(&mut self) {
        let suspects: Vec<(Arc<Session>, Vec<u32>)> = self
            .sessions
            .sessions()
            .filter(|s| s.close_reason().is_none())
            .filter_map(|s| {
                let v = s.state().take_suspects();
                (!v.is_empty()).then(|| (s.clone(), v))
            })
            .collect();
        for (s, indices) in suspects {
            if indices.iter().any(|&i| !s.file.payload_matches(i)) {
                tracing::warn!(
                    "[SESSION {:08x}] {} no longer matches its index (datagrams resent again and again): transfer stopped",
                    s.id,
                    crate::report::escape(&s.file.name)
                );
                s.close(CloseReason::FileChanged);
            }
        }
    }

    /// Says, at most once per [`SHED_LOG_SWEEPS`] sweeps (a second), what an overloaded server
    /// turned away since it last said so: nothing is shed silently.
    fn log_shedding(&mut self) {
        let st = &self.stats;
        let now = [
            st.rate_limited.load(Ordering::Relaxed),
            st.acks_rate_limited.load(Ordering::Relaxed),
            st.busy.load(Ordering::Relaxed),
        ];
        let d: Vec<u64> = now
            .iter()
            .zip(self.shed_logged)
            .map(|(n, l)| n - l)
            .collect();
        if d.iter().any(|&x| x > 0) {
            tracing::warn!(
                "shedding load: in the last second {} requests over their address's budget, {} ACKs over their session's, {} GETs refused busy ({} sessions)",
                d[0],
                d[1],
                d[2],
                self.sessions.active()
            );
        }
        self.shed_logged = now;
    }

    /// Sweeps the session table and tells clients why the server ended their session; every
    /// other sweep (100 ms), tells each reliable session's client its sender's view (`STATUS`).
    pub(super) fn sweep(&mut self) {
        self.check_suspects();
        if let Some(g) = &mut self.groups {
            let done = g.reap();
            self.report_groups(done);
        }
        self.report_settled();
        for (peer, code, text) in self.sessions.sweep(self.cfg.idle_timeout) {
            self.error(peer, 0, code, &text);
        }
        let now = Instant::now();
        self.requests.forget_idle(now);
        let lifetime_us = self.cfg.token_lifetime.as_micros() as u64;
        self.spent
            .forget_expired((unix_ns() / 1000).saturating_sub(lifetime_us));
        self.refusals.flush(now);
        if let Some(l) = &mut self.legacy {
            l.flush_log(now);
        }
        self.sweeps += 1;
        if self.sweeps.is_multiple_of(SHED_LOG_SWEEPS) {
            self.log_shedding();
        }
        if self.sweeps.is_multiple_of(EVICT_SWEEPS) {
            self.catalog.evict_stale();
            if let Some(secure) = &mut self.secure {
                // A connection outlives its sessions by twice the idle timeout (a client
                // between two copies keeps it), then goes.
                let busy: HashSet<SocketAddr> = self.sessions.sessions().map(|s| s.peer).collect();
                secure.sweep(now, self.cfg.idle_timeout * 2, |p| busy.contains(&p));
            }
        }
        if self.sweeps.is_multiple_of(2) {
            // Only to clients that have shown they receive at their address.
            let statuses: Vec<_> = self
                .sessions
                .sessions()
                .filter(|s| s.mode == Mode::Reliable && s.close_reason().is_none())
                .filter_map(|s| {
                    let st = s.state();
                    st.is_validated().then(|| (s.peer, st.status(s.id)))
                })
                .collect();
            for (peer, status) in statuses {
                self.send(peer, &Message::Status(status));
            }
        }
    }
}
