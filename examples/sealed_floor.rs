//! The floor under a sealed copy on this machine: no protocol at all, only what every sealed
//! transfer must do to each byte. Sender threads seal 65,507-byte datagrams straight from a
//! 256 MiB memory image (AES-128-GCM, ringblast's own `Sealer::seal_from`, as its server seals
//! from a file's map) and send each with one `send`; one thread receives each with one `recv`
//! and opens it (`Opener::open_in_place`). No acknowledgement, no pacing, no retransmission:
//! what the receiver's socket cannot hold is dropped, and counted.
//!
//! For the sealed blast and for the same blast unsealed it prints the rate sent, the rate
//! received (and opened), each side's CPU seconds per GB it handled, and the ceiling those
//! costs give: two cores spent on nothing but that work, `2 / (sender + receiver CPU-s per
//! GB)`, the most any sealed (or open) copy between two processes of a two-core machine could
//! move, however its protocol were built. With two sender threads (the second argument) the
//! senders overrun the receiver: the delivered rate shows what more sealing cores buy without
//! flow control.
//!
//! ```sh
//! cargo run --release --example sealed_floor -- [SECONDS] [SENDERS]   # defaults: 3, 1
//! ```
//! `benches/sealed.sh` runs it beside ringblast and scp.

use std::io;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ringblast::protocol::seal::{Cipher, DirectionKey, Opener, Sealer, SEAL_OVERHEAD};
use ringblast::protocol::MAX_DATAGRAM;
use ringblast::report::cpu::cpu_time;

/// The image the senders read: larger than the caches, as a large file's pages are.
const IMAGE: usize = 256 << 20;

/// What one side did: bytes of payload handled, datagrams, its CPU time and how long it ran.
#[derive(Default)]
struct Side {
    bytes: u64,
    datagrams: u64,
    /// Received datagrams that did not open (a sender's too far behind the other's).
    unopened: u64,
    cpu: Duration,
    wall: Duration,
}

impl Side {
    fn rate(&self) -> f64 {
        self.bytes as f64 / 1e9 / self.wall.as_secs_f64().max(1e-9)
    }
    fn cpu_per_gb(&self) -> f64 {
        self.cpu.as_secs_f64() / (self.bytes as f64 / 1e9).max(1e-9)
    }
}

fn key() -> DirectionKey {
    DirectionKey {
        cipher: Cipher::Aes128Gcm,
        key: vec![0x42; 16],
        iv: [7; 12],
    }
}

/// Receives and (if `sealed`) opens until `done` is set and nothing came for 200 ms.
fn receive(rx: UdpSocket, sealed: bool, done: Arc<AtomicBool>) -> Side {
    let mut opener = Opener::new(&key(), 1, 0);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let (cpu0, mut first, mut last) = (cpu_time(true), None, Instant::now());
    let mut side = Side::default();
    loop {
        match rx.recv(&mut buf) {
            Ok(n) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                let len = match sealed {
                    true => opener.open_in_place(&mut buf[..n]).ok(),
                    false => Some(n),
                };
                match len {
                    Some(len) => {
                        side.bytes += len as u64;
                        side.datagrams += 1;
                    }
                    None => side.unopened += 1,
                }
            }
            Err(_) if done.load(Ordering::Acquire) => break,
            Err(_) => {}
        }
    }
    side.cpu = cpu_time(true) - cpu0;
    side.wall = last - first.unwrap_or(last);
    side
}

/// One sender thread's blast for `seconds`, reading the image from `at` on.
fn send(
    sealed: bool,
    seconds: f64,
    sealer: &Sealer,
    tx: &UdpSocket,
    image: &[u8],
    at: usize,
) -> Side {
    let payload = match sealed {
        true => MAX_DATAGRAM - SEAL_OVERHEAD,
        false => MAX_DATAGRAM,
    };
    let mut out = vec![0u8; MAX_DATAGRAM];
    let mut at = at;
    let (start, cpu0) = (Instant::now(), cpu_time(true));
    let stop = start + Duration::from_secs_f64(seconds);
    let mut side = Side::default();
    // The clock read once per 64 datagrams.
    while side.datagrams % 64 != 0 || Instant::now() < stop {
        at %= image.len() - payload;
        let from = &image[at..at + payload];
        at += payload;
        let sent = match sealed {
            true => {
                let n = sealer
                    .seal_from(&mut out, 0, from)
                    .expect("room for the datagram");
                tx.send(&out[..n])
            }
            false => tx.send(from),
        };
        if sent.is_ok() {
            side.bytes += payload as u64;
            side.datagrams += 1;
        }
    }
    side.cpu = cpu_time(true) - cpu0;
    side.wall = start.elapsed();
    side
}

/// Blasts for `seconds` from `senders` threads, sealed or not: (senders summed, receiver).
fn blast(
    sealed: bool,
    senders: usize,
    seconds: f64,
    image: &Arc<Vec<u8>>,
) -> io::Result<(Side, Side)> {
    let rx = UdpSocket::bind("127.0.0.1:0")?;
    let tx = Arc::new(UdpSocket::bind("127.0.0.1:0")?);
    tx.connect(rx.local_addr()?)?;
    rx.connect(tx.local_addr()?)?;
    // What ringblast's client asks for (forced beyond rmem_max where permitted).
    let _ = ringblast::sys::socket::set_recv_buffer(&rx, 32 << 20);
    rx.set_read_timeout(Some(Duration::from_millis(200)))?;
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let done = done.clone();
        thread::spawn(move || receive(rx, sealed, done))
    };
    let sealer = Arc::new(Sealer::new(&key(), 1, 0));
    let threads: Vec<_> = (0..senders)
        .map(|t| {
            let (sealer, tx, image) = (sealer.clone(), tx.clone(), image.clone());
            let at = t * IMAGE / senders;
            thread::spawn(move || send(sealed, seconds, &sealer, &tx, &image, at))
        })
        .collect();
    let mut sent = Side::default();
    for t in threads {
        let s = t.join().expect("a sender thread");
        sent.bytes += s.bytes;
        sent.datagrams += s.datagrams;
        sent.cpu += s.cpu;
        sent.wall = sent.wall.max(s.wall);
    }
    thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::Release);
    let received = receiver.join().expect("the receiver thread");
    Ok((sent, received))
}

fn main() {
    if let Err(e) = run() {
        eprintln!("sealed_floor: {e}");
        std::process::exit(2);
    }
}

fn run() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: f64| -> io::Result<f64> {
        args.get(i).map_or(Ok(default), |s| {
            s.parse().map_err(|_| {
                io::Error::other(format!(
                    "not a number: {s} (usage: sealed_floor [SECONDS] [SENDERS])"
                ))
            })
        })
    };
    let (seconds, senders) = (number(0, 3.0)?, number(1, 1.0)?);
    if !(0.1..=600.0).contains(&seconds) || !(1.0..=16.0).contains(&senders) {
        return Err(io::Error::other(
            "SECONDS from 0.1 to 600, SENDERS from 1 to 16 (usage: sealed_floor [SECONDS] [SENDERS])",
        ));
    }
    let senders = senders as usize;
    // Pages touched now: the blast measures reading memory, not faulting it in.
    let image: Arc<Vec<u8>> = Arc::new((0..IMAGE).map(|i| (i * 31 % 251) as u8).collect());
    println!(
        "no protocol, loopback, {MAX_DATAGRAM}-byte datagrams, {senders} sender thread(s) and one \
         receiver, {seconds} s per case, {} cores",
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    for sealed in [false, true] {
        let (s, r) = blast(sealed, senders, seconds, &image)?;
        let dropped = 100.0 * (1.0 - r.datagrams as f64 / s.datagrams.max(1) as f64);
        let ceiling = 2.0 / (s.cpu_per_gb() + r.cpu_per_gb());
        println!(
            "{:<22} sent {:5.2} GB/s ({:.3} CPU-s/GB), received {:5.2} GB/s ({:.3} CPU-s/GB, \
             {dropped:.1}% dropped{}); two cores' ceiling {ceiling:.2} GB/s",
            if sealed {
                "sealed (AES-128-GCM):"
            } else {
                "open:"
            },
            s.rate(),
            s.cpu_per_gb(),
            r.rate(),
            r.cpu_per_gb(),
            match r.unopened {
                0 => String::new(),
                n => format!(", {n} did not open"),
            },
        );
    }
    Ok(())
}
