//! The data phase's rules, without sockets: datagrams built here, fed with the times a
//! receive thread would have read, and the ACKs it queued read back from the outbox.

use super::*;
use crate::client::edge::TestBatch;
use crate::protocol::DATA_HEADER_LEN;

const P: u32 = 1000;
const SESSION: u32 = 7;
/// Send timestamps start here (Unix ns).
const T0_NS: u64 = 1_700_000_000_000_000_000;

fn meta(datagrams: u64, mode: Mode) -> Meta {
    Meta {
        request_id: 1,
        session: SESSION,
        file_size: datagrams * P as u64,
        payload_size: P,
        mode,
        manifest_hash: [0; 32],
        content_hash: [0; 32],
    }
}

/// Data datagram `index` of session `session`, sent at `sent_ns`; its CRC right or not.
fn datagram(session: u32, index: u64, sent_ns: u64, good_crc: bool) -> Vec<u8> {
    let payload = vec![index as u8; P as usize];
    let mut header = [0u8; DATA_HEADER_LEN];
    DataHeader {
        flags: 0,
        payload_len: P as u16,
        session,
        crc: 0,
        offset: index * P as u64,
        send_ts_ns: sent_ns,
    }
    .emit(crc32c::crc32c(&payload) ^ (!good_crc) as u32, &mut header);
    [&header[..], &payload].concat()
}

fn good(index: u64) -> Vec<u8> {
    datagram(SESSION, index, T0_NS + index * 1000, true)
}

/// What an ACK said, owned.
#[derive(Debug)]
struct AckSeen {
    recv_next: u32,
    credit_limit: u32,
    seen_end: u32,
    received: u32,
    duplicates: u32,
    echo_ts_ns: u64,
    echo_delay_us: u32,
    idle: bool,
    holes: Vec<(u32, u32)>,
}

/// A receiver and what it writes to.
/// What the data phase under test writes to.
fn io<'a>(sink: &'a Sink, live: &'a ClientLive, out: &'a mut Outbox) -> DataIo<'a> {
    DataIo {
        server: "127.0.0.1:9".parse().unwrap(),
        sink,
        live,
        out,
    }
}

struct Rx {
    rx: DataReceiver,
    sink: Sink,
    live: ClientLive,
    out: Outbox,
    t0: Instant,
}

impl Rx {
    fn new(meta: &Meta, window: u32) -> Rx {
        let t0 = Instant::now();
        Rx {
            rx: DataReceiver::new(meta, window, window * 64, t0),
            sink: Sink::discard(),
            live: ClientLive::default(),
            out: Outbox::default(),
            t0,
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// `datagrams` arrive at `ms` (each stamped by the kernel then), read at once.
    fn batch(&mut self, datagrams: Vec<Vec<u8>>, ms: u64) -> Result<Progress, ClientError> {
        let ns = T0_NS + ms * 1_000_000;
        let batch = TestBatch::of(datagrams.into_iter().map(|d| (d, ns)));
        let now = self.at(ms);
        let mut io = io(&self.sink, &self.live, &mut self.out);
        self.rx.on_batch(&batch, ns, &mut io, now)
    }

    /// The timer at `ms`; the socket found empty at `empty_ms` if given.
    fn timer(&mut self, empty_ms: Option<u64>, ms: u64) -> Result<Progress, ClientError> {
        let now = self.at(ms);
        let mut io = io(&self.sink, &self.live, &mut self.out);
        let empty_at = empty_ms.map(|m| T0_NS + m * 1_000_000);
        let timeout = Duration::from_secs(1);
        self.rx
            .on_timer(&mut io, timeout, empty_at, T0_NS + ms * 1_000_000, now)
    }

    /// Datagram 0 and the sender's `status` (for this session) arrive together; the ACK the
    /// timer then sends.
    fn ack_after_status(&mut self, status: Status) -> AckSeen {
        let status = Message::Status(Status {
            session: SESSION,
            ..status
        })
        .to_vec();
        self.batch(vec![good(0), status], 0).unwrap();
        self.timer(Some(3), 3).unwrap();
        self.acks().pop().unwrap()
    }

    /// The ACKs queued since the last look.
    fn acks(&mut self) -> Vec<AckSeen> {
        self.out
            .drain()
            .iter()
            .map(|b| match Message::parse(b).unwrap() {
                Message::Ack(a) => AckSeen {
                    recv_next: a.recv_next,
                    credit_limit: a.credit_limit,
                    seen_end: a.seen_end,
                    received: a.received,
                    duplicates: a.duplicates,
                    echo_ts_ns: a.echo_ts_ns,
                    echo_delay_us: a.echo_delay_us,
                    idle: a.flags & ack_flags::IDLE != 0,
                    holes: a.ranges().map(|r| (r.start, r.len)).collect(),
                },
                other => panic!("not an ACK: {other:?}"),
            })
            .collect()
    }
}

/// An idle ACK is written as of when the socket was found empty, not of when the thread
/// came back to the sub-client: a thread serving many sockets may come back tens of
/// milliseconds later, and what arrived meanwhile would look lost to the sender (this
/// made 1000 sessions resend 0.2-9% of their datagrams for nothing).
#[test]
fn an_idle_ack_is_written_as_of_when_the_socket_was_found_empty() {
    let mut r = Rx::new(&meta(3, Mode::Reliable), 4);
    assert_eq!(r.batch(vec![good(0)], 0).unwrap(), Progress::Going);
    r.acks();
    // Found empty 1 ms after the arrival; the timer runs 40 ms after that.
    r.timer(Some(1), 41).unwrap();
    let acks = r.acks();
    assert_eq!(acks.len(), 1, "{acks:?}");
    let a = &acks[0];
    assert!(a.idle);
    assert_eq!(a.echo_ts_ns, T0_NS);
    assert_eq!(a.echo_delay_us, 1000, "held until it looked, not until now");
    assert_eq!(a.seen_end, 1);
}

/// Whatever a server sends, only what is right for this session and this file counts: a
/// duplicate, a bad CRC, another session, an offset off the grid, a wrong length and a
/// truncated buffer are each counted and dropped.
#[test]
fn every_datagram_is_checked_before_it_counts() {
    let m = meta(4, Mode::Reliable);
    let mut r = Rx::new(&m, 16);
    let mut misaligned = good(2);
    misaligned[16..24].copy_from_slice(&(2 * P as u64 + 1).to_be_bytes());
    let mut short = good(2);
    short.truncate(DATA_HEADER_LEN + 10);
    let batch = vec![
        good(0),
        good(0),
        datagram(SESSION, 1, T0_NS, false),
        datagram(SESSION + 1, 2, T0_NS, true),
        misaligned,
        short,
    ];
    r.batch(batch, 0).unwrap();
    let mut truncated = TestBatch::of([(good(3), T0_NS)]);
    truncated.buffers[0].0 = None;
    let mut io = io(&r.sink, &r.live, &mut r.out);
    r.rx.on_batch(&truncated, T0_NS, &mut io, r.t0).unwrap();
    let c = &r.rx.counts;
    assert_eq!(
        c.datagrams_received, 3,
        "the good one, its duplicate, the corrupt one"
    );
    assert_eq!((c.duplicates, c.corrupt, c.malformed), (1, 1, 4));
    assert_eq!(c.bytes_intact, P as u64);
    assert_eq!(r.rx.tracker.received(), 1);
    assert_eq!(r.rx.crcs[0], crc32c::crc32c(&[0u8; P as usize]));
}

/// A GRO buffer holds several datagrams back to back: each is checked and counted as one.
#[test]
fn a_coalesced_buffer_is_split_into_its_datagrams() {
    let mut r = Rx::new(&meta(3, Mode::Reliable), 16);
    let buffer = [good(0), good(1), good(2)].concat();
    let batch = TestBatch {
        buffers: vec![(
            Some(buffer),
            Some(DATA_HEADER_LEN + P as usize),
            Some(T0_NS),
        )],
    };
    let mut io = io(&r.sink, &r.live, &mut r.out);
    assert_eq!(
        r.rx.on_batch(&batch, T0_NS, &mut io, r.t0).unwrap(),
        Progress::Finished
    );
    assert_eq!(r.rx.counts.datagrams_received, 3);
    assert_eq!(r.rx.hists.recv_batch.summary().max, 3);
}

/// Every hole is listed in every ACK while they fit, until it is filled; the credit runs a
/// window past the first hole.
#[test]
fn holes_are_listed_until_filled_and_credit_runs_from_the_first() {
    let mut r = Rx::new(&meta(10, Mode::Reliable), 8);
    r.batch(vec![good(0), good(1), good(3), good(5)], 0)
        .unwrap();
    r.timer(Some(3), 3).unwrap();
    let a = r.acks().pop().unwrap();
    assert_eq!((a.recv_next, a.seen_end, a.received), (2, 6, 4));
    assert_eq!(a.holes, vec![(2, 1), (4, 1)]);
    assert_eq!(a.credit_limit, 2 + 8);
    r.batch(vec![good(2), good(4)], 4).unwrap();
    r.timer(Some(7), 7).unwrap();
    let a = r.acks().pop().unwrap();
    assert_eq!((a.recv_next, a.seen_end), (6, 6));
    assert!(a.holes.is_empty());
    assert_eq!(a.credit_limit, 10, "never past the end of the file");
}

/// The whole file in: finished at once, with the last word (everything in) already queued,
/// so the server can end the session even if every DONE is lost.
#[test]
fn a_whole_copy_is_finished_and_says_so_at_once() {
    let mut r = Rx::new(&meta(3, Mode::Reliable), 8);
    assert_eq!(
        r.batch(vec![good(2), good(0), good(1)], 0).unwrap(),
        Progress::Finished
    );
    let a = r.acks().pop().unwrap();
    assert_eq!((a.recv_next, a.received, a.duplicates), (3, 3, 0));
}

/// Silence fails the copy after the timeout; so does a server whose datagrams bring nothing
/// new (only duplicates), and the error says which.
#[test]
fn silence_and_no_progress_are_told_apart() {
    let mut r = Rx::new(&meta(3, Mode::Reliable), 8);
    assert!(matches!(r.timer(Some(999), 999), Ok(Progress::Going)));
    let e = r.timer(Some(1000), 1000).unwrap_err();
    assert!(matches!(e, ClientError::ServerSilent { .. }), "{e}");

    let mut r = Rx::new(&meta(3, Mode::Reliable), 8);
    r.batch(vec![good(0)], 0).unwrap();
    for ms in (100..1000).step_by(100) {
        r.batch(vec![good(0)], ms).unwrap();
    }
    let e = r.timer(Some(1001), 1001).unwrap_err();
    assert!(
        matches!(e, ClientError::NoProgress { datagrams: 9, .. }),
        "{e}"
    );
}

/// Blast mode: once END came and the socket is drained, what is missing is lost: the copy
/// ends, and the count says exactly what.
#[test]
fn blast_mode_ends_at_its_end_marker_once_drained() {
    let m = meta(4, Mode::Blast);
    let mut r = Rx::new(&m, 8);
    let end = Message::End {
        session: SESSION,
        datagrams: 4,
    }
    .to_vec();
    r.batch(vec![good(0), good(2), end], 0).unwrap();
    assert_eq!(
        r.timer(None, 1).unwrap(),
        Progress::Going,
        "not seen empty yet"
    );
    assert_eq!(r.timer(Some(3), 3).unwrap(), Progress::Finished);
    assert_eq!(r.rx.tracker.missing(), 2);
}

/// The sender's STATUS grows the window to a few bandwidth-delay products (never shrinking
/// it), and the next ACK's credit shows it.
#[test]
fn the_senders_status_grows_the_window() {
    let m = meta(100_000, Mode::Reliable);
    let mut r = Rx::new(&m, 8);
    let a = r.ack_after_status(Status {
        delivery_bps: 1_000_000_000,
        srtt_us: 10_000,
        ..Default::default()
    });
    // 4 x 1 Gbit/s x 10 ms is 5000 datagrams, past this receiver's most (8 x 64).
    assert_eq!(a.credit_limit, 1 + 8 * 64, "{a:?}");
    assert_eq!(r.rx.status.map(|s| s.srtt_us), Some(10_000));
}

/// Issue 24: in Startup the pacing rate runs a round trip (and up to 2.9x) ahead of the
/// delivery estimate; the window is sized from whichever is higher, or a hole holds a
/// Startup at its credit.
#[test]
fn a_status_sizes_the_window_from_the_pacing_rate_when_higher() {
    let m = meta(100_000, Mode::Reliable);
    let mut r = Rx::new(&m, 8);
    let bps = 8 * P as u64 * 10; // 10 datagrams a second
    let a = r.ack_after_status(Status {
        delivery_bps: bps,
        pacing_bps: 3 * bps,
        srtt_us: 1_000_000,
        ..Default::default()
    });
    // 4 x 30 datagrams a second x 1 s (from the delivery estimate alone: 40).
    assert_eq!(a.credit_limit, 1 + 120, "{a:?}");
}

/// The server ending the session (an ERROR) ends the copy with its words, escaped.
#[test]
fn a_session_the_server_ended_ends_the_copy_with_its_words() {
    let mut r = Rx::new(&meta(3, Mode::Reliable), 8);
    let gone = Message::Error {
        request_id: 0,
        code: ErrorCode::Evicted,
        text: "evicted\r\u{1b}[2J",
    }
    .to_vec();
    let e = r.batch(vec![good(0), gone], 0).unwrap_err().to_string();
    assert!(e.contains("evicted\\r\\u{1b}[2J"), "{e}");
}
