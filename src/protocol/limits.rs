//! The protocol's numeric limits, in one place: both sides, the engines and the CLI read them
//! here, so a server never has to import them from the client (or the other way round).

/// Largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP); the lab's datagram size.
pub const MAX_DATAGRAM: usize = 65_507;
/// Bytes of header in front of every data payload.
pub const DATA_HEADER_LEN: usize = 32;
/// Largest file payload one datagram carries at the default datagram size.
pub const MAX_PAYLOAD: usize = MAX_DATAGRAM - DATA_HEADER_LEN;
/// Smallest file payload per datagram either side accepts. With [`MAX_DATAGRAMS`]: files up
/// to 64 GiB even at this size, and up to 8 TiB at the default.
pub const MIN_PAYLOAD: u32 = 512;
/// Smallest datagram size on the wire, header included.
pub const MIN_DATAGRAM: usize = DATA_HEADER_LEN + MIN_PAYLOAD as usize;
/// Most datagrams a file may take: the receiver keeps a CRC (4 bytes) and a bit for each, so
/// this bounds what any server can make a client allocate to 2^27 * 4.125 B = 528 MiB.
pub const MAX_DATAGRAMS: u64 = 1 << 27;
/// A `HELLO` (and a `LIST`) must be at least this long, so that the `RETRY` it provokes is
/// smaller than the request (a `LISTING` at most three times as long): an address that did
/// not ask can never be sent much more than was sent in its name.
pub const HELLO_MIN_LEN: usize = 1200;
/// Length of an address-validation token (see `token.rs`).
pub const TOKEN_LEN: usize = 24;
/// Longest file name carried on the wire.
pub const MAX_NAME_LEN: usize = 255;
/// Most NACK ranges carried in one `ACK`.
pub const MAX_NACK_RANGES: usize = 128;
/// Longest human-readable text in an `ERROR`.
pub const MAX_ERROR_TEXT: usize = 200;
/// Most blocks one multicast `FEEDBACK` reports (8 bytes each: the message stays under 1200
/// bytes, one datagram on any path).
pub const MAX_FEEDBACK_BLOCKS: usize = 128;
/// Bytes of a `META` on the wire (its layout is fixed): what the server counts against the
/// three-times bound of an answer to a `GET`.
pub const META_LEN: usize = 93;
