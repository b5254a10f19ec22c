//! The splice send path: a datagram's header is written with `MSG_MORE` (the socket holds it,
//! corked), then `sendfile()` appends the payload straight from the file. Since Linux 6.5 the
//! kernel attaches the page-cache pages to the datagram (`MSG_SPLICE_PAGES`): the payload is
//! never copied by the sender. The two calls build one datagram only if nothing else is sent on
//! the socket in between, so each uring worker has a socket of its own, bound to the server's
//! port (`SO_REUSEPORT`) with a reuseport program that steers every arriving datagram to the
//! server's own socket, the first of the group: the worker sockets only send.
//!
//! A corked datagram (`MSG_MORE`) normally gets its UDP checksum summed in software, page by
//! page, and Linux 6.18 gets that sum wrong for a spliced payload at an odd file offset (the
//! receiver drops the datagram, `UdpInCsumErrors`). The header's send therefore carries a
//! `UDP_SEGMENT` size as large as the datagram: nothing is segmented, but the kernel leaves the
//! checksum to the device (`CHECKSUM_PARTIAL`), as for any uncorked send. No pass over the
//! payload, and no offset can bite. The kernel splices at most 16 page fragments into one
//! datagram: callers keep payloads within `server::engine::MAX_SPLICE_PAYLOAD`.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{getsockopt, setsockopt, sockopt, SockaddrLike, SockaddrStorage};

use super::socket::{forbid_fragmentation, gso_supported, retry_eintr, set_send_buffer};

/// How long a send may block on a full socket buffer before it counts as failed (the sender
/// repairs it like a loss): long enough never to fire on loopback or a veth, short enough
/// that one session cannot hold up the others of its worker.
const SEND_TIMEOUT: Duration = Duration::from_millis(50);

/// A send-only socket on the server's port for one worker's spliced datagrams.
pub struct SpliceSocket {
    sock: UdpSocket,
}

/// What became of one spliced datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Spliced {
    /// Sent whole.
    Sent,
    /// The file ended before the payload did (it was truncated): a short datagram went (the
    /// receiver's CRC check drops it).
    Short,
}

impl SpliceSocket {
    /// A socket for spliced sends from `server`'s address. Marks `server` `SO_REUSEPORT` so
    /// the new socket can share its port; the group's program sends everything that arrives to
    /// `server` (group index 0: it is the socket the group was created on).
    pub fn new(server: &UdpSocket) -> io::Result<SpliceSocket> {
        let local = server.local_addr()?;
        setsockopt(server, sockopt::ReusePort, &true).map_err(io::Error::from)?;
        let domain = match local {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        };
        // SAFETY: plain socket(2); the result is checked before it is owned.
        let fd = unsafe {
            libc::socket(
                domain,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::IPPROTO_UDP,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new socket nobody else owns.
        let sock = UdpSocket::from(unsafe { OwnedFd::from_raw_fd(fd) });
        setsockopt(&sock, sockopt::ReusePort, &true).map_err(io::Error::from)?;
        if local.is_ipv6() {
            let only = getsockopt(server, sockopt::Ipv6V6Only).map_err(io::Error::from)?;
            setsockopt(&sock, sockopt::Ipv6V6Only, &only).map_err(io::Error::from)?;
        }
        let addr = SockaddrStorage::from(local);
        // SAFETY: `addr` is a valid sockaddr of `addr.len()` bytes for the call.
        let r = unsafe { libc::bind(sock.as_raw_fd(), addr.as_ptr(), addr.len()) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        if !gso_supported(&sock) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel has no UDP_SEGMENT, which spliced sends need for their checksum",
            ));
        }
        steer_to_first(&sock)?;
        forbid_fragmentation(&sock)?;
        let _ = set_send_buffer(&sock, 8 << 20);
        sock.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(SpliceSocket { sock })
    }

    /// Sends one datagram: `header`, then `len` bytes of `file` from `offset`, to `dest`.
    pub fn send(
        &self,
        dest: &SockaddrStorage,
        header: &[u8],
        file: &File,
        offset: u64,
        len: usize,
    ) -> io::Result<Spliced> {
        // The UDP_SEGMENT size (the whole datagram: nothing is cut) makes the kernel leave the
        // checksum to the device (CHECKSUM_PARTIAL) instead of summing a corked datagram's
        // pages in software: no pass over the payload, and no odd-offset bug.
        let gso = (header.len() + len).max(1) as u16;
        self.sendmsg(dest, header, libc::MSG_MORE, Some(gso))?;
        let mut off = offset as libc::off_t;
        let mut left = len;
        while left > 0 {
            // SAFETY: both fds are open for the call; `off` is a live off_t the kernel updates.
            let n =
                unsafe { libc::sendfile(self.sock.as_raw_fd(), file.as_raw_fd(), &mut off, left) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The header is still corked on the socket: send it alone (the receiver drops
                // a header without its payload) so the next datagram starts clean.
                self.flush();
                return Err(e);
            }
            if n == 0 {
                self.flush();
                return Ok(Spliced::Short);
            }
            left -= n as usize;
        }
        Ok(Spliced::Sent)
    }

    /// Sends `bytes` as one datagram (an END marker).
    pub fn send_plain(&self, dest: &SockaddrStorage, bytes: &[u8]) -> io::Result<()> {
        self.sendmsg(dest, bytes, 0, None)
    }

    /// Ends a corked datagram with what it has.
    fn flush(&self) {
        // An empty send without MSG_MORE pushes the pending datagram (a corked socket needs
        // no address for it).
        let _ = retry_eintr(|| self.sock.send(&[]));
    }

    fn sendmsg(
        &self,
        dest: &SockaddrStorage,
        bytes: &[u8],
        flags: libc::c_int,
        gso: Option<u16>,
    ) -> io::Result<()> {
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        };
        // SAFETY: msghdr is plain old data; zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = dest.as_ptr().cast_mut().cast();
        msg.msg_namelen = dest.len();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        let mut cmsg = [0u64; super::cmsg::GSO_WORDS];
        if let Some(size) = gso {
            super::cmsg::put_gso(&mut msg, &mut cmsg, size);
        }
        retry_eintr(|| {
            // SAFETY: `msg` points at `dest` and `iov` (which points at `bytes`), all live for
            // the call; the kernel only reads them.
            let r = unsafe { libc::sendmsg(self.sock.as_raw_fd(), &msg, flags) };
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        })
    }
}

/// Attaches a reuseport program to `sock`'s group that picks socket 0 for every datagram.
fn steer_to_first(sock: &UdpSocket) -> io::Result<()> {
    let mut code = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: `prog` and the filter it points at are live for the call; the kernel copies them.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn server() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    /// Whatever arrives at the port goes to the server's own socket, from any source port;
    /// the splice socket never receives.
    #[test]
    fn arrivals_go_to_the_server_socket_not_the_splice_one() {
        let main = server();
        let out = SpliceSocket::new(&main).unwrap();
        out.sock.set_nonblocking(true).unwrap();
        let to = main.local_addr().unwrap();
        for i in 0..50u8 {
            UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .send_to(&[i], to)
                .unwrap();
        }
        let mut buf = [0u8; 8];
        for _ in 0..50 {
            main.recv(&mut buf).unwrap();
        }
        assert_eq!(
            out.sock.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        // The port is still the server's alone: a plain bind to it is refused.
        assert!(UdpSocket::bind(to).is_err());
    }

    /// A spliced datagram is the header and the file's bytes at the offset, at odd offsets and
    /// lengths too; a file that ends early gives `Short`.
    #[test]
    fn a_spliced_datagram_is_the_header_then_the_file_s_bytes() {
        let main = server();
        let out = SpliceSocket::new(&main).unwrap();
        let rx = server();
        let dest = SockaddrStorage::from(rx.local_addr().unwrap());
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        let file = File::open(f.path()).unwrap();
        let mut buf = vec![0u8; 70_000];
        for (offset, len) in [(0usize, 4096usize), (1, 9999), (4095, 8193), (12_345, 7655)] {
            let header = [0xabu8; 32];
            let r = out.send(&dest, &header, &file, offset as u64, len).unwrap();
            assert_eq!(r, Spliced::Sent);
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(n, 32 + len, "offset {offset}");
            assert_eq!(&buf[..32], &header);
            assert_eq!(&buf[32..n], &data[offset..offset + len], "offset {offset}");
        }
        // Past the end: what there was goes, and the caller is told.
        let r = out.send(&dest, &[1u8; 32], &file, 19_000, 4000).unwrap();
        assert_eq!(r, Spliced::Short);
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(n, 32 + 1000);
        // The socket is clean after it: the next datagram is whole.
        out.send_plain(&dest, b"next").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"next");
    }
}
