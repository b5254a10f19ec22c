//! Where each field of the fixed-layout headers lies, named once (as smoltcp's `wire/` does):
//! the data header's emit, parse and CRC check all read these, so an offset cannot be right
//! in one place and wrong in another. docs/PROTOCOL.md draws the same layouts; golden byte
//! vectors (`golden_tests.rs`) pin them against the document, not against the code.

/// A byte range of a datagram.
pub type Field = std::ops::Range<usize>;

/// The first four bytes of every ringblast datagram.
pub mod common {
    use super::Field;
    pub const MAGIC: Field = 0..2;
    pub const VERSION: usize = 2;
    pub const KIND: usize = 3;
    /// Where a control message's own fields begin.
    pub const BODY: usize = 4;
}

/// The data header (32 bytes), then the payload.
pub mod data {
    use super::Field;
    pub const FLAGS: usize = 4;
    pub const RESERVED: usize = 5;
    pub const PAYLOAD_LEN: Field = 6..8;
    pub const SESSION: Field = 8..12;
    pub const CRC: Field = 12..16;
    pub const OFFSET: Field = 16..24;
    pub const SEND_TS: Field = 24..32;
    pub const HEADER_LEN: usize = 32;
    /// What the CRC covers of the header, after the payload: all of it but the CRC itself.
    pub const CRC_BEFORE: Field = 0..12;
    pub const CRC_AFTER: Field = 16..32;
}

/// The repair datagram's header (32 bytes, laid out like the data header's), then one
/// erasure-coded shard.
pub mod repair {
    use super::Field;
    pub const FLAGS: usize = 4;
    pub const RESERVED: usize = 5;
    pub const PAYLOAD_LEN: Field = 6..8;
    pub const GROUP: Field = 8..12;
    pub const CRC: Field = 12..16;
    pub const BLOCK: Field = 16..20;
    pub const REPAIR: Field = 20..22;
    pub const K: Field = 22..24;
    pub const SEND_TS: Field = 24..32;
    pub const HEADER_LEN: usize = 32;
}

/// The CRC32C trailer of every control message: the last four bytes.
pub const TRAILER_LEN: usize = 4;
