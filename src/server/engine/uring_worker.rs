//! A uring worker thread: takes new sessions, pumps each one's ring, and sleeps in `epoll_wait`
//! until a completion, an ACK or the earliest pacing deadline among its sessions.

use super::*;

pub(super) struct WorkerCtx {
    pub(super) sock: Arc<UdpSocket>,
    /// Workers in the engine: with at least as many sessions the server is busy, and
    /// `--send-path auto` sessions splice.
    pub(super) workers: u64,
    /// This worker's socket for spliced sessions (`--send-path auto|splice`).
    pub(super) splice: Option<SpliceSocket>,
    pub(super) rx: Receiver<Arc<Session>>,
    pub(super) epoll: Epoll,
    pub(super) load: Arc<AtomicUsize>,
    pub(super) shutdown: Arc<AtomicBool>,
    pub(super) stats: Arc<ServerStats>,
}

/// How long a worker with nothing to submit may sleep: until the earliest deadline among its
/// sessions, at least 1 ms (epoll counts milliseconds: a 0 ms wait would spin), at most
/// [`IDLE_POLL`]. Completions and ACKs wake it earlier through their eventfds.
pub(super) fn idle_timeout(now: Instant, deadline: Option<Instant>) -> EpollTimeout {
    let wait = deadline
        .map(|d| d.saturating_duration_since(now))
        .unwrap_or(IDLE_POLL)
        .min(IDLE_POLL);
    let ms = wait.as_micros().div_ceil(1000).max(1) as u16;
    EpollTimeout::from(ms)
}

impl WorkerCtx {
    pub(super) fn run(self) {
        let sock = self.sock.as_raw_fd();
        let mut sessions: Vec<SessionRing> = Vec::new();
        let mut events = [EpollEvent::empty(); 64];
        loop {
            while let Ok(s) = self.rx.try_recv() {
                match SessionRing::new(s.clone(), &self.epoll) {
                    Ok(rs) => sessions.push(rs),
                    Err(e) => {
                        s.fail(CloseReason::Failed, format!("cannot set up io_uring: {e}"));
                        s.release(&SendHists::default());
                        self.load.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
            let stopping = self.shutdown.load(Ordering::Acquire);
            if stopping {
                for rs in &sessions {
                    rs.session.close(CloseReason::Shutdown);
                }
            }
            let mut deadline: Option<Instant> = None;
            let mut sent = 0;
            let busy = self.stats.sessions_active.load(Ordering::Relaxed) >= self.workers;
            for rs in sessions.iter_mut() {
                match catch_unwind(AssertUnwindSafe(|| {
                    rs.pump(sock, self.splice.as_ref(), busy)
                })) {
                    Ok((n, d)) => {
                        sent += n;
                        deadline = match (deadline, d) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                    }
                    Err(panic) => {
                        self.stats.panics.fetch_add(1, Ordering::Relaxed);
                        rs.session.fail(
                            CloseReason::Failed,
                            format!("bug: the session's code panicked: {}", panic_text(&*panic)),
                        );
                    }
                }
            }
            sessions.retain_mut(|rs| {
                if rs.finished() {
                    rs.session.release(&rs.hists);
                    self.load.fetch_sub(1, Ordering::Relaxed);
                    false
                } else {
                    true
                }
            });
            if stopping && sessions.is_empty() {
                return;
            }
            if sent > 0 {
                continue;
            }
            let _ = self
                .epoll
                .wait(&mut events, idle_timeout(Instant::now(), deadline));
        }
    }
}
