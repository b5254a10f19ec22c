//! One session as a uring worker drives it: its ring, what its pump carries from one turn to
//! the next, and what a completion means for it (sent, resent, failed). Each turn the worker
//! reaps the session's completions and pumps it: by `sendmsg` through the ring (`sendmsg.rs`), or by
//! splice beside it (`splice.rs`).

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use nix::sys::epoll::Epoll;

use super::ring::Ring;
use super::{SendPath, END_SEGMENT, GSO_SLOTS, MAX_GSO_BYTES, MAX_GSO_SEGMENTS, SLOTS};
use crate::protocol::sender::{NextDatagram, SenderState};
use crate::report::hist::SendHists;
use crate::server::session::{CloseReason, Session};
use crate::sys::splice::SpliceSocket;

/// A session's ring, with its send slots, as a worker drives it.
pub(super) struct SessionRing {
    pub(super) session: Arc<Session>,
    pub(super) ring: Ring,
    /// An END marker taken from the sender while a GSO batch was being filled: it goes next.
    pub(super) pending_end: bool,
    /// Reused to encode END markers: nothing is allocated per datagram.
    pub(super) scratch: Vec<u8>,
    /// Reused: the datagrams whose sends just completed.
    pub(super) departed: Vec<u32>,
    pub(super) hists: SendHists,
    /// Reused: the slots of a sealed session queued this pump, to seal before the submit.
    pub(super) to_seal: Vec<u16>,
    /// Whether UDP GSO works on the engine's socket: one failed GSO send (a device without
    /// checksum offload) turns it off for every session, not each session in turn.
    gso_works: Arc<AtomicBool>,
}

/// Datagrams one send may carry for a session of `datagram_size` bytes per datagram.
fn gso_segments(gso: bool, datagram_size: usize) -> usize {
    if gso {
        (MAX_GSO_BYTES / datagram_size.max(1)).clamp(1, MAX_GSO_SEGMENTS)
    } else {
        1
    }
}

impl SessionRing {
    /// A ring for `session`; its completions wake `epoll` with `token`.
    pub(super) fn new(
        session: Arc<Session>,
        epoll: &Epoll,
        token: u64,
        gso_works: Arc<AtomicBool>,
    ) -> io::Result<Self> {
        let gso = session.gso_allowed() && gso_works.load(Ordering::Relaxed);
        let max_segments = gso_segments(gso, session.wire_size());
        let slot_count = if max_segments > 1 { GSO_SLOTS } else { SLOTS };
        let ring = Ring::new(session.clone(), slot_count, max_segments, epoll, token)?;
        Ok(SessionRing {
            session,
            ring,
            pending_end: false,
            departed: Vec::new(),
            scratch: Vec::with_capacity(crate::protocol::DATA_HEADER_LEN),
            hists: SendHists::default(),
            to_seal: Vec::new(),
            gso_works,
        })
    }

    /// Takes every completion: frees its slot, records its latency, puts the datagrams sent
    /// in `departed` and handles errors. A GSO send that failed the way a device without
    /// segmentation offload fails (EIO, EINVAL, as quinn-udp found) has its datagrams queued
    /// to go again, and GSO goes off for the engine.
    pub(super) fn reap(&mut self) {
        let (session, hists, departed) = (&self.session, &mut self.hists, &mut self.departed);
        departed.clear();
        let (mut errors, mut gso_failed) = (0u64, false);
        let gso = self.ring.max_segments() > 1;
        self.ring.reap(Instant::now(), |done| {
            hists.send_latency_us.record(done.waited.as_micros() as u64);
            #[allow(unused_mut)]
            let mut err = done.error;
            #[cfg(test)]
            if done.indices.len() > 1 && session.fail_gso.swap(false, Ordering::Relaxed) {
                // As a device without checksum offload answers a GSO send.
                err = libc::EIO;
            }
            if err == 0 {
                departed.extend(done.indices.iter().filter(|&&i| i != END_SEGMENT));
                return;
            }
            errors += 1;
            match err {
                // The kernel found a page of the mapped file gone: it was truncated.
                libc::EFAULT => session.close(CloseReason::FileChanged),
                libc::EMSGSIZE => session.fail(CloseReason::Failed, too_big(session)),
                libc::EIO | libc::EINVAL if gso => {
                    let _ = session.gso_fallback.set(format!(
                        "a GSO send failed ({}): one datagram per send from then on",
                        io::Error::from_raw_os_error(err)
                    ));
                    gso_failed = true;
                    let mut state = session.state();
                    for &index in done.indices.iter().rev() {
                        if index != END_SEGMENT {
                            state.resend_now(index);
                        }
                    }
                }
                _ => {}
            }
        });
        if errors > 0 {
            session.send_errors.fetch_add(errors, Ordering::Relaxed);
        }
        if gso_failed {
            self.gso_works.store(false, Ordering::Relaxed);
        }
        if self.ring.max_segments() > 1 && !self.gso_works.load(Ordering::Relaxed) {
            self.ring.without_gso();
            let _ = self
                .session
                .gso_fallback
                .set("GSO failed on this socket: one datagram per send".into());
        }
    }

    /// Reaps, then sends what the session may send now, by `sendmsg` through the ring or by splice
    /// (`--send-path`; `auto` splices while the server is `loaded`: at least as many sessions
    /// as workers). Returns how many datagrams
    /// went, and when this session can next send without an ACK or a completion (pacing, END
    /// spacing), if it has room to.
    pub(super) fn pump(
        &mut self,
        sock: RawFd,
        splice: Option<&SpliceSocket>,
        loaded: bool,
    ) -> (usize, Option<Instant>) {
        self.reap();
        #[cfg(test)]
        self.session.pumps.fetch_add(1, Ordering::Relaxed);
        #[cfg(test)]
        if self.session.fail_point.load(Ordering::Relaxed) {
            panic!("injected fault in session {:08x}", self.session.id);
        }
        let splice_now = match self.session.send_path {
            SendPath::Sendmsg => false,
            SendPath::Splice => true,
            SendPath::Auto => loaded,
        };
        match splice.filter(|_| splice_now) {
            Some(out) => self.pump_splice(out),
            None => self.pump_sendmsg(sock),
        }
    }

    /// Submits whatever is queued; returns how many entries the kernel took. A ring that
    /// cannot submit fails its session.
    pub(super) fn submit(&mut self) -> usize {
        if self.ring.queued() == 0 {
            return 0;
        }
        self.hists.enters += 1;
        match self.ring.submit() {
            Ok(n) => n,
            Err(e) => {
                self.session
                    .fail(CloseReason::Failed, format!("io_uring submit failed: {e}"));
                0
            }
        }
    }

    /// Closed and nothing in flight: the ring can go.
    pub(super) fn finished(&self) -> bool {
        self.session.close_reason().is_some() && self.ring.in_flight() == 0
    }
}

/// What a session sends next: an END marker held back from a full GSO batch (`pending_end`)
/// first, then whatever its sender says.
pub(super) fn next_datagram(
    pending_end: &mut bool,
    state: &mut SenderState,
    now: Instant,
) -> Option<NextDatagram> {
    if std::mem::take(pending_end) {
        Some(NextDatagram::End)
    } else {
        state.next(now)
    }
}

/// Why a session whose datagrams the path refused failed.
pub(super) fn too_big(session: &Session) -> String {
    format!(
        "{}-byte datagrams do not fit the path MTU to {}: use a smaller --datagram-size (or auto)",
        session.wire_size(),
        session.peer
    )
}
