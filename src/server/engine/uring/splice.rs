//! A session's datagrams by splice, beside its ring: each datagram's header with `MSG_MORE`,
//! then `sendfile()` of its payload from the page cache (the kernel attaches the pages; see
//! [`SpliceSocket`]). Two calls a datagram, made by the worker itself: measured, that costs
//! half the CPU per GB of io_uring's linked SPLICE (perf/README.md).

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::session_ring::{next_datagram, too_big, SessionRing};
use super::{END_SEGMENT, SLOTS, SPLICE_TAKE};
use crate::protocol::sender::NextDatagram;
use crate::protocol::{Mode, DATA_HEADER_LEN};
use crate::server::session::CloseReason;
use crate::sys::splice::{SpliceSocket, Spliced};

impl SessionRing {
    /// Sends what the session may send now by splice (see [`SpliceSocket`]): up to [`SLOTS`]
    /// datagrams, taken from the sender a few at a time so that its lock (which ACKs need) is
    /// never held across a send. Each send is over when its calls return; a datagram's send
    /// time is then moved to when its batch was sent (`departed_at`, under the next lock): a
    /// worker descheduled between taking and sending must not make data look lost before it
    /// left. Returns what [`SessionRing::pump`] returns. The ring is not touched.
    pub(super) fn pump_splice(&mut self, out: &SpliceSocket) -> (usize, Option<Instant>) {
        let session = self.session.clone();
        let file = &session.file;
        let mut pushed = 0;
        let mut taken: [(u32, usize); SPLICE_TAKE] = [(0, 0); SPLICE_TAKE];
        let mut headers = [[0u8; DATA_HEADER_LEN]; SPLICE_TAKE];
        loop {
            let now = Instant::now();
            let mut n = 0;
            let deadline;
            {
                let mut state = session.state();
                // What the last batch sent, timed from now (it has just left).
                state.departed_at(&self.departed, now);
                self.departed.clear();
                if session.close_reason().is_some() {
                    return (pushed, None);
                }
                while n < SPLICE_TAKE && pushed + n < SLOTS {
                    // An END the copy path took but did not send yet (auto switches paths).
                    let Some(next) = next_datagram(&mut self.pending_end, &mut state, now) else {
                        break;
                    };
                    match next {
                        NextDatagram::Data {
                            index,
                            retransmit,
                            send_ts_ns,
                        } => {
                            let header = &mut headers[n];
                            let len = session.data_header(index, retransmit, send_ts_ns, header);
                            taken[n] = (index, len);
                        }
                        NextDatagram::End => {
                            session.end_marker(&mut self.scratch);
                            taken[n] = (END_SEGMENT, 0);
                        }
                    }
                    n += 1;
                }
                if state.mode() == Mode::Reliable && state.is_complete() {
                    session.close(CloseReason::Complete);
                }
                deadline = state.deadline();
            }
            if n == 0 {
                if pushed > 0 {
                    self.hists.batch.record(pushed as u64);
                }
                return (pushed, deadline);
            }
            let mut errors = 0;
            let mut spliced = 0;
            for (i, &(index, len)) in taken[..n].iter().enumerate() {
                let t = Instant::now();
                let sent = if index == END_SEGMENT {
                    self.hists.send_calls += 1;
                    out.send_plain(self.ring.dest(), &self.scratch)
                        .map(|_| Spliced::Sent)
                } else {
                    self.hists.send_calls += 2;
                    let offset = index as u64 * file.payload_size as u64;
                    out.send(self.ring.dest(), &headers[i], &file.file, offset, len)
                };
                self.hists
                    .send_latency_us
                    .record(t.elapsed().as_micros() as u64);
                match sent {
                    Ok(Spliced::Sent) if index == END_SEGMENT => {}
                    Ok(Spliced::Sent) => {
                        spliced += 1;
                        self.departed.push(index);
                    }
                    Ok(Spliced::Short) => {
                        errors += 1;
                        session.close(CloseReason::FileChanged);
                    }
                    Err(e) => {
                        errors += 1;
                        if e.raw_os_error() == Some(libc::EMSGSIZE) {
                            session.fail(CloseReason::Failed, too_big(&session));
                        }
                    }
                }
            }
            if errors > 0 {
                session.send_errors.fetch_add(errors, Ordering::Relaxed);
            }
            session.spliced.fetch_add(spliced, Ordering::Relaxed);
            session.gso_segments.fetch_max(1, Ordering::Relaxed);
            session
                .stats()
                .spliced
                .fetch_add(spliced, Ordering::Relaxed);
            pushed += n;
            if pushed >= SLOTS {
                self.hists.batch.record(pushed as u64);
                session.state().departed_at(&self.departed, Instant::now());
                self.departed.clear();
                // Come back after the worker's other sessions.
                return (pushed, None);
            }
        }
    }
}
