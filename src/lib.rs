//! ringblast: send files over UDP from one server to many clients, as fast as Linux allows,
//! every byte verified, every transfer measured.
//!
//! # The two data paths
//!
//! **Server, file to wire.** [`server::catalog`] scans a file once (mmap, a CRC32C per
//! datagram, BLAKE3 content and manifest hashes). The control thread ([`server`]) validates a
//! client's address with a [`protocol::token`], answers its `GET` with `META`, and creates a
//! [`server::session::Session`] whose [`protocol::sender::SenderState`] decides what to send
//! next: new data within the receiver's credit and the congestion window, repairs of what the
//! receiver's `ACK`s report missing, at the [`protocol::pacer`]'s pace. An engine
//! ([`server::engine`]) pushes those datagrams: `uring` batches `sendmsg`s (a 32-byte
//! [`protocol::data`] header plus a payload slice of the map, nothing copied in user space)
//! through one io_uring per session from a fixed pool of workers; `threads` is the lab's
//! baseline, `pread` + `sendto` per datagram from a thread per session. `ACK`s come back to
//! the control thread, which applies them and wakes the engine.
//!
//! **Client, wire to file.** [`client::get`] starts N sub-clients, each with its own socket
//! and copy. A sub-client gets a token, sends `GET`, checks `META` and answers it with a first
//! `ACK` (the server sends nothing more to an address before it hears from it there), then
//! receives in [`sys::recvmmsg`] batches: every datagram is parsed ([`protocol::data`]), range- and
//! CRC-checked, recorded in a [`protocol::loss::LossTracker`] and written at its offset; it
//! sends `ACK`s (cumulative point, credit, NACK ranges) every quarter window and when idle.
//! At the end the whole file is checked against the server's manifest (and BLAKE3) hash and
//! the copy renamed into place, or removed.
//!
//! **Sealed** (`serve --authorized`/`--psk`, `get --identity`/`--psk`): after the token, a
//! Noise handshake ([`protocol::noise`]) authenticates both sides ([`keys`]: the server's
//! authorized keys, the client's pin or known servers) and gives each direction a key; from
//! then on every datagram of both paths is a [`protocol::seal`]ed one (the server's
//! [`server::secure`] table holds the connections; the uring engine reads each payload into
//! its send slot and encrypts it there, the client opens each segment of a batch before its
//! logic sees it).
//!
//! [`report`] turns what both sides counted into the lab's table, JSON and live lines;
//! [`tools`] holds `demo`, `bench` and `relay`; [`cli`] the command line. Raw syscalls live in
//! [`sys`] and the io_uring engine; everything else is safe code (docs/ARCHITECTURE.md).
#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod keys;

/// For tests: one that cannot run on this machine (no io_uring, no root for namespaces, no
/// GSO, no python3) says why and is skipped; under CI (`RINGBLAST_CI=1`, set by `.ci/run`),
/// where everything must run, it fails instead, so nothing is skipped there unnoticed.
/// Returns so that a test can `if cond { return skip(..) }`.
#[doc(hidden)]
pub fn skip(why: &str) {
    if in_ci() {
        panic!("RINGBLAST_CI=1, and this test cannot run here: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// For tests: whether this is CI (`RINGBLAST_CI=1`), where everything a test needs is there.
#[doc(hidden)]
pub fn in_ci() -> bool {
    std::env::var("RINGBLAST_CI").is_ok_and(|v| v == "1")
}
pub mod protocol;
pub mod report;
pub mod server;
pub mod sys;
pub mod tools;
