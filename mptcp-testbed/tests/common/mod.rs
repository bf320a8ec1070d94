//! Transfers that the tests of the test bed run in several places.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use mptcp_testbed::{Host, Proto, RelayPath, Transfer, TransferReport};

/// Runs a transfer of `proto` from `from` to `to_addr` (an address of `to`)
/// for `duration`, and checks that every byte arrived intact.
pub fn transfer(
    from: &Host,
    to: &Host,
    to_addr: Ipv4Addr,
    proto: Proto,
    duration: Duration,
) -> TransferReport {
    let report = Transfer::start(from, to, to_addr, proto, duration)
        .unwrap()
        .wait()
        .unwrap();
    assert!(report.intact(), "{proto:?}: {report:?}");
    report
}

/// Like [`transfer`], but calls `midway` one second in, while data flows (to
/// list the subflows or change a link), and also returns what it returned.
pub fn transfer_with<T>(
    from: &Host,
    to: &Host,
    to_addr: Ipv4Addr,
    proto: Proto,
    duration: Duration,
    midway: impl FnOnce(&Transfer) -> T,
) -> (TransferReport, T) {
    let transfer = Transfer::start(from, to, to_addr, proto, duration).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let seen = midway(&transfer);
    let report = transfer.wait().unwrap();
    assert!(report.intact(), "{proto:?}: {report:?}");
    (report, seen)
}

/// An MPTCP transfer of two seconds from `from` to `to_addr`, checked like
/// [`transfer_with`]: returns the report and the subflows `from` had
/// established one second in (local, remote), after which `then` runs while
/// data still flows.
pub fn mptcp_subflows(
    from: &Host,
    to: &Host,
    to_addr: Ipv4Addr,
    then: impl FnOnce(),
) -> (TransferReport, Vec<(SocketAddrV4, SocketAddrV4)>) {
    let duration = Duration::from_secs(2);
    transfer_with(from, to, to_addr, Proto::Mptcp, duration, |running| {
        let subflows = from.established_tcp(running.port()).unwrap();
        then();
        subflows
    })
}

/// Checks that plain routing carries a TCP transfer of `duration` from the
/// relay path's LAN host to its destination host (over WAN link 0).
pub fn assert_lan_reaches_dest(rp: &RelayPath, duration: Duration) {
    let plain = transfer(&rp.lan, &rp.dest, rp.dest_addr(), Proto::Tcp, duration);
    assert!(plain.received_bytes > 0, "{plain:?}");
}
