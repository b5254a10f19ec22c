//! Socket options: kernel buffer sizes (forced past `rmem_max` when privileged), the path MTU
//! and never fragmenting, UDP GSO and GRO.
#![allow(unsafe_code)]

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{getsockopt, setsockopt, sockopt};

use crate::protocol::MAX_DATAGRAM;

/// Asks for a receive buffer of `bytes`. Tries `SO_RCVBUFFORCE` (root, or CAP_NET_ADMIN) and
/// falls back to `SO_RCVBUF`, which the kernel caps at `net.core.rmem_max`. Returns the size
/// the kernel actually granted (it doubles the request to account for its own overhead).
pub fn set_recv_buffer(sock: &UdpSocket, bytes: usize) -> io::Result<usize> {
    if setsockopt(sock, sockopt::RcvBufForce, &bytes).is_err() {
        setsockopt(sock, sockopt::RcvBuf, &bytes).map_err(io::Error::from)?;
    }
    getsockopt(sock, sockopt::RcvBuf).map_err(io::Error::from)
}

/// Like [`set_recv_buffer`], for the send buffer.
pub fn set_send_buffer(sock: &UdpSocket, bytes: usize) -> io::Result<usize> {
    if setsockopt(sock, sockopt::SndBufForce, &bytes).is_err() {
        setsockopt(sock, sockopt::SndBuf, &bytes).map_err(io::Error::from)?;
    }
    getsockopt(sock, sockopt::SndBuf).map_err(io::Error::from)
}

fn set_int(
    sock: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    set_raw(sock, level, name, &value)
}

/// Sets a socket option whose value is the plain-data `value` (an int, an address, a
/// membership request).
pub(super) fn set_raw<T: Copy>(
    sock: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is a live, initialised T (plain data: Copy) and its exact size is
    // passed; the kernel only reads it. The fd is open for the call (borrowed from `sock`).
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_int(sock: &UdpSocket, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live and describe a c_int-sized buffer the kernel fills.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Forbids fragmentation on `sock`: a datagram larger than the path MTU fails with EMSGSIZE
/// instead of leaving as IP fragments (one lost fragment loses the whole datagram, and
/// fragments of competing flows interleave at a bottleneck).
pub fn forbid_fragmentation(sock: &UdpSocket) -> io::Result<()> {
    if sock.local_addr()?.is_ipv4() {
        set_int(
            sock,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    } else {
        set_int(
            sock,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )?;
        // An IPv6 socket may also send to IPv4-mapped addresses.
        let _ = set_int(
            sock,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        );
        set_int(sock, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)
    }
}

/// The path MTU of a connected socket (the route's MTU, or less if the kernel learned a
/// smaller one), bytes of IP packet.
pub fn path_mtu(sock: &UdpSocket) -> io::Result<usize> {
    let mtu = if sock.peer_addr()?.is_ipv4() {
        getsockopt(sock, sockopt::IpMtu).map_err(io::Error::from)?
    } else {
        get_int(sock, libc::IPPROTO_IPV6, libc::IPV6_MTU)?
    };
    Ok(mtu.max(0) as usize)
}

/// A UDP socket on an ephemeral port of `peer`'s family, connected to it (so the kernel
/// filters out everything else, and an ICMP "port unreachable" shows as `ECONNREFUSED`).
pub fn connected(peer: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(any)?;
    sock.connect(peer)?;
    Ok(sock)
}

/// The path MTU towards `peer`, from a throwaway socket connected to it (no packet is sent).
pub fn route_mtu(peer: SocketAddr) -> io::Result<usize> {
    path_mtu(&connected(peer)?)
}

/// The largest datagram that reaches `peer` unfragmented by its route's MTU ([`route_mtu`],
/// [`datagram_size_for_mtu`]); 65507 when the route cannot be asked.
pub fn route_datagram_size(peer: SocketAddr) -> usize {
    route_mtu(peer)
        .map(|mtu| datagram_size_for_mtu(mtu, &peer))
        .unwrap_or(MAX_DATAGRAM)
}

/// The largest UDP payload a packet of `mtu` bytes carries to `peer`: the MTU minus the IP
/// header (20 bytes for IPv4, 40 for IPv6) and the UDP header (8), at most 65507.
pub fn datagram_size_for_mtu(mtu: usize, peer: &SocketAddr) -> usize {
    let ip_header = if peer.is_ipv4() || is_v4_mapped(peer) {
        20
    } else {
        40
    };
    mtu.saturating_sub(ip_header + 8).min(MAX_DATAGRAM)
}

fn is_v4_mapped(a: &SocketAddr) -> bool {
    matches!(a, SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some())
}

/// Whether this kernel sends UDP GSO (`UDP_SEGMENT`), probed the way quinn-udp does: set the
/// socket option, then turn it off again so segmentation is asked per send (a cmsg).
pub fn gso_supported(sock: &UdpSocket) -> bool {
    if setsockopt(sock, sockopt::UdpGsoSegment, &1472).is_err() {
        return false;
    }
    let _ = setsockopt(sock, sockopt::UdpGsoSegment, &0);
    true
}

/// Asks the kernel to deliver coalesced datagrams (`UDP_GRO`); false where it cannot.
pub fn enable_gro(sock: &UdpSocket) -> bool {
    setsockopt(sock, sockopt::UdpGroSegment, &true).is_ok()
}

/// Runs a socket call again while it fails with EINTR.
///
/// Linux does not restart a socket call that has a timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO`) when
/// it is interrupted: `sock_intr_errno()` returns -EINTR instead of -ERESTARTSYS. Seen in this
/// project's tests on a loaded 2-core machine: a client's `recv` failing with "Interrupted system
/// call" after 0 bytes. Every blocking socket call goes through here.
pub fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_mtu_and_datagram_sizes() {
        // Loopback's MTU is 65536 here: the lab's 65507-byte datagrams fit it whole.
        let lo = route_mtu("127.0.0.1:9".parse().unwrap()).unwrap();
        assert!(lo >= 1500, "{lo}");
        let v4: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:1".parse().unwrap();
        assert_eq!(datagram_size_for_mtu(1500, &v4), 1472);
        assert_eq!(datagram_size_for_mtu(1500, &v6), 1452);
        assert_eq!(datagram_size_for_mtu(1500, &mapped), 1472);
        assert_eq!(datagram_size_for_mtu(9000, &v4), 8972);
        assert_eq!(datagram_size_for_mtu(65536, &v4), MAX_DATAGRAM);
    }

    #[test]
    fn the_socket_forbids_fragmentation() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        forbid_fragmentation(&s).unwrap();
        assert_eq!(
            get_int(&s, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER).unwrap(),
            libc::IP_PMTUDISC_DO
        );
        // Loopback's MTU holds any UDP datagram, so only the option can be checked here (and
        // that the largest datagram still goes); tests/netns.rs sees a send past a 1500-byte
        // MTU fail (a_server_whose_path_cannot_carry_its_size_fails_the_session_with_the_reason).
        let dst = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(&[0u8; 65_507], dst.local_addr().unwrap())
            .unwrap();
    }

    #[test]
    fn eintr_is_retried_and_other_errors_are_not() {
        let mut calls = 0;
        let r = retry_eintr(|| {
            calls += 1;
            if calls < 3 {
                Err(io::Error::from(io::ErrorKind::Interrupted))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(r.unwrap(), 3);
        let mut calls = 0;
        let r: io::Result<()> = retry_eintr(|| {
            calls += 1;
            Err(io::Error::from(io::ErrorKind::WouldBlock))
        });
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }
}
