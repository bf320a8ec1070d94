//! The loopback peers of the relay tests: a destination that echoes, and a
//! SOCKS5 client.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;

/// A destination on loopback that echoes what one connection sends in its
/// first read (up to 64 bytes): its port, and the thread to join.
pub fn echo_once() -> (u16, JoinHandle<()>) {
    let destination = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = destination.local_addr().unwrap().port();
    let echo = std::thread::spawn(move || {
        let (mut conn, _) = destination.accept().unwrap();
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).unwrap();
        conn.write_all(&buf[..n]).unwrap();
    });
    (port, echo)
}

/// A SOCKS5 CONNECT through `proxy`, without authentication, to
/// 127.0.0.1:`port`: the stream, ready for data, once the proxy granted it.
pub fn socks5_connect(proxy: &str, port: u16) -> TcpStream {
    let mut socks = TcpStream::connect(proxy).expect("connect to the relay");
    socks.write_all(&[5, 1, 0]).unwrap();
    let mut reply = [0u8; 2];
    socks.read_exact(&mut reply).unwrap();
    assert_eq!(reply, [5, 0], "no authentication accepted");
    let [hi, lo] = port.to_be_bytes();
    socks
        .write_all(&[5, 1, 0, 1, 127, 0, 0, 1, hi, lo])
        .unwrap();
    let mut reply = [0u8; 10];
    socks.read_exact(&mut reply).unwrap();
    assert_eq!(reply[..2], [5, 0], "CONNECT granted");
    socks
}

/// Sends `payload` on `stream` and checks that the same bytes come back.
pub fn assert_echoes(stream: &mut TcpStream, payload: &[u8]) {
    stream.write_all(payload).unwrap();
    let mut back = vec![0u8; payload.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, payload);
}
