//! Batched receive: one `recvmmsg(2)` call fills up to [`BATCH`] datagrams.
//!
//! Written against libc rather than through nix's `recvmmsg`: that one reuses its headers
//! across calls without resetting `msg_namelen`/`msg_controllen`, which the kernel shrinks to
//! what each message used, so a later message's control data would come back truncated.
//! Here the headers are rebuilt for every call (on the stack, no allocation). Addresses are
//! read back through nix's `SockaddrStorage`.
#![allow(unsafe_code)]

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{SockaddrLike, SockaddrStorage};

use super::hugebuf::HugeBuf;

/// Datagrams per `recvmmsg` call (quinn-udp uses 32 as well).
pub const BATCH: usize = 32;
/// Room for the largest UDP payload plus one byte, so an oversized datagram shows as
/// truncated instead of silently fitting.
pub const SLOT_SIZE: usize = 65_536;
/// u64 words of control-message space per datagram: one `SCM_TIMESTAMPNS` (a timespec, 32
/// bytes with its header) and one `UDP_GRO` (an int, 24 bytes) fit.
const CMSG_WORDS: usize = 8;

/// Fixed buffers for one `recvmmsg` call, allocated (and touched) once.
pub struct RecvBatch {
    bufs: HugeBuf,
    lens: [usize; BATCH],
    /// Control-message space per datagram, for the kernel's receive timestamp.
    cmsgs: [[u64; CMSG_WORDS]; BATCH],
    /// Kernel receive time of each datagram (Unix ns), 0 when the socket gives none.
    stamps: [u64; BATCH],
    /// Segment size of each coalesced buffer (`UDP_GRO`), 0 for a single datagram.
    segment_sizes: [usize; BATCH],
    truncated: [bool; BATCH],
    addrs: [libc::sockaddr_storage; BATCH],
    addr_lens: [libc::socklen_t; BATCH],
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub fn new() -> Self {
        RecvBatch {
            bufs: HugeBuf::new(BATCH * SLOT_SIZE),
            lens: [0; BATCH],
            cmsgs: [[0; CMSG_WORDS]; BATCH],
            stamps: [0; BATCH],
            segment_sizes: [0; BATCH],
            truncated: [false; BATCH],
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            addrs: unsafe { std::mem::zeroed() },
            addr_lens: [0; BATCH],
            count: 0,
        }
    }

    /// Receives up to [`BATCH`] datagrams: blocks until one arrives (or the socket's
    /// `SO_RCVTIMEO` passes: `WouldBlock`/`TimedOut`), then takes whatever else is queued.
    /// Retries on EINTR.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.recv_flags(sock, libc::MSG_WAITFORONE)
    }

    /// As [`RecvBatch::recv`], but never blocks: `WouldBlock` when nothing is queued.
    pub fn recv_nowait(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.recv_flags(sock, libc::MSG_WAITFORONE | libc::MSG_DONTWAIT)
    }

    fn recv_flags(&mut self, sock: &UdpSocket, flags: libc::c_int) -> io::Result<usize> {
        // The buffer's base, taken once: each slot is an offset from it (taking a slice of
        // the buffer per slot would invalidate the pointers taken before).
        let base = self.bufs.as_mut_slice().as_mut_ptr();
        let mut iovecs: [libc::iovec; BATCH] = std::array::from_fn(|i| libc::iovec {
            iov_base: base.wrapping_add(i * SLOT_SIZE).cast(),
            iov_len: SLOT_SIZE,
        });
        // SAFETY: mmsghdr is plain old data; all-zero is a valid value, filled in below.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, h) in hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_iov = &mut iovecs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_hdr.msg_control = self.cmsgs[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = CMSG_WORDS * 8;
        }
        loop {
            // SAFETY: every pointer in `hdrs` points into `self.bufs`, `self.addrs` or
            // `iovecs`, all of which outlive the call; lengths match the buffers.
            let n = unsafe {
                libc::recvmmsg(
                    sock.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    flags,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.count = 0;
                return Err(e);
            }
            let n = n as usize;
            for (i, h) in hdrs.iter().take(n).enumerate() {
                self.lens[i] = (h.msg_len as usize).min(SLOT_SIZE);
                self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
                self.addr_lens[i] = h.msg_hdr.msg_namelen;
                let (stamp, segment) = control_data(&h.msg_hdr);
                self.stamps[i] = stamp;
                self.segment_sizes[i] = segment;
            }
            self.count = n;
            return Ok(n);
        }
    }

    /// Number of datagrams from the last `recv`.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagram `i` of the last batch (`None` if it was truncated: larger than any valid one).
    /// With `UDP_GRO` it may hold several datagrams: see [`RecvBatch::segments`].
    pub fn datagram(&self, i: usize) -> Option<&[u8]> {
        if i >= self.count || self.truncated[i] {
            return None;
        }
        Some(&self.bufs.as_slice()[i * SLOT_SIZE..i * SLOT_SIZE + self.lens[i]])
    }

    /// Datagram `i` of the last batch, to change in place (a sealed one is opened where it
    /// lies); `None` as for [`RecvBatch::datagram`].
    pub fn datagram_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        if i >= self.count || self.truncated[i] {
            return None;
        }
        let len = self.lens[i];
        Some(&mut self.bufs.as_mut_slice()[i * SLOT_SIZE..i * SLOT_SIZE + len])
    }

    /// The datagrams in buffer `i`: one, or with `UDP_GRO` every `segment size` bytes (the last
    /// may be shorter). Empty if the buffer was truncated.
    pub fn segments(&self, i: usize) -> impl Iterator<Item = &[u8]> {
        let buf = self.datagram(i).unwrap_or(&[]);
        buf.chunks(self.segment_size(i).unwrap_or(buf.len().max(1)))
    }

    /// The GRO segment size of buffer `i` (each datagram in it but the last is this long),
    /// if the kernel coalesced datagrams into it.
    pub fn segment_size(&self, i: usize) -> Option<usize> {
        match self.segment_sizes.get(i) {
            Some(&s) if s > 0 && i < self.count => Some(s),
            _ => None,
        }
    }

    /// When the kernel received datagram `i` (Unix ns), if the socket has
    /// [`enable_timestamps`] on.
    pub fn timestamp_ns(&self, i: usize) -> Option<u64> {
        (i < self.count && self.stamps[i] != 0).then(|| self.stamps[i])
    }

    /// Source address of datagram `i`.
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        if i >= self.count {
            return None;
        }
        let raw = (&self.addrs[i] as *const libc::sockaddr_storage).cast::<libc::sockaddr>();
        // SAFETY: `raw` points at a sockaddr_storage (large and aligned enough for any address)
        // that recvmmsg filled in, and `addr_lens[i]` is the length it reported; nix checks the
        // family and the length before reading the address.
        let addr = unsafe { SockaddrStorage::from_raw(raw, Some(self.addr_lens[i])) }?;
        if let Some(v4) = addr.as_sockaddr_in() {
            Some(SocketAddr::V4((*v4).into()))
        } else {
            addr.as_sockaddr_in6()
                .map(|v6| SocketAddr::V6((*v6).into()))
        }
    }
}

/// Asks the kernel to stamp every datagram with its receive time (`SO_TIMESTAMPNS`).
pub fn enable_timestamps(sock: &UdpSocket) -> io::Result<()> {
    nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
        .map_err(io::Error::from)
}

/// The `SCM_TIMESTAMPNS` (Unix ns, 0 if none) and `UDP_GRO` segment size (0 if none) of a
/// received message.
fn control_data(msg: &libc::msghdr) -> (u64, usize) {
    let (mut stamp, mut segment) = (0, 0);
    super::cmsg::each(msg, |level, kind, data| match (level, kind) {
        (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) if data.len() >= 16 => {
            // struct timespec: two native-endian 64-bit words on this platform.
            let secs = i64::from_ne_bytes(data[..8].try_into().expect("8 bytes"));
            let nanos = i64::from_ne_bytes(data[8..16].try_into().expect("8 bytes"));
            stamp = (secs as u64) * 1_000_000_000 + nanos as u64;
        }
        (libc::SOL_UDP, libc::UDP_GRO) if data.len() >= 4 => {
            let size = libc::c_int::from_ne_bytes(data[..4].try_into().expect("4 bytes"));
            segment = size.max(0) as usize;
        }
        _ => {}
    });
    (stamp, segment)
}

/// True for the errors a receive timeout produces.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn receives_a_batch_with_sources() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        enable_timestamps(&rx).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..5u8 {
            tx.send_to(&vec![i; 100 + i as usize], rx.local_addr().unwrap())
                .unwrap();
        }
        let big = vec![9u8; 65_507];
        tx.send_to(&big, rx.local_addr().unwrap()).unwrap();
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            - 1_000_000_000;
        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        while got.len() < 6 {
            let n = batch.recv(&rx).unwrap();
            for i in 0..n {
                assert_eq!(batch.source(i), Some(tx.local_addr().unwrap()));
                assert!(batch.timestamp_ns(i).unwrap() > before);
                got.push(batch.datagram(i).unwrap().to_vec());
            }
        }
        for i in 0..5u8 {
            assert_eq!(got[i as usize], vec![i; 100 + i as usize]);
        }
        assert_eq!(got[5], big);
        let e = batch.recv(&rx).unwrap_err();
        assert!(is_timeout(&e), "{e}");
    }

    #[test]
    fn coalesced_datagrams_come_apart_at_the_segment_size() {
        use crate::sys::socket::{enable_gro, gso_supported};
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        if !enable_gro(&rx) || !gso_supported(&tx) {
            return crate::skip("this kernel has no UDP GSO/GRO");
        }
        // One GSO send of 10 x 1000 bytes and a 300-byte tail. Over loopback the kernel hands
        // a UDP_GRO socket the GSO packet whole.
        let mut payload = Vec::new();
        for i in 0..10u8 {
            payload.extend_from_slice(&[i; 1000]);
        }
        payload.extend_from_slice(&[0xEE; 300]);
        nix::sys::socket::setsockopt(&tx, nix::sys::socket::sockopt::UdpGsoSegment, &1000).unwrap();
        tx.send_to(&payload, rx.local_addr().unwrap()).unwrap();
        let mut batch = RecvBatch::new();
        let n = batch.recv(&rx).unwrap();
        let segments: Vec<&[u8]> = (0..n).flat_map(|i| batch.segments(i)).collect();
        assert_eq!(segments.len(), 11, "{n} buffers");
        for (i, s) in segments[..10].iter().enumerate() {
            assert_eq!(*s, &[i as u8; 1000][..]);
        }
        assert_eq!(segments[10], &[0xEE; 300][..]);
    }
}
