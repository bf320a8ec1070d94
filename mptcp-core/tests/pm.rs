//! The path manager against the real kernel, inside test-bed namespaces,
//! cross-checked with iproute2.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use mptcp_core::pm::{
    Endpoint, EndpointFlags, Error, Event, EventKind, EventListener, Limits, PathManager,
};
use mptcp_testbed::{Host, transfer};

/// A fresh namespace with an interface `d0` (one end of a veth pair: this
/// kernel has no dummy driver) holding 198.18.5.1/24 and 198.18.5.2/24, so
/// that `signal` endpoints with a port can listen.
fn host_with_dummy() -> Host {
    mptcp_testbed::require_privileges().expect("the path-manager tests need root");
    let host = Host::new("pm").unwrap();
    host.ip_batch(&[
        "link add d0 type veth peer name d1",
        "addr add 198.18.5.1/24 dev d0",
        "addr add 198.18.5.2/24 dev d0",
        "link set d0 up",
        "link set d1 up",
    ])
    .unwrap();
    host
}

/// `ip mptcp endpoint show`, one trimmed line per endpoint.
fn ip_endpoints(host: &Host) -> Vec<String> {
    let out = host.ip(&["mptcp", "endpoint", "show"]).unwrap();
    out.lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn what_the_api_adds_iproute2_lists() {
    let host = host_with_dummy();
    let listed = host.run(|| {
        let mut pm = PathManager::open().unwrap();
        let ifindex = host_ifindex("d0");
        let mut subflow = Endpoint::new(
            addr("198.18.5.1"),
            EndpointFlags::SUBFLOW | EndpointFlags::BACKUP,
        );
        subflow.id = 3;
        subflow.ifindex = Some(ifindex);
        pm.add_endpoint(&subflow).unwrap();
        let mut signal = Endpoint::new(addr("198.18.5.2"), EndpointFlags::SIGNAL);
        signal.id = 4;
        signal.port = Some(10_000);
        pm.add_endpoint(&signal).unwrap();
        pm.add_endpoint(&Endpoint::new(
            addr("2001:db8::7"),
            EndpointFlags::SUBFLOW | EndpointFlags::FULLMESH,
        ))
        .unwrap();
        let listed = pm.endpoints().unwrap();
        assert_eq!(pm.endpoint(3).unwrap(), subflow);
        listed.iter().map(ToString::to_string).collect::<Vec<_>>()
    });
    assert_eq!(
        listed,
        [
            "198.18.5.1 id 3 subflow backup dev d0",
            "198.18.5.2 port 10000 id 4 signal",
            "2001:db8::7 id 5 subflow fullmesh",
        ]
    );
    assert_eq!(ip_endpoints(&host), listed);
}

/// The index of interface `name` in the calling thread's namespace.
fn host_ifindex(name: &str) -> u32 {
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "no interface {name:?}");
    index
}

#[test]
fn what_iproute2_adds_the_api_lists_and_changes() {
    let host = host_with_dummy();
    host.ip_batch(&[
        "mptcp endpoint add 198.18.5.1 id 7 subflow backup fullmesh dev d0",
        "mptcp endpoint add 198.18.5.2 port 10001 signal",
    ])
    .unwrap();
    host.run(|| {
        let mut pm = PathManager::open().unwrap();
        let endpoints = pm.endpoints().unwrap();
        assert_eq!(endpoints.len(), 2, "{endpoints:?}");
        assert_eq!(
            endpoints[0],
            Endpoint {
                id: 7,
                addr: addr("198.18.5.1"),
                port: None,
                ifindex: Some(host_ifindex("d0")),
                flags: EndpointFlags::SUBFLOW | EndpointFlags::BACKUP | EndpointFlags::FULLMESH,
            }
        );
        assert_eq!(endpoints[1].addr, addr("198.18.5.2"));
        assert_eq!(endpoints[1].port, Some(10001));
        assert_eq!(endpoints[1].flags, EndpointFlags::SIGNAL);
        pm.set_flags(7, EndpointFlags::BACKUP).unwrap();
        assert_eq!(
            pm.endpoint(7).unwrap().flags,
            EndpointFlags::SUBFLOW | EndpointFlags::BACKUP
        );
        pm.remove_endpoint_by_addr(addr("198.18.5.2")).unwrap();
    });
    assert_eq!(
        ip_endpoints(&host),
        ["198.18.5.1 id 7 subflow backup dev d0"]
    );
    host.run(|| {
        let mut pm = PathManager::open().unwrap();
        pm.remove_endpoint(7).unwrap();
        assert!(pm.endpoints().unwrap().is_empty());
        let missing = pm.remove_endpoint(7).unwrap_err();
        assert!(
            missing.to_string().contains("address not found"),
            "{missing}"
        );
        pm.add_endpoint(&Endpoint::new(addr("198.18.5.1"), EndpointFlags::SUBFLOW))
            .unwrap();
        pm.flush().unwrap();
        assert!(pm.endpoints().unwrap().is_empty());
    });
    assert!(ip_endpoints(&host).is_empty());
}

#[test]
fn limits_round_trip_with_iproute2() {
    let host = host_with_dummy();
    host.run(|| {
        PathManager::open()
            .unwrap()
            .set_limits(Limits {
                subflows: 5,
                add_addr_accepted: 3,
            })
            .unwrap()
    });
    let shown = host.ip(&["mptcp", "limits", "show"]).unwrap();
    assert_eq!(shown.trim(), "add_addr_accepted 3 subflows 5");
    host.ip(&[
        "mptcp",
        "limits",
        "set",
        "subflows",
        "8",
        "add_addr_accepted",
        "1",
    ])
    .unwrap();
    let limits = host.run(|| PathManager::open().unwrap().limits().unwrap());
    assert_eq!(
        limits,
        Limits {
            subflows: 8,
            add_addr_accepted: 1
        }
    );
    assert_eq!(limits.to_string(), "add_addr_accepted 1 subflows 8");
}

#[test]
fn errors_are_clear() {
    let host = host_with_dummy();
    host.run(|| {
        let mut pm = PathManager::open().unwrap();
        for i in 1..=8 {
            pm.add_endpoint(&Endpoint::new(
                addr(&format!("198.18.9.{i}")),
                EndpointFlags::SUBFLOW,
            ))
            .unwrap();
        }
        let ninth = pm
            .add_endpoint(&Endpoint::new(addr("198.18.9.9"), EndpointFlags::SUBFLOW))
            .unwrap_err();
        let text = ninth.to_string();
        assert!(
            matches!(
                ninth,
                Error::Kernel {
                    errno: libc::ERANGE,
                    ..
                }
            ),
            "{ninth:?}"
        );
        assert!(
            text.starts_with("add endpoint 198.18.9.9 subflow: "),
            "{text}"
        );
        assert!(text.contains("too many addresses"), "{text}");
        assert!(text.contains("at most 8 endpoints"), "{text}");

        let both = pm
            .add_endpoint(&Endpoint::new(
                addr("198.18.5.1"),
                EndpointFlags::SIGNAL | EndpointFlags::FULLMESH,
            ))
            .unwrap_err();
        assert!(matches!(both, Error::Invalid(_)));
        assert!(both.to_string().contains("signal and fullmesh"), "{both}");
        let mut port = Endpoint::new(addr("198.18.5.1"), EndpointFlags::SUBFLOW);
        port.port = Some(1000);
        let port = pm.add_endpoint(&port).unwrap_err();
        assert!(
            port.to_string().contains("signal when using port"),
            "{port}"
        );
        let change = pm.set_flags(1, EndpointFlags::SIGNAL).unwrap_err();
        assert!(
            change.to_string().contains("only backup and fullmesh"),
            "{change}"
        );

        let limits = pm
            .set_limits(Limits {
                subflows: 9,
                add_addr_accepted: 0,
            })
            .unwrap_err();
        assert!(
            limits.to_string().contains("greater than maximum"),
            "{limits}"
        );
    });
}

/// Drops every capability of the calling thread (capsets are per thread).
fn drop_capabilities() {
    let mut header = libc_cap_header();
    let data = [[0u32; 3]; 2];
    // SAFETY: header and data are the v3 capset structures (one header, two
    // 3-word data entries) and outlive the call; capset only reads them.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
}

/// `struct __user_cap_header_struct` for `_LINUX_CAPABILITY_VERSION_3`.
fn libc_cap_header() -> [u32; 2] {
    [0x2008_0522, 0]
}

#[test]
fn missing_privilege_says_run_as_root() {
    let host = host_with_dummy();
    host.run(|| {
        drop_capabilities();
        // Reading is allowed without privilege, changing is not.
        let mut pm = PathManager::open().unwrap();
        pm.endpoints().unwrap();
        let e = pm
            .add_endpoint(&Endpoint::new(addr("198.18.5.1"), EndpointFlags::SUBFLOW))
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e:?}");
        assert!(
            e.to_string().ends_with("needs CAP_NET_ADMIN (run as root)"),
            "{e}"
        );
        let e = EventListener::subscribe().unwrap_err();
        assert!(
            e.to_string().ends_with("needs CAP_NET_ADMIN (run as root)"),
            "{e}"
        );
    });
}

/// Events of connection `token` until `until` is seen, with a deadline.
fn events_until(listener: &mut EventListener, token: Option<u32>, until: EventKind) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut events = Vec::new();
    while Instant::now() < deadline {
        let Some(event) = listener
            .next_event_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap()
        else {
            break;
        };
        if token.is_some() && event.token.is_some() && event.token != token {
            continue;
        }
        let done = event.kind == until;
        events.push(event);
        if done {
            return events;
        }
    }
    panic!("no {until:?} event within 10 s; got {events:#?}");
}

fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

#[test]
fn a_two_subflow_connection_produces_its_events_in_order() {
    mptcp_testbed::require_privileges().expect("the path-manager tests need root");
    let bed = mptcp_testbed::two_links(2, None).unwrap();
    let mut client_events = bed.client.run(|| EventListener::subscribe().unwrap());
    let mut server_events = bed.server.run(|| EventListener::subscribe().unwrap());
    let server_addr = SocketAddr::new(bed.server_addr().into(), 0);
    let listener = bed
        .server
        .run(|| transfer::listen(transfer::Proto::Mptcp, server_addr).unwrap());
    let server_addr = listener.local_addr().unwrap();
    // The listener stays open until the second subflow has joined (joins
    // arrive at it), and closes before the client does: the kernel may
    // report the connection closed as soon as the peer's close arrives.
    let (joined, wait_for_join) = std::sync::mpsc::channel::<()>();
    let (listener_closed, wait_for_listener_close) = std::sync::mpsc::channel::<()>();
    let echo = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        wait_for_join.recv().unwrap();
        drop(listener);
        listener_closed.send(()).unwrap();
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).unwrap();
        buf.len()
    });
    let mut stream = bed
        .client
        .run(|| transfer::connect(transfer::Proto::Mptcp, server_addr).unwrap());
    stream.write_all(&[7; 64 * 1024]).unwrap();

    let opened = events_until(&mut client_events, None, EventKind::SubflowEstablished);
    assert_eq!(
        kinds(&opened),
        [
            EventKind::Created,
            EventKind::Established,
            EventKind::SubflowEstablished
        ]
    );
    let token = opened[0].token;
    assert!(token.is_some());
    let client_addr = stream.local_addr().unwrap();
    assert_eq!(opened[0].local, Some(client_addr));
    assert_eq!(opened[0].remote, Some(server_addr));
    assert!(!opened[0].server_side);
    assert!(opened.iter().all(|e| e.token == token));
    let subflow = &opened[2];
    assert_eq!(
        subflow.local.map(|a| a.ip()),
        Some(IpAddr::from(bed.client_addr(1)))
    );
    assert_eq!(subflow.remote, Some(server_addr));
    assert_eq!(subflow.local_id, Some(1));
    assert_eq!(subflow.remote_id, Some(0));
    assert_eq!(subflow.backup, Some(false));

    // Userspace commands on a connection of the in-kernel path manager.
    let in_kernel = bed.client.run(|| {
        PathManager::open()
            .unwrap()
            .remove(token.unwrap(), 1)
            .unwrap_err()
    });
    assert!(
        in_kernel
            .to_string()
            .contains("`sysctl net.mptcp.pm_type=1`"),
        "{in_kernel}"
    );

    joined.send(()).unwrap();
    wait_for_listener_close.recv().unwrap();
    // The listener's close reaches the kernel when its last reference goes,
    // which a process that another test thread is forking at that moment
    // holds until it execs: wait for the event before the connection closes.
    let mut server = events_until(&mut server_events, None, EventKind::ListenerClosed);
    drop(stream);
    assert_eq!(echo.join().unwrap(), 64 * 1024);
    let closed = events_until(&mut client_events, token, EventKind::Closed);
    assert_eq!(closed.last().unwrap().kind, EventKind::Closed);
    assert!(closed.iter().all(|e| e.kind != EventKind::Created));

    // The server saw its listener, the same connection from its side, and
    // the listener closed before the accepted stream.
    server.extend(events_until(&mut server_events, None, EventKind::Closed));
    let server_kinds: Vec<_> = kinds(&server)
        .into_iter()
        .filter(|k| *k != EventKind::SubflowClosed)
        .collect();
    assert_eq!(
        server_kinds,
        [
            EventKind::ListenerCreated,
            EventKind::Created,
            EventKind::Established,
            EventKind::SubflowEstablished,
            EventKind::ListenerClosed,
            EventKind::Closed
        ]
    );
    assert_eq!(server[0].local, Some(server_addr));
    assert!(server[1].server_side);
    assert_eq!(server[1].remote, Some(client_addr));
}

#[test]
fn userspace_path_manager_commands() {
    mptcp_testbed::require_privileges().expect("the path-manager tests need root");
    let bed = mptcp_testbed::two_links(2, None).unwrap();
    bed.client.sysctl("net.mptcp.pm_type", "1").unwrap();
    let mut client_events = bed.client.run(|| EventListener::subscribe().unwrap());
    let mut server_events = bed.server.run(|| EventListener::subscribe().unwrap());
    let listener = bed.server.run(|| {
        transfer::listen(
            transfer::Proto::Mptcp,
            SocketAddr::new(bed.server_addr().into(), 0),
        )
        .unwrap()
    });
    let server_addr = listener.local_addr().unwrap();
    // One byte each way: the client's connection is fully established (and
    // the event sent) once the server acknowledged data. The listener stays
    // open: joins arrive at it.
    let accepted = std::thread::spawn(move || {
        let mut stream = listener.accept().unwrap().0;
        let mut byte = [0];
        stream.read_exact(&mut byte).unwrap();
        stream.write_all(&byte).unwrap();
        (listener, stream)
    });
    let mut stream = bed
        .client
        .run(|| transfer::connect(transfer::Proto::Mptcp, server_addr).unwrap());
    stream.write_all(&[1]).unwrap();
    stream.read_exact(&mut [0]).unwrap();
    let _server_stream = accepted.join().unwrap();
    let established = events_until(&mut client_events, None, EventKind::Established);
    let token = established[0].token.unwrap();
    let second = IpAddr::from(bed.client_addr(1));

    let mut pm = bed.client.run(|| PathManager::open().unwrap());
    pm.create_subflow(token, 2, second, server_addr).unwrap();
    let sub = events_until(
        &mut client_events,
        Some(token),
        EventKind::SubflowEstablished,
    );
    let sub = sub.last().unwrap();
    let local = sub.local.unwrap();
    assert_eq!(local.ip(), second);
    assert_eq!(sub.remote, Some(server_addr));

    pm.set_backup(token, local, server_addr, true).unwrap();
    let prio = events_until(&mut server_events, None, EventKind::SubflowPriority);
    assert_eq!(prio.last().unwrap().backup, Some(true));

    pm.destroy_subflow(token, local, server_addr).unwrap();
    let closed = events_until(&mut client_events, Some(token), EventKind::SubflowClosed);
    assert_eq!(closed.last().unwrap().local, Some(local));

    // Announcing then withdrawing the address (id 2, as the kernel recorded
    // it for the subflow above).
    pm.announce(token, 2, second, None).unwrap();
    let announced = events_until(&mut server_events, None, EventKind::Announced);
    let announced = announced.last().unwrap();
    assert_eq!(announced.remote_id, Some(2));
    assert_eq!(announced.remote.map(|a| a.ip()), Some(second));
    pm.remove(token, 2).unwrap();
    let removed = events_until(&mut server_events, None, EventKind::Removed);
    assert_eq!(removed.last().unwrap().remote_id, Some(2));

    let unknown = pm
        .create_subflow(token ^ 1, 0, second, server_addr)
        .unwrap_err();
    assert!(unknown.to_string().contains("create subflow"), "{unknown}");
    drop(stream);
}

#[test]
fn userspace_commands_on_an_unknown_token_say_so() {
    let host = host_with_dummy();
    let e = host.run(|| PathManager::open().unwrap().remove(1, 1).unwrap_err());
    let text = e.to_string();
    assert!(
        text.starts_with("remove address id 1 from connection 0x00000001: invalid token"),
        "{text}"
    );
    assert!(
        text.contains("no MPTCP connection has this token"),
        "{text}"
    );
}

#[test]
fn laminar_endpoints_on_kernels_that_know_them() {
    let host = host_with_dummy();
    let listed = host.run(|| {
        let mut pm = PathManager::open().unwrap();
        let laminar = Endpoint::new(addr("198.18.5.1"), EndpointFlags::LAMINAR);
        match pm.add_endpoint(&laminar) {
            Ok(()) => Some(pm.endpoints().unwrap()),
            // Kernels before 6.18 refuse the unknown flag; the error says which request.
            Err(e) => {
                assert!(
                    e.to_string()
                        .starts_with("add endpoint 198.18.5.1 laminar: "),
                    "{e}"
                );
                None
            }
        }
    });
    if let Some(listed) = listed {
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].flags, EndpointFlags::LAMINAR);
        assert_eq!(listed[0].to_string(), "198.18.5.1 id 1 laminar");
    }
}
