//! Socket options: kernel buffer sizes (forced past `rmem_max` when privileged) and timeouts.

use std::io;
use std::net::UdpSocket;

use nix::sys::socket::{getsockopt, setsockopt, sockopt};

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
