//! A session's datagrams by `sendmsg`: `sendmsg`s through its ring, each a header from the slot
//! and a payload range of the mapped file (the kernel copies it), up to a GSO batch each.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::session_ring::{next_datagram, SessionRing};
use super::END_SEGMENT;
use crate::protocol::sender::NextDatagram;

use super::ring::Ring;
use crate::protocol::seal::{SealError, SEALED_HEADER_LEN, SEAL_OVERHEAD};
use crate::protocol::{Mode, DATA_HEADER_LEN};
use crate::server::session::{CloseReason, Session};
use crate::sys::sigbus::GuardError;

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
        let wire_size = session.wire_size();
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
                        } if session.sealer.is_some() => {
                            // The header now; the payloads of the whole batch are read and
                            // sealed once it is full (`seal_slot`).
                            let len = slot
                                .push_sealed(index, |buf| {
                                    let plain = &mut buf[SEALED_HEADER_LEN..];
                                    let header = (&mut plain[..DATA_HEADER_LEN])
                                        .try_into()
                                        .expect("a 32-byte header");
                                    let len =
                                        session.data_header(index, retransmit, send_ts_ns, header);
                                    Some(SEAL_OVERHEAD + DATA_HEADER_LEN + len)
                                })
                                .unwrap_or(0);
                            if len < wire_size {
                                break;
                            }
                        }
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
                            match &session.sealer {
                                Some(sealer) => {
                                    let end = &self.scratch;
                                    slot.push_sealed(END_SEGMENT, |buf| {
                                        buf[SEALED_HEADER_LEN..SEALED_HEADER_LEN + end.len()]
                                            .copy_from_slice(end);
                                        sealer.seal_in_place(buf, end.len()).ok()
                                    });
                                }
                                None => slot.push_small(END_SEGMENT, &self.scratch),
                            }
                            break;
                        }
                    }
                }
                let segments = slot.segments;
                if segments == 0 {
                    break;
                }
                let queued = self.ring.push(sock, now);
                if session.sealer.is_some() {
                    self.to_seal.extend(queued);
                }
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
        // Sealed outside the sender's lock (the control thread applies ACKs meanwhile), and
        // before the submit: the kernel has not seen these slots yet.
        if !self.to_seal.is_empty() {
            let slots = std::mem::take(&mut self.to_seal);
            if let Err((reason, why)) = seal_queued(&mut self.ring, &session, &slots) {
                session.fail(reason, why);
            }
            self.to_seal = slots;
            self.to_seal.clear();
        }
        (self.submit(), deadline)
    }
}

/// Reads and seals the data datagrams of the queued slots `slots`, by the worker that drives the
/// session: sessions spread over the workers, and so does their sealing. (Tried on this project's
/// 2-vCPU VMs, the client on the same machine, and not kept: a pool that sealed one session's batch
/// on the other cores, 1429 MiB/s with it and 1497 without, medians of 5 over a veth of MTU 1500;
/// half of each batch, about 32 datagrams of 64 KB, sealed by a second thread on loopback,
/// 3.71-3.88 GB/s against 3.80-4.01; the sends handed to the kernel's io-wq (`IOSQE_ASYNC`, one
/// worker, in order) so that sealing and sending overlap, 3.44-3.69 against 3.69-3.89 sealed and
/// 3.53-4.04 against 4.60-5.13 open. The other core is the client's and the kernel's:
/// `examples/sealed_floor.rs` measures what is left.) On failure every one of their bytes is
/// zeroed, so nothing of the plaintext goes out (the caller fails the session).
fn seal_queued(
    ring: &mut Ring,
    session: &Session,
    slots: &[u16],
) -> Result<(), (CloseReason, String)> {
    let mut segs = ring.sealed_segments_of(slots);
    // An END marker's segment was sealed when it was pushed.
    segs.retain(|(i, _)| *i != END_SEGMENT);
    let result = seal_segments(session, &mut segs);
    drop(segs);
    if result.is_err() {
        for (_, seg) in ring.sealed_segments_of(slots) {
            seg.fill(0);
        }
    }
    result
}

/// Data datagrams of a sealed session (their headers written), each sealed straight from the
/// file's map: the AEAD reads the payload where it lies and writes it encrypted into the
/// datagram (one copy, where reading it into the datagram first and sealing it there made two:
/// a sealed 1 GiB over a veth of MTU 1500 went from 0.66 to 0.49 server CPU-seconds per GB,
/// medians of 5 alternating with the build before).
/// The map is read under the SIGBUS guard (`sys::sigbus`): a file truncated meanwhile is an
/// error for the session, not the end of the server.
fn seal_segments(
    session: &Session,
    segs: &mut [(u32, &mut [u8])],
) -> Result<(), (CloseReason, String)> {
    let sealer = session.sealer.as_ref().expect("a sealed session");
    let file = &session.file;
    let payload_size = file.payload_size as usize;
    let cannot_seal = |e: SealError| {
        (
            CloseReason::Failed,
            format!("cannot seal: {e:?} (a new connection is due)"),
        )
    };
    for (index, seg) in segs.iter_mut() {
        let len = seg.len() - SEAL_OVERHEAD - DATA_HEADER_LEN;
        let sealed = match &file.map {
            Some(map) if len > 0 => map
                .read(*index as usize * payload_size, len, |payload| {
                    sealer.seal_from(seg, DATA_HEADER_LEN, payload)
                })
                .map_err(|e| {
                    let reason = match e {
                        GuardError::CutShort => {
                            // Its pages are gone: a map of the file as it is now is needed.
                            file.mark_changed();
                            CloseReason::FileChanged
                        }
                        GuardError::NoHandler => CloseReason::Failed,
                    };
                    let e = std::io::Error::from(e);
                    (reason, format!("cannot read {}: {e}", file.name))
                })?,
            _ => sealer.seal_from(seg, DATA_HEADER_LEN, &[]),
        };
        sealed.map_err(cannot_seal)?;
    }
    Ok(())
}
