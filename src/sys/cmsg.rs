//! Control messages (the ancillary data of `sendmsg` and `recvmsg`), written and walked in one
//! place: the `UDP_SEGMENT` a GSO send carries, and whatever a receive brings (timestamps,
//! `UDP_GRO` sizes). The `CMSG_*` macros are the kernel's layout; nothing else addresses it.
#![allow(unsafe_code)]

/// Control-message space for one `UDP_SEGMENT` (CMSG_SPACE of a u16), in u64 words.
pub const GSO_WORDS: usize = 3;

/// Bytes of control data one `UDP_SEGMENT` takes (`msg_controllen` of a GSO send).
pub fn gso_space() -> usize {
    // SAFETY: computes a length only.
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize }
}

/// Points `msg`'s control data at `space` and writes one `UDP_SEGMENT` of `size` bytes there:
/// a send with it is cut into datagrams of that size (UDP GSO). `msg` keeps a pointer to
/// `space`, so `space` must stay where it is for as long as `msg` is used.
pub fn put_gso(msg: &mut libc::msghdr, space: &mut [u64; GSO_WORDS], size: u16) {
    let len = gso_space();
    assert!(len <= std::mem::size_of_val(space));
    msg.msg_control = space.as_mut_ptr().cast();
    msg.msg_controllen = len;
    // SAFETY: msg_control points at `space`, large enough for CMSG_SPACE of a u16 (the
    // assert); CMSG_FIRSTHDR of a control buffer that large is its start, and the writes stay
    // inside it. The payload is written unaligned.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(msg);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size);
    }
}

/// Calls `each(level, type, data)` for every control message of `msg`, a message the kernel
/// filled in (its `msg_control` and `msg_controllen` describe a buffer of the caller's).
pub fn each(msg: &libc::msghdr, mut each: impl FnMut(i32, i32, &[u8])) {
    if msg.msg_control.is_null() {
        return;
    }
    let end = msg.msg_control as usize + msg.msg_controllen;
    // SAFETY: msg_control/msg_controllen describe the caller's buffer, as the kernel left
    // them; CMSG_FIRSTHDR/CMSG_NXTHDR stay inside it (NXTHDR returns null past its end), and
    // each message's data is read only up to its cmsg_len, which is checked against the end.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let header = libc::CMSG_LEN(0) as usize;
            let len = (*c).cmsg_len.saturating_sub(header);
            if data as usize + len > end {
                break;
            }
            each(
                (*c).cmsg_level,
                (*c).cmsg_type,
                std::slice::from_raw_parts(data, len),
            );
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gso_control_message_walks_back_as_written() {
        let mut space = [0u64; GSO_WORDS];
        // SAFETY (test): msghdr is plain old data; zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        put_gso(&mut msg, &mut space, 1472);
        let mut seen = Vec::new();
        each(&msg, |level, kind, data| {
            seen.push((level, kind, data.to_vec()))
        });
        assert_eq!(
            seen,
            vec![(
                libc::SOL_UDP,
                libc::UDP_SEGMENT,
                1472u16.to_ne_bytes().to_vec()
            )]
        );
        assert_eq!(msg.msg_controllen, gso_space());
    }
}
