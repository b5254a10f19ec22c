//! The data phase's multicast part (`get --multicast`, a server that sent `JOIN`): the group's
//! sources and repairs in, blocks rebuilt ([`GroupReceiver`]), `FEEDBACK` out at most once per
//! the server's interval; no unicast ACK meanwhile (the session's first ACK would start its
//! unicast sending). The group part ends when the server says it sends no more repairs, or
//! when no group datagram has come for [`GROUP_SILENCE`] (the path does not carry the group:
//! the copy goes on by unicast, with one line saying so); the data phase then ACKs what it
//! has, and the unicast session sends only what is missing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::edge::Outbox;
use crate::protocol::data::payload_crc;
use crate::protocol::fec::BlockPlan;
use crate::protocol::group_rx::GroupReceiver;
use crate::protocol::{Feedback, Join, Meta, RepairHeader};
use crate::report::copy::MulticastReport;

/// How long a member waits for a group datagram (from its JOIN, or since the last) before it
/// goes on by unicast: the server's gathering window, and a margin.
pub(super) const GROUP_SILENCE: Duration = Duration::from_secs(3);
/// Most bytes of incomplete blocks the members of one `get` hold in all (their gaps go to
/// unicast past it): each sub-client holds its share, at least [`MIN_PENDING_BYTES`].
const PENDING_BYTES: usize = 512 << 20;
const MIN_PENDING_BYTES: usize = 8 << 20;

enum State {
    /// The driver has been asked for the group's socket.
    Asked,
    Receiving,
    Done,
}

/// Why the group part ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Left {
    /// The server sends no more repairs (`GROUP_END last`).
    Over,
    /// The group could not be joined, or went silent: the reason.
    Unicast(String),
}

pub(super) struct GroupPart {
    pub(super) join: Join,
    pub(super) rx: GroupReceiver,
    state: State,
    joined_at: Instant,
    last_heard: Option<Instant>,
    pub(super) fallback: Option<String>,
    /// The driver's request, taken once.
    request: Option<SocketAddr>,
    scratch: Vec<u8>,
}

impl GroupPart {
    /// The group part of a copy of `meta`'s file (one of `clients` sub-clients), if the
    /// server's block plan makes sense.
    pub(super) fn new(join: Join, meta: &Meta, clients: usize, now: Instant) -> Option<GroupPart> {
        let plan = BlockPlan::announced(
            meta.file_size,
            meta.payload_size,
            join.k as u32,
            join.parity as u32,
        )?;
        let interval = Duration::from_millis(join.feedback_ms.max(1) as u64);
        Some(GroupPart {
            rx: GroupReceiver::new(
                plan,
                join.first_block,
                interval,
                (PENDING_BYTES / clients.max(1)).clamp(MIN_PENDING_BYTES, 256 << 20),
                now,
            ),
            join,
            state: State::Asked,
            joined_at: now,
            last_heard: None,
            fallback: None,
            request: Some(join.addr),
            scratch: Vec::new(),
        })
    }

    /// The group socket the driver is to open (once).
    pub(super) fn take_request(&mut self) -> Option<SocketAddr> {
        self.request.take()
    }

    /// The driver opened the group's socket, or could not.
    pub(super) fn opened(&mut self, r: Result<(), String>) -> Option<Left> {
        match r {
            Ok(()) => {
                self.state = State::Receiving;
                None
            }
            Err(e) => Some(self.leave(Left::Unicast(format!(
                "cannot join multicast group {}: {e}",
                self.join.addr
            )))),
        }
    }

    /// Still taking the file from the group (no unicast ACKs).
    pub(super) fn active(&self) -> bool {
        !matches!(self.state, State::Done)
    }

    fn heard(&mut self, now: Instant) {
        self.last_heard = Some(now);
    }

    /// A source from the group (checked and recorded by the caller); what it lets be
    /// rebuilt is added to `rebuilt`.
    pub(super) fn on_source(
        &mut self,
        index: u64,
        payload: &[u8],
        now: Instant,
        rebuilt: &mut Vec<(u64, Vec<u8>)>,
    ) {
        self.heard(now);
        self.rx
            .on_source(index, payload, |i, s| rebuilt.push((i, s.to_vec())));
    }

    /// A REPAIR datagram: false when it is not this group's or not intact.
    pub(super) fn on_repair(
        &mut self,
        d: &[u8],
        now: Instant,
        rebuilt: &mut Vec<(u64, Vec<u8>)>,
    ) -> bool {
        let Ok((h, shard)) = RepairHeader::parse(d) else {
            return false;
        };
        if h.group != self.join.group || !RepairHeader::crc_ok(d, payload_crc(shard)) {
            return false;
        }
        self.heard(now);
        self.rx.on_repair(h.block, h.repair, h.k, shard, |i, s| {
            rebuilt.push((i, s.to_vec()))
        });
        true
    }

    /// `GROUP_END` of transmission `group`.
    pub(super) fn on_end(&mut self, group: u32, last: bool, now: Instant) {
        if group == self.join.group {
            self.heard(now);
            self.rx.on_end(last, now);
        }
    }

    /// When [`GroupPart::on_timer`] has something to do.
    pub(super) fn deadline(&self) -> Instant {
        let silence = self.last_heard.unwrap_or(self.joined_at) + GROUP_SILENCE;
        self.rx.next_deadline().min(silence)
    }

    /// Feedback that is due, and whether the group part is over.
    pub(super) fn on_timer(
        &mut self,
        session: u32,
        now: Instant,
        out: &mut Outbox,
    ) -> Option<Left> {
        if !self.active() {
            return None;
        }
        if let Some(r) = self.rx.feedback(now) {
            let fb = Feedback {
                session,
                group: self.join.group,
                whole_below: r.whole_below,
                seen_end: r.seen_end,
                sources_received: r.sources_received,
                lacks: Default::default(),
            }
            .with_lacks(&r.lacks, &mut self.scratch);
            out.push(&crate::protocol::Message::Feedback(fb));
        }
        if self.rx.is_over() {
            return Some(self.leave(Left::Over));
        }
        let since = self.last_heard.unwrap_or(self.joined_at);
        if now.saturating_duration_since(since) >= GROUP_SILENCE {
            let why = match self.last_heard {
                None => format!(
                    "no datagram from multicast group {} in {} s",
                    self.join.addr,
                    GROUP_SILENCE.as_secs()
                ),
                Some(_) => format!(
                    "multicast group {} silent for {} s",
                    self.join.addr,
                    GROUP_SILENCE.as_secs()
                ),
            };
            return Some(self.leave(Left::Unicast(why)));
        }
        None
    }

    fn leave(&mut self, why: Left) -> Left {
        self.state = State::Done;
        if let Left::Unicast(text) = &why {
            self.fallback = Some(text.clone());
        }
        why
    }

    /// The group part is over: the driver may close the group's socket.
    pub(super) fn finished(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// What the group part did; `unicast`: datagrams the session's unicast repair brought.
    pub(super) fn report(&self, unicast: u64) -> MulticastReport {
        MulticastReport {
            unicast_datagrams: unicast,
            group: self.join.addr.to_string(),
            transmission: format!("{:08x}", self.join.group),
            first_block: self.join.first_block,
            blocks: self.rx.plan().blocks(),
            stats: self.rx.stats,
            fallback: self.fallback.clone(),
        }
    }
}
