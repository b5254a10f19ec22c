//! Platform code: every raw Linux call ringblast makes lives under this module, behind safe
//! functions returning `io::Result` (as quinn-udp keeps its `unix.rs`). The rest of the crate
//! is `#![deny(unsafe_code)]`; each `unsafe` block here carries a `// SAFETY:` line.

pub mod addr;
pub mod hugebuf;
pub mod mmap;
pub mod recvmmsg;
pub mod socket;
