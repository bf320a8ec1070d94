//! UDP for a transparent proxy (TPROXY): asking the kernel for each
//! datagram's original destination (`IP_RECVORIGDSTADDR`,
//! `IPV6_RECVORIGDSTADDR`) and reading it from the ancillary data of
//! `recvmsg(2)`.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

use super::cvt;

const _: () = assert!(size_of::<libc::sockaddr_in>() == 16);
const _: () = assert!(size_of::<libc::sockaddr_in6>() == 28);
const _: () = assert!(size_of::<libc::sockaddr_storage>() == 128);

/// Ancillary data room: one `cmsghdr` with a `sockaddr_in6`, and more.
const CONTROL_LEN: usize = 128;

/// The control buffer, aligned as `cmsghdr` needs.
#[repr(C, align(8))]
struct Control([u8; CONTROL_LEN]);

/// Asks for the original destination of every datagram (`v6`: of an IPv6
/// socket, which is IPv6 only).
pub fn set_recv_original_destination(fd: BorrowedFd<'_>, v6: bool) -> io::Result<()> {
    let options = if v6 {
        [(libc::SOL_IPV6, libc::IPV6_RECVORIGDSTADDR)]
    } else {
        [(libc::SOL_IP, libc::IP_RECVORIGDSTADDR)]
    };
    for (level, name) in options {
        let one: libc::c_int = 1;
        // SAFETY: `fd` is an open descriptor; the value is a live `c_int`
        // of the length passed.
        cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
    }
    Ok(())
}

/// One datagram read by [`recv_with_destination`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Payload bytes in the buffer (a longer datagram was cut: see
    /// `truncated`).
    pub len: usize,
    /// Its sender.
    pub from: SocketAddr,
    /// Where it was going (`None`: the kernel did not say).
    pub to: Option<SocketAddr>,
    /// The datagram was longer than the buffer.
    pub truncated: bool,
}

/// Reads one datagram with its sender and original destination (a socket
/// set up with [`set_recv_original_destination`]).
pub fn recv_with_destination(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: all-zero bytes are a valid `sockaddr_storage` and `msghdr`.
    let mut name: libc::sockaddr_storage = unsafe { zeroed() };
    let mut control = Control([0; CONTROL_LEN]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL_LEN;
    // SAFETY: `msg` points at `name`, `iov` (over `buf`) and `control`,
    // all live and exclusively borrowed for the call, with their lengths.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let from = socket_addr(&name)
        .ok_or_else(|| io::Error::other("a datagram from a sender that is not IP"))?;
    let mut to = None;
    // SAFETY: `msg` was filled by `recvmsg`: its control pointer and
    // length describe the ancillary data the kernel wrote into `control`,
    // which the CMSG macros walk without leaving it.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is non-null and points at a header inside
        // `control` (CMSG_FIRSTHDR/CMSG_NXTHDR check the bounds).
        let header = unsafe { &*cmsg };
        let origdst = (header.cmsg_level == libc::SOL_IP
            && header.cmsg_type == libc::IP_ORIGDSTADDR)
            || (header.cmsg_level == libc::SOL_IPV6 && header.cmsg_type == libc::IPV6_ORIGDSTADDR);
        if origdst {
            // SAFETY: all-zero bytes are a valid `sockaddr_storage`.
            let mut addr: libc::sockaddr_storage = unsafe { zeroed() };
            // SAFETY: CMSG_LEN only computes a length.
            let header_len = unsafe { libc::CMSG_LEN(0) } as usize;
            // The kernel's address is what follows the header, copied only
            // as far as both it and the storage reach.
            let data_len = (header.cmsg_len as usize)
                .saturating_sub(header_len)
                .min(size_of::<libc::sockaddr_storage>());
            // SAFETY: CMSG_DATA points at `data_len` bytes inside
            // `control`; `addr` has room for them; they do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    libc::CMSG_DATA(cmsg),
                    (&mut addr as *mut libc::sockaddr_storage).cast::<u8>(),
                    data_len,
                );
            }
            to = socket_addr(&addr);
        }
        // SAFETY: `cmsg` is a header of `msg`'s control data.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(Received {
        len: n as usize,
        from,
        to,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
    })
}

/// An IPv4 or IPv6 socket address from the kernel's storage.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`,
            // which is smaller and less aligned than the storage.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddrV4::new(ip, u16::from_be(a.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for a `sockaddr_in6`.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(
                SocketAddrV6::new(
                    ip,
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )
                .into(),
            )
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// Sends `hello` to a socket on `at` set up for destinations and reads
    /// it into 3 bytes.
    fn received(at: &str, v6: bool) -> (Received, SocketAddr, SocketAddr, [u8; 3]) {
        let rx = std::net::UdpSocket::bind(at).unwrap();
        set_recv_original_destination(rx.as_fd(), v6).unwrap();
        let tx = std::net::UdpSocket::bind(at).unwrap();
        tx.send_to(b"hello", rx.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 3];
        for _ in 0..100 {
            match recv_with_destination(rx.as_fd(), &mut buf) {
                Ok(r) => return (r, tx.local_addr().unwrap(), rx.local_addr().unwrap(), buf),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("recvmsg: {e}"),
            }
        }
        panic!("no datagram on {at}");
    }

    #[test]
    fn a_datagram_comes_with_its_sender_and_destination() {
        for (at, v6) in [("127.0.0.1:0", false), ("[::1]:0", true)] {
            let (r, sender, receiver, buf) = received(at, v6);
            assert_eq!(r.from, sender);
            assert_eq!(r.to, Some(receiver));
            assert!(r.truncated, "5 bytes into 3");
            assert_eq!((r.len, &buf), (3, b"hel"));
        }
    }
}
