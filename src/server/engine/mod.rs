//! Engines push a session's datagrams onto the wire; the sender logic
//! ([`SenderState`](crate::protocol::sender::SenderState)) decides which. The control thread
//! creates sessions and feeds them ACKs; an engine drives each session until it is closed,
//! then releases it. Engine threads never write to stdout or the log: what they have to say
//! about a session goes back to the control thread in its summary.

pub mod slots;
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
