//! Engines push a session's datagrams onto the wire; the sender logic
//! ([`SenderState`](crate::protocol::sender::SenderState)) decides which. The control thread
//! creates sessions and feeds them ACKs; an engine drives each session until it is closed,
//! then releases it. Engine threads never write to stdout or the log: what they have to say
//! about a session goes back to the control thread in its summary.

pub mod threads;
pub mod uring;

use std::sync::Arc;

use super::session::Session;

/// Which engine a server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// mmap + io_uring: one ring per session, batched sends, a bounded worker pool.
    Uring,
    /// The lab's baseline: one OS thread per session, read() then one blocking sendto() per
    /// datagram, no batching, no mmap.
    Threads,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Uring => "uring",
            EngineKind::Threads => "threads",
        }
    }
}

/// How the uring engine puts a datagram's payload on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SendPath {
    /// Datagrams too large for UDP GSO to batch (loopback's, 65507 bytes) are spliced while
    /// the server is busy (at least as many sessions as workers) and copied while it has
    /// cores to spare: on one host a copied datagram reaches the receiver in cache, a spliced
    /// one from memory, so a lone receiver is faster and the server pays the copy. Smaller
    /// datagrams (an Ethernet path's 1472) are copied, with GSO.
    Auto,
    /// `sendmsg` from the mapped file: the kernel copies each payload (with UDP GSO, up to 64
    /// datagrams per call).
    Copy,
    /// The header with `MSG_MORE`, then `sendfile()` of the payload: the kernel attaches the
    /// file's page-cache pages, nothing is copied; one datagram per pair of calls.
    Splice,
}

impl SendPath {
    pub fn as_str(self) -> &'static str {
        match self {
            SendPath::Auto => "auto",
            SendPath::Copy => "copy",
            SendPath::Splice => "splice",
        }
    }

    /// How a session of `datagram_size`-byte datagrams sends, where splicing works at all:
    /// `Auto` here means "by load". A datagram whose payload [`MAX_SPLICE_PAYLOAD`] cannot
    /// carry is copied.
    pub fn for_datagram(self, datagram_size: usize) -> SendPath {
        let fits = datagram_size - crate::protocol::DATA_HEADER_LEN <= MAX_SPLICE_PAYLOAD;
        match self {
            // GSO carries at most one such datagram per call: splicing costs nothing in calls.
            SendPath::Auto if fits && datagram_size > uring::MAX_GSO_BYTES / 2 => SendPath::Auto,
            SendPath::Splice if fits => SendPath::Splice,
            _ => SendPath::Copy,
        }
    }

    /// The largest datagram the server chooses by itself (`--datagram-size auto`): loopback's
    /// 65507 copied, [`SPLICE_DATAGRAM`] where it may splice.
    pub fn auto_datagram(self) -> usize {
        match self {
            SendPath::Copy => crate::protocol::MAX_DATAGRAM,
            SendPath::Auto | SendPath::Splice => SPLICE_DATAGRAM,
        }
    }
}

/// Largest payload one spliced datagram carries: 15 pages and a byte, so that it spans at most
/// 16 pages wherever it starts in the file (the kernel splices at most 16 page fragments into
/// one datagram; 65475 bytes span 17 at most offsets and are refused).
pub const MAX_SPLICE_PAYLOAD: usize = 15 * 4096 + 1;
/// The datagram size `--datagram-size auto` picks on loopback where it may splice: 15 whole
/// pages of payload (61440 bytes) and the header, so every payload also starts on a page.
pub const SPLICE_DATAGRAM: usize = 15 * 4096 + crate::protocol::DATA_HEADER_LEN;

/// What the control thread needs from an engine.
pub trait Engine: Send + Sync {
    /// Starts driving `session` until it is closed; then the engine calls `release`.
    fn start(&self, session: Arc<Session>);
    /// Stops every worker after closing its sessions. Idempotent.
    fn shutdown(&self);
    /// Number of OS threads the engine runs (for reports: it must not grow with clients).
    fn threads(&self) -> usize;
}

/// The text of a caught panic, for the session's summary.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_datagrams_splice_by_load_and_those_splicing_cannot_carry_are_copied() {
        assert_eq!(SendPath::Auto.for_datagram(SPLICE_DATAGRAM), SendPath::Auto);
        assert_eq!(
            SendPath::Auto.for_datagram(SPLICE_DATAGRAM + 1),
            SendPath::Auto
        );
        // 16 pages and more, or small enough for GSO to batch: copied.
        assert_eq!(
            SendPath::Auto.for_datagram(SPLICE_DATAGRAM + 2),
            SendPath::Copy
        );
        assert_eq!(SendPath::Auto.for_datagram(65_507), SendPath::Copy);
        assert_eq!(SendPath::Auto.for_datagram(1472), SendPath::Copy);
        assert_eq!(SendPath::Auto.for_datagram(32_000), SendPath::Copy);
        assert_eq!(SendPath::Splice.for_datagram(1472), SendPath::Splice);
        assert_eq!(SendPath::Splice.for_datagram(65_507), SendPath::Copy);
        assert_eq!(SendPath::Copy.for_datagram(SPLICE_DATAGRAM), SendPath::Copy);
        // Whole pages, at most 16 of them wherever a payload starts.
        assert_eq!(
            (SPLICE_DATAGRAM - crate::protocol::DATA_HEADER_LEN) % 4096,
            0
        );
        assert!((4095 + MAX_SPLICE_PAYLOAD).div_ceil(4096) <= 16);
        assert_eq!(
            SendPath::Copy.auto_datagram(),
            crate::protocol::MAX_DATAGRAM
        );
    }
}
