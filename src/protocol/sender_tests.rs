//! The sender's behaviour, ACK by ACK, in simulated time.

use super::*;
use crate::protocol::NackRange;

const P: u32 = 1000;

fn drain(s: &mut SenderState, now: Instant) -> Vec<NextDatagram> {
    std::iter::from_fn(|| s.next(now)).collect()
}

fn ack(
    s: &mut SenderState,
    next: u32,
    credit: u32,
    seen: u32,
    ranges: &[NackRange],
    idle: bool,
    now: Instant,
) {
    let mut scratch = Vec::new();
    let a = Ack::new(1, next, credit, seen, 0, 0, 0, ranges, &mut scratch);
    s.on_ack(&a, Some(Duration::from_micros(100)), idle, now);
}

#[test]
fn credit_window_limits_new_data() {
    let t0 = Instant::now();
    let mut s = SenderState::new(Mode::Reliable, 10 * P as u64, P, 4, None, t0, 1_000_000_000);
    let sent = drain(&mut s, t0);
    assert_eq!(sent.len(), 4);
    assert_eq!(s.deadline(), None, "nothing to do until an ACK");
    ack(&mut s, 4, 8, 4, &[], false, t0);
    assert_eq!(drain(&mut s, t0).len(), 4);
    // A stale ACK cannot shrink the credit.
    ack(&mut s, 2, 3, 4, &[], false, t0);
    assert!(drain(&mut s, t0).is_empty());
    ack(&mut s, 10, 100, 10, &[], false, t0);
    assert_eq!(drain(&mut s, t0).len(), 2);
    // That ACK claimed 10 datagrams when only 8 had been sent: it counts for 8, not 10.
    assert!(!s.is_complete());
    assert_eq!(s.acked_below, 8);
    ack(&mut s, 10, 100, 10, &[], false, t0);
    assert!(s.is_complete());
    assert_eq!(s.datagrams_sent, 10);
    assert_eq!(s.bytes_sent, 10 * P as u64);
}

#[test]
fn nacked_datagrams_are_resent_once_per_rto() {
    let t0 = Instant::now();
    let mut s = SenderState::new(
        Mode::Reliable,
        10 * P as u64,
        P,
        10,
        None,
        t0,
        1_000_000_000,
    );
    assert_eq!(drain(&mut s, t0).len(), 10);
    let hole = [NackRange { start: 3, len: 2 }];
    // Too soon: the datagrams were just sent.
    ack(&mut s, 3, 20, 10, &hole, false, t0);
    assert!(drain(&mut s, t0).is_empty());
    let t1 = t0 + Duration::from_millis(20);
    ack(&mut s, 3, 20, 10, &hole, false, t1);
    assert_eq!(
        drain(&mut s, t1),
        vec![
            NextDatagram::Data {
                index: 3,
                retransmit: true
            },
            NextDatagram::Data {
                index: 4,
                retransmit: true
            }
        ]
    );
    // The same NACK again right away does not resend again.
    ack(&mut s, 3, 20, 10, &hole, false, t1);
    assert!(drain(&mut s, t1).is_empty());
    assert_eq!(s.retransmitted, 2);
    ack(&mut s, 10, 20, 10, &[], false, t1);
    assert!(s.is_complete());
}

#[test]
fn tail_is_probed_only_when_receiver_is_idle() {
    let t0 = Instant::now();
    let mut s = SenderState::new(Mode::Reliable, 5 * P as u64, P, 5, None, t0, 1_000_000_000);
    drain(&mut s, t0);
    let t1 = t0 + Duration::from_millis(50);
    ack(&mut s, 3, 8, 3, &[], false, t1);
    assert!(
        drain(&mut s, t1).is_empty(),
        "busy receiver: tail may still be queued"
    );
    ack(&mut s, 3, 8, 3, &[], true, t1);
    assert_eq!(drain(&mut s, t1).len(), 2);
}

#[test]
fn loss_is_judged_by_when_the_ack_was_written() {
    let t0 = Instant::now();
    let epoch_ns = 1_000_000_000u64;
    let mut s = SenderState::new(Mode::Reliable, 10 * P as u64, P, 4, None, t0, epoch_ns);
    drain(&mut s, t0);
    // 5 ms later the receiver (idle) has seen datagrams 0..2 only. It wrote the ACK right
    // away (echoing datagram 1's send time, t0): 2 and 3 had been out for under an RTO.
    let t1 = t0 + Duration::from_millis(50);
    let mut scratch = Vec::new();
    let a = Ack::new(
        1,
        2,
        6,
        2,
        epoch_ns,
        0,
        crate::protocol::ack_flags::IDLE,
        &[],
        &mut scratch,
    );
    s.on_ack(&a, None, true, t1);
    assert!(
        drain(&mut s, t1).iter().all(|n| !matches!(
            n,
            NextDatagram::Data {
                retransmit: true,
                ..
            }
        )),
        "an ACK written before an RTO passed is no evidence of loss, however late it is processed"
    );
    // An ACK written 20 ms after the sends is.
    let a = Ack::new(
        1,
        2,
        6,
        2,
        epoch_ns,
        20_000,
        crate::protocol::ack_flags::IDLE,
        &[],
        &mut scratch,
    );
    s.on_ack(&a, None, true, t1);
    let resent: Vec<_> = drain(&mut s, t1)
        .into_iter()
        .filter(|n| {
            matches!(
                n,
                NextDatagram::Data {
                    retransmit: true,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(resent.len(), 2);
}

#[test]
fn loss_halves_the_window_once_per_rtt_and_progress_regrows_it() {
    let t0 = Instant::now();
    let mut s = SenderState::new(Mode::Reliable, 1000 * P as u64, P, 64, None, t0, 1);
    assert_eq!(drain(&mut s, t0).len(), 64);
    assert_eq!(s.cwnd(), 64.0);
    let t1 = t0 + Duration::from_millis(50);
    let hole = [NackRange { start: 10, len: 1 }];
    ack(&mut s, 10, 1000, 64, &hole, false, t1);
    // Growth is capped at the receiver's window (64), then the loss halves it.
    assert_eq!(s.cwnd(), 32.0);
    assert_eq!(s.backoffs(), 1);
    // A second loss report within the same round trip is the same event.
    let hole2 = [NackRange { start: 20, len: 1 }];
    ack(&mut s, 10, 1000, 64, &hole2, false, t1);
    assert_eq!(s.backoffs(), 1);
    // The window now limits new data, whatever the credit (1000).
    let sent = drain(&mut s, t1);
    let new = sent
        .iter()
        .filter(|n| {
            matches!(
                n,
                NextDatagram::Data {
                    retransmit: false,
                    ..
                }
            )
        })
        .count();
    assert_eq!(
        new,
        0,
        "cwnd {} from index 10 ends below the 64 already sent",
        s.cwnd()
    );
    // Progress regrows it, up to the receiver's window and no further.
    for k in 1..100u32 {
        ack(&mut s, (10 + k * 5).min(64), 1000, 64, &[], false, t1);
    }
    assert!(s.cwnd() > 32.0 && s.cwnd() <= 64.0, "{}", s.cwnd());
    // Many losses, round trips apart: never below the floor.
    for k in 0..20u64 {
        let t = t1 + Duration::from_millis(100 * (k + 1));
        let hole = [NackRange { start: 64, len: 1 }];
        ack(&mut s, 64, 1000, 65, &hole, false, t);
    }
    assert!(s.cwnd() >= crate::protocol::congestion::MIN_CWND);
}

#[test]
fn hostile_ack_is_clamped() {
    let t0 = Instant::now();
    let mut s = SenderState::new(Mode::Reliable, 5 * P as u64, P, 2, None, t0, 1_000_000_000);
    drain(&mut s, t0);
    let t1 = t0 + Duration::from_secs(1);
    ack(
        &mut s,
        u32::MAX,
        u32::MAX,
        u32::MAX,
        &[NackRange {
            start: 0,
            len: u32::MAX,
        }],
        true,
        t1,
    );
    // recv_next beyond what was sent is clamped: not complete, no index past the file.
    assert!(!s.is_complete());
    for n in drain(&mut s, t1) {
        if let NextDatagram::Data { index, .. } = n {
            assert!(index < 5);
        }
    }
}

#[test]
fn overlapping_nack_ranges_cost_no_more_than_what_is_in_flight() {
    let t0 = Instant::now();
    let mut s = SenderState::new(Mode::Reliable, 10_000 * P as u64, P, 4096, None, t0, 1);
    assert_eq!(drain(&mut s, t0).len(), 4096);
    // 128 copies of one range over everything in flight, from a validated client.
    let hostile = [NackRange {
        start: 0,
        len: u32::MAX,
    }; crate::protocol::MAX_NACK_RANGES];
    for k in 0..10 {
        let before = s.resend_checks;
        ack(
            &mut s,
            0,
            4096,
            4096,
            &hostile,
            true,
            t0 + Duration::from_millis(k),
        );
        assert!(
            s.resend_checks - before <= 4096,
            "one ACK examined {} indices",
            s.resend_checks - before
        );
    }
    // Honest, sorted ranges are all honoured.
    let t1 = t0 + Duration::from_secs(1);
    let holes = [
        NackRange { start: 5, len: 2 },
        NackRange { start: 100, len: 1 },
    ];
    let mut s = SenderState::new(Mode::Reliable, 200 * P as u64, P, 200, None, t0, 1);
    drain(&mut s, t0);
    ack(&mut s, 5, 400, 200, &holes, false, t1);
    let resent: Vec<_> = drain(&mut s, t1);
    assert_eq!(resent.len(), 3, "{resent:?}");
}

#[test]
fn blast_sends_everything_once_then_end_markers() {
    let t0 = Instant::now();
    let mut s = SenderState::new(Mode::Blast, 3 * P as u64 + 1, P, 1, None, t0, 1_000_000_000);
    let sent = drain(&mut s, t0);
    assert_eq!(sent.len(), 5, "4 datagrams and the first END");
    assert_eq!(sent[4], NextDatagram::End);
    assert_eq!(s.bytes_sent, 3 * P as u64 + 1);
    let t1 = t0 + END_SPACING;
    assert_eq!(s.deadline(), Some(t1));
    assert_eq!(drain(&mut s, t1), vec![NextDatagram::End]);
    let t2 = t1 + END_SPACING;
    assert_eq!(drain(&mut s, t2), vec![NextDatagram::End]);
    assert!(s.is_complete());
    assert_eq!(s.deadline(), None);
}

#[test]
fn pacer_limits_rate() {
    let t0 = Instant::now();
    // 8 Mbit/s = 1 MB/s, burst of one datagram.
    let pacer = Pacer::new(8_000_000, P as usize, t0);
    let mut s = SenderState::new(
        Mode::Blast,
        100 * P as u64,
        P,
        1,
        Some(pacer),
        t0,
        1_000_000_000,
    );
    assert_eq!(drain(&mut s, t0).len(), 1);
    let ready = s.deadline().unwrap();
    assert!(ready > t0 && ready <= t0 + Duration::from_millis(2));
    // After 10 ms, about 10 more datagrams (1 MB/s * 10 ms / 1000 B), capped by burst.
    let mut n = 0;
    for ms in 1..=10 {
        n += drain(&mut s, t0 + Duration::from_millis(ms)).len();
    }
    assert!((9..=11).contains(&n), "{n}");
}

#[test]
fn empty_file() {
    let t0 = Instant::now();
    let mut s = SenderState::new(Mode::Reliable, 0, P, 8, None, t0, 1_000_000_000);
    assert!(s.is_complete());
    assert!(drain(&mut s, t0).is_empty());
}

#[test]
fn a_send_that_failed_locally_goes_out_again_first() {
    let t0 = Instant::now();
    let mut s = SenderState::new(Mode::Blast, 10 * P as u64, P, 1, None, t0, 1);
    let first: Vec<_> = (0..4).map(|_| s.next(t0).unwrap()).collect();
    assert_eq!(first.len(), 4);
    s.resend_now(2);
    s.resend_now(2);
    s.resend_now(9); // never sent: ignored
    assert_eq!(
        s.next(t0),
        Some(NextDatagram::Data {
            index: 2,
            retransmit: true
        })
    );
    assert_eq!(
        s.next(t0),
        Some(NextDatagram::Data {
            index: 4,
            retransmit: false
        })
    );
}
