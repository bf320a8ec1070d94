//! MPTCP sockets on the real kernel: loopback connections, fallback to a
//! plain-TCP peer, and the fallback policy with `net.mptcp.enabled=0` in a
//! namespace of the test's own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;

use mptcp_core::info::MptcpExt;
use mptcp_core::socket::{self, Error, Fallback, FallbackReason, is_mptcp};
use socket2::{Domain, Protocol, Socket, Type};

fn plain_tcp_listener(addr: &str) -> TcpListener {
    let addr: SocketAddr = addr.parse().unwrap();
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket.bind(&addr.into()).unwrap();
    socket.listen(8).unwrap();
    socket.into()
}

/// Sends a few bytes each way so both ends are fully established.
fn ping(client: &mut TcpStream, server: &mut TcpStream) {
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    server.write_all(b"pong").unwrap();
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
}

fn mptcp_both_ends(bind: &str) {
    let listener = socket::bind_listener(bind, Fallback::Fail).unwrap();
    assert!(listener.is_mptcp().unwrap(), "an MPTCP listener");
    let mut client = socket::connect(listener.local_addr().unwrap(), Fallback::Fail).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    ping(&mut client, &mut server);
    assert!(client.is_mptcp().unwrap(), "client end uses MPTCP");
    assert!(server.is_mptcp().unwrap(), "accepted end uses MPTCP");
    assert!(!client.mptcp_info().unwrap().fallback());
}

#[test]
fn loopback_ipv4_is_mptcp_on_both_ends() {
    mptcp_both_ends("127.0.0.1:0");
}

#[test]
fn loopback_ipv6_is_mptcp_on_both_ends() {
    mptcp_both_ends("[::1]:0");
}

#[test]
fn plain_tcp_server_makes_the_client_fall_back() {
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let listener = plain_tcp_listener(bind);
        assert!(!listener.is_mptcp().unwrap());
        let created = socket::new(
            Domain::for_address(listener.local_addr().unwrap()),
            Fallback::Fail,
        )
        .unwrap();
        assert!(created.is_mptcp(), "the socket itself is MPTCP");
        created
            .socket
            .connect(&listener.local_addr().unwrap().into())
            .unwrap();
        let mut client: TcpStream = created.socket.into();
        let (mut server, _) = listener.accept().unwrap();
        ping(&mut client, &mut server);
        assert!(
            !client.is_mptcp().unwrap(),
            "{bind}: the kernel fell back to TCP"
        );
        assert!(!server.is_mptcp().unwrap());
        // The MPTCP-level queries say so clearly, for both families (the
        // kernel answers EOPNOTSUPP on IPv4 and ENOPROTOOPT on IPv6).
        assert!(
            matches!(client.mptcp_info(), Err(Error::NotMptcp)),
            "{bind}"
        );
        assert!(matches!(client.subflows(), Err(Error::NotMptcp)), "{bind}");
        assert!(matches!(client.full_info(), Err(Error::NotMptcp)), "{bind}");
    }
}

#[test]
fn plain_tcp_client_on_an_mptcp_listener_is_not_mptcp() {
    let listener = socket::bind_listener("127.0.0.1:0", Fallback::Fail).unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    ping(&mut client, &mut server);
    assert!(!client.is_mptcp().unwrap());
    assert!(
        !server.is_mptcp().unwrap(),
        "accepted from a TCP client: fallback"
    );
}

#[test]
fn is_mptcp_works_on_every_descriptor_kind() {
    let listener = socket::bind_listener("127.0.0.1:0", Fallback::Fail).unwrap();
    let client = socket::connect(listener.local_addr().unwrap(), Fallback::Fail).unwrap();
    let _server = listener.accept().unwrap();
    assert!(is_mptcp(client.as_fd()).unwrap());
    let socket2 = Socket::from(client.try_clone().unwrap());
    assert!(socket2.is_mptcp().unwrap());
    let owned = std::os::fd::OwnedFd::from(client);
    assert!(owned.is_mptcp().unwrap());
    // Not a TCP socket at all: a clear "no", not an error.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    assert!(!udp.is_mptcp().unwrap());
    let (unix, _) = std::os::unix::net::UnixStream::pair().unwrap();
    assert!(!unix.is_mptcp().unwrap());
}

#[test]
fn is_mptcp_on_a_file_is_enotsock() {
    let file = std::fs::File::open("/dev/null").unwrap();
    let err = file.is_mptcp().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTSOCK));
}

#[test]
fn refusal_errnos_are_told_apart() {
    assert_eq!(
        FallbackReason::from_errno(libc::EINVAL),
        Some(FallbackReason::KernelTooOld)
    );
    assert_eq!(
        FallbackReason::from_errno(libc::EPROTONOSUPPORT),
        Some(FallbackReason::NotBuilt)
    );
    assert_eq!(
        FallbackReason::from_errno(libc::ENOPROTOOPT),
        Some(FallbackReason::Disabled)
    );
    assert_eq!(FallbackReason::from_errno(libc::EMFILE), None);
    for reason in [
        FallbackReason::KernelTooOld,
        FallbackReason::NotBuilt,
        FallbackReason::Disabled,
    ] {
        assert_eq!(FallbackReason::from_errno(reason.errno()), Some(reason));
    }
    let msg = Error::Refused(FallbackReason::Disabled).to_string();
    assert!(msg.contains("sysctl -w net.mptcp.enabled=1"), "{msg}");
    let io: std::io::Error = Error::Refused(FallbackReason::NotBuilt).into();
    assert_eq!(io.kind(), std::io::ErrorKind::Unsupported);
    assert!(io.to_string().contains("CONFIG_MPTCP"), "{io}");
}

/// A fresh network namespace (loopback up) with `net.mptcp.enabled=0`.
fn host_with_mptcp_disabled() -> mptcp_testbed::Host {
    let host =
        mptcp_testbed::Host::new("mptcp-disabled").expect("a network namespace (needs root)");
    host.sysctl("net.mptcp.enabled", "0").unwrap();
    host
}

#[test]
fn disabled_mptcp_falls_back_to_a_working_tcp_connection() {
    host_with_mptcp_disabled().run(|| {
        let listener = socket::bind_listener("127.0.0.1:0", Fallback::Tcp).unwrap();
        let addr = listener.local_addr().unwrap();
        let created = socket::new(Domain::IPV4, Fallback::Tcp).unwrap();
        assert_eq!(created.fallback, Some(FallbackReason::Disabled));
        created.socket.connect(&addr.into()).unwrap();
        let mut client: TcpStream = created.socket.into();
        let (mut server, _) = listener.accept().unwrap();
        ping(&mut client, &mut server);
        assert!(!client.is_mptcp().unwrap());
        assert!(!server.is_mptcp().unwrap());

        let mut client = socket::connect(addr, Fallback::Tcp).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        ping(&mut client, &mut server);
    });
}

#[test]
fn disabled_mptcp_with_strict_policy_is_a_clear_enoprotoopt() {
    let (created, connected, listener) = host_with_mptcp_disabled().run(|| {
        (
            socket::new(Domain::IPV6, Fallback::Fail).map(|_| ()),
            socket::connect("127.0.0.1:9", Fallback::Fail).map(|_| ()),
            socket::bind_listener("127.0.0.1:0", Fallback::Fail).map(|_| ()),
        )
    });
    for result in [created, connected, listener] {
        let err = result.unwrap_err();
        assert!(
            matches!(err, Error::Refused(FallbackReason::Disabled)),
            "{err:?}"
        );
        assert_eq!(err.raw_os_error(), Some(libc::ENOPROTOOPT));
        assert!(err.to_string().contains("net.mptcp.enabled=1"), "{err}");
    }
}
