//! Costs of the `mptcp_core` socket and inspection calls on the real
//! kernel: creating and closing an MPTCP socket against a TCP one, and the
//! queries on a connected loopback MPTCP socket.
//!
//! `cargo bench --bench core -- --warm-up-time 1 --measurement-time 3`
use std::hint::black_box;
use std::net::TcpStream;

use criterion::{Criterion, criterion_group, criterion_main};
use mptcp_core::info::MptcpExt;
use mptcp_core::socket::{self, Fallback};
use socket2::{Domain, Protocol, Socket, Type};

fn create_and_close(c: &mut Criterion) {
    let mut group = c.benchmark_group("socket_create_close");
    group.bench_function("mptcp", |b| {
        b.iter(|| black_box(socket::new(Domain::IPV4, Fallback::Fail).unwrap()))
    });
    group.bench_function("tcp", |b| {
        b.iter(|| black_box(Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap()))
    });
    group.finish();
}

/// A connected loopback MPTCP pair (both ends kept open).
fn loopback_pair() -> (TcpStream, TcpStream) {
    let listener = socket::bind_listener("127.0.0.1:0", Fallback::Fail).unwrap();
    let client = socket::connect(listener.local_addr().unwrap(), Fallback::Fail).unwrap();
    let (server, _) = listener.accept().unwrap();
    assert!(
        client.is_mptcp().unwrap(),
        "the benches need MPTCP on loopback"
    );
    (client, server)
}

fn inspect(c: &mut Criterion) {
    let (client, _server) = loopback_pair();
    let mut group = c.benchmark_group("inspect_loopback");
    group.bench_function("is_mptcp", |b| {
        b.iter(|| black_box(client.is_mptcp().unwrap()))
    });
    group.bench_function("mptcp_info", |b| {
        b.iter(|| black_box(client.mptcp_info().unwrap()))
    });
    group.bench_function("subflows", |b| {
        b.iter(|| black_box(client.subflows().unwrap()))
    });
    group.bench_function("full_info", |b| {
        b.iter(|| black_box(client.full_info().unwrap()))
    });
    group.finish();
}

criterion_group!(benches, create_and_close, inspect);
criterion_main!(benches);
