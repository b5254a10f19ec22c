//! Multicast transmissions (`serve --multicast GROUP`): GETs of one file (at one datagram
//! size, in one mode) that arrive within the gathering window share one transmission to the
//! group; one that arrives while it runs joins at the next block. Each member also has its
//! ordinary unicast session, idle until the member's first ACK, which then repairs whatever
//! the group did not deliver ([`SenderState::join_group`]).
//!
//! The control thread owns [`Groups`]: it joins members, passes their `FEEDBACK` on and reaps
//! finished transmissions. Each transmission runs on a thread of its own: it reads a block
//! at a time from the file (pread, every payload checked against its scanned CRC), encodes
//! repairs when the block needs them, and sends what the [`GroupSender`] says, paced, in UDP
//! GSO batches.
//!
//! [`SenderState::join_group`]: crate::protocol::sender::SenderState::join_group

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::SockaddrStorage;

use super::catalog::ScannedFile;
use super::stats::ServerStats;
use crate::protocol::data::payload_crc;
use crate::protocol::fec::{BlockEncoder, BlockPlan};
use crate::protocol::group_tx::{feedback_interval, GroupSend, GroupSender, GroupTxStats};
use crate::protocol::seal::{DirectionKey, Sealer, SEALED_HEADER_LEN, SEAL_OVERHEAD};
use crate::protocol::{
    data_flags, unix_ns, DataHeader, Feedback, Join, Message, Mode, RepairHeader, DATA_HEADER_LEN,
    MAX_DATAGRAM,
};
use crate::sys::multicast;

/// Most transmissions at once (a thread each): GETs for more files at once go by unicast.
pub const MAX_TRANSMISSIONS: usize = 16;
/// The group port when `--multicast` names none.
pub const DEFAULT_GROUP_PORT: u16 = 6970;
/// How long the first GET of a file waits for others to share its transmission.
pub const DEFAULT_GATHER: Duration = Duration::from_millis(200);
/// The group's pace unless told otherwise: a gigabit link's (less headroom).
pub const DEFAULT_MULTICAST_RATE_BPS: u64 = 950_000_000;

/// `serve --multicast` and its companions.
#[derive(Debug, Clone, PartialEq)]
pub struct MulticastConfig {
    pub group: SocketAddr,
    /// Hops a group datagram may take (1: the LAN).
    pub ttl: u32,
    /// An address of the interface to send from (`None`: the kernel's route).
    pub interface: Option<IpAddr>,
    /// The pace, bits per second on the wire.
    pub rate_bps: u64,
    /// How long a transmission waits for more members before it starts.
    pub gather: Duration,
}

/// What a finished transmission did.
#[derive(Debug, Clone)]
pub struct GroupSummary {
    pub group: u32,
    pub file: String,
    pub bytes_sent: u64,
    pub datagrams_sent: u64,
    pub elapsed: Duration,
    pub stats: GroupTxStats,
    pub error: Option<String>,
}

struct Transmission {
    id: u32,
    key: (String, u32, Mode),
    /// The scan it sends (a file changed and scanned again is another transmission's).
    file: Arc<ScannedFile>,
    plan: BlockPlan,
    sender: Mutex<GroupSender>,
    stop: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
    /// The AES-128-GCM key and IV its datagrams are sealed with (a server that authenticates
    /// its clients), sent to each member sealed with its own connection's key (`GROUP_KEY`).
    seal_key: Option<([u8; 16], [u8; 12])>,
}

impl Transmission {
    fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

pub(super) struct Groups {
    cfg: MulticastConfig,
    stats: Arc<ServerStats>,
    sock: Arc<UdpSocket>,
    gso: bool,
    live: HashMap<u32, (Arc<Transmission>, JoinHandle<GroupSummary>)>,
    members: HashMap<u32, u32>,
    /// What the members of each transmission fetched by unicast (bytes, sessions) so far.
    repairs: HashMap<u32, (u64, u64)>,
    /// Transmissions whose members have all ended: (group, unicast bytes, sessions).
    settled: Vec<(u32, u64, u64)>,
    /// Bytes of a JOIN for this group on the wire.
    join_len: usize,
    /// Seal every transmission (the server authenticates its clients).
    sealed: bool,
}

impl Groups {
    pub(super) fn new(
        cfg: MulticastConfig,
        stats: Arc<ServerStats>,
        sealed: bool,
    ) -> io::Result<Groups> {
        let sock = multicast::group_sender(cfg.group, cfg.ttl, cfg.interface)?;
        let gso = crate::sys::socket::gso_supported(&sock);
        let join_len = Message::Join(Join {
            request_id: 0,
            session: 0,
            group: 0,
            addr: cfg.group,
            k: 0,
            parity: 0,
            first_block: 0,
            feedback_ms: 0,
        })
        .to_vec()
        .len();
        Ok(Groups {
            join_len,
            sealed,
            cfg,
            stats,
            sock: Arc::new(sock),
            gso,
            live: HashMap::new(),
            members: HashMap::new(),
            repairs: HashMap::new(),
            settled: Vec::new(),
        })
    }

    pub(super) fn config(&self) -> &MulticastConfig {
        &self.cfg
    }

    /// Bytes of a JOIN for this group on the wire.
    pub(super) fn join_len(&self) -> usize {
        self.join_len
    }

    /// The key and IV transmission `group` seals with, if it does.
    pub(super) fn seal_key(&self, group: u32) -> Option<([u8; 16], [u8; 12])> {
        self.live.get(&group).and_then(|(t, _)| t.seal_key)
    }

    /// Adds unicast session `session` (of GET `request_id`) to a transmission of `file` in
    /// `mode`, starting one if none is open: the `JOIN` to send, or `None` when this file
    /// cannot go by multicast (an odd payload size at the 65507-byte maximum, whose repair
    /// datagrams would not fit; [`MAX_TRANSMISSIONS`] running already; or no thread could be
    /// started).
    pub(super) fn join(
        &mut self,
        file: &Arc<ScannedFile>,
        mode: Mode,
        session: u32,
        request_id: u32,
        now: Instant,
    ) -> Option<Join> {
        let plan = BlockPlan::for_file(file.size, file.payload_size);
        let seal = if self.sealed { SEAL_OVERHEAD } else { 0 };
        if plan.shard_bytes() + DATA_HEADER_LEN + seal > MAX_DATAGRAM || file.datagrams() == 0 {
            return None;
        }
        let key = (file.name.clone(), file.payload_size, mode);
        let open = self.live.values().find(|(t, _)| {
            let s = t.sender.lock().expect("group sender");
            t.key == key
                && Arc::ptr_eq(&t.file, file)
                && !t.stop.load(Ordering::Relaxed)
                && s.next_block() < t.plan.blocks()
        });
        let tx = match open {
            Some((t, _)) => t.clone(),
            None if self.live.len() >= MAX_TRANSMISSIONS => return None,
            None => self.start(file, mode, key, plan, now)?,
        };
        let (first_block, interval) = {
            let mut s = tx.sender.lock().expect("group sender");
            let first = s.join(session);
            let interval = feedback_interval(s.members());
            s.set_interval(interval);
            (first, interval)
        };
        self.members.insert(session, tx.id);
        Some(Join {
            request_id,
            session,
            group: tx.id,
            addr: self.cfg.group,
            k: plan.k as u16,
            parity: plan.parity as u16,
            first_block,
            feedback_ms: interval.as_millis().clamp(1, u16::MAX as u128) as u16,
        })
    }

    fn start(
        &mut self,
        file: &Arc<ScannedFile>,
        mode: Mode,
        key: (String, u32, Mode),
        plan: BlockPlan,
        now: Instant,
    ) -> Option<Arc<Transmission>> {
        let mut id = rand::random::<u32>();
        while id == 0 || self.live.contains_key(&id) {
            id = rand::random();
        }
        let mut sender = GroupSender::new(plan, self.cfg.rate_bps, feedback_interval(1), now);
        if mode == Mode::Blast {
            sender = sender.without_repairs();
        }
        let seal_key = self
            .sealed
            .then(|| (rand::random::<[u8; 16]>(), rand::random::<[u8; 12]>()));
        let tx = Arc::new(Transmission {
            id,
            key,
            file: file.clone(),
            plan,
            sender: Mutex::new(sender),
            stop: AtomicBool::new(false),
            thread: OnceLock::new(),
            seal_key,
        });
        let run = Run {
            sealer: seal_key.map(|(key, iv)| Sealer::new(&DirectionKey::aes128(key, iv), id, 0)),
            tx: tx.clone(),
            file: file.clone(),
            sock: self.sock.clone(),
            dest: SockaddrStorage::from(self.cfg.group),
            gso: self.gso,
            start_at: now + self.cfg.gather,
            stats: self.stats.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("group-{id:08x}"))
            .spawn(move || run.run());
        match spawned {
            Ok(h) => {
                let _ = tx.thread.set(h.thread().clone());
                tracing::info!(
                    "[GROUP {id:08x}] {} to {} ({} mode, {}-byte datagrams, blocks of {} + up to {} repairs, {:.0} Mbit/s{}), starting in {} ms",
                    crate::report::escape(&file.name),
                    self.cfg.group,
                    mode.as_str(),
                    file.payload_size as usize + DATA_HEADER_LEN,
                    plan.k,
                    plan.parity,
                    self.cfg.rate_bps as f64 / 1e6,
                    if seal_key.is_some() {
                        ", sealed with a group key each member gets sealed"
                    } else {
                        ""
                    },
                    self.cfg.gather.as_millis()
                );
                self.live.insert(id, (tx.clone(), h));
                Some(tx)
            }
            Err(e) => {
                tracing::warn!("cannot start a multicast transmission ({e}): serving by unicast");
                None
            }
        }
    }

    /// A member's `FEEDBACK` (its session already matched to the sender's address). Returns
    /// the members the transmission stopped serving (they lose far more than the rest): they
    /// keep what the group still brings them and fetch the rest by unicast once it ends,
    /// without holding the others back meanwhile.
    pub(super) fn feedback(&mut self, fb: &Feedback<'_>, now: Instant) -> Vec<u32> {
        if self.members.get(&fb.session) != Some(&fb.group) {
            return Vec::new();
        }
        let Some((tx, _)) = self.live.get(&fb.group) else {
            return Vec::new();
        };
        let (evicted, rate) = {
            let mut s = tx.sender.lock().expect("group sender");
            let before = s.rate_bps();
            s.on_feedback(fb, now);
            let rate = (s.rate_bps() != before).then(|| s.rate_bps());
            (s.take_evicted(), rate)
        };
        tx.wake();
        if let Some(rate) = rate {
            tracing::debug!(
                "[GROUP {:08x}] pace now {:.0} Mbit/s",
                tx.id,
                rate as f64 / 1e6
            );
        }
        evicted
    }

    /// Session `session` ended, having sent `unicast_bytes` (its repair of what the group
    /// did not deliver): it is no member any more.
    pub(super) fn leave(&mut self, session: u32, unicast_bytes: u64) {
        let Some(group) = self.members.remove(&session) else {
            return;
        };
        if let Some((tx, _)) = self.live.get(&group) {
            tx.sender.lock().expect("group sender").leave(session);
        }
        let r = self.repairs.entry(group).or_default();
        r.0 += unicast_bytes;
        r.1 += 1;
        self.settle(group);
    }

    /// Records `group` as settled once its thread has ended and its last member has left.
    fn settle(&mut self, group: u32) {
        if self.live.contains_key(&group) || self.members.values().any(|&g| g == group) {
            return;
        }
        let (bytes, sessions) = self.repairs.remove(&group).unwrap_or_default();
        self.settled.push((group, bytes, sessions));
    }

    /// Transmissions over whose members have all ended since the last call: (group, bytes
    /// their sessions sent by unicast, sessions).
    pub(super) fn take_settled(&mut self) -> Vec<(u32, u64, u64)> {
        std::mem::take(&mut self.settled)
    }

    /// The transmissions that ended, with what they did.
    pub(super) fn reap(&mut self) -> Vec<GroupSummary> {
        let done: Vec<u32> = self
            .live
            .iter()
            .filter(|(_, (_, h))| h.is_finished())
            .map(|(&id, _)| id)
            .collect();
        let mut out = Vec::new();
        for id in done {
            let (_, h) = self.live.remove(&id).expect("listed");
            match h.join() {
                Ok(s) => out.push(s),
                Err(_) => tracing::error!("bug: multicast transmission {id:08x} panicked"),
            }
            self.settle(id);
        }
        out
    }

    /// Stops every transmission and waits for their threads.
    pub(super) fn shutdown(&mut self) -> Vec<GroupSummary> {
        for (tx, _) in self.live.values() {
            tx.stop.store(true, Ordering::Relaxed);
            tx.wake();
        }
        let mut out = Vec::new();
        for (_, (_, h)) in self.live.drain() {
            if let Ok(s) = h.join() {
                out.push(s);
            }
        }
        out
    }
}

impl GroupSummary {
    /// For `serve --json`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "group": format!("{:08x}", self.group),
            "file": self.file,
            "members": self.stats.members_joined,
            "bytes_sent": self.bytes_sent,
            "datagrams_sent": self.datagrams_sent,
            "duration_s": self.elapsed.as_secs_f64(),
            "stats": self.stats,
            "error": self.error,
        })
    }
}

/// Logs what a transmission did.
pub(super) fn log_summary(s: &GroupSummary) {
    let st = &s.stats;
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    tracing::info!(
        "[GROUP {:08x}] {}: {} members, {} bytes in {} datagrams in {:.3} s ({:.1} Mbit/s): {} sources, {} repairs ({} proactive, {} on feedback, {} asked beyond a block's parity: left to unicast), {} feedbacks read ({} dropped){}",
        s.group,
        crate::report::escape(&s.file),
        s.stats.members_joined,
        s.bytes_sent,
        s.datagrams_sent,
        secs,
        s.bytes_sent as f64 * 8.0 / secs / 1e6,
        st.sources_sent,
        st.proactive_repairs + st.reactive_repairs,
        st.proactive_repairs,
        st.reactive_repairs,
        st.repairs_refused,
        st.feedback_received,
        st.feedback_dropped,
        s.error
            .as_ref()
            .map(|e| format!("; stopped: {e}"))
            .unwrap_or_default()
    );
}

/// Blocks read and encoded recently: sources go out of it, and the repairs feedback asks for
/// shortly after.
const CACHED_BLOCKS: usize = 32;

struct Blocks {
    file: Arc<ScannedFile>,
    plan: BlockPlan,
    enc: BlockEncoder,
    cache: VecDeque<(u32, Vec<u8>, Vec<Vec<u8>>)>,
}

impl Blocks {
    /// Block `b`'s sources (read and checked) and its repairs (once asked for).
    fn load(&mut self, b: u32) -> io::Result<usize> {
        if let Some(at) = self.cache.iter().position(|(id, _, _)| *id == b) {
            return Ok(at);
        }
        let range = self.plan.sources(b);
        let p = self.plan.payload_size as u64;
        let start = range.start * p;
        let len = (range.end * p).min(self.file.size) - start;
        let mut data = vec![0u8; len as usize];
        self.file.file.read_exact_at(&mut data, start)?;
        for (j, i) in range.enumerate() {
            let s = &data[j * p as usize..((j + 1) * p as usize).min(data.len())];
            if self.file.crcs.get(i as usize) != Some(&payload_crc(s)) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the file changed since it was scanned",
                ));
            }
        }
        if self.cache.len() >= CACHED_BLOCKS {
            self.cache.pop_front();
        }
        self.cache.push_back((b, data, Vec::new()));
        Ok(self.cache.len() - 1)
    }

    fn source(&mut self, index: u64) -> io::Result<&[u8]> {
        let b = self.plan.block_of(index);
        let at = self.load(b)?;
        let p = self.plan.payload_size as usize;
        let j = (index - self.plan.sources(b).start) as usize;
        let data = &self.cache[at].1;
        Ok(&data[j * p..((j + 1) * p).min(data.len())])
    }

    fn repair(&mut self, b: u32, r: u16) -> io::Result<&[u8]> {
        let at = self.load(b)?;
        let p = self.plan.payload_size as usize;
        let (_, data, repairs) = &mut self.cache[at];
        if repairs.is_empty() {
            let sources = data.chunks(p);
            self.enc
                .encode(&self.plan, b, sources, repairs)
                .map_err(io::Error::other)?;
        }
        repairs
            .get(r as usize)
            .map(|s| &s[..])
            .ok_or_else(|| io::Error::other("repair index past the block's parity"))
    }
}

/// Largest GSO batch: 16 segments (64 KiB at most). A batch goes down the stack as one, and
/// where the device segments in software (a veth, a NIC without UDP segmentation) its
/// datagrams reach the host's input queue together, each copied to every local bridge port:
/// 44 datagrams x 30 receivers overflowed the kernel's 1000-packet backlog on the testbed
/// (75,000 drops per run), 16 x 30 do not.
const GSO_SEGMENTS: usize = 16;
const GSO_BYTES: usize = 65_535;
/// Most sends taken from the sender per lock.
const TAKE: usize = 64;
/// Longest the thread sleeps without looking (for feedback that woke nothing, and a stop).
const MAX_SLEEP: Duration = Duration::from_millis(20);

struct Run {
    /// Seals each datagram with the transmission's key (connection id: the group).
    sealer: Option<Sealer>,
    tx: Arc<Transmission>,
    file: Arc<ScannedFile>,
    sock: Arc<UdpSocket>,
    dest: SockaddrStorage,
    gso: bool,
    start_at: Instant,
    stats: Arc<ServerStats>,
}

/// Consecutive datagrams of one size, sent in one call.
struct Batch {
    buf: Vec<u8>,
    segment: usize,
    count: usize,
}

impl Run {
    fn run(mut self) -> GroupSummary {
        let t = self.tx.clone();
        while Instant::now() < self.start_at && !t.stop.load(Ordering::Relaxed) {
            std::thread::park_timeout(self.start_at.saturating_duration_since(Instant::now()));
        }
        let started = Instant::now();
        let mut blocks = Blocks {
            file: self.file.clone(),
            plan: t.plan,
            enc: BlockEncoder::new(),
            cache: VecDeque::new(),
        };
        let mut batch = Batch {
            buf: Vec::with_capacity(GSO_BYTES),
            segment: 0,
            count: 0,
        };
        let (mut bytes, mut datagrams) = (0u64, 0u64);
        let mut error = None;
        let mut sends = Vec::with_capacity(TAKE);
        let mut dgram = Vec::with_capacity(MAX_DATAGRAM);
        loop {
            if t.stop.load(Ordering::Relaxed) {
                error = Some("the server is shutting down".to_string());
                break;
            }
            let now = Instant::now();
            let (deadline, done) = {
                let mut s = t.sender.lock().expect("group sender");
                sends.clear();
                while sends.len() < TAKE {
                    match s.next(now) {
                        Some(x) => sends.push(x),
                        None => break,
                    }
                }
                (s.next_deadline(), s.is_done())
            };
            for &send in &sends {
                dgram.clear();
                // A sealed datagram's message goes after the seal's header.
                if self.sealer.is_some() {
                    dgram.resize(SEALED_HEADER_LEN, 0);
                }
                if let Err(e) = self.datagram(send, &mut blocks, &mut dgram) {
                    error = Some(e.to_string());
                    break;
                }
                if let Some(sealer) = &self.sealer {
                    if let Err(e) = sealer.seal_vec(&mut dgram) {
                        error = Some(format!("cannot seal: {e:?}"));
                        break;
                    }
                }
                bytes += dgram.len() as u64;
                datagrams += 1;
                self.stats
                    .group_bytes_sent
                    .fetch_add(dgram.len() as u64, Ordering::Relaxed);
                if let Err(e) = self.push(&mut batch, &dgram) {
                    error = Some(format!("cannot send to the group: {e}"));
                    break;
                }
            }
            if let Err(e) = self.flush(&mut batch) {
                error.get_or_insert(format!("cannot send to the group: {e}"));
            }
            if error.is_some() || (done && sends.is_empty()) {
                break;
            }
            if sends.len() < TAKE {
                let wait = deadline.map_or(MAX_SLEEP, |d| {
                    d.saturating_duration_since(Instant::now()).min(MAX_SLEEP)
                });
                if !wait.is_zero() {
                    std::thread::park_timeout(wait);
                }
            }
        }
        let stats = t.sender.lock().expect("group sender").stats;
        GroupSummary {
            group: t.id,
            file: t.key.0.clone(),
            bytes_sent: bytes,
            datagrams_sent: datagrams,
            elapsed: started.elapsed(),
            stats,
            error,
        }
    }

    /// The bytes of `send` into `out`.
    fn datagram(&self, send: GroupSend, blocks: &mut Blocks, out: &mut Vec<u8>) -> io::Result<()> {
        let t = &self.tx;
        let mut header = [0u8; DATA_HEADER_LEN];
        match send {
            GroupSend::Source(index) => {
                let payload = blocks.source(index)?;
                DataHeader {
                    flags: data_flags::GROUP,
                    payload_len: payload.len() as u16,
                    session: t.id,
                    crc: 0,
                    offset: index * t.plan.payload_size as u64,
                    send_ts_ns: unix_ns(),
                }
                .emit(self.file.crcs[index as usize], &mut header);
                out.extend_from_slice(&header);
                out.extend_from_slice(payload);
            }
            GroupSend::Repair { block, repair } => {
                let k = t.plan.sources(block).count() as u16;
                let shard = blocks.repair(block, repair)?;
                RepairHeader {
                    flags: 0,
                    payload_len: shard.len() as u16,
                    group: t.id,
                    crc: 0,
                    block,
                    repair,
                    k,
                    send_ts_ns: unix_ns(),
                }
                .emit(payload_crc(shard), &mut header);
                out.extend_from_slice(&header);
                out.extend_from_slice(shard);
            }
            GroupSend::End { last } => Message::GroupEnd {
                group: t.id,
                blocks: t.plan.blocks(),
                last,
            }
            .encode(out),
        }
        Ok(())
    }

    /// Adds a datagram to the batch, sending the batch first if it cannot take it.
    fn push(&mut self, b: &mut Batch, d: &[u8]) -> io::Result<()> {
        let fits = self.gso
            && b.count > 0
            && d.len() <= b.segment
            && b.count < GSO_SEGMENTS
            && b.buf.len() + d.len() <= GSO_BYTES;
        if !fits {
            self.flush(b)?;
        }
        b.buf.extend_from_slice(d);
        b.count += 1;
        if b.count == 1 {
            b.segment = d.len();
        } else if d.len() < b.segment {
            // A shorter datagram ends a GSO batch (only the last segment may be short).
            self.flush(b)?;
        }
        Ok(())
    }

    fn flush(&mut self, b: &mut Batch) -> io::Result<()> {
        if b.count == 0 {
            return Ok(());
        }
        let r = crate::sys::socket::retry_eintr(|| {
            multicast::send_segments(&self.sock, &b.buf, b.segment, &self.dest)
        });
        let r = match r {
            Err(e) if b.count > 1 && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                // The device cannot segment: one datagram per call from now on.
                tracing::warn!("group sends without GSO: {e}");
                self.gso = false;
                b.buf
                    .chunks(b.segment)
                    .try_for_each(|d| {
                        crate::sys::socket::retry_eintr(|| {
                            multicast::send_segments(&self.sock, d, d.len(), &self.dest)
                        })
                        .map(|_| ())
                    })
                    .map(|()| 0)
            }
            other => other,
        };
        b.buf.clear();
        b.count = 0;
        r.map(|_| ())
    }
}
