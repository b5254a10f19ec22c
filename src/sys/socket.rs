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
