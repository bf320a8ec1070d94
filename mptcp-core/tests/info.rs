//! Connection and subflow inspection on the real kernel: counters after a
//! transfer on loopback, and two subflows over the two links of the test
//! bed.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use mptcp_core::info::MptcpExt;
use mptcp_core::info::{MptcpInfo, Subflow};
use mptcp_core::probe::KernelVersion;
use mptcp_core::socket::{self, Fallback};
use mptcp_testbed::data::{receive_and_check, send_pattern};

/// Polls `f` every 10 ms until it returns `Some`, for at most 5 s.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn loopback_pair() -> (TcpStream, TcpStream) {
    let listener = socket::bind_listener("127.0.0.1:0", Fallback::Fail).unwrap();
    let client = socket::connect(listener.local_addr().unwrap(), Fallback::Fail).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    KernelVersion::running().unwrap() >= KernelVersion::new(major, minor, 0)
}

#[test]
fn counters_move_by_the_bytes_sent() {
    const N: u64 = 3 << 20;
    let (mut client, mut server) = loopback_pair();
    let client_before = client.mptcp_info().unwrap();
    let server_before = server.mptcp_info().unwrap();

    let reader = thread::spawn(move || {
        let mut buf = vec![0u8; N as usize];
        server.read_exact(&mut buf).unwrap();
        server
    });
    send_pattern(&mut client, N).unwrap();
    let server = reader.join().unwrap();

    let client_after = wait_for("the peer to acknowledge all data", || {
        let info = client.mptcp_info().unwrap();
        (info.snd_una == info.write_seq).then_some(info)
    });
    let server_after = server.mptcp_info().unwrap();
    let delta = |after: u64, before: u64| after.wrapping_sub(before);

    assert_eq!(delta(client_after.write_seq, client_before.write_seq), N);
    assert_eq!(delta(client_after.snd_una, client_before.snd_una), N);
    assert_eq!(delta(server_after.rcv_nxt, server_before.rcv_nxt), N);
    if kernel_at_least(6, 5) {
        let sent = delta(
            client_after.bytes_sent.unwrap(),
            client_before.bytes_sent.unwrap(),
        );
        let retrans = client_after.bytes_retrans.unwrap();
        assert!(
            sent >= N && sent <= N + retrans,
            "bytes_sent moved by {sent}, sent {N}"
        );
        let acked = delta(
            client_after.bytes_acked.unwrap(),
            client_before.bytes_acked.unwrap(),
        );
        assert_eq!(acked, N);
        let received = delta(
            server_after.bytes_received.unwrap(),
            server_before.bytes_received.unwrap(),
        );
        assert_eq!(received, N);
    }
}

#[test]
fn fields_of_the_running_kernel_are_present() {
    let (client, _server) = loopback_pair();
    let info: MptcpInfo = client.mptcp_info().unwrap();
    assert!(!info.fallback());
    assert!(info.remote_key_received());
    assert_ne!(info.token, 0);
    assert_eq!(info.retransmits.is_some(), kernel_at_least(6, 5));
    assert_eq!(info.subflows_total, kernel_at_least(6, 8).then_some(1));
    assert_eq!(info.last_data_sent.is_some(), kernel_at_least(6, 10));
    let tcp = client.subflows().unwrap()[0].tcp;
    assert_eq!(tcp.rcv_wnd.is_some(), kernel_at_least(6, 2));
    assert_eq!(tcp.total_rto.is_some(), kernel_at_least(6, 7));
}

#[test]
fn loopback_connection_has_one_subflow_with_its_addresses() {
    let (client, server) = loopback_pair();
    for end in [&client, &server] {
        let subflows = end.subflows().unwrap();
        assert_eq!(subflows.len(), 1, "{subflows:?}");
        assert_eq!(subflows[0].local, end.local_addr().unwrap());
        assert_eq!(subflows[0].remote, end.peer_addr().unwrap());
        assert_eq!(subflows[0].tcp.state, 1, "TCP_ESTABLISHED");
        assert!(subflows[0].tcp.snd_mss > 0);

        let full = end.full_info().unwrap();
        assert_eq!(full.subflows.len(), 1);
        assert_eq!(full.subflows[0].local, subflows[0].local);
        assert_eq!(full.mptcp.token, end.mptcp_info().unwrap().token);
    }
}

#[test]
fn two_links_give_two_subflows_whose_bytes_add_up() {
    const N: u64 = 8 << 20;
    let bed = mptcp_testbed::two_links(2, Some(100)).expect("the test bed (needs root)");
    let server_ip = bed.server_addr();
    let listener = bed
        .server
        .run(|| socket::bind_listener((server_ip, 0), Fallback::Fail))
        .unwrap();
    let server_addr = listener.local_addr().unwrap();
    let receiver = thread::spawn(move || {
        let (mut server, _) = listener.accept().unwrap();
        let (received, sum) = receive_and_check(&mut server).unwrap();
        server.write_all(b"done").unwrap();
        (server, received, sum)
    });

    let mut client = bed
        .client
        .run(|| socket::connect(server_addr, Fallback::Fail))
        .unwrap();
    assert!(client.is_mptcp().unwrap());
    // Subflows are added once the connection is fully established, which
    // takes a first data exchange: send a first part, then the rest.
    let mut data = Vec::new();
    let sum = send_pattern(&mut data, N).unwrap();
    let (first, rest) = data.split_at(64 << 10);
    client.write_all(first).unwrap();
    wait_for("a second subflow", || {
        (client.subflows().unwrap().len() == 2).then_some(())
    });
    client.write_all(rest).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut done = [0u8; 4];
    client.read_exact(&mut done).unwrap();
    let (server, received, server_sum) = receiver.join().unwrap();
    assert_eq!((received, server_sum), (N, sum));

    let expect_local = |i: u8| IpAddr::V4(Ipv4Addr::new(198, 18, i, 1));
    let client_subflows = wait_for("all data acknowledged on the subflows", || {
        let subflows = client.subflows().unwrap();
        (total(&subflows, |s| s.tcp.bytes_acked) >= N).then_some(subflows)
    });
    assert_eq!(client_subflows.len(), 2, "{client_subflows:?}");
    let locals: Vec<IpAddr> = client_subflows.iter().map(|s| s.local.ip()).collect();
    assert_eq!(locals, [expect_local(0), expect_local(1)]);
    for subflow in &client_subflows {
        assert_eq!(
            subflow.remote, server_addr,
            "every subflow goes to the server address"
        );
        assert!(
            subflow.tcp.bytes_acked > 0,
            "both links carried data: {subflow}"
        );
    }
    // Handshake and FIN count as one acknowledged byte each per subflow;
    // data reinjected on the other subflow after a loss counts twice.
    let acked = total(&client_subflows, |s| s.tcp.bytes_acked);
    assert!(
        (N..=N + N / 50).contains(&acked),
        "subflows acked {acked}, sent {N}"
    );
    let sent = total(&client_subflows, |s| s.tcp.bytes_sent);
    assert!(sent >= N, "subflows sent {sent} of {N}");

    let server_subflows = server.subflows().unwrap();
    assert_eq!(server_subflows.len(), 2, "{server_subflows:?}");
    for (server_side, client_side) in server_subflows.iter().zip(&client_subflows) {
        assert_eq!(server_side.remote, client_side.local);
        assert_eq!(server_side.local, client_side.remote);
    }
    let received = total(&server_subflows, |s| s.tcp.bytes_received);
    assert!(
        (N..=N + N / 50).contains(&received),
        "subflows received {received} of {N}"
    );
}

fn total(subflows: &[Subflow], field: impl Fn(&Subflow) -> u64) -> u64 {
    subflows.iter().map(field).sum()
}

#[test]
fn subflow_display_names_addresses_and_counters() {
    let (client, _server) = loopback_pair();
    let subflow = client.subflows().unwrap()[0];
    let text = subflow.to_string();
    let local: SocketAddr = client.local_addr().unwrap();
    assert!(
        text.contains(&format!("{local} -> {}", client.peer_addr().unwrap())),
        "{text}"
    );
    assert!(text.contains("rtt") && text.contains("cwnd"), "{text}");
}
