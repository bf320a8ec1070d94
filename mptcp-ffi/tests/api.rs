//! The C API called the way C calls it (raw pointers, negative errno
//! returns), from Rust: argument checks and messages, size-versioned
//! structs and arrays, sockets on loopback, the path manager and its events
//! in test-bed namespaces, the relay carrying a SOCKS5 connection on
//! loopback, and the probe.

use std::ffi::{CStr, CString, c_char, c_int};
use std::io::{Read, Write};
use std::mem::size_of;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr;
use std::time::{Duration, Instant};

use mptcp::*;

mod common;
use common::{assert_echoes, echo_once, socks5_connect};

fn last_error() -> String {
    // SAFETY: mptcp_last_error always returns a valid C string.
    unsafe { CStr::from_ptr(mptcp_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// A fixed `char` array field as a string.
fn text(field: &[c_char]) -> String {
    let bytes: Vec<u8> = field
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8(bytes).expect("UTF-8 text")
}

/// Checks that the `local_text` and `remote_text` of a listed connection
/// or subflow are the addresses of `stream`.
fn assert_addr_texts(local_text: &[c_char], remote_text: &[c_char], stream: &TcpStream) {
    assert_eq!(text(local_text), stream.local_addr().unwrap().to_string());
    assert_eq!(text(remote_text), stream.peer_addr().unwrap().to_string());
}

/// A static C string result.
fn static_str(ptr: *const c_char) -> Option<String> {
    (!ptr.is_null()).then(|| {
        // SAFETY: the library returns NULL or a static NUL-terminated string.
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned()
    })
}

/// The library's output structs are plain integers: zero is a valid value.
fn zeroed<T>() -> T {
    // SAFETY: only called for the library's repr(C) integer structs.
    unsafe { std::mem::zeroed() }
}

/// A zeroed size-versioned struct with `struct_size` set.
macro_rules! versioned {
    ($ty:ty) => {{
        let mut value: $ty = zeroed();
        value.struct_size = size_of::<$ty>();
        value
    }};
}

/// Lists the way a C program does, with `list` (one of the library's array
/// calls with its handle bound: array, element size, count): a size query
/// (NULL array), then an array of that size; checks that both calls succeed
/// and agree.
fn list_all<T>(list: impl Fn(*mut T, usize, &mut usize) -> c_int) -> Vec<T> {
    let mut count = 0usize;
    assert_eq!(list(ptr::null_mut(), size_of::<T>(), &mut count), 0);
    let mut items: Vec<T> = (0..count).map(|_| zeroed()).collect();
    let written = list(items.as_mut_ptr(), size_of::<T>(), &mut count);
    assert_eq!(written as usize, count);
    items
}

fn c(text: &str) -> CString {
    CString::new(text).unwrap()
}

/// Takes ownership of a descriptor the library returned.
fn owned<T: FromRawFd>(fd: c_int) -> T {
    assert!(fd >= 0, "the call failed: {fd} ({})", last_error());
    // SAFETY: the library returned a fresh descriptor owned by the caller.
    unsafe { T::from_raw_fd(fd) }
}

/// An MPTCP connection on loopback made with the C API: (client, server).
fn loopback_pair() -> (TcpStream, TcpStream) {
    // SAFETY: valid C strings.
    let listener: TcpListener =
        owned(unsafe { mptcp_listen(c("127.0.0.1:0").as_ptr(), MPTCP_FALLBACK_FAIL) });
    let addr = c(&listener.local_addr().unwrap().to_string());
    // SAFETY: a valid C string.
    let client: TcpStream = owned(unsafe { mptcp_connect(addr.as_ptr(), MPTCP_FALLBACK_FAIL) });
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

#[test]
fn bad_arguments_fail_with_an_errno_and_a_message_per_thread() {
    // SAFETY: every call in this test passes pointers that are NULL, valid, or
    // sized as the call requires.
    unsafe {
        assert_eq!(
            mptcp_connect(ptr::null(), MPTCP_FALLBACK_TCP),
            -libc::EINVAL
        );
        assert_eq!(last_error(), "mptcp_connect: `address` is NULL");
        for bad_port in [
            "127.0.0.1:http",
            "127.0.0.1:65536",
            "127.0.0.1:-1",
            "127.0.0.1",
        ] {
            let address = c(bad_port);
            assert_eq!(
                mptcp_connect(address.as_ptr(), MPTCP_FALLBACK_TCP),
                -libc::EINVAL,
                "{bad_port}"
            );
            assert!(
                last_error().contains(&format!("`address` is {bad_port:?}")),
                "{}",
                last_error()
            );
            assert_eq!(
                mptcp_listen(address.as_ptr(), MPTCP_FALLBACK_TCP),
                -libc::EINVAL,
                "{bad_port}"
            );
        }

        let not_utf8 = [0xffu8 as c_char, 0];
        assert_eq!(
            mptcp_listen(not_utf8.as_ptr(), MPTCP_FALLBACK_TCP),
            -libc::EINVAL
        );
        assert!(last_error().contains("not valid UTF-8"), "{}", last_error());

        assert_eq!(
            mptcp_socket(libc::AF_UNIX, MPTCP_FALLBACK_TCP, ptr::null_mut()),
            -libc::EAFNOSUPPORT
        );
        assert_eq!(
            mptcp_socket(libc::AF_INET, 7, ptr::null_mut()),
            -libc::EINVAL
        );
        assert!(
            last_error().contains("MPTCP_FALLBACK_FAIL"),
            "{}",
            last_error()
        );
        assert_eq!(mptcp_is_mptcp(-1), -libc::EBADF);
        assert_eq!(mptcp_get_info(-1, ptr::null_mut()), -libc::EBADF);

        assert_eq!(mptcp_pm_open(ptr::null_mut()), -libc::EINVAL);
        let mut count = 0usize;
        assert_eq!(
            mptcp_pm_endpoints(ptr::null_mut(), ptr::null_mut(), 0, &mut count),
            -libc::EINVAL
        );
        assert_eq!(mptcp_pm_set_limits(ptr::null_mut(), 1, 1), -libc::EINVAL);
        assert_eq!(mptcp_pm_events_open(ptr::null_mut()), -libc::EINVAL);
        assert_eq!(mptcp_pm_events_fd(ptr::null()), -libc::EINVAL);
        let mut event = versioned!(mptcp_event_t);
        assert_eq!(
            mptcp_pm_events_next(ptr::null_mut(), &mut event, 0),
            -libc::EINVAL
        );
        assert_eq!(
            mptcp_relay_start(ptr::null(), ptr::null_mut()),
            -libc::EINVAL
        );
        assert_eq!(
            mptcp_relay_stats(ptr::null(), ptr::null_mut()),
            -libc::EINVAL
        );
        assert_eq!(
            mptcp_relay_stop(ptr::null_mut(), 0, ptr::null_mut()),
            -libc::EINVAL
        );
        assert_eq!(mptcp_probe(ptr::null_mut()), -libc::EINVAL);
        assert_eq!(last_error(), "mptcp_probe: `probe` is NULL");
        // Closing NULL is a no-op, like free(NULL).
        mptcp_pm_close(ptr::null_mut());
        mptcp_pm_events_close(ptr::null_mut());

        // The message stays until the next failure.
        let mut probe = versioned!(mptcp_probe_t);
        assert_eq!(mptcp_probe(&mut probe), 0);
        assert_eq!(last_error(), "mptcp_probe: `probe` is NULL");

        // snprintf-like copies.
        let full = last_error().len() as c_int;
        assert_eq!(mptcp_last_error_message(ptr::null_mut(), 0), full);
        let mut small = [0x55 as c_char; 8];
        assert_eq!(
            mptcp_last_error_message(small.as_mut_ptr(), small.len()),
            full
        );
        assert_eq!(text(&small), "mptcp_p");
        assert_eq!(mptcp_last_error_message(ptr::null_mut(), 4), -libc::EINVAL);
    }
    // Each thread has its own message.
    let other = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(other, "");
    assert_eq!(
        static_str(mptcp_version()).unwrap(),
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn info_and_subflows_write_only_what_the_caller_knows() {
    let (client, server) = loopback_pair();
    let fd = client.as_raw_fd();
    assert_eq!(mptcp_is_mptcp(fd), 1);
    assert_eq!(mptcp_is_mptcp(server.as_raw_fd()), 1);
    let expected = mptcp_core::info::mptcp_info(std::os::fd::AsFd::as_fd(&client)).unwrap();

    // SAFETY: every call in this test passes pointers valid for the
    // sizes passed.
    unsafe {
        let mut info = versioned!(mptcp_info_t);
        assert_eq!(mptcp_get_info(fd, &mut info), 0);
        assert_eq!(info.struct_size, size_of::<mptcp_info_t>());
        assert_eq!(info.token, expected.token);
        assert_eq!(
            info.present,
            MPTCP_INFO_HAS_COUNTERS | MPTCP_INFO_HAS_SUBFLOWS_TOTAL | MPTCP_INFO_HAS_TIMES,
            "Linux 6.10+ reports every field"
        );
        assert_eq!(info.subflows_total, 1);
        assert_eq!(info.flags & MPTCP_INFO_FALLBACK, 0);

        // An older program's smaller struct: nothing past its size is touched.
        let mut buf = [0xAAu8; size_of::<mptcp_info_t>() + 16];
        let known = 20usize; // struct_size, present, flags, token
        ptr::write_unaligned(buf.as_mut_ptr().cast::<usize>(), known);
        let buf_ptr = buf.as_mut_ptr().cast::<mptcp_info_t>();
        assert_eq!(mptcp_get_info(fd, buf_ptr), 0);
        assert_eq!(ptr::read_unaligned(buf.as_ptr().cast::<usize>()), known);
        let token = u32::from_ne_bytes(buf[16..20].try_into().unwrap());
        assert_eq!(token, expected.token);
        assert!(
            buf[known..].iter().all(|&b| b == 0xAA),
            "wrote past struct_size"
        );

        let mut unset = versioned!(mptcp_info_t);
        unset.struct_size = 0;
        assert_eq!(mptcp_get_info(fd, &mut unset), -libc::EINVAL);
        assert!(last_error().contains("struct_size"), "{}", last_error());

        // Size query, then a listing with a larger element (a newer header).
        let list = |array, elem_size, count| mptcp_get_subflows(fd, array, elem_size, count);
        let size = size_of::<mptcp_subflow_t>();
        let mut count = 0usize;
        assert_eq!(list(ptr::null_mut(), size, &mut count), 0);
        assert_eq!(count, 1);
        let stride = size + 32;
        let mut array = vec![0xAAu8; 2 * stride];
        count = 2;
        let written = list(array.as_mut_ptr().cast(), stride, &mut count);
        assert_eq!((written, count), (1, 1));
        let subflow: mptcp_subflow_t = ptr::read_unaligned(array.as_ptr().cast());
        assert_addr_texts(&subflow.local_text, &subflow.remote_text, &client);
        assert_eq!(subflow.local.ss_family, libc::AF_INET as libc::sa_family_t);
        assert_ne!(subflow.present & MPTCP_SUBFLOW_HAS_ID, 0);
        assert_eq!(subflow.state, 1, "TCP_ESTABLISHED");
        assert!(array[size..].iter().all(|&b| b == 0xAA));

        // Too small an array: nothing lost, the count says how many exist.
        let mut one: [mptcp_subflow_t; 1] = [zeroed()];
        count = 0;
        assert_eq!(list(one.as_mut_ptr(), size, &mut count), 0);
        assert_eq!(count, 1);
        count = 1;
        assert_eq!(list(ptr::null_mut(), size, &mut count), -libc::EINVAL);
        count = 1;
        assert_eq!(list(one.as_mut_ptr(), 0, &mut count), -libc::EINVAL);
        assert_eq!(list(one.as_mut_ptr(), 1, ptr::null_mut()), -libc::EINVAL);
    }
}

#[test]
fn plain_tcp_is_told_apart() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = c(&listener.local_addr().unwrap().to_string());
    // SAFETY: a valid C string.
    let client: TcpStream = owned(unsafe { mptcp_connect(addr.as_ptr(), MPTCP_FALLBACK_TCP) });
    let (server, _) = listener.accept().unwrap();
    // The client asked for MPTCP; the plain TCP server made it fall back.
    assert_eq!(mptcp_is_mptcp(client.as_raw_fd()), 0);
    assert_eq!(mptcp_is_mptcp(server.as_raw_fd()), 0);
    let mut info = versioned!(mptcp_info_t);
    assert_eq!(
        // SAFETY: a valid struct.
        unsafe { mptcp_get_info(client.as_raw_fd(), &mut info) },
        -libc::EOPNOTSUPP
    );
    assert!(
        last_error().contains("does not use MPTCP"),
        "{}",
        last_error()
    );
    let mut refusal = 1;
    // SAFETY: a valid out pointer.
    let socket: TcpStream =
        owned(unsafe { mptcp_socket(libc::AF_INET6, MPTCP_FALLBACK_FAIL, &mut refusal) });
    assert_eq!(refusal, 0, "an MPTCP socket");
    drop(socket);
}

#[test]
fn disabled_mptcp_falls_back_or_fails_as_asked() {
    mptcp_testbed::require_privileges().expect("this test needs root (network namespaces)");
    let host = mptcp_testbed::Host::new("disabled").unwrap();
    host.sysctl("net.mptcp.enabled", "0").unwrap();
    host.run(|| {
        let mut refusal = 0;
        // SAFETY: a valid out pointer.
        let fd = unsafe { mptcp_socket(libc::AF_INET, MPTCP_FALLBACK_TCP, &mut refusal) };
        let socket: TcpStream = owned(fd);
        assert_eq!(refusal, -libc::ENOPROTOOPT);
        let advice = static_str(mptcp_refusal_advice(refusal)).unwrap();
        assert!(advice.contains("net.mptcp.enabled=1"), "{advice}");
        assert!(mptcp_refusal_advice(-libc::EBADF).is_null());
        drop(socket);

        // SAFETY: NULL is allowed for refusal.
        let failed = unsafe { mptcp_socket(libc::AF_INET, MPTCP_FALLBACK_FAIL, ptr::null_mut()) };
        assert_eq!(failed, -libc::ENOPROTOOPT);
        assert!(
            last_error().contains("sysctl -w net.mptcp.enabled=1"),
            "{}",
            last_error()
        );

        let mut probe = versioned!(mptcp_probe_t);
        // SAFETY: a valid struct.
        assert_eq!(unsafe { mptcp_probe(&mut probe) }, 0);
        assert_eq!((probe.ipv4, probe.enabled), (-libc::ENOPROTOOPT, 0));
    });
}

#[test]
fn probe_reports_the_running_kernel() {
    let mut probe = versioned!(mptcp_probe_t);
    // SAFETY: a valid struct.
    assert_eq!(unsafe { mptcp_probe(&mut probe) }, 0);
    assert!(probe.kernel_major >= 5);
    assert_eq!((probe.ipv4, probe.enabled), (0, 1));
    assert!(text(&probe.kernel_release).starts_with(&probe.kernel_major.to_string()));
    assert!(!text(&probe.path_manager).is_empty());

    // SAFETY: NULL with length 0 asks for the length.
    let len = unsafe { mptcp_probe_text(ptr::null_mut(), 0) };
    assert!(len > 0);
    let mut buf = vec![0 as c_char; len as usize + 64];
    // SAFETY: `buf` is writable for its length.
    let full = unsafe { mptcp_probe_text(buf.as_mut_ptr(), buf.len()) };
    let printed = text(&buf);
    assert_eq!(full as usize, printed.len());
    assert!(printed.contains("MPTCP IPv4:   available"), "{printed}");
    assert!(printed.contains("net.mptcp.enabled = 1"), "{printed}");
}

#[test]
fn path_manager_endpoints_limits_and_flags() {
    mptcp_testbed::require_privileges().expect("this test needs root (network namespaces)");
    let host = mptcp_testbed::Host::new("pm").unwrap();
    // A signal endpoint with a port listens on its address: it must exist.
    host.ip_batch(&["link set lo up", "addr add 198.18.7.2/32 dev lo"])
        .unwrap();
    host.run(|| {
        // SAFETY: every call in this closure passes valid pointers and sizes; the
        // handle lives until mptcp_pm_close.
        unsafe {
            let mut pm = ptr::null_mut();
            assert_eq!(mptcp_pm_open(&mut pm), 0, "{}", last_error());

            assert_eq!(mptcp_pm_set_limits(pm, 3, 2), 0, "{}", last_error());
            let mut limits = versioned!(mptcp_limits_t);
            assert_eq!(mptcp_pm_get_limits(pm, &mut limits), 0);
            assert_eq!((limits.subflows, limits.add_addr_accepted), (3, 2));

            let add = |addr: &str, flags, id, port| {
                mptcp_pm_add_endpoint(pm, c(addr).as_ptr(), flags, id, port, 0)
            };
            assert_eq!(
                add("198.18.7.1", MPTCP_ENDPOINT_SUBFLOW, 5, 0),
                0,
                "{}",
                last_error()
            );
            assert_eq!(
                add("198.18.7.2", MPTCP_ENDPOINT_SIGNAL, 6, 8080),
                0,
                "{}",
                last_error()
            );
            assert_eq!(
                add("2001:db8::1", MPTCP_ENDPOINT_SUBFLOW, 0, 0),
                0,
                "{}",
                last_error()
            );
            assert_eq!(
                add(
                    "198.18.7.3",
                    MPTCP_ENDPOINT_SIGNAL | MPTCP_ENDPOINT_FULLMESH,
                    0,
                    0
                ),
                -libc::EINVAL
            );
            assert!(
                last_error().contains("signal and fullmesh"),
                "{}",
                last_error()
            );
            assert_eq!(
                add("not-an-ip", MPTCP_ENDPOINT_SUBFLOW, 0, 0),
                -libc::EINVAL
            );
            assert!(
                last_error().contains("not an IP address"),
                "{}",
                last_error()
            );
            // A duplicate: the kernel's errno varies across versions.
            assert!(add("198.18.7.1", MPTCP_ENDPOINT_SUBFLOW, 5, 0) < 0);
            assert!(
                last_error().contains("add endpoint 198.18.7.1"),
                "{}",
                last_error()
            );

            let list = || list_all(|array, size, count| mptcp_pm_endpoints(pm, array, size, count));
            let endpoints = list();
            let shown: Vec<(String, u8, u32, u16)> = endpoints
                .iter()
                .map(|e| (text(&e.addr_text), e.id, e.flags, e.port))
                .collect();
            assert_eq!(shown.len(), 3, "{shown:?}");
            assert!(
                shown.contains(&("198.18.7.1".into(), 5, MPTCP_ENDPOINT_SUBFLOW, 0)),
                "{shown:?}"
            );
            assert!(
                shown.contains(&("198.18.7.2".into(), 6, MPTCP_ENDPOINT_SIGNAL, 8080)),
                "{shown:?}"
            );
            assert!(shown.iter().any(|e| e.0 == "2001:db8::1"), "{shown:?}");
            let signal = endpoints.iter().find(|e| e.id == 6).unwrap();
            assert_eq!(signal.addr.ss_family, libc::AF_INET as libc::sa_family_t);

            assert_eq!(
                mptcp_pm_set_endpoint_flags(pm, 5, MPTCP_ENDPOINT_BACKUP),
                0,
                "{}",
                last_error()
            );
            let changed = list().into_iter().find(|e| e.id == 5).unwrap();
            assert_eq!(
                changed.flags,
                MPTCP_ENDPOINT_SUBFLOW | MPTCP_ENDPOINT_BACKUP
            );
            assert_eq!(
                mptcp_pm_set_endpoint_flags(pm, 5, MPTCP_ENDPOINT_SIGNAL),
                -libc::EINVAL
            );

            let mut buf = [0 as c_char; 32];
            let len = mptcp_endpoint_flags_format(changed.flags, buf.as_mut_ptr(), buf.len());
            assert_eq!((len, text(&buf)), (14, "subflow backup".to_owned()));
            let mut flags = 0u32;
            assert_eq!(
                mptcp_endpoint_flags_parse(c("signal,backup").as_ptr(), &mut flags),
                0
            );
            assert_eq!(flags, MPTCP_ENDPOINT_SIGNAL | MPTCP_ENDPOINT_BACKUP);
            assert_eq!(
                mptcp_endpoint_flags_parse(c("bogus").as_ptr(), &mut flags),
                -libc::EINVAL
            );
            assert!(last_error().contains("\"bogus\""), "{}", last_error());

            assert_eq!(mptcp_pm_remove_endpoint(pm, 5), 0, "{}", last_error());
            assert_eq!(
                mptcp_pm_remove_endpoint_addr(pm, c("198.18.7.2").as_ptr()),
                0,
                "{}",
                last_error()
            );
            assert_eq!(list().len(), 1);
            assert_eq!(mptcp_pm_flush(pm), 0, "{}", last_error());
            assert!(list().is_empty());
            mptcp_pm_close(pm);
        }
    });
    // iproute2 agrees that nothing is left.
    assert_eq!(host.ip(&["mptcp", "endpoint", "show"]).unwrap().trim(), "");
}

#[test]
fn events_report_a_connection_and_its_subflows() {
    mptcp_testbed::require_privileges().expect("this test needs root (network namespaces)");
    let bed = mptcp_testbed::two_links(2, None).expect("two-link test bed");
    let listen = c(&format!("{}:0", bed.server_addr()));
    // SAFETY: a valid C string.
    let listener: TcpListener = owned(
        bed.server
            .run(|| unsafe { mptcp_listen(listen.as_ptr(), MPTCP_FALLBACK_FAIL) }),
    );
    let server_addr = c(&listener.local_addr().unwrap().to_string());
    let echo = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).unwrap() {
                0 => break,
                n => conn.write_all(&buf[..n]).unwrap(),
            }
        }
    });

    let kinds = bed.client.run(|| {
        // SAFETY: every call in this closure passes valid pointers and sizes; the
        // handle lives until mptcp_pm_events_close.
        unsafe {
            let mut events = ptr::null_mut();
            assert_eq!(mptcp_pm_events_open(&mut events), 0, "{}", last_error());
            let events_fd = mptcp_pm_events_fd(events);
            assert!(events_fd >= 0);
            let mut event = versioned!(mptcp_event_t);
            assert_eq!(
                mptcp_pm_events_next(events, &mut event, 0),
                0,
                "no event yet"
            );
            assert_eq!(mptcp_pm_events_next(events, &mut event, -2), -libc::EINVAL);

            let mut client: TcpStream =
                owned(mptcp_connect(server_addr.as_ptr(), MPTCP_FALLBACK_FAIL));
            // A first exchange makes the connection fully established, after
            // which the path manager opens the second subflow.
            client.write_all(b"ping").unwrap();
            let mut pong = [0u8; 4];
            client.read_exact(&mut pong).unwrap();
            let mut info = versioned!(mptcp_info_t);
            assert_eq!(mptcp_get_info(client.as_raw_fd(), &mut info), 0);

            let mut pollfd = libc::pollfd {
                fd: events_fd,
                events: libc::POLLIN,
                revents: 0,
            };
            assert_eq!(
                libc::poll(&mut pollfd, 1, 5000),
                1,
                "the descriptor becomes readable"
            );

            let mut kinds = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(5);
            while !kinds.contains(&MPTCP_EVENT_KIND_SUBFLOW_ESTABLISHED)
                && Instant::now() < deadline
            {
                event.struct_size = size_of::<mptcp_event_t>();
                match mptcp_pm_events_next(events, &mut event, 500) {
                    1 => {}
                    0 => continue,
                    err => panic!("mptcp_pm_events_next: {err} {}", last_error()),
                }
                kinds.push(event.kind);
                assert_eq!(event.token, info.token, "{}", text(&event.text));
                assert_ne!(event.present & MPTCP_EVENT_HAS_TOKEN, 0);
                assert_ne!(event.present & MPTCP_EVENT_HAS_LOCAL, 0);
                let name = static_str(mptcp_event_kind_name(event.kind)).unwrap();
                assert!(text(&event.text).contains(&name), "{}", text(&event.text));
                if event.kind == MPTCP_EVENT_KIND_SUBFLOW_ESTABLISHED {
                    assert_eq!(
                        text(&event.local_text).split(':').next(),
                        Some("198.18.1.1")
                    );
                    assert_eq!(text(&event.remote_text), server_addr.to_str().unwrap());
                }
            }
            drop(client);
            mptcp_pm_events_close(events);
            kinds
        }
    });
    echo.join().unwrap();
    assert_eq!(
        kinds,
        [
            MPTCP_EVENT_KIND_CREATED,
            MPTCP_EVENT_KIND_ESTABLISHED,
            MPTCP_EVENT_KIND_SUBFLOW_ESTABLISHED
        ]
    );
    assert_eq!(
        static_str(mptcp_event_kind_name(MPTCP_EVENT_KIND_SUBFLOW_ESTABLISHED)).unwrap(),
        "SF_ESTABLISHED"
    );
    assert!(mptcp_event_kind_name(99).is_null());
}

#[test]
fn relay_carries_a_socks5_connection_and_counts_it() {
    // SAFETY: every call in this test passes valid pointers and sizes; the relay
    // handle lives until mptcp_relay_stop.
    unsafe {
        let mut relay = ptr::null_mut();
        let bad = c("[remote]\nlisten = [\"x\"]\n");
        assert_eq!(mptcp_relay_start(bad.as_ptr(), &mut relay), -libc::EINVAL);
        assert!(last_error().contains("line 2"), "{}", last_error());
        assert!(relay.is_null());
        let missing = c("/nonexistent/relay.toml");
        assert_eq!(
            mptcp_relay_start_file(missing.as_ptr(), &mut relay),
            -libc::EINVAL
        );
        assert!(last_error().contains("cannot read"), "{}", last_error());

        let config = c(r#"
            [engine]
            workers = 1
            [remote]
            listen = ["127.0.0.1:0"]
            allow_unauthenticated_loopback = true
            allow_destinations = ["127.0.0.0/8"]
        "#);
        assert_eq!(
            mptcp_relay_start(config.as_ptr(), &mut relay),
            0,
            "{}",
            last_error()
        );

        let mut count = 0usize;
        assert_eq!(
            mptcp_relay_listeners(relay, ptr::null_mut(), 0, &mut count),
            0
        );
        assert_eq!(count, 1);
        let mut listeners: [mptcp_relay_listener_t; 1] = [zeroed()];
        let written = mptcp_relay_listeners(
            relay,
            listeners.as_mut_ptr(),
            size_of::<mptcp_relay_listener_t>(),
            &mut count,
        );
        assert_eq!(written, 1);
        assert_eq!(listeners[0].kind, MPTCP_RELAY_REMOTE_SOCKS5);
        let relay_addr = text(&listeners[0].addr_text);
        assert!(relay_addr.starts_with("127.0.0.1:"), "{relay_addr}");

        // SOCKS5 without authentication (allowed on loopback), CONNECT.
        let (port, echo) = echo_once();
        let mut socks = socks5_connect(&relay_addr, port);
        assert_echoes(&mut socks, b"through the relay");
        echo.join().unwrap();

        let mut stats = versioned!(mptcp_relay_stats_t);
        assert_eq!(mptcp_relay_stats(relay, &mut stats), 0);
        assert_eq!((stats.accepted, stats.relayed), (1, 1));
        drop(socks);

        // A UDP association (RFC 1928 section 7), and a fragment sent on
        // it: dropped, and counted by reason.
        let mut control = TcpStream::connect(&relay_addr).unwrap();
        control.write_all(&[5, 1, 0]).unwrap();
        let mut answer = [0u8; 12];
        control.read_exact(&mut answer[..2]).unwrap();
        control.write_all(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]).unwrap();
        control.read_exact(&mut answer[2..]).unwrap();
        assert_eq!(answer[2..6], [5, 0, 0, 1], "UDP ASSOCIATE accepted");
        let bound = SocketAddr::from((
            [answer[6], answer[7], answer[8], answer[9]],
            u16::from_be_bytes([answer[10], answer[11]]),
        ));
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.send_to(&[0, 0, 1, 1, 127, 0, 0, 1, 0, 7, b'x'], bound)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats.udp_drops[1] == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(mptcp_relay_stats(relay, &mut stats), 0);
        }
        assert_eq!(
            static_str(mptcp_relay_udp_drop_name(1)).unwrap(),
            "fragment"
        );
        assert_eq!(
            (stats.udp_associations, stats.udp_drops[1]),
            (1, 1),
            "{stats:?}"
        );
        assert_eq!(
            stats.udp_drop_kinds as usize,
            mptcp_core::relay::UdpDrop::ALL.len()
        );
        assert!(mptcp_relay_udp_drop_name(stats.udp_drop_kinds).is_null());
        drop(control);

        // A local relay in front: its connection becomes a stream of a
        // session, which both relays count.
        let local_config = c(&format!(
            "[engine]\nworkers = 1\n[local]\nremote = \"{relay_addr}\"\nsocks5 = [\"127.0.0.1:0\"]\n"
        ));
        let mut local = ptr::null_mut();
        assert_eq!(
            mptcp_relay_start(local_config.as_ptr(), &mut local),
            0,
            "{}",
            last_error()
        );
        let mut local_listener: [mptcp_relay_listener_t; 1] = [zeroed()];
        let size = size_of::<mptcp_relay_listener_t>();
        let listed = mptcp_relay_listeners(local, local_listener.as_mut_ptr(), size, &mut count);
        assert_eq!(
            (listed, local_listener[0].kind),
            (1, MPTCP_RELAY_LOCAL_SOCKS5)
        );
        let (port, echo) = echo_once();
        let mut socks = socks5_connect(&text(&local_listener[0].addr_text), port);
        assert_echoes(&mut socks, b"through both relays");
        echo.join().unwrap();
        assert_eq!(mptcp_relay_stats(relay, &mut stats), 0);
        assert_eq!((stats.sessions, stats.multiplexed), (1, 1), "{stats:?}");
        drop(socks);
        assert_eq!(mptcp_relay_stop(local, 2000, ptr::null_mut()), 0);

        let mut last = versioned!(mptcp_relay_stats_t);
        assert_eq!(
            mptcp_relay_stop(relay, 2000, &mut last),
            0,
            "{}",
            last_error()
        );
        // Bytes are counted as connections end; the session's SOCKS5
        // connection was accepted too.
        assert_eq!((last.accepted, last.active, last.sessions), (4, 0, 0));
        assert_eq!(
            (last.udp_associations, last.udp_associations_opened),
            (0, 1)
        );
        assert_eq!(last.bytes_up, 17 + 19);
        // Down: the echo, after the SOCKS5 reply.
        assert!(last.bytes_down >= 17, "{last:?}");
        assert_eq!(
            last.error_kinds as usize,
            mptcp_core::relay::ErrorKind::ALL.len()
        );
        assert_eq!(static_str(mptcp_relay_error_name(0)).unwrap(), "protocol");
        assert!(mptcp_relay_error_name(last.error_kinds).is_null());
    }
}

#[test]
fn diag_snapshot_lists_a_connection_and_its_subflow() {
    let (mut client, mut server) = loopback_pair();
    // A data exchange completes the MPTCP handshake (fully established).
    client.write_all(b"x").unwrap();
    let mut byte = [0u8];
    server.read_exact(&mut byte).unwrap();
    server.write_all(b"y").unwrap();
    client.read_exact(&mut byte).unwrap();
    let mut info = versioned!(mptcp_info_t);
    // SAFETY: every call in this test passes valid pointers and sizes; the
    // snapshot lives until mptcp_diag_close.
    unsafe {
        assert_eq!(mptcp_get_info(client.as_raw_fd(), &mut info), 0);
        let mut snapshot = ptr::null_mut();
        assert_eq!(mptcp_diag_open(&mut snapshot), 0, "{}", last_error());
        let conns: Vec<mptcp_diag_connection_t> =
            list_all(|array, size, count| mptcp_diag_connections(snapshot, array, size, count));
        // Other tests' connections may be there too: find ours by token.
        let index = conns
            .iter()
            .position(|conn| conn.token == info.token)
            .expect("the client connection is in the snapshot");
        let conn = &conns[index];
        assert_addr_texts(&conn.local_text, &conn.remote_text, &client);
        assert_eq!((conn.fallback, conn.subflow_count), (0, 1));
        assert_eq!(
            static_str(mptcp_tcp_state_name(conn.state)).unwrap(),
            "ESTAB"
        );

        let mut subflows: [mptcp_diag_subflow_t; 2] = [zeroed(), zeroed()];
        let mut count = subflows.len();
        let size = size_of::<mptcp_diag_subflow_t>();
        let listed = mptcp_diag_subflows(snapshot, index, subflows.as_mut_ptr(), size, &mut count);
        assert_eq!((listed, count), (1, 1));
        assert_eq!(subflows[0].token, info.token);
        assert_eq!(
            text(&subflows[0].local_text),
            client.local_addr().unwrap().to_string()
        );
        assert_ne!(subflows[0].flags & MPTCP_DIAG_SUBFLOW_FULLY_ESTABLISHED, 0);
        count = 0;
        let past = conns.len();
        assert_eq!(
            mptcp_diag_subflows(snapshot, past, ptr::null_mut(), size, &mut count),
            -libc::ERANGE
        );
        mptcp_diag_close(snapshot);
    }
}
