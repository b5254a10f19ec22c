//! The handshake's rules in simulated time: what goes out when, what an answer does, when the
//! server is given up on. No socket: the server's answers are built here.

use super::*;

const TIMEOUT: Duration = Duration::from_secs(2);

fn cfg() -> Arc<GetConfig> {
    let mut c = GetConfig::new("127.0.0.1:9".parse().unwrap(), "f");
    c.timeout = TIMEOUT;
    c.window_bytes = 1 << 20;
    Arc::new(c)
}

/// A handshake begun at `t0`, and its outbox.
struct Hs {
    h: Handshake,
    out: Outbox,
    together: Arc<Together>,
    t0: Instant,
}

impl Hs {
    fn new() -> Hs {
        Hs::with(cfg())
    }

    fn with(cfg: Arc<GetConfig>) -> Hs {
        let t0 = Instant::now();
        let together = Together::new(t0);
        let mut out = Outbox::default();
        let h = Handshake::begin(cfg, together.clone(), 1, 4 << 20, 1472, 7, t0, &mut out);
        Hs {
            h,
            out,
            together,
            t0,
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// What was sent since the last look, parsed: (kind, nonce or request id).
    fn sent(&mut self) -> Vec<Sent> {
        self.out
            .drain()
            .iter()
            .map(|b| match Message::parse(b).unwrap() {
                Message::Hello { nonce } => Sent::Hello(nonce),
                Message::Get {
                    token,
                    request_id,
                    max_datagram,
                    ..
                } => Sent::Get(token, request_id, max_datagram),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    fn answer(&mut self, m: Message<'_>, ms: u64) -> Result<Option<Meta>, ClientError> {
        let now = self.at(ms);
        self.h.on_datagram(&m.to_vec(), now, &mut self.out)
    }

    fn timer(&mut self, ms: u64) -> Result<Option<Meta>, ClientError> {
        let now = self.at(ms);
        self.h.on_timer(now, &mut self.out)
    }

    /// The HELLO's nonce, answered with a token; the GET that follows.
    fn until_get(&mut self) -> ([u8; TOKEN_LEN], u32) {
        let Some(Sent::Hello(nonce)) = self.sent().pop() else {
            panic!("no HELLO")
        };
        self.answer(
            Message::Retry {
                nonce,
                token: [5; TOKEN_LEN],
            },
            1,
        )
        .unwrap();
        let Some(Sent::Get(token, id, max)) = self.sent().pop() else {
            panic!("no GET")
        };
        assert_eq!((token, max), ([5; TOKEN_LEN], 1472));
        (token, id)
    }
}

#[derive(Debug, PartialEq)]
enum Sent {
    Hello(u64),
    Get([u8; TOKEN_LEN], u32, u16),
}

fn meta(request_id: u32) -> Meta {
    Meta {
        request_id,
        session: 3,
        file_size: 10,
        payload_size: 1440,
        mode: crate::protocol::Mode::Reliable,
        manifest_hash: [0; 32],
        content_hash: [0; 32],
    }
}

#[test]
fn hello_retry_get_meta() {
    let mut s = Hs::new();
    let (_, id) = s.until_get();
    // Answers to something else are not ours: a stale RETRY, another request's META.
    s.answer(
        Message::Retry {
            nonce: 1,
            token: [9; TOKEN_LEN],
        },
        2,
    )
    .unwrap();
    assert_eq!(s.answer(Message::Meta(meta(id ^ 1)), 2).unwrap(), None);
    assert!(s.sent().is_empty());
    assert_eq!(
        s.answer(Message::Meta(meta(id)), 3).unwrap(),
        Some(meta(id))
    );
    assert_eq!(s.h.deadline(), None, "over");
}

/// Unanswered, a request goes again after 100 ms, 300 ms, 700 ms... (doubling, at most a
/// second apart), and the server is given up on after the timeout of silence.
#[test]
fn a_request_is_resent_with_backoff_then_given_up() {
    let mut s = Hs::new();
    let first = s.sent();
    let mut resent_at = Vec::new();
    for ms in (0..TIMEOUT.as_millis() as u64).step_by(10) {
        s.timer(ms).unwrap();
        if !s.sent().is_empty() {
            resent_at.push(ms);
        }
    }
    assert_eq!(resent_at, vec![100, 300, 700, 1500], "{first:?}");
    let e = s.timer(TIMEOUT.as_millis() as u64).unwrap_err();
    assert!(matches!(e, ClientError::ServerSilent { .. }), "{e}");
}

/// While other copies of the same `get` keep arriving, an unanswered request is not the
/// server's silence: it waits on (its answer was dropped by the address's request budget).
#[test]
fn an_unanswered_request_waits_while_siblings_arrive() {
    let mut s = Hs::new();
    s.sent();
    for ms in (0..6000).step_by(100) {
        s.together.copy_done(s.at(ms));
        s.timer(ms).unwrap();
    }
    assert!(s.timer(6000 + TIMEOUT.as_millis() as u64).is_err());
}

/// BUSY naming our GET: nothing goes until the time it names (backing off), then the same
/// GET (same token, same request id) again.
#[test]
fn a_busy_server_is_asked_the_same_again_later() {
    let mut s = Hs::new();
    let (token, id) = s.until_get();
    let busy = |request_id| Message::Busy {
        request_id,
        retry_after_ms: 200,
        text: "server busy",
    };
    // Someone else's BUSY changes nothing.
    s.answer(busy(id ^ 1), 10).unwrap();
    assert_eq!(s.h.deadline(), Some(s.at(1) + Duration::from_millis(100)));
    s.answer(busy(id), 10).unwrap();
    assert_eq!(s.h.busy_retries, 1);
    let again = s.h.deadline().unwrap();
    let waited = again - s.at(10);
    assert!(
        (Duration::from_millis(150)..=Duration::from_millis(250)).contains(&waited),
        "{waited:?}"
    );
    s.timer(100).unwrap();
    assert!(s.sent().is_empty());
    s.h.on_timer(again, &mut s.out).unwrap();
    assert_eq!(s.sent(), vec![Sent::Get(token, id, 1472)]);
}

/// A server busy for the whole timeout is given up on, naming what it said; unless copies
/// of this `get` arrive meanwhile (then the wait is a queue).
#[test]
fn a_server_busy_for_the_whole_timeout_is_given_up() {
    for siblings in [false, true] {
        let mut s = Hs::new();
        let (_, id) = s.until_get();
        let mut failed = None;
        for ms in (10..8000).step_by(10) {
            if siblings {
                s.together.copy_done(s.at(ms));
            }
            let busy = Message::Busy {
                request_id: id,
                retry_after_ms: 200,
                text: "server busy: 4 sessions",
            };
            if let Err(e) = s.answer(busy, ms).and_then(|_| s.timer(ms)) {
                failed = Some((ms, e));
                break;
            }
            s.sent();
        }
        match (siblings, failed) {
            (false, Some((ms, e))) => {
                // At the first refusal past the timeout (the waits back off to 2 s).
                assert!((2000..5000).contains(&ms), "{ms}");
                assert!(e.to_string().contains("server busy: 4 sessions"), "{e}");
            }
            (true, None) => {}
            (s, f) => panic!("siblings {s}: {f:?}"),
        }
    }
}

/// BUSY for a HELLO (the address's request budget: it names the nonce's low 32 bits): a new
/// HELLO later, not a timeout.
#[test]
fn a_refused_hello_backs_off_and_asks_again() {
    let mut s = Hs::new();
    let Some(Sent::Hello(nonce)) = s.sent().pop() else {
        panic!()
    };
    s.answer(
        Message::Busy {
            request_id: nonce as u32,
            retry_after_ms: 50,
            text: "too many requests from your address",
        },
        5,
    )
    .unwrap();
    let again = s.h.deadline().unwrap();
    s.h.on_timer(again, &mut s.out).unwrap();
    assert!(matches!(s.sent().as_slice(), [Sent::Hello(n)] if *n != nonce));
}

/// WAIT (the server prepares the file) keeps the request alive, for 12 timeouts at most.
#[test]
fn wait_keeps_a_request_alive_for_twelve_timeouts() {
    let mut s = Hs::new();
    let (_, id) = s.until_get();
    let limit = TIMEOUT.as_millis() as u64 * 12;
    let mut ms = 1;
    let e = loop {
        if let Err(e) = s.answer(Message::Wait { request_id: id }, ms) {
            break e;
        }
        s.timer(ms).unwrap();
        ms += 500;
    };
    assert!(matches!(e, ClientError::Waited { .. }), "{e}");
    assert!(ms > limit && ms <= limit + 501, "{ms}");
}

/// A token refused (expired while the server was busy, or too old to tell) is asked for
/// again, a few times; other errors end the copy with the server's words.
#[test]
fn a_refused_token_is_renewed_a_few_times() {
    let mut s = Hs::new();
    for round in 0..=TOKEN_RENEWALS {
        let (_, id) = s.until_get();
        let r = s.answer(
            Message::Error {
                request_id: id,
                code: ErrorCode::BadToken,
                text: "token too old: ask for a new one",
            },
            2,
        );
        if round < TOKEN_RENEWALS {
            r.unwrap();
        } else {
            assert!(r.unwrap_err().to_string().contains("token too old"));
            return;
        }
    }
}

/// A server of another protocol version is named at once.
#[test]
fn another_protocol_version_is_named() {
    let mut s = Hs::new();
    let mut future = b"RB\x09\x02 from the future".to_vec();
    future.extend_from_slice(&crc32c::crc32c(&future).to_be_bytes());
    let e = s.h.on_datagram(&future, s.t0, &mut s.out).unwrap_err();
    assert!(e.to_string().contains("version 9"), "{e}");
    // The same bytes damaged on the way (CRC wrong): dropped, not believed.
    let mut s = Hs::new();
    future[10] ^= 1;
    assert!(s.h.on_datagram(&future, s.t0, &mut s.out).is_ok());
}

/// At most [`MAX_HANDSHAKES`] places; each taken is given back.
#[test]
fn the_handshake_places_are_counted() {
    let together = Together::new(Instant::now());
    for _ in 0..MAX_HANDSHAKES {
        assert!(together.try_begin_handshake());
    }
    assert!(!together.try_begin_handshake());
    together.end_handshake();
    assert!(together.try_begin_handshake());
}

fn join(request_id: u32) -> crate::protocol::Join {
    crate::protocol::Join {
        request_id,
        session: 3,
        group: 9,
        addr: "239.255.77.1:7000".parse().unwrap(),
        k: 256,
        parity: 64,
        first_block: 0,
        feedback_ms: 10,
    }
}

/// A multicast GET: the JOIN before META puts the copy in the group. A META without one
/// (its JOIN lost) asks once more and waits a moment: a JOIN then still counts; none, and the
/// copy goes by unicast.
#[test]
fn a_multicast_get_takes_the_join_before_its_meta_and_asks_again_if_it_was_lost() {
    let mut c = (*cfg()).clone();
    c.multicast = true;
    let c = Arc::new(c);
    let mut s = Hs::with(c.clone());
    let (_, id) = s.until_get();
    assert_eq!(s.answer(Message::Join(join(id)), 2).unwrap(), None);
    assert_eq!(
        s.answer(Message::Meta(meta(id)), 3).unwrap(),
        Some(meta(id))
    );
    assert_eq!(s.h.join, Some(join(id)));

    // The JOIN lost: META alone sends the GET again; the JOIN that answers it counts.
    let mut s = Hs::with(c.clone());
    let (_, id) = s.until_get();
    assert_eq!(s.answer(Message::Meta(meta(id)), 3).unwrap(), None);
    assert!(matches!(s.sent()[..], [Sent::Get(_, i, _)] if i == id));
    assert_eq!(s.timer(100).unwrap(), None);
    assert_eq!(
        s.answer(Message::Join(join(id)), 150).unwrap(),
        Some(meta(id))
    );
    assert_eq!(s.h.join, Some(join(id)));

    // No JOIN at all (a server without a group): META goes on, by unicast, 300 ms later.
    let mut s = Hs::with(c);
    let (_, id) = s.until_get();
    assert_eq!(s.answer(Message::Meta(meta(id)), 3).unwrap(), None);
    assert_eq!(s.timer(200).unwrap(), None);
    assert_eq!(s.timer(303).unwrap(), Some(meta(id)));
    assert_eq!(s.h.join, None);
}

/// An authenticating client: HS_INIT after the token (resent on silence), the server's
/// handshake message checked against the pin, HS_FINISH in plaintext and the GET sealed, both
/// resent until a sealed answer; a server with another key is refused before anything else.
#[test]
fn an_authenticating_client_checks_the_server_key_before_it_asks_for_anything() {
    use crate::keys::{ClientSecurity, ServerTrust};
    use crate::protocol::noise::prologue;
    use crate::protocol::noise::{Handshake as Noise, StaticKey, MAX_HANDSHAKE_MESSAGE};
    use crate::protocol::seal::{Cipher, Opener, SEALED_HEADER_LEN};

    let (client, server, impostor) = (
        StaticKey::generate(),
        StaticKey::generate(),
        StaticKey::generate(),
    );
    for (answering, pinned_ok) in [(&server, true), (&impostor, false)] {
        let mut c = GetConfig::clone(&cfg());
        c.security = Some(Arc::new(ClientSecurity {
            identity: client.clone(),
            psk: None,
            trust: ServerTrust::Pinned(server.public),
        }));
        let mut hs = Hs::with(Arc::new(c));
        let d = hs.out.drain().pop().unwrap();
        let Ok(Message::Hello { nonce }) = Message::parse(&d) else {
            panic!("no HELLO")
        };
        let token = [4; TOKEN_LEN];
        assert_eq!(hs.answer(Message::Retry { nonce, token }, 1).unwrap(), None);
        let init = hs.out.drain().pop().unwrap();
        assert!(init.len() >= crate::protocol::HELLO_MIN_LEN, "padded");
        let Ok(Message::HandshakeInit {
            token: t,
            nonce,
            noise,
        }) = Message::parse(&init)
        else {
            panic!("no HS_INIT")
        };
        assert_eq!(t, token);
        // Silence: the same HS_INIT again.
        hs.timer(150).unwrap();
        assert_eq!(hs.out.drain(), vec![init.clone()]);
        // The server's side.
        let mut s = Noise::responder(answering, &prologue(), None).unwrap();
        s.read(noise).unwrap();
        let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
        let n = s.write(&mut buf).unwrap();
        let reply = Message::HandshakeReply {
            nonce,
            conn: 42,
            noise: &buf[..n],
        };
        let r = hs.answer(reply, 200);
        if !pinned_ok {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("not the pinned"), "{e}");
            assert!(hs.out.drain().is_empty(), "nothing after a wrong key");
            continue;
        }
        r.unwrap();
        let sent = hs.out.drain();
        assert_eq!(sent.len(), 2, "HS_FINISH and the sealed GET");
        let Ok(Message::HandshakeFinish { conn: 42, noise }) = Message::parse(&sent[0]) else {
            panic!("no HS_FINISH")
        };
        s.read(noise).unwrap();
        assert_eq!(s.peer(), Some(client.public));
        let keys = s.finish(Cipher::Aes128Gcm).unwrap();
        let mut open = Opener::new(&keys.receive, 42, 0);
        let mut get = sent[1].clone();
        let len = open.open_in_place(&mut get).unwrap();
        assert!(matches!(
            Message::parse(&get[SEALED_HEADER_LEN..SEALED_HEADER_LEN + len]),
            Ok(Message::Get { .. })
        ));
        assert!(hs.h.opener.is_some(), "the sub-client gets the opener");
        // Unanswered: HS_FINISH and the GET again (a new packet number).
        hs.timer(400).unwrap();
        let again = hs.out.drain();
        assert_eq!(again.len(), 2);
        assert_eq!(again[0], sent[0]);
        let mut get2 = again[1].clone();
        assert!(open.open_in_place(&mut get2).is_ok());
    }
}
