//! Transfers that the tests of the test bed run in several places.

use std::net::Ipv4Addr;
use std::time::Duration;

use mptcp_testbed::{Host, Proto, Transfer, TransferReport};

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
