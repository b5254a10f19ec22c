//! One sub-client, one copy, from start to end, as a state machine with no socket and no
//! clock: a receive thread (`threads.rs`) feeds it the batches its socket receives and the
//! deadlines it names, with the times it read, and sends what it queues in its [`Outbox`].
//! The handshake (token, GET, busy, wait) is `handshake.rs`'s, the data phase `receive.rs`'s;
//! here: waiting for a turn, the server's META checked against what this client will
//! allocate, the copy's file, the whole-file checks, and the verified copy renamed into place
//! (or removed: a partial or unverified copy is never left under any name).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::edge::{unseal, After, Batch, Outbox, Plain, Unsealed};
use super::handshake::{Handshake, Together};
use super::receive::{DataIo, DataReceiver, Progress};
use super::sink::Sink;
use super::window::window_for_buffer;
use super::write::WriteEngine;
use super::{copy_path, ClientError, GetConfig, Verify};
use crate::protocol::layout::{datagram_count, manifest_hash};
use crate::protocol::seal::{Opener, SEAL_OVERHEAD};
use crate::protocol::{DoneStatus, Message, Meta, DATA_HEADER_LEN, MAX_DATAGRAMS, MIN_PAYLOAD};
use crate::report::copy::{ClientHists, CopyReport};
use crate::report::live::Live;

/// DONE is sent this many times: it is not acknowledged.
const DONE_REPEATS: usize = 3;
/// How often a sub-client waiting for its turn looks again.
const TURN_POLL: Duration = Duration::from_millis(2);

/// What every sub-client of one `get` shares: the live counters, the handshake turns and
/// the progress of the others, the write path's stock and threads.
#[derive(Clone)]
pub(super) struct Shared {
    pub(super) live: Arc<Live>,
    pub(super) together: Arc<Together>,
    pub(super) writes: Arc<WriteEngine>,
}

/// What the driver found out about a sub-client's socket when it opened it.
#[derive(Debug, Clone, Copy)]
pub(super) struct SocketFacts {
    /// The receive buffer the kernel granted, bytes.
    pub(super) rcvbuf: usize,
    /// The largest datagram this client takes: its path's, or `--datagram-size`.
    pub(super) max_datagram: usize,
    /// Datagrams arrive coalesced (UDP GRO).
    pub(super) gro: bool,
}

/// One copy's whole life.
pub(super) struct SubClient {
    pub(super) id: usize,
    clients: usize,
    cfg: Arc<GetConfig>,
    shared: Shared,
    /// The socket as the driver set it up, or why it could not be.
    socket: Result<SocketFacts, Option<ClientError>>,
    /// Seeds the handshake's nonces, request ids and backoff jitter.
    seed: u64,
    /// This sub-client holds one of the handshake places ([`Together`]).
    in_handshake: bool,
    pub(super) report: CopyReport,
    /// What this copy wants sent; the driver empties it onto the socket.
    pub(super) outbox: Outbox,
    /// The temporary file while it exists.
    temp: Option<PathBuf>,
    phase: Phase,
    start: Instant,
    /// Opens the server's sealed datagrams once the handshake authenticated it: from then
    /// on, nothing unsealed is believed.
    opener: Option<Opener>,
    /// Opens a sealed multicast transmission's datagrams (its key came sealed, `GROUP_KEY`).
    group_opener: Option<Opener>,
    /// Reused: where the plaintexts of an opened batch lie.
    plain: Vec<Plain>,
}

enum Phase {
    /// Nothing sent yet: waiting for a place among the handshakes in flight, looked for
    /// again at `retry_at`.
    New {
        retry_at: Instant,
    },
    Handshake(Box<Handshake>),
    Data(Box<Transfer>),
    /// The data phase is over, in steps that each wait for the driver to send what the
    /// last one queued ([`SubClient::close`]): the server is never kept waiting behind work
    /// of the client's own.
    Closing(Box<Closing>),
    Ended,
}

struct Closing {
    step: Step,
    /// When the data phase ended: [`SubClient::deadline`] names it, so a driver that did not
    /// call [`SubClient::close`] closes the copy at its next look.
    since: Instant,
}

enum Step {
    /// The last ACK is queued (a complete copy's): next, the counts, the whole-file manifest
    /// and DONE.
    Conclude {
        transfer: Box<Transfer>,
        outcome: Result<(), ClientError>,
    },
    /// DONE is queued: next, the copy's own checks (waiting for its content hash, the rename).
    Keep {
        outcome: Result<(), ClientError>,
        /// The copy, if it is to be checked and kept (`outcome` is Ok).
        sink: Option<Sink>,
        content_hash: [u8; 32],
    },
}

struct Transfer {
    meta: Meta,
    rx: DataReceiver,
    sink: Sink,
}

impl SubClient {
    /// Sub-client `id` (of `clients`), on a socket the driver opened (`socket`: what it
    /// found, or why it failed: the copy then fails at its start). Nothing is sent until
    /// [`SubClient::start`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        cfg: Arc<GetConfig>,
        shared: &Shared,
        id: usize,
        clients: usize,
        socket: Result<SocketFacts, ClientError>,
        local_port: u16,
        seed: u64,
        now: Instant,
    ) -> SubClient {
        SubClient {
            id,
            clients,
            report: CopyReport {
                id,
                server_port: cfg.server.port(),
                local_port,
                gro: socket.as_ref().is_ok_and(|f| f.gro),
                hists: ClientHists::empty(),
                ..Default::default()
            },
            cfg,
            shared: shared.clone(),
            socket: socket.map_err(Some),
            seed,
            in_handshake: false,
            outbox: Outbox::default(),
            temp: None,
            phase: Phase::New { retry_at: now },
            start: now,
            opener: None,
            group_opener: None,
            plain: Vec::new(),
        }
    }

    /// A batch as a socket received it (`group`: the multicast group's socket): opened
    /// first where the connection is sealed (what does not open is counted and dropped), then
    /// [`SubClient::on_batch`].
    pub(super) fn on_received(
        &mut self,
        batch: &mut dyn Batch,
        group: bool,
        read_ns: u64,
        now: Instant,
    ) {
        let opener = match group {
            true => &mut self.group_opener,
            false => &mut self.opener,
        };
        let Some(opener) = opener else {
            if group && self.opener.is_some() {
                // A sealed connection believes no plaintext group datagram.
                self.report.unauthenticated += batch.len() as u64;
                return;
            }
            return self.on_batch(batch, read_ns, now);
        };
        let mut plain = std::mem::take(&mut self.plain);
        self.report.unauthenticated += unseal(opener, batch, &mut plain);
        self.on_batch(
            &Unsealed {
                batch: &*batch,
                plain: &plain,
            },
            read_ns,
            now,
        );
        self.plain = plain;
    }

    /// The handshake made the connection's keys: take the opener.
    fn take_opener(&mut self) {
        if let Phase::Handshake(h) = &mut self.phase {
            if let Some(o) = h.opener.take() {
                self.opener = Some(o);
            }
        }
    }

    /// Starts the copy (HELLO) if a place among the handshakes in flight is free, else
    /// looks again a little later. A copy whose socket could not be set up, or whose
    /// siblings found the server gone, ends here.
    pub(super) fn start(&mut self, now: Instant) {
        if let Some(why) = self.shared.together.gone() {
            let e = ClientError::NotStarted(why.to_string());
            return self.end(Err(e), now);
        }
        let facts = match &mut self.socket {
            Ok(f) => *f,
            Err(e) => {
                let e = e.take().unwrap_or(ClientError::InterruptedEarly);
                return self.end(Err(e), now);
            }
        };
        if !self.shared.together.try_begin_handshake() {
            self.phase = Phase::New {
                retry_at: now + TURN_POLL,
            };
            return;
        }
        self.in_handshake = true;
        self.start = now;
        let h = Handshake::begin(
            self.cfg.clone(),
            self.shared.together.clone(),
            self.id,
            facts.rcvbuf,
            facts.max_datagram,
            self.seed,
            now,
            &mut self.outbox,
        );
        self.phase = Phase::Handshake(Box::new(h));
    }

    /// This sub-client's handshake is over (data, or the end): its place goes to the next.
    fn leave_handshake(&mut self) {
        if std::mem::take(&mut self.in_handshake) {
            self.shared.together.end_handshake();
        }
    }

    /// Whether the user asked every copy to stop.
    pub(super) fn stop_asked(&self) -> bool {
        self.cfg.stop.is_some_and(|s| s.load(Ordering::Acquire))
    }

    /// Stops the copy where it is: the server is told (it frees the session at once), the
    /// temporary file removed, and the report says how far it got.
    pub(super) fn interrupt(&mut self, now: Instant) {
        let e = match &self.phase {
            Phase::Ended | Phase::Closing(_) => return,
            Phase::Data(t) => ClientError::Interrupted {
                got: t.rx.counts.bytes_intact,
                of: t.meta.file_size,
            },
            _ => ClientError::InterruptedEarly,
        };
        self.end(Err(e), now);
    }

    /// The report, once the copy has ended (or when it cannot go on).
    pub(super) fn take_report(&mut self) -> CopyReport {
        std::mem::take(&mut self.report)
    }

    pub(super) fn is_ended(&self) -> bool {
        matches!(self.phase, Phase::Ended)
    }

    /// The data phase ended and its last datagrams wait in the outbox: send them, then
    /// [`SubClient::close`].
    pub(super) fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing(_))
    }

    /// When [`SubClient::on_timer`] has something to do, if no datagram comes first.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::New { retry_at } => Some(*retry_at),
            Phase::Ended => None,
            Phase::Closing(c) => Some(c.since),
            Phase::Handshake(h) => h.deadline(),
            Phase::Data(t) => Some(t.rx.deadline(self.cfg.timeout)),
        }
    }

    /// The copy asks for the file by multicast: it may get a group socket.
    pub(super) fn wants_multicast(&self) -> bool {
        self.cfg.multicast
    }

    /// The multicast group whose socket the driver is to open for this copy (asked once).
    pub(super) fn take_group_request(&mut self) -> Option<std::net::SocketAddr> {
        match &mut self.phase {
            Phase::Data(t) => t.rx.group.as_mut()?.take_request(),
            _ => None,
        }
    }

    /// The driver opened the group's socket (`Ok`), or could not: the copy goes on by
    /// unicast.
    pub(super) fn group_opened(&mut self, r: std::io::Result<()>, now: Instant) {
        let Phase::Data(t) = &mut self.phase else {
            return;
        };
        match r {
            Ok(()) => {
                if let Some(g) = &mut t.rx.group {
                    g.opened(Ok(()));
                }
            }
            Err(e) => {
                let mut io = data_io(&self.cfg, &self.shared, self.id, &t.sink, &mut self.outbox);
                t.rx.group_failed(&mut io, e.to_string(), now);
            }
        }
    }

    /// The copy needs its group socket no more.
    pub(super) fn group_finished(&self) -> bool {
        match &self.phase {
            Phase::Data(t) => t.rx.group.as_ref().is_none_or(|g| g.finished()),
            _ => true,
        }
    }

    /// A batch arrived, read at `now` (`read_ns`: the same instant, Unix ns).
    pub(super) fn on_batch(&mut self, batch: &dyn Batch, read_ns: u64, now: Instant) {
        let r = match &mut self.phase {
            Phase::Data(t) => {
                let mut io = data_io(&self.cfg, &self.shared, self.id, &t.sink, &mut self.outbox);
                match t.rx.on_batch(batch, read_ns, &mut io, now) {
                    Ok(Progress::Going) => return,
                    Ok(Progress::Finished) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Phase::Handshake(h) => {
                let mut meta = Ok(None);
                let mut at = 0;
                'batch: for i in 0..batch.len() {
                    at = i + 1;
                    for d in batch.segments(i) {
                        meta = h.on_datagram(d, now, &mut self.outbox);
                        if !matches!(meta, Ok(None)) {
                            break 'batch;
                        }
                        if h.opener.is_some() {
                            // Sealed from here on: the rest of this batch was not.
                            break 'batch;
                        }
                    }
                }
                self.take_opener();
                match meta {
                    Ok(None) => return,
                    Ok(Some(meta)) => match self.begin_data(meta, read_ns, now) {
                        // What came behind the META in this batch is the data phase's.
                        Ok(Progress::Going) if at < batch.len() => {
                            return self.on_batch(&After { batch, skip: at }, read_ns, now)
                        }
                        Ok(Progress::Going) => return,
                        Ok(Progress::Finished) => Ok(()),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                }
            }
            Phase::New { .. } | Phase::Closing(_) | Phase::Ended => return,
        };
        self.end(r, now);
    }

    /// The socket failed, receiving or sending (`ECONNREFUSED`: nothing listens at the
    /// server's address).
    pub(super) fn on_socket_error(&mut self, e: std::io::Error, now: Instant) {
        // Closing: only the last ACK and DONE were left to send, and a copy that came whole
        // is whole (DONE is not acknowledged anyway).
        if self.is_ended() || self.is_closing() {
            return;
        }
        let e = if e.kind() == std::io::ErrorKind::ConnectionRefused {
            ClientError::Refused {
                server: self.cfg.server,
            }
        } else {
            e.into()
        };
        self.end(Err(e), now);
    }

    /// The deadline came, at `now` (`now_ns`: the same instant, Unix ns); `empty_at`: when a
    /// receive last found the socket empty, with nothing read since (see
    /// [`DataReceiver::on_timer`]).
    pub(super) fn on_timer(&mut self, empty_at: Option<u64>, now_ns: u64, now: Instant) {
        let ended = match &mut self.phase {
            Phase::Ended => return,
            Phase::Closing(_) => return self.close(now),
            Phase::New { .. } => return self.start(now),
            Phase::Handshake(h) => match h.on_timer(now, &mut self.outbox) {
                Ok(None) => return,
                Ok(Some(meta)) => match self.begin_data(meta, now_ns, now) {
                    Ok(Progress::Going) => return,
                    Ok(Progress::Finished) => Ok(()),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            Phase::Data(t) => {
                let mut io = data_io(&self.cfg, &self.shared, self.id, &t.sink, &mut self.outbox);
                match t
                    .rx
                    .on_timer(&mut io, self.cfg.timeout, empty_at, now_ns, now)
                {
                    Ok(Progress::Going) => return,
                    Ok(Progress::Finished) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        };
        self.end(ended, now);
    }

    /// META came (read at `now_ns`): the copy's file, window and receiver are set up, and
    /// the first ACK goes (the server sends data only after it).
    fn begin_data(
        &mut self,
        meta: Meta,
        now_ns: u64,
        now: Instant,
    ) -> Result<Progress, ClientError> {
        let Phase::Handshake(h) = std::mem::replace(&mut self.phase, Phase::Ended) else {
            unreachable!("META ends the handshake")
        };
        self.report.busy_retries = h.busy_retries;
        let join = h.join;
        if let (Some(j), Some((group, key, iv))) = (join, h.group_key) {
            if j.group == group {
                let key = crate::protocol::seal::DirectionKey::aes128(key, iv);
                self.group_opener = Some(Opener::new(&key, group, 0));
            }
        }
        self.leave_handshake();
        let facts = *self
            .socket
            .as_ref()
            .expect("a copy in its handshake has a socket");
        let sink = match self.prepare(&meta, facts) {
            Ok(sink) => sink,
            Err(e) => {
                // The server has a session for us already: it is told at once, not left to
                // its idle timeout.
                self.done(meta.session, DoneStatus::Incomplete);
                return Err(e);
            }
        };
        let cfg = &self.cfg;
        let window = window_for_buffer(facts.rcvbuf, meta.payload_size, cfg.window_bytes);
        tracing::debug!(
            "client {}: receive buffer {} KiB, window {window} datagrams",
            self.id,
            facts.rcvbuf / 1024
        );
        // Credit never passes the end of the file, whatever the window.
        let window_max =
            (cfg.window_max_bytes / meta.payload_size.max(1) as u64).min(u32::MAX as u64) as u32;
        let mut rx = DataReceiver::new(&meta, window, window_max, now);
        self.shared
            .live
            .total_bytes
            .fetch_add(meta.file_size, Ordering::Relaxed);
        let mut io = data_io(cfg, &self.shared, self.id, &sink, &mut self.outbox);
        let grouped = match join {
            Some(j) if cfg.multicast => rx.join_group(j, self.clients, now),
            _ => false,
        };
        if cfg.multicast && !grouped {
            self.shared.together.no_group(cfg.server);
        }
        let progress = rx.check_end(&mut io, now)?;
        if progress == Progress::Going && !grouped {
            rx.first_ack(&mut io, now_ns, now);
        }
        self.phase = Phase::Data(Box::new(Transfer { meta, rx, sink }));
        Ok(progress)
    }

    /// What META asks of this client, checked and made ready: the output file (and its
    /// directory).
    fn prepare(&mut self, meta: &Meta, facts: SocketFacts) -> Result<Sink, ClientError> {
        let cfg = self.cfg.clone();
        // A sealed datagram carries the seal around the DATA datagram.
        let seal = if self.opener.is_some() {
            SEAL_OVERHEAD
        } else {
            0
        };
        check_meta(&cfg, meta, facts.max_datagram.saturating_sub(seal))?;
        self.report.began = true;
        self.report.file_size = meta.file_size;
        // On the wire: the seal's header and tag too, where sealed.
        self.report.datagram_size = meta.payload_size as usize + DATA_HEADER_LEN + seal;
        let Some(dir) = &cfg.out_dir else {
            return Ok(Sink::discard());
        };
        std::fs::create_dir_all(dir).map_err(|error| ClientError::Path {
            what: "cannot create the output directory",
            path: dir.clone(),
            error,
        })?;
        let final_path = copy_path(dir, &cfg.file, self.id, self.clients);
        let hash = cfg.verify == Verify::Content;
        let writes = &self.shared.writes;
        let (sink, temp) = Sink::create(
            writes,
            dir,
            &final_path,
            meta.file_size,
            hash,
            cfg.write_path,
        )
        .map_err(|(error, path)| ClientError::Path {
            what: "cannot create the copy",
            path,
            error,
        })?;
        self.temp = Some(temp);
        Ok(sink)
    }

    /// Tells the server the copy is done with `session` (not acknowledged: sent a few times).
    fn done(&mut self, session: u32, status: DoneStatus) {
        for _ in 0..DONE_REPEATS {
            self.outbox.push(&Message::Done { session, status });
        }
    }

    /// The copy is over, one way or another. One that never reached its data phase is
    /// settled at once; a transfer closes in steps ([`SubClient::close`]), the first once the
    /// driver has sent what is queued (a complete copy's last ACK).
    fn end(&mut self, outcome: Result<(), ClientError>, now: Instant) {
        self.leave_handshake();
        let phase = std::mem::replace(&mut self.phase, Phase::Ended);
        if let Phase::Handshake(h) = &phase {
            self.report.busy_retries = h.busy_retries;
        }
        match phase {
            Phase::Data(transfer) => {
                self.phase = Phase::Closing(Box::new(Closing {
                    step: Step::Conclude { transfer, outcome },
                    since: now,
                }))
            }
            _ => self.settle(outcome, now),
        }
    }

    /// The driver sent what the copy's last step queued: the next step. After the last ACK,
    /// the counts and DONE; after DONE, the copy checked (its content hash, where it has
    /// one) and renamed into place, or removed.
    pub(super) fn close(&mut self, now: Instant) {
        if !self.is_closing() {
            return;
        }
        let Phase::Closing(c) = std::mem::replace(&mut self.phase, Phase::Ended) else {
            unreachable!("closing, just checked")
        };
        let Closing { step, since } = *c;
        match step {
            Step::Conclude { transfer, outcome } => {
                let (wire, sink, content_hash) = self.conclude(*transfer);
                let outcome = outcome.and(wire);
                let sink = outcome.is_ok().then_some(sink);
                self.phase = Phase::Closing(Box::new(Closing {
                    step: Step::Keep {
                        outcome,
                        sink,
                        content_hash,
                    },
                    since,
                }));
            }
            Step::Keep {
                outcome,
                sink,
                content_hash,
            } => {
                let r = match (outcome, sink) {
                    (Ok(()), Some(sink)) => self.keep(sink, content_hash),
                    (outcome, _) => outcome,
                };
                self.settle(r, now);
            }
        }
    }

    /// The copy's end, told: the other sub-clients, the report, the temporary file.
    fn settle(&mut self, r: Result<(), ClientError>, now: Instant) {
        match &r {
            Ok(()) => self.shared.together.copy_done(now),
            // The server is gone, refuses us, or made no progress for this whole `get` for a
            // timeout: the sub-clients still waiting for their turn will not ask it.
            Err(
                e @ (ClientError::ServerSilent { .. }
                | ClientError::Refused { .. }
                | ClientError::Version { .. }
                | ClientError::Auth { .. }
                | ClientError::Busy { .. }),
            ) => self.shared.together.give_up(e),
            Err(_) => {}
        }
        if let Err(e) = r {
            self.report.error = Some(e.to_string());
        }
        if let Some(temp) = self.temp.take() {
            // Never leave a partial or unverified copy behind under any name.
            let _ = std::fs::remove_file(temp);
        }
        self.report.duration_s = now.saturating_duration_since(self.start).as_secs_f64();
        self.report.finish();
    }

    /// The data phase's counts into the report, DONE to the server (whatever ended the data
    /// phase), and what the wire can tell: every datagram came, and the manifest matches.
    /// Returns that, the copy and the content hash it should have.
    fn conclude(&mut self, t: Transfer) -> (Result<(), ClientError>, Sink, [u8; 32]) {
        let Transfer { meta, mut rx, sink } = t;
        let r = &mut self.report;
        r.file_size = meta.file_size;
        r.datagrams_expected = rx.tracker.total() as u64;
        r.datagrams_lost = rx.tracker.missing() as u64;
        r.complete = rx.tracker.is_complete();
        let c = &rx.counts;
        r.bytes_received = c.bytes_received;
        r.bytes_intact = c.bytes_intact;
        r.datagrams_received = c.datagrams_received;
        r.retransmitted = c.retransmitted;
        r.duplicates = c.duplicates;
        r.corrupt = c.corrupt;
        r.malformed = c.malformed;
        r.recv_calls = c.recv_calls;
        r.multicast = rx.group.as_ref().map(|g| g.report(c.unicast));
        r.hists = std::mem::take(&mut rx.hists);
        r.sender = rx.status;
        let manifest_ok = r.complete
            && manifest_hash(meta.file_size, meta.payload_size, &rx.crcs) == meta.manifest_hash;
        drop(rx);
        let status = if manifest_ok {
            DoneStatus::Complete
        } else {
            DoneStatus::Incomplete
        };
        self.done(meta.session, status);
        let r = &self.report;
        let wire = if !r.complete {
            Err(ClientError::Incomplete(format!(
                "{} of {} datagrams lost ({} of {} bytes intact)",
                r.datagrams_lost, r.datagrams_expected, r.bytes_intact, meta.file_size
            )))
        } else if !manifest_ok {
            Err(ClientError::Verification(
                "whole-file manifest hash mismatch: copy discarded".into(),
            ))
        } else {
            Ok(())
        };
        (wire, sink, meta.content_hash)
    }

    /// A copy the wire found whole: its content hash checked (where it has one) and, with
    /// `--out`, renamed into place.
    fn keep(&mut self, sink: Sink, content_hash: [u8; 32]) -> Result<(), ClientError> {
        let hash = sink.finish();
        self.report.written_direct = sink.direct_bytes();
        let content_ok = match hash? {
            Some(hash) => hash == content_hash,
            None => true,
        };
        if !content_ok {
            return Err(ClientError::Verification(
                "BLAKE3 content hash mismatch: copy discarded".into(),
            ));
        }
        self.report.hash_ok = true;
        if let (Some(dir), Some(_)) = (&self.cfg.out_dir, &self.temp) {
            let final_path = copy_path(dir, &self.cfg.file, self.id, self.clients);
            sink.place(&final_path).map_err(|error| ClientError::Path {
                what: "cannot put the verified copy at",
                path: final_path.clone(),
                error,
            })?;
            self.temp = None;
            self.report.path = Some(final_path);
        }
        tracing::debug!("client {}: verified", self.id);
        Ok(())
    }
}

impl Drop for SubClient {
    /// Even when its thread panics, a copy leaves no temporary file behind.
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// Refuses a META that would make this client allocate without bound, or that does not match
/// What the data phase of sub-client `id` writes to: its copy, its live counters, its outbox.
fn data_io<'a>(
    cfg: &GetConfig,
    shared: &'a Shared,
    id: usize,
    sink: &'a Sink,
    out: &'a mut Outbox,
) -> DataIo<'a> {
    DataIo {
        server: cfg.server,
        sink,
        live: &shared.live.clients[id - 1],
        out,
    }
}

/// what was asked.
fn check_meta(cfg: &GetConfig, m: &Meta, max_datagram: usize) -> Result<(), ClientError> {
    if m.payload_size as usize + DATA_HEADER_LEN > max_datagram {
        return Err(ClientError::BadMeta(format!(
            "{}-byte datagrams, over the {max_datagram} this client takes",
            m.payload_size as usize + DATA_HEADER_LEN
        )));
    }
    if m.file_size > cfg.max_size {
        return Err(ClientError::BadMeta(format!(
            "a {} byte file, over the {} byte limit (--max-size)",
            m.file_size, cfg.max_size
        )));
    }
    if m.payload_size < MIN_PAYLOAD {
        return Err(ClientError::BadMeta(format!(
            "{} byte payloads, under the {MIN_PAYLOAD} byte minimum",
            m.payload_size
        )));
    }
    let datagrams = datagram_count(m.file_size, m.payload_size);
    if datagrams > MAX_DATAGRAMS {
        return Err(ClientError::BadMeta(format!(
            "{datagrams} datagrams, over the {MAX_DATAGRAMS} a client tracks (use a larger datagram size)"
        )));
    }
    if m.mode != cfg.mode {
        return Err(ClientError::BadMeta(format!(
            "mode {} instead of {}",
            m.mode.as_str(),
            cfg.mode.as_str()
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "subclient_tests.rs"]
mod tests;
