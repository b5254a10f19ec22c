//! Multicast sockets: the server's sender to a group (hop limit, outgoing interface, never
//! fragmented) and a receiver's socket bound to the group and joined on an interface. Every
//! sub-client of one `get` joins with its own socket on the same port (`SO_REUSEADDR`): the
//! kernel gives each a copy, as it would separate hosts. (Options nix has no name for are
//! set through `socket.rs`'s one raw `setsockopt`.)

use std::io::{self, IoSlice};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    bind, sendmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessage, IpMembershipRequest,
    MsgFlags, SockFlag, SockType, SockaddrStorage,
};

use super::socket::{forbid_fragmentation, set_raw, set_send_buffer};

/// The index of the interface that has address `ip`, 0 when none does (the kernel then
/// chooses by its routes).
pub fn interface_of(ip: IpAddr) -> u32 {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return 0;
    };
    for a in addrs {
        let found = a.address.as_ref().is_some_and(|s| {
            s.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip())) == Some(ip)
                || s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())) == Some(ip)
        });
        if found {
            return nix::net::if_::if_nametoindex(a.interface_name.as_str()).unwrap_or(0);
        }
    }
    0
}

/// A socket that sends to `group`: from `interface` (an address of the outgoing interface;
/// `None`: the kernel's route), `ttl` hops at most, looped back to this host's own members,
/// never fragmented, with a 4 MiB send buffer where the kernel grants it.
pub fn group_sender(
    group: SocketAddr,
    ttl: u32,
    interface: Option<IpAddr>,
) -> io::Result<UdpSocket> {
    let local: SocketAddr = match (interface, group) {
        (Some(ip), _) => SocketAddr::new(ip, 0),
        (None, SocketAddr::V4(_)) => "0.0.0.0:0".parse().expect("literal"),
        (None, SocketAddr::V6(_)) => "[::]:0".parse().expect("literal"),
    };
    let sock = UdpSocket::bind(local)?;
    let hops = ttl.min(255);
    match group.ip() {
        IpAddr::V4(_) => {
            setsockopt(&sock, sockopt::IpMulticastTtl, &(hops as u8))?;
            setsockopt(&sock, sockopt::IpMulticastLoop, &true)?;
            if let Some(IpAddr::V4(ip)) = interface {
                let addr = libc::in_addr {
                    s_addr: u32::from_ne_bytes(ip.octets()),
                };
                set_raw(&sock, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &addr)?;
            }
        }
        IpAddr::V6(_) => {
            setsockopt(&sock, sockopt::Ipv6MulticastHops, &(hops as libc::c_int))?;
            set_raw(
                &sock,
                libc::IPPROTO_IPV6,
                libc::IPV6_MULTICAST_LOOP,
                &1 as &libc::c_int,
            )?;
            if let Some(ip) = interface {
                let index = interface_of(ip) as libc::c_int;
                set_raw(&sock, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, &index)?;
            }
        }
    }
    forbid_fragmentation(&sock)?;
    let _ = set_send_buffer(&sock, 4 << 20);
    Ok(sock)
}

/// A socket bound to `group` and joined to it on the interface that has `local` (the
/// address this host reaches the server from; unspecified: the kernel's choice).
pub fn group_receiver(group: SocketAddr, local: IpAddr) -> io::Result<UdpSocket> {
    let family = match group {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(group))?;
    let sock = UdpSocket::from(fd);
    match (group.ip(), local) {
        (IpAddr::V4(g), local) => {
            let iface = match local {
                IpAddr::V4(l) if !l.is_unspecified() => Some(l),
                IpAddr::V6(l) => l.to_ipv4_mapped().filter(|l| !l.is_unspecified()),
                _ => None::<Ipv4Addr>,
            };
            setsockopt(
                &sock,
                sockopt::IpAddMembership,
                &IpMembershipRequest::new(g, iface),
            )?;
        }
        (IpAddr::V6(g), local) => {
            let mreq = libc::ipv6_mreq {
                ipv6mr_multiaddr: libc::in6_addr {
                    s6_addr: g.octets(),
                },
                ipv6mr_interface: interface_of(local),
            };
            set_raw(&sock, libc::IPPROTO_IPV6, libc::IPV6_ADD_MEMBERSHIP, &mreq)?;
        }
    }
    Ok(sock)
}

/// Sends `buf` to `dest` as datagrams of `segment` bytes (the last may be shorter), in one
/// call with UDP GSO when there are several.
pub fn send_segments(
    sock: &UdpSocket,
    buf: &[u8],
    segment: usize,
    dest: &SockaddrStorage,
) -> io::Result<usize> {
    let iov = [IoSlice::new(buf)];
    let seg = segment.min(u16::MAX as usize) as u16;
    let gso = [ControlMessage::UdpGsoSegments(&seg)];
    let cmsgs: &[ControlMessage<'_>] = if segment < buf.len() { &gso } else { &[] };
    Ok(sendmsg(
        sock.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::empty(),
        Some(dest),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_an_interface_with_an_index() {
        assert!(interface_of("127.0.0.1".parse().unwrap()) > 0);
        assert_eq!(interface_of("192.0.2.77".parse().unwrap()), 0);
    }
}
