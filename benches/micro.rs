//! Micro-benchmarks of the per-datagram pieces: header encode/parse, CRC, loss tracking, ACK
//! encoding, and the sender's batch planning. `cargo bench --features bench` runs them (criterion, built only
//! with that feature).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringblast::protocol::congestion::CcKind;
use ringblast::protocol::loss::LossTracker;
use ringblast::protocol::sender::{SenderConfig, SenderState};
use ringblast::protocol::{
    Ack, DataHeader, Message, Mode, NackRange, DATA_HEADER_LEN, MAX_PAYLOAD,
};

fn header(c: &mut Criterion) {
    let payload = vec![0xA5u8; MAX_PAYLOAD];
    let payload_crc = crc32c::crc32c(&payload);
    let h = DataHeader {
        flags: 0,
        payload_len: MAX_PAYLOAD as u16,
        session: 7,
        crc: 0,
        offset: 1234 * MAX_PAYLOAD as u64,
        send_ts_ns: 1_700_000_000_000_000_000,
    };
    let mut g = c.benchmark_group("header");
    g.bench_function("emit (CRC chained onto the payload's)", |b| {
        let mut out = [0u8; DATA_HEADER_LEN];
        b.iter(|| {
            black_box(&h).emit(black_box(payload_crc), &mut out);
            black_box(out);
        })
    });
    let mut dgram = [0u8; DATA_HEADER_LEN].to_vec();
    h.emit(payload_crc, (&mut dgram[..]).try_into().unwrap());
    dgram.extend_from_slice(&payload);
    g.bench_function("parse", |b| {
        b.iter(|| black_box(DataHeader::parse(black_box(&dgram)).unwrap().0))
    });
    g.finish();

    let mut g = c.benchmark_group("crc32c");
    g.throughput(Throughput::Bytes(MAX_PAYLOAD as u64));
    g.bench_function("payload 65475 B", |b| {
        b.iter(|| black_box(crc32c::crc32c(black_box(&payload))))
    });
    g.bench_function("verify datagram (payload CRC + header)", |b| {
        b.iter(|| {
            let crc = crc32c::crc32c(black_box(&dgram[DATA_HEADER_LEN..]));
            black_box(DataHeader::crc_ok(&dgram, crc))
        })
    });
    g.finish();
}

fn loss_tracking(c: &mut Criterion) {
    let mut g = c.benchmark_group("loss tracking");
    g.throughput(Throughput::Elements(16_400));
    g.bench_function("insert 1 GiB of datagrams in order", |b| {
        b.iter_batched(
            || LossTracker::new(16_400),
            |mut t| {
                for i in 0..16_400 {
                    t.insert(i);
                }
                t
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("insert with 1% holes, then fill them", |b| {
        b.iter_batched(
            || LossTracker::new(16_400),
            |mut t| {
                for i in (0..16_400).filter(|i| i % 100 != 7) {
                    t.insert(i);
                }
                for i in (0..16_400).filter(|i| i % 100 == 7) {
                    t.insert(i);
                }
                t
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    let mut t = LossTracker::new(16_400);
    for i in (0..16_400).filter(|i| i % 50 != 0 || *i < 1000) {
        t.insert(i);
    }
    c.bench_function("nack ranges (128 of 1% holes)", |b| {
        let mut out = Vec::with_capacity(128);
        b.iter(|| {
            out.clear();
            t.nack_ranges(t.seen_end(), 128, &mut out);
            black_box(out.len())
        })
    });
    c.bench_function("ack encode + parse (64 ranges)", |b| {
        let ranges: Vec<NackRange> = (0..64)
            .map(|i| NackRange {
                start: i * 10,
                len: 2,
            })
            .collect();
        let (mut scratch, mut out) = (Vec::new(), Vec::with_capacity(1024));
        b.iter(|| {
            let ack = Ack {
                credit_limit: 512,
                seen_end: 640,
                echo_ts_ns: 1,
                echo_delay_us: 2,
                ..Ack::new(1)
            }
            .with_ranges(&ranges, &mut scratch);
            out.clear();
            Message::Ack(ack).encode(&mut out);
            black_box(Message::parse(&out).is_ok())
        })
    });
}

fn batch_building(c: &mut Criterion) {
    let mut g = c.benchmark_group("sender");
    g.throughput(Throughput::Elements(64));
    g.bench_function("plan a batch of 64 datagrams", |b| {
        b.iter_batched(
            || {
                SenderState::new(
                    SenderConfig {
                        mode: Mode::Reliable,
                        file_size: 1 << 30,
                        payload_size: MAX_PAYLOAD as u32,
                        window: 4096,
                        cc: CcKind::Bbr,
                        rate_cap_bps: None,
                        seed: 1,
                        path: None,
                    },
                    Instant::now(),
                    1,
                )
                .validated(Instant::now())
            },
            |mut s| {
                let now = Instant::now();
                for _ in 0..64 {
                    black_box(s.next(now));
                }
                s
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The erasure code at the block sizes a multicast plan may choose (protocol/fec.rs quotes
/// these): encoding a block's repairs, and rebuilding a block that lost 2% of its sources.
fn erasure_coding(c: &mut Criterion) {
    use ringblast::protocol::fec::{BlockDecoder, BlockEncoder, BlockPlan};
    let mut g = c.benchmark_group("fec");
    for k in [16u32, 64, 256] {
        let plan = BlockPlan::announced(k as u64 * 1440, 1440, k, (k / 4).max(4)).unwrap();
        let data: Vec<Vec<u8>> = (0..k).map(|i| vec![i as u8; 1440]).collect();
        g.throughput(Throughput::Bytes(k as u64 * 1440));
        let mut enc = BlockEncoder::new();
        let mut rep = Vec::new();
        // The repairs the rebuild below needs, whether or not the encoding is measured (a
        // filter may leave it out).
        enc.encode(&plan, 0, data.iter().map(|d| &d[..]), &mut rep)
            .unwrap();
        g.bench_function(format!("encode k={k} parity={}", plan.parity), |b| {
            b.iter(|| {
                enc.encode(&plan, 0, data.iter().map(|d| &d[..]), &mut rep)
                    .unwrap()
            })
        });
        let lost = (k as usize).div_ceil(50);
        let sources: Vec<(usize, &[u8])> = (lost..k as usize).map(|i| (i, &data[i][..])).collect();
        let repairs: Vec<(usize, &[u8])> = (0..lost).map(|j| (j, &rep[j][..])).collect();
        let mut dec = BlockDecoder::new();
        g.bench_function(format!("rebuild {lost} of k={k}"), |b| {
            b.iter(|| {
                dec.decode(&plan, 0, &sources, &repairs, |_, s| {
                    black_box(s);
                })
                .unwrap()
            })
        });
    }
    g.finish();
}

/// Sealing and opening a datagram (protocol/seal.rs) with each AEAD, at an Ethernet payload
/// and at loopback's: which cipher this CPU runs faster, and what a datagram costs.
fn sealing(c: &mut Criterion) {
    use ringblast::protocol::seal::{
        Cipher, DirectionKey, Opener, Sealer, SEALED_HEADER_LEN, TAG_LEN,
    };
    let mut g = c.benchmark_group("seal");
    for cipher in [Cipher::Aes128Gcm, Cipher::ChaCha20Poly1305] {
        let k = DirectionKey {
            cipher,
            key: vec![7; cipher.key_len()],
            iv: [9; 12],
        };
        for len in [1452usize, 61_440] {
            g.throughput(Throughput::Bytes(len as u64));
            let mut buf = vec![0xA5u8; SEALED_HEADER_LEN + len + TAG_LEN];
            let s = Sealer::new(&k, 1, 0);
            g.bench_function(format!("seal {cipher:?} {len} B"), |b| {
                b.iter(|| black_box(s.seal_in_place(&mut buf, len).unwrap()))
            });
            // The server's way: copy the payload out of a 256 MiB file image (cold in the
            // cache, as a large file's pages are) and seal it in place, against sealing it
            // straight from there (`seal_from`).
            let image = vec![0x5Au8; 256 << 20];
            let span = image.len() - len;
            let mut at = 0usize;
            let mut next = move || {
                at = (at + len) % span;
                at
            };
            let s = Sealer::new(&k, 1, 0);
            g.bench_function(format!("copy+seal {cipher:?} {len} B"), |b| {
                b.iter(|| {
                    let o = next();
                    buf[SEALED_HEADER_LEN..SEALED_HEADER_LEN + len]
                        .copy_from_slice(&image[o..o + len]);
                    black_box(s.seal_in_place(&mut buf, len).unwrap())
                })
            });
            g.bench_function(format!("seal_from {cipher:?} {len} B"), |b| {
                b.iter(|| {
                    let o = next();
                    black_box(s.seal_from(&mut buf, 0, &image[o..o + len]).unwrap())
                })
            });
            // Opening: a fresh datagram each time (a packet number opens once).
            let s = Sealer::new(&k, 1, 0);
            let mut o = Opener::new(&k, 1, 0);
            g.bench_function(format!("open {cipher:?} {len} B"), |b| {
                b.iter_batched_ref(
                    || {
                        let mut d = vec![0xA5u8; SEALED_HEADER_LEN + len + TAG_LEN];
                        s.seal_in_place(&mut d, len).unwrap();
                        d
                    },
                    |d| black_box(o.open_in_place(d).unwrap()),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = header, loss_tracking, batch_building, erasure_coding, sealing
}
criterion_main!(benches);
