//! The data phase of one sub-client: received batches in, every datagram checked, recorded
//! and written at its offset; `ACK`s (cumulative point, credit, NACK ranges) out every quarter
//! window and whenever the socket runs dry. No socket and no clock: batches and the times the
//! driver read come in, ACKs go into the copy's [`Outbox`].

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::edge::{Batch, Outbox};
use super::group::{GroupPart, Left};
use super::sink::Sink;
use super::window::window_for_path;
use super::ClientError;
use crate::protocol::data::payload_crc;
use crate::protocol::layout::{datagram_count, payload_len};
use crate::protocol::loss::{LossTracker, RepairClock};
use crate::protocol::{
    ack_flags, data_flags, kind, peek_kind, Ack, DataHeader, ErrorCode, Join, Message, Meta, Mode,
    NackRange, Status, MAX_NACK_RANGES,
};
use crate::report::copy::ClientHists;
use crate::report::live::ClientLive;
use crate::sys::IOV_MAX;

/// How often an idle receiver re-sends its ACK (tail probe, lost-ACK recovery, keepalive).
pub(super) const ACK_INTERVAL: Duration = Duration::from_millis(2);
/// While data flows, an ACK goes back once two datagrams came and this long passed since the
/// last: the sender's delivery-rate samples and loss detection need a steady clock, and the
/// control thread no more than ~5000 ACKs a second per receiver.
const ACK_SPACING: Duration = Duration::from_micros(200);

/// What a sub-client counted, datagram by datagram.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) bytes_received: u64,
    pub(super) bytes_intact: u64,
    pub(super) datagrams_received: u64,
    pub(super) retransmitted: u64,
    pub(super) duplicates: u64,
    pub(super) corrupt: u64,
    pub(super) malformed: u64,
    /// `recvmmsg` calls that returned data.
    pub(super) recv_calls: u64,
    /// Datagrams rebuilt from a multicast group's repairs.
    pub(super) rebuilt: u64,
    /// New datagrams from the session itself (for a group member: its unicast repair).
    pub(super) unicast: u64,
}

/// The data phase of one sub-client.
pub(super) struct DataReceiver {
    meta: Meta,
    pub(super) tracker: LossTracker,
    pub(super) crcs: Vec<u32>,
    pub(super) counts: Counts,
    window: u32,
    /// The most `window` may grow to (datagrams).
    window_max: u32,
    /// The latest send timestamp among the datagrams received, and when that one arrived
    /// (Unix ns: the kernel's receive timestamp where there is one): echoed for the RTT and
    /// for the sender's loss detection.
    echo_ts_ns: u64,
    echo_arrival_ns: u64,
    /// When the receiver last looked at its socket (what the next ACK describes), Unix ns.
    /// The echo's delay runs from the datagram's arrival in the socket to here: time it
    /// waited in the receive buffer for this thread is the receiver's, not the path's (as a
    /// TCP ACK leaves at arrival whenever the application reads), so a receiver that is
    /// busy makes no queue for the sender's congestion control, only a slower credit.
    observed_ns: u64,
    end_seen: bool,
    /// The server said our session no longer exists.
    session_gone: Option<String>,
    /// The sender's latest report of its congestion controller.
    pub(super) status: Option<Status>,
    pub(super) hists: ClientHists,
    last_arrival_ns: u64,
    repair: RepairClock,
    ranges: Vec<NackRange>,
    /// Where the next ACK's NACK ranges start (see [`LossTracker::ack_ranges`]).
    nack_cursor: u32,
    scratch: Vec<u8>,
    clock: FeedbackClock,
    /// The multicast part, for a member of a group (`get --multicast`).
    pub(super) group: Option<GroupPart>,
    /// Sources the group's repairs rebuilt in this batch, to be recorded and written.
    rebuilt: Vec<(u64, Vec<u8>)>,
}

/// When feedback last went and data last came.
struct FeedbackClock {
    /// New datagrams since the last ACK.
    since_ack: u64,
    last_ack: Instant,
    /// The last batch of anything.
    last_rx: Instant,
    /// The last sign of the transfer going on: new intact data, or blast mode's END.
    /// Duplicates, corrupt datagrams and STATUS do not count: a server that sends only those
    /// makes no progress, and is given up on after the timeout like a silent one.
    heard_at: Instant,
    /// Datagrams received (any) when progress was last made, to say what came since.
    received_at_progress: u64,
}

/// Whether a copy's data phase goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    Going,
    Finished,
}

/// What the data phase writes to: the copy, the live counters, the datagrams to send; the
/// server's address is for messages.
pub(super) struct DataIo<'a> {
    pub(super) server: SocketAddr,
    pub(super) sink: &'a Sink,
    pub(super) live: &'a ClientLive,
    pub(super) out: &'a mut Outbox,
}

impl DataReceiver {
    /// `window`: the credit to grant at first, datagrams; `window_max`: how far it may grow
    /// once the sender reports the path ([`window_for_path`]). Feedback and silence are
    /// counted from `now`.
    pub(super) fn new(meta: &Meta, window: u32, window_max: u32, now: Instant) -> Self {
        let total = datagram_count(meta.file_size, meta.payload_size) as u32;
        DataReceiver {
            meta: *meta,
            tracker: LossTracker::new(total),
            crcs: vec![0; total as usize],
            counts: Counts::default(),
            window,
            window_max: window_max.max(window),
            echo_ts_ns: 0,
            echo_arrival_ns: 0,
            observed_ns: 0,
            end_seen: false,
            session_gone: None,
            status: None,
            hists: ClientHists::default(),
            last_arrival_ns: 0,
            repair: RepairClock::default(),
            ranges: Vec::with_capacity(MAX_NACK_RANGES),
            nack_cursor: 0,
            scratch: Vec::with_capacity(MAX_NACK_RANGES * 8),
            clock: FeedbackClock {
                since_ack: 0,
                last_ack: now,
                last_rx: now,
                heard_at: now,
                received_at_progress: 0,
            },
            group: None,
            rebuilt: Vec::new(),
        }
    }

    /// Takes the file from the group `join` names first (see `group.rs`): no ACK goes until
    /// the group part ends. False (unicast from the start) when its block plan is invalid.
    /// `clients`: the sub-clients of this `get`, who share a bound on what they hold.
    pub(super) fn join_group(&mut self, join: Join, clients: usize, now: Instant) -> bool {
        self.group = GroupPart::new(join, &self.meta, clients, now);
        self.group.is_some()
    }

    /// Still taking the file from a group: no unicast ACK.
    pub(super) fn in_group(&self) -> bool {
        self.group.as_ref().is_some_and(GroupPart::active)
    }

    /// The group's socket could not be opened: on by unicast.
    pub(super) fn group_failed(&mut self, io: &mut DataIo<'_>, why: String, now: Instant) {
        if let Some(left) = self.group.as_mut().and_then(|g| g.opened(Err(why))) {
            self.left_group(left, io, now);
        }
    }

    /// The group part ended: over (the server sends no more repairs) or given up. The copy
    /// goes on by unicast from what it has: the ACK tells the session what is missing (in
    /// blast mode, a group that ended is the end: the loss is measured).
    fn left_group(&mut self, left: Left, io: &mut DataIo<'_>, now: Instant) -> Progress {
        if let Left::Unicast(why) = &left {
            tracing::warn!("{why}: going on by unicast");
        }
        if self.meta.mode == Mode::Blast && left == Left::Over {
            return Progress::Finished;
        }
        self.send_ack(io, true, now);
        Progress::Going
    }

    /// A batch arrived, read at `now` (`read_ns` on the clock of send timestamps, Unix ns):
    /// checked, recorded, written; an ACK goes back every quarter window, or once two
    /// datagrams came and [`ACK_SPACING`] passed.
    pub(super) fn on_batch(
        &mut self,
        batch: &dyn Batch,
        read_ns: u64,
        io: &mut DataIo<'_>,
        now: Instant,
    ) -> Result<Progress, ClientError> {
        // The state an ACK reports is the state at this instant: its echo delay is measured
        // to here, not to when it is sent, or a descheduled thread would make data that
        // arrived meanwhile look lost (and resent for nothing).
        self.observed_ns = read_ns;
        self.clock.last_rx = now;
        // Silence is counted in data: a server that only says how it is doing (STATUS)
        // while nothing moves is as good as gone.
        let ended_before = self.end_seen;
        let accepted = self.absorb(batch, io.sink)?;
        self.clock.since_ack += accepted;
        if accepted > 0 || self.end_seen != ended_before {
            self.clock.heard_at = now;
            self.clock.received_at_progress = self.counts.datagrams_received;
        }
        self.publish(io.live);
        if self.tracker.is_complete() {
            // Whole: whatever else the batch said (a late "no such session") does not matter.
            return self.check_end(io, now);
        }
        if let Some(text) = self.session_gone.take() {
            return Err(ClientError::Server(format!(
                "the server dropped this transfer: {text}"
            )));
        }
        let ack_every = (self.window / 4).max(1) as u64;
        let c = &self.clock;
        if self.in_group() {
            return Ok(Progress::Going);
        }
        if c.since_ack >= ack_every
            || (c.since_ack >= 2 && now.saturating_duration_since(c.last_ack) >= ACK_SPACING)
        {
            self.send_ack(io, false, now);
        }
        self.check_end(io, now)
    }

    /// The deadline came: the ACK of the last datagrams, the idle ACK (tail probe, lost-ACK
    /// recovery, keepalive), blast mode's end, or the server declared gone. `empty_at`: when
    /// (Unix ns) a receive last found nothing queued, with nothing read since. Only then is
    /// the receiver idle, the flag that lets the sender call its unacknowledged tail lost: a
    /// thread that serves many sockets may come to this one late, with data waiting that is
    /// not lost at all. And the ACK is written as of that moment, not of now (`now_ns`): what
    /// arrived since was not looked for, and must not look lost.
    pub(super) fn on_timer(
        &mut self,
        io: &mut DataIo<'_>,
        timeout: Duration,
        empty_at: Option<u64>,
        now_ns: u64,
        now: Instant,
    ) -> Result<Progress, ClientError> {
        self.observed_ns = empty_at.unwrap_or(now_ns);
        if self.in_group() {
            let g = self.group.as_mut().expect("in a group");
            if let Some(left) = g.on_timer(self.meta.session, now, io.out) {
                return Ok(self.left_group(left, io, now));
            }
            return self.silence(io.server, timeout, now);
        }
        let idle =
            empty_at.is_some() && now.saturating_duration_since(self.clock.last_rx) >= ACK_INTERVAL;
        if self.meta.mode == Mode::Blast && self.end_seen && idle {
            // Every datagram was sent once and the socket is drained: what is missing now
            // is lost.
            return Ok(Progress::Finished);
        }
        if self.silence(io.server, timeout, now)? == Progress::Finished {
            return Ok(Progress::Finished);
        }
        let since = now.saturating_duration_since(self.clock.last_ack);
        if (self.clock.since_ack > 0 && since >= ACK_SPACING) || (idle && since >= ACK_INTERVAL) {
            self.send_ack(io, idle, now);
        }
        Ok(Progress::Going)
    }

    /// Nothing new for the timeout: the server is given up on (a blast transfer that
    /// received anything ends, its loss measured).
    fn silence(
        &self,
        server: SocketAddr,
        timeout: Duration,
        now: Instant,
    ) -> Result<Progress, ClientError> {
        let silent = now.saturating_duration_since(self.clock.heard_at);
        if silent < timeout {
            return Ok(Progress::Going);
        }
        if self.meta.mode == Mode::Blast && self.counts.datagrams_received > 0 {
            tracing::debug!("blast transfer ended by idle timeout (no END marker)");
            return Ok(Progress::Finished);
        }
        let since = self.counts.datagrams_received - self.clock.received_at_progress;
        if since > 0 {
            return Err(ClientError::NoProgress {
                server,
                secs: silent.as_secs_f64(),
                datagrams: since,
            });
        }
        Err(ClientError::ServerSilent {
            server,
            secs: silent.as_secs_f64(),
            stage: "no data during the transfer",
        })
    }

    /// When [`DataReceiver::on_timer`] has something to do if no batch comes first.
    pub(super) fn deadline(&self, timeout: Duration) -> Instant {
        let c = &self.clock;
        if let Some(g) = self.group.as_ref().filter(|g| g.active()) {
            return g.deadline().min(c.heard_at + timeout);
        }
        let feedback = if c.since_ack > 0 {
            c.last_ack + ACK_SPACING
        } else {
            c.last_ack.max(c.last_rx) + ACK_INTERVAL
        };
        feedback.min(c.heard_at + timeout)
    }

    /// A reliable copy is whole: the last word on the data goes back at once (the server
    /// can end the session now, even if every DONE that follows is lost). Also right at the
    /// start: an empty file is whole from the first.
    pub(super) fn check_end(
        &mut self,
        io: &mut DataIo<'_>,
        now: Instant,
    ) -> Result<Progress, ClientError> {
        if !self.tracker.is_complete() {
            return Ok(Progress::Going);
        }
        if self.meta.mode != Mode::Blast {
            self.send_ack(io, false, now);
        }
        Ok(Progress::Finished)
    }

    /// Checks, records and writes the data datagrams of one batch. Returns how many new
    /// datagrams were accepted. Without kernel timestamps, the time the batch was received
    /// (`observed_ns`, read once right after the receive) stands in for each arrival.
    fn absorb(&mut self, batch: &dyn Batch, sink: &Sink) -> Result<u64, ClientError> {
        let batch_ns = self.observed_ns;
        let mut run: Vec<IoSlice<'_>> = Vec::with_capacity(IOV_MAX);
        let mut run_start = 0u64;
        let mut run_end = 0u64;
        let mut accepted = 0;
        let mut datagrams = 0;
        for i in 0..batch.len() {
            if batch.datagram(i).is_none() {
                // Truncated: larger than any datagram (or GRO buffer) can be.
                self.counts.malformed += 1;
                continue;
            }
            let arrival = batch.arrival_ns(i).unwrap_or(batch_ns);
            for d in batch.segments(i) {
                datagrams += 1;
                let Some((offset, payload)) = self.accept(d, arrival) else {
                    continue;
                };
                accepted += 1;
                if offset != run_end || run.len() == IOV_MAX {
                    sink.write_run(run_start, &run)?;
                    run.clear();
                    run_start = offset;
                }
                run.push(IoSlice::new(payload));
                run_end = offset + payload.len() as u64;
            }
        }
        sink.write_run(run_start, &run)?;
        accepted += self.take_rebuilt(sink)?;
        self.hists.recv_batch.record(datagrams);
        self.counts.recv_calls += 1;
        Ok(accepted)
    }

    /// Checks one datagram that arrived at `arrival_ns`: control messages are handled, data is
    /// validated against the session, counted, CRC-checked and recorded. Returns the offset and
    /// payload of new intact data, to be written.
    fn accept<'d>(&mut self, d: &'d [u8], arrival_ns: u64) -> Option<(u64, &'d [u8])> {
        let payload_size = self.meta.payload_size as u64;
        let now = self.clock.last_rx;
        let (h, payload) = match DataHeader::parse(d) {
            Ok(x) => x,
            // Off the data's path: a group's repair, or a control message.
            Err(_) if peek_kind(d) == Ok(kind::REPAIR) => {
                let ok = match &mut self.group {
                    Some(g) => g.on_repair(d, now, &mut self.rebuilt),
                    None => false,
                };
                if !ok {
                    self.counts.malformed += 1;
                }
                return None;
            }
            Err(_) => {
                self.control(d);
                return None;
            }
        };
        let index = h.offset / payload_size;
        let from_group = self
            .group
            .as_ref()
            .is_some_and(|g| h.session == g.join.group && h.flags & data_flags::GROUP != 0);
        let valid = (h.session == self.meta.session || from_group)
            && h.offset % payload_size == 0
            && index < self.tracker.total() as u64
            && payload.len() == payload_len(self.meta.file_size, self.meta.payload_size, index);
        if !valid {
            self.counts.malformed += 1;
            return None;
        }
        let index = index as u32;
        self.record_arrival(arrival_ns, h.send_ts_ns);
        self.counts.datagrams_received += 1;
        self.counts.bytes_received += payload.len() as u64;
        if h.flags & data_flags::RETRANSMIT != 0 {
            self.counts.retransmitted += 1;
        }
        if self.tracker.contains(index) {
            self.counts.duplicates += 1;
            return None;
        }
        let crc = payload_crc(payload);
        if !DataHeader::crc_ok(d, crc) {
            self.counts.corrupt += 1;
            return None;
        }
        if let Some(open_ns) = self.repair.on_arrival(&self.tracker, index, arrival_ns) {
            self.hists.repair_us.record(open_ns / 1000);
        }
        self.tracker.insert(index);
        self.repair.prune(self.tracker.recv_next());
        self.crcs[index as usize] = crc;
        if from_group {
            if let Some(g) = &mut self.group {
                g.on_source(index as u64, payload, now, &mut self.rebuilt);
            }
        } else {
            self.counts.unicast += 1;
        }
        self.counts.bytes_intact += payload.len() as u64;
        if h.send_ts_ns > self.echo_ts_ns {
            self.echo_ts_ns = h.send_ts_ns;
            self.echo_arrival_ns = arrival_ns;
        }
        Some((h.offset, payload))
    }

    /// Records and writes the sources the group's repairs rebuilt. Their CRCs join the
    /// manifest like any datagram's, so the whole-file check covers them.
    fn take_rebuilt(&mut self, sink: &Sink) -> Result<u64, ClientError> {
        let mut n = 0;
        for (index, payload) in std::mem::take(&mut self.rebuilt) {
            let i = index as u32;
            if index >= self.tracker.total() as u64 || self.tracker.contains(i) {
                continue;
            }
            self.tracker.insert(i);
            self.crcs[index as usize] = payload_crc(&payload);
            self.counts.bytes_intact += payload.len() as u64;
            self.counts.rebuilt += 1;
            let offset = index * self.meta.payload_size as u64;
            sink.write_run(offset, &[IoSlice::new(&payload)])?;
            n += 1;
        }
        Ok(n)
    }

    fn publish(&self, live: &ClientLive) {
        let t = &self.tracker;
        live.bytes_intact
            .store(self.counts.bytes_intact, Ordering::Relaxed);
        live.datagrams
            .store(self.counts.datagrams_received, Ordering::Relaxed);
        live.retransmitted
            .store(self.counts.retransmitted, Ordering::Relaxed);
        // Everything received lies below seen_end: the rest of that range is holes.
        live.holes
            .store((t.seen_end() - t.received()) as u64, Ordering::Relaxed);
        if let Some(st) = &self.status {
            live.set_status(st);
        }
    }

    fn record_arrival(&mut self, arrival_ns: u64, send_ts_ns: u64) {
        if let Some(d) = arrival_ns.checked_sub(send_ts_ns) {
            self.hists.one_way_delay_us.record(d / 1000);
        }
        if self.last_arrival_ns != 0 {
            let gap = arrival_ns.saturating_sub(self.last_arrival_ns);
            self.hists.inter_arrival_us.record(gap / 1000);
        }
        self.last_arrival_ns = arrival_ns;
    }

    /// A non-data datagram during the transfer.
    fn control(&mut self, d: &[u8]) {
        match Message::parse(d) {
            Ok(Message::End { session, .. }) if session == self.meta.session => {
                self.end_seen = true
            }
            Ok(Message::GroupEnd { group, last, .. }) => {
                let now = self.clock.last_rx;
                match &mut self.group {
                    Some(g) => g.on_end(group, last, now),
                    None => self.counts.malformed += 1,
                }
            }
            // The group, repeated with a repeated META: harmless.
            Ok(Message::Join(_)) => {}
            Ok(Message::Error {
                code:
                    ErrorCode::NoSession
                    | ErrorCode::FileChanged
                    | ErrorCode::Internal
                    | ErrorCode::Evicted,
                text,
                ..
            }) => self.session_gone = Some(crate::report::escape(text)),
            Ok(Message::Status(st)) if st.session == self.meta.session => {
                // The window follows the path: a few bandwidth-delay products as the sender
                // measures them (never shrinking: credit granted stays granted). At the rate it
                // paces, if higher: in Startup the delivery estimate is a round trip behind the
                // pacing rate, and reaches here 100 ms later still on a 200 ms path; a window
                // sized from it alone held a Startup at 1 Gbit/s and 1% loss at its credit for
                // 150-200 ms behind each hole (issue 24).
                let rtt = Duration::from_micros(st.srtt_us as u64);
                let want = window_for_path(
                    st.delivery_bps.max(st.pacing_bps),
                    rtt,
                    self.meta.payload_size,
                    self.window_max,
                );
                if want > self.window {
                    tracing::debug!(
                        "window {} -> {want} datagrams (path {} Mbit/s x {} ms)",
                        self.window,
                        st.delivery_bps / 1_000_000,
                        st.srtt_us / 1000
                    );
                    self.window = want;
                }
                self.status = Some(st);
            }
            // A repeated META (our GET was resent) or a late RETRY: harmless.
            Ok(Message::Meta(_)) | Ok(Message::Retry { .. }) | Ok(Message::Wait { .. }) => {}
            _ => self.counts.malformed += 1,
        }
    }

    /// The first ACK, sent as soon as META is in (read at `now_ns`): it shows the server
    /// that this client receives at its address, and the server sends data only after it.
    pub(super) fn first_ack(&mut self, io: &mut DataIo<'_>, now_ns: u64, now: Instant) {
        self.observed_ns = now_ns;
        self.send_ack(io, false, now);
    }

    fn send_ack(&mut self, io: &mut DataIo<'_>, idle: bool, now: Instant) {
        let t = &self.tracker;
        self.ranges.clear();
        t.ack_ranges(&mut self.nack_cursor, MAX_NACK_RANGES, &mut self.ranges);
        let credit = t.recv_next().saturating_add(self.window).min(t.total());
        let delay_us = (self.observed_ns.saturating_sub(self.echo_arrival_ns) / 1000)
            .min(u32::MAX as u64) as u32;
        let ack = Ack {
            recv_next: t.recv_next(),
            credit_limit: credit,
            seen_end: t.seen_end(),
            received: t.received(),
            duplicates: self.counts.duplicates.min(u32::MAX as u64) as u32,
            echo_ts_ns: self.echo_ts_ns,
            echo_delay_us: delay_us,
            flags: if idle { ack_flags::IDLE } else { 0 },
            ..Ack::new(self.meta.session)
        }
        .with_ranges(&self.ranges, &mut self.scratch);
        io.out.push(&Message::Ack(ack));
        self.clock.since_ack = 0;
        self.clock.last_ack = now;
    }
}

#[cfg(test)]
#[path = "receive_tests.rs"]
mod tests;
