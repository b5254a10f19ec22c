//! A copy's whole life without a socket: a server played by the test, in simulated time.

use super::*;
use crate::client::edge::TestBatch;
use crate::protocol::layout::payload_len;
use crate::protocol::{DataHeader, Mode, TOKEN_LEN};
use crate::report::live::Live;

const P: u32 = 1000;

fn file(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn cfg() -> Arc<GetConfig> {
    let mut c = GetConfig::new("127.0.0.1:9".parse().unwrap(), "f");
    c.timeout = Duration::from_secs(1);
    c.verify = Verify::Manifest;
    c.window_bytes = 1 << 20;
    c.window_max_bytes = 1 << 20;
    Arc::new(c)
}

const FACTS: SocketFacts = SocketFacts {
    rcvbuf: 4 << 20,
    max_datagram: 1472,
    gro: false,
};

/// A sub-client (of `clients`) sharing `together`, and a clock.
fn shared(together: &Arc<Together>, clients: usize) -> Shared {
    Shared {
        live: Live::new(clients),
        together: together.clone(),
        writes: WriteEngine::new(4),
    }
}

fn sub(id: usize, clients: usize, together: &Arc<Together>, t0: Instant) -> SubClient {
    SubClient::new(
        cfg(),
        &shared(together, clients),
        id,
        clients,
        Ok(FACTS),
        4000 + id as u16,
        id as u64,
        t0,
    )
}

/// What the copy sent since the last look (as the driver does, a copy whose data phase ended
/// is closed, step by step, each step's datagrams sent).
fn sent(s: &mut SubClient) -> Vec<Vec<u8>> {
    let mut out = s.outbox.drain();
    while s.is_closing() {
        s.close(Instant::now());
        out.extend(s.outbox.drain());
    }
    out
}

fn feed(s: &mut SubClient, datagrams: Vec<Vec<u8>>, at: Instant) {
    let batch = TestBatch::of(datagrams.into_iter().map(|d| (d, 1)));
    s.on_batch(&batch, 1, at);
}

/// The server's side of a transfer of `data`: answers to each request.
struct Server {
    data: Vec<u8>,
    meta: Meta,
}

impl Server {
    fn new(data: Vec<u8>) -> Server {
        let crcs: Vec<u32> = data.chunks(P as usize).map(crc32c::crc32c).collect();
        let meta = Meta {
            request_id: 0,
            session: 77,
            file_size: data.len() as u64,
            payload_size: P,
            mode: Mode::Reliable,
            manifest_hash: manifest_hash(data.len() as u64, P, &crcs),
            content_hash: *blake3::hash(&data).as_bytes(),
        };
        Server { data, meta }
    }

    fn datagram(&self, index: u64) -> Vec<u8> {
        let len = payload_len(self.data.len() as u64, P, index);
        let start = index as usize * P as usize;
        let payload = &self.data[start..start + len];
        let mut header = [0u8; DATA_HEADER_LEN];
        DataHeader {
            flags: 0,
            payload_len: len as u16,
            session: self.meta.session,
            crc: 0,
            offset: index * P as u64,
            send_ts_ns: 1,
        }
        .emit(crc32c::crc32c(payload), &mut header);
        [&header[..], payload].concat()
    }

    /// Answers what the client sent; the ACKs it saw, counted.
    fn answer(&self, sent: &[Vec<u8>], acks: &mut usize) -> Vec<Vec<u8>> {
        let mut replies = Vec::new();
        for d in sent {
            match Message::parse(d).unwrap() {
                Message::Hello { nonce } => replies.push(
                    Message::Retry {
                        nonce,
                        token: [1; TOKEN_LEN],
                    }
                    .to_vec(),
                ),
                Message::Get { request_id, .. } => replies.push(
                    Message::Meta(Meta {
                        request_id,
                        ..self.meta
                    })
                    .to_vec(),
                ),
                // The first ACK shows the client is there: the whole file goes.
                Message::Ack(_) => {
                    *acks += 1;
                    if *acks == 1 {
                        let n = (self.data.len() as u64).div_ceil(P as u64);
                        replies.extend((0..n).rev().map(|i| self.datagram(i)));
                    }
                }
                _ => {}
            }
        }
        replies
    }
}

/// HELLO, RETRY, GET, META, the first ACK, the data (out of order), the last ACK, DONE three
/// times: a verified copy, in simulated time.
#[test]
fn a_copy_from_hello_to_verified() {
    let t0 = Instant::now();
    let together = Together::new(t0);
    let mut s = sub(1, 1, &together, t0);
    assert!(sent(&mut s).is_empty(), "nothing before start");
    s.start(t0);
    let server = Server::new(file(10_500));
    let (mut acks, mut done) = (0, 0);
    for step in 1..10 {
        let out = sent(&mut s);
        done += out
            .iter()
            .filter(|d| matches!(Message::parse(d), Ok(Message::Done { .. })))
            .count();
        let replies = server.answer(&out, &mut acks);
        if replies.is_empty() {
            break;
        }
        feed(&mut s, replies, t0 + Duration::from_millis(step));
    }
    done += sent(&mut s)
        .iter()
        .filter(|d| matches!(Message::parse(d), Ok(Message::Done { .. })))
        .count();
    assert!(s.is_ended());
    let r = s.take_report();
    assert!(r.ok(), "{r:?}");
    assert_eq!((r.bytes_intact, r.datagrams_received), (10_500, 11));
    assert!(acks >= 2, "the first ACK and the last");
    assert_eq!(done, DONE_REPEATS);
    assert_eq!(r.datagram_size, P as usize + DATA_HEADER_LEN);
}

/// The last datagram in: the last ACK is queued and the copy closes in steps, each after
/// the driver sent what the one before queued: the counts and DONE, then the copy's own
/// checks (waiting for a content hash may take a while). The server is kept waiting behind
/// neither: it would probe and resend meanwhile.
#[test]
fn the_server_hears_the_end_before_the_copy_is_checked() {
    let t0 = Instant::now();
    let together = Together::new(t0);
    let mut s = sub(1, 1, &together, t0);
    s.start(t0);
    let server = Server::new(file(3_500));
    let mut acks = 0;
    // HELLO -> RETRY, GET -> META, first ACK -> all the data.
    let mut replies = Vec::new();
    for step in 1..=3 {
        replies = server.answer(&s.outbox.drain(), &mut acks);
        if step < 3 {
            feed(&mut s, replies.clone(), t0);
        }
    }
    assert_eq!(acks, 1, "the first ACK");
    assert_eq!(replies.len(), 4, "every datagram of the file");
    let t1 = t0 + Duration::from_millis(1);
    feed(&mut s, replies, t1);
    let kinds = |s: &mut SubClient| -> Vec<&str> {
        s.outbox
            .drain()
            .iter()
            .map(|d| match Message::parse(d).unwrap() {
                Message::Ack(a) if a.recv_next == 4 => "last ACK",
                Message::Done { session: 77, .. } => "DONE",
                other => panic!("{other:?}"),
            })
            .collect()
    };
    assert!(s.is_closing() && !s.is_ended());
    assert_eq!(s.deadline(), Some(t1));
    assert_eq!(kinds(&mut s), ["last ACK"]);
    assert_eq!(s.report.datagrams_expected, 0, "not counted yet");
    s.close(t1);
    assert!(s.is_closing());
    assert_eq!(kinds(&mut s), ["DONE", "DONE", "DONE"]);
    assert_eq!(s.report.datagrams_expected, 4);
    assert!(!s.report.hash_ok, "not checked yet");
    // A send failing now (the server gone after all) changes nothing: the copy is whole.
    s.on_socket_error(std::io::ErrorKind::ConnectionRefused.into(), t1);
    s.close(t0 + Duration::from_millis(2));
    assert!(s.is_ended());
    let r = s.take_report();
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.bytes_intact, 3_500);
}

/// A META that would make this client allocate without bound is refused, and the server,
/// which has a session for it already, is told at once (DONE).
#[test]
fn a_meta_asking_too_much_is_refused_and_the_server_told() {
    let t0 = Instant::now();
    let together = Together::new(t0);
    let mut s = sub(1, 1, &together, t0);
    s.start(t0);
    let server = Server::new(file(100));
    let mut acks = 0;
    let retry = server.answer(&sent(&mut s), &mut acks);
    feed(&mut s, retry, t0);
    let get = sent(&mut s);
    let Ok(Message::Get { request_id, .. }) = Message::parse(&get[0]) else {
        panic!()
    };
    let huge = Meta {
        request_id,
        file_size: 1 << 50,
        ..server.meta
    };
    feed(&mut s, vec![Message::Meta(huge).to_vec()], t0);
    assert!(s.is_ended());
    let dones = sent(&mut s)
        .iter()
        .filter(|d| matches!(Message::parse(d), Ok(Message::Done { session: 77, .. })))
        .count();
    assert_eq!(dones, DONE_REPEATS);
    let e = s.take_report().error.unwrap();
    assert!(e.contains("--max-size"), "{e}");
}

/// Only [`MAX_HANDSHAKES`] sub-clients ask at once; the next starts when a place frees, and
/// its own clock starts then.
#[test]
fn sub_clients_take_turns_at_the_handshake() {
    use crate::client::handshake::MAX_HANDSHAKES;
    let t0 = Instant::now();
    let together = Together::new(t0);
    let n = MAX_HANDSHAKES + 1;
    let mut subs: Vec<SubClient> = (1..=n).map(|id| sub(id, n, &together, t0)).collect();
    for s in subs.iter_mut() {
        s.start(t0);
    }
    let asking = subs
        .iter_mut()
        .map(|s| !sent(s).is_empty())
        .filter(|&a| a)
        .count();
    assert_eq!(asking, MAX_HANDSHAKES);
    let last = subs.last_mut().unwrap();
    assert_eq!(last.deadline(), Some(t0 + TURN_POLL));
    // One of the first ends (interrupted): its place goes to the last at its next look.
    subs[0].interrupt(t0);
    let t1 = t0 + TURN_POLL;
    let last = subs.last_mut().unwrap();
    last.on_timer(None, 0, t1);
    assert!(matches!(
        Message::parse(&sent(last)[0]),
        Ok(Message::Hello { .. })
    ));
}

/// A sub-client that found the server gone (silent for the whole timeout) stops the ones
/// still waiting for their turn from asking it.
#[test]
fn when_the_server_is_gone_the_rest_do_not_start() {
    let t0 = Instant::now();
    let together = Together::new(t0);
    let mut first = sub(1, 2, &together, t0);
    first.start(t0);
    first.on_timer(None, 0, t0 + Duration::from_secs(1));
    let e = first.take_report().error.unwrap();
    assert!(e.contains("no answer"), "{e}");
    let mut second = sub(2, 2, &together, t0);
    second.start(t0 + Duration::from_secs(1));
    assert!(sent(&mut second).is_empty());
    let e = second.take_report().error.unwrap();
    assert!(e.starts_with("not started: no answer"), "{e}");
}

/// A socket the driver could not set up (the path cannot carry the datagram size asked
/// for) fails its copy at its start, with the reason, before anything is sent.
#[test]
fn a_socket_that_could_not_be_set_up_fails_its_copy_at_the_start() {
    let t0 = Instant::now();
    let together = Together::new(t0);
    let mut s = SubClient::new(
        cfg(),
        &shared(&together, 1),
        1,
        1,
        Err(ClientError::AbovePathMtu {
            asked: 9000,
            server: "127.0.0.1:9".parse().unwrap(),
            mtu: 1500,
            max: 1472,
        }),
        4000,
        1,
        t0,
    );
    s.start(t0);
    assert!(s.is_ended() && sent(&mut s).is_empty());
    assert!(s.take_report().error.unwrap().contains("MTU 1500"));
}
