//! Raw syscalls and kernel ABI structures behind the delay line and the
//! test bed's ping: AF_PACKET sockets, the ethtool ioctl that turns TX
//! checksum offload off, receive timestamps, `poll`, `timerfd`, `eventfd`,
//! the real-time scheduling class and the CPU clock of a thread. Every
//! unsafe block of the test bed's networking is here, behind safe functions.

use std::ffi::CString;
use std::io;
use std::mem::{size_of, size_of_val};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// `ETHTOOL_STXCSUM` from `<linux/ethtool.h>`: set TX checksum offload.
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value` from `<linux/ethtool.h>`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Turns TX checksum offload off on device `dev` of the calling thread's
/// namespace (what `ethtool -K DEV tx off` does; TSO goes with it).
///
/// A veth with offload on hands its peer frames whose TCP/UDP checksum is
/// only partial, to be finished by hardware that a forwarded copy never
/// meets; with it off, the frames carry complete checksums.
pub(crate) fn disable_tx_checksum(dev: &str) -> io::Result<()> {
    let socket = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    let mut request = ifreq(dev)?;
    request.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: `request` is a valid ifreq naming the device, its data pointer
    // points to `value`, an ethtool_value that outlives the call; the kernel
    // reads and writes only these two structures.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut request) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("turning TX checksum offload off on {dev}: {e}"),
        ));
    }
    Ok(())
}

/// An `ifreq` with `ifr_name` set to `dev` and the rest zeroed.
fn ifreq(dev: &str) -> io::Result<libc::ifreq> {
    if dev.len() >= libc::IFNAMSIZ || dev.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {dev:?}"),
        ));
    }
    // SAFETY: ifreq is plain old data (a name and a union of integers,
    // addresses and a pointer), for which all zero bytes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in request.ifr_name.iter_mut().zip(dev.bytes()) {
        *to = from as libc::c_char;
    }
    Ok(request)
}

/// socket(2), owned.
fn socket(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// setsockopt(2) with a plain value.
fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the length given; the kernel
    // only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An AF_PACKET socket bound to one device: it reads every frame that
/// arrives on the device (whatever its destination address, and not the
/// frames sent out of it) and sends whole Ethernet frames out of it.
#[derive(Debug)]
pub(crate) struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens the socket on `dev` of the calling thread's namespace, with
    /// receive and send buffers of `buffer` bytes (or the most the system
    /// allows). Frames sent wait in the device's qdisc, charged to the send
    /// buffer until the device takes them.
    pub(crate) fn bind(dev: &str, buffer: usize) -> io::Result<PacketSocket> {
        let context =
            |e: io::Error| io::Error::new(e.kind(), format!("packet socket on {dev}: {e}"));
        let name = CString::new(dev).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(context(io::Error::last_os_error()));
        }
        // Protocol 0: the socket receives nothing until bound to the device,
        // so no frame of another device slips in first.
        let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, 0).map_err(context)?;
        let raw = fd.as_raw_fd();
        let one: libc::c_int = 1;
        setsockopt(raw, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one).map_err(context)?;
        // Each frame comes with the time it reached the device.
        set_rx_timestamps(fd.as_fd()).map_err(context)?;
        let size = libc::c_int::try_from(buffer).unwrap_or(libc::c_int::MAX);
        // The *FORCE options pass net.core.rmem_max and wmem_max but need
        // CAP_NET_ADMIN in the initial user namespace; without it the sizes
        // are capped at those maxima.
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            setsockopt(raw, libc::SOL_SOCKET, force, &size)
                .or_else(|_| setsockopt(raw, libc::SOL_SOCKET, plain, &size))
                .map_err(context)?;
        }
        // SAFETY: sockaddr_ll is plain old data; all zero bytes is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: `addr` is a sockaddr_ll of the length given, alive for the
        // call; the kernel only reads it.
        let rc = unsafe {
            libc::bind(
                raw,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(context(io::Error::last_os_error()));
        }
        // Promiscuous, so that a device that filters by address still hands
        // over the frames for the far end; undone when the socket closes.
        // SAFETY: packet_mreq is plain old data; all zero bytes is valid.
        let mut membership: libc::packet_mreq = unsafe { std::mem::zeroed() };
        membership.mr_ifindex = ifindex as libc::c_int;
        membership.mr_type = libc::PACKET_MR_PROMISC as u16;
        setsockopt(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            &membership,
        )
        .map_err(context)?;
        Ok(PacketSocket { fd })
    }

    /// Reads one waiting frame into `buf` without blocking. Returns its full
    /// length (more than `buf.len()` if it was cut) and when the kernel
    /// received it (CLOCK_REALTIME, since the Unix epoch), or None when no
    /// frame is waiting.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, Duration)>> {
        recv_stamped(self.fd.as_fd(), buf, libc::MSG_DONTWAIT | libc::MSG_TRUNC)
    }

    /// Sends one whole Ethernet frame out of the device without blocking:
    /// ENOBUFS when the qdisc drops it (its queue is full), EAGAIN when the
    /// send buffer is.
    pub(crate) fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is readable for its length and outlives the call.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Has the kernel stamp each datagram `fd` receives with its arrival time,
/// for [`recv_stamped`].
pub(crate) fn set_rx_timestamps(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: libc::c_int = 1;
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &one)
}

/// recvmsg(2) of one datagram into `buf` on a socket with
/// [`set_rx_timestamps`]: its length (its full length with MSG_TRUNC in
/// `flags`) and when the kernel received it (CLOCK_REALTIME, since the Unix
/// epoch), or None when nothing came (MSG_DONTWAIT, or the socket's receive
/// timeout).
pub(crate) fn recv_stamped(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: libc::c_int,
) -> io::Result<Option<(usize, Duration)>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one control message holding a timespec, aligned for it.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain old data; all zero bytes is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: `msg` points to one iovec over `buf` and to `control`, all
    // writable for the lengths given and alive for the call; `fd` is
    // open, and MSG_TRUNC or MSG_DONTWAIT in `flags` only change the
    // returned length or whether the call waits.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        };
    }
    let mut stamp = None;
    // SAFETY: the kernel filled `control` with msg_controllen bytes of
    // well-formed control messages; the CMSG macros walk them within
    // that length, and the SCM_TIMESTAMPNS payload is a timespec, read
    // unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts = libc::CMSG_DATA(cmsg)
                    .cast::<libc::timespec>()
                    .read_unaligned();
                stamp = Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let stamp =
        stamp.ok_or_else(|| io::Error::other("a datagram without its receive timestamp"))?;
    Ok(Some((n as usize, stamp)))
}

/// CLOCK_REALTIME as a time since the Unix epoch: the clock of the
/// kernel's receive timestamps.
pub(crate) fn unix_time() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// The effective group id of this process.
pub(crate) fn effective_gid() -> u32 {
    // SAFETY: getegid has no arguments and cannot fail.
    unsafe { libc::getegid() }
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Waits until one of `fds` is readable (or has an error or hang-up to
/// report) and says which are. An interrupted wait returns with none ready.
pub(crate) fn poll_readable<const N: usize>(fds: [BorrowedFd<'_>; N]) -> io::Result<[bool; N]> {
    let mut pollfds = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: `pollfds` is an array of N pollfd the kernel may write.
    let rc = unsafe { libc::poll(pollfds.as_mut_ptr(), N as libc::nfds_t, -1) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok([false; N]);
        }
        return Err(e);
    }
    Ok(pollfds.map(|p| p.revents != 0))
}

/// An eventfd: one thread signals it, another polls it.
#[derive(Debug)]
pub(crate) struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new eventfd with the count at zero.
    pub(crate) fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventFd { fd })
    }

    /// Makes the eventfd readable (for good: nobody reads it).
    pub(crate) fn signal(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one`, alive for the call.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
        if n != 8 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A timerfd on CLOCK_MONOTONIC (the clock of `Instant`): readable once it
/// expires. Unlike a `ppoll` timeout, which the kernel may extend by 0.1 %
/// (75 µs of a 75 ms wait) to batch wake-ups, it expires on time.
#[derive(Debug)]
pub(crate) struct TimerFd {
    fd: OwnedFd,
}

impl TimerFd {
    /// A new timer, disarmed.
    pub(crate) fn new() -> io::Result<TimerFd> {
        // SAFETY: timerfd_create takes no pointers.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by timerfd_create(2) and nothing
        // else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(TimerFd { fd })
    }

    /// Arms the timer to expire `after` from now (at least 1 ns), or
    /// disarms it (None); either way it is no longer readable.
    pub(crate) fn set(&self, after: Option<Duration>) -> io::Result<()> {
        let value = after.map_or(Duration::ZERO, |d| d.max(Duration::from_nanos(1)));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: value.as_secs() as libc::time_t,
                tv_nsec: value.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec alive for the call; the old
        // value is not asked for.
        if unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) }
            != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsFd for TimerFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Puts the calling thread in the SCHED_FIFO real-time class at `priority`
/// (1 is the lowest), so that it runs as soon as it wakes, ahead of every
/// ordinary thread. Needs CAP_SYS_NICE (root; not in a user namespace).
pub(crate) fn set_realtime(priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param alive for the call; pid 0 is
    // the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPU time a live thread of this process has used so far (user and
/// system, including the softirq work the kernel charged to it).
pub(crate) fn thread_cpu_time(thread: libc::pthread_t) -> io::Result<Duration> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `thread` is the handle of a thread that has not been joined
    // (the caller holds its JoinHandle); `clock` is written by the call.
    let rc = unsafe { libc::pthread_getcpuclockid(thread, &mut clock) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: all zero bytes is a valid timespec.
    let mut time: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `time` is written by the call; `clock` is a valid clock id.
    if unsafe { libc::clock_gettime(clock, &mut time) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Duration::new(time.tv_sec as u64, time.tv_nsec as u32))
}
