//! Engines push a session's datagrams onto the wire; the sender logic
//! ([`SenderState`](crate::protocol::sender::SenderState)) decides which. The control thread
//! creates sessions and feeds them ACKs; an engine drives each session until it is closed,
//! then releases it. Engine threads never write to stdout or the log: what they have to say
//! about a session goes back to the control thread in its summary.

pub mod threads;
pub mod uring;

use std::sync::Arc;

use super::session::Session;

pub use super::config::{EngineKind, SendPath, MAX_SPLICE_PAYLOAD, SPLICE_DATAGRAM};

/// What the control thread needs from an engine.
pub trait Engine: Send + Sync {
    /// Starts driving `session` until it is closed; then the engine calls `release`.
    fn start(&self, session: Arc<Session>);
    /// Stops every worker after closing its sessions. Idempotent.
    fn shutdown(&self);
    /// Number of OS threads the engine runs (for reports: it must not grow with clients).
    fn threads(&self) -> usize;
}

/// The engines a server offers (`serve --engines`), each started once; the first is the one
/// a GET naming none gets.
pub struct Engines {
    list: Vec<(EngineKind, Box<dyn Engine>)>,
}

impl Engines {
    /// `list` must not be empty; its first engine is the default.
    pub fn new(list: Vec<(EngineKind, Box<dyn Engine>)>) -> Self {
        assert!(!list.is_empty(), "a server runs at least one engine");
        Engines { list }
    }

    /// The engine of a GET that names none.
    pub fn default_kind(&self) -> EngineKind {
        self.list[0].0
    }

    /// The engine of `kind`, if this server offers it.
    pub fn get(&self, kind: EngineKind) -> Option<&dyn Engine> {
        self.list
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, e)| e.as_ref())
    }

    /// The engines offered, as the log and errors name them (`uring, threads`).
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.list.iter().map(|(k, _)| k.as_str()).collect();
        names.join(", ")
    }

    pub fn shutdown(&self) {
        for (_, e) in &self.list {
            e.shutdown();
        }
    }

    /// OS threads of all engines.
    pub fn threads(&self) -> usize {
        self.list.iter().map(|(_, e)| e.threads()).sum()
    }
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
            SendPath::Sendmsg
        );
        assert_eq!(SendPath::Auto.for_datagram(65_507), SendPath::Sendmsg);
        assert_eq!(SendPath::Auto.for_datagram(1472), SendPath::Sendmsg);
        assert_eq!(SendPath::Auto.for_datagram(32_000), SendPath::Sendmsg);
        assert_eq!(SendPath::Splice.for_datagram(1472), SendPath::Splice);
        assert_eq!(SendPath::Splice.for_datagram(65_507), SendPath::Sendmsg);
        assert_eq!(
            SendPath::Sendmsg.for_datagram(SPLICE_DATAGRAM),
            SendPath::Sendmsg
        );
        // Whole pages, at most 16 of them wherever a payload starts.
        assert_eq!(
            (SPLICE_DATAGRAM - crate::protocol::DATA_HEADER_LEN) % 4096,
            0
        );
        assert!((4095 + MAX_SPLICE_PAYLOAD).div_ceil(4096) <= 16);
        assert_eq!(
            SendPath::Sendmsg.auto_datagram(),
            crate::protocol::MAX_DATAGRAM
        );
    }
}
