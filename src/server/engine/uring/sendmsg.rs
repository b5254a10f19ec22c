//! A session's datagrams by `sendmsg`: `sendmsg`s through its ring, each a header from the slot
//! and a payload range of the mapped file (the kernel copies it), up to a GSO batch each.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::session_ring::{next_datagram, SessionRing};
use super::END_SEGMENT;
use crate::protocol::sender::NextDatagram;
use crate::protocol::{Mode, DATA_HEADER_LEN};
use crate::server::session::CloseReason;

impl SessionRing {
    /// Fills free slots with what the session may send now and submits them (see
    /// [`SessionRing::pump`] for what it returns).
    pub(super) fn pump_sendmsg(&mut self, sock: RawFd) -> (usize, Option<Instant>) {
        // Read the clock here, not once per worker turn: the sessions before this one took
        // milliseconds to submit, and a stale send time makes data look lost too early.
        let now = Instant::now();
        if self.session.close_reason().is_some() {
            // Entries queued by a failed submit still go, so their slots come back.
            return (self.submit(), None);
        }
        let session = self.session.clone();
        let file = &session.file;
        let datagram_size = session.datagram_size();
        let max_segments = self.ring.max_segments();
        let mut pushed = 0;
        let mut deadline = None;
        {
            let mut state = session.state();
            // What the reap found sent, timed from now (under the lock taken here anyway).
            state.departed_at(&self.departed, now);
            while let Some(slot) = self.ring.free_slot() {
                while slot.segments < max_segments {
                    let Some(next) = next_datagram(&mut self.pending_end, &mut state, now) else {
                        break;
                    };
                    match next {
                        NextDatagram::Data {
                            index,
                            retransmit,
                            send_ts_ns,
                        } => {
                            let payload = file.payload(index as u64);
                            slot.push_data(
                                index,
                                |h| {
                                    session.data_header(index, retransmit, send_ts_ns, h);
                                },
                                payload,
                            );
                            // A short datagram (the file's last) can only end a GSO batch.
                            if DATA_HEADER_LEN + payload.len() < datagram_size {
                                break;
                            }
                        }
                        NextDatagram::End if slot.segments > 0 => {
                            self.pending_end = true;
                            break;
                        }
                        NextDatagram::End => {
                            session.end_marker(&mut self.scratch);
                            slot.push_small(END_SEGMENT, &self.scratch);
                            break;
                        }
                    }
                }
                let segments = slot.segments;
                if segments == 0 {
                    break;
                }
                self.ring.push(sock, now);
                self.hists.send_calls += 1;
                session
                    .gso_segments
                    .fetch_max(segments as u64, Ordering::Relaxed);
                pushed += segments;
            }
            if state.mode() == Mode::Reliable && state.is_complete() {
                session.close(CloseReason::Complete);
            }
            // With every slot in flight, a completion (its eventfd) wakes the worker: a
            // deadline now would only make it spin.
            if self.ring.has_free() {
                deadline = state.deadline();
            }
        }
        if pushed > 0 {
            self.hists.batch.record(pushed as u64);
        }
        (self.submit(), deadline)
    }
}
