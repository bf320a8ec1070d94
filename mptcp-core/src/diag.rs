//! The MPTCP connections of this host (of the current network namespace),
//! with their subflows, from the kernel's socket diagnostics: what `ss -M`
//! and `ss -tiM` read.
//!
//! Two `NETLINK_SOCK_DIAG` dumps per address family: the MPTCP sockets
//! (protocol 262, with `struct mptcp_info`), and the TCP sockets (with
//! `struct tcp_info` and, for MPTCP subflows, the `mptcp` ULP attributes that
//! carry the connection token). Subflows are grouped under the connection
//! whose token they carry.
//!
//! Needs no privilege: the kernel shows every socket of the namespace.
//!
//! ```no_run
//! for conn in mptcp_core::diag::connections()? {
//!     println!("{} -> {}: {} subflows", conn.local, conn.remote, conn.subflows.len());
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

use crate::sys::Pod;
use crate::sys::diag::*;
use crate::sys::info::{MPTCP_INFO_FLAG_FALLBACK, MPTCP_INFO_SIZE_6_5, mptcp_info, tcp_info};

/// `IPPROTO_MPTCP`.
const IPPROTO_MPTCP: u32 = 262;

/// One MPTCP connection (an MPTCP socket that is not listening).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Address of the socket (the first subflow's local address).
    pub local: SocketAddr,
    /// Address of the peer.
    pub remote: SocketAddr,
    /// TCP state of the MPTCP socket ([`state_name`] gives its name).
    pub state: u8,
    /// Inode of the socket (`/proc/PID/fd` links to `socket:[INODE]`).
    pub inode: u32,
    /// Owner of the socket.
    pub uid: u32,
    /// The local connection token (`mptcpi_token`); 0 before the handshake.
    pub token: u32,
    /// The connection fell back to plain TCP.
    pub fallback: bool,
    /// Extra subflows the path manager has opened (`mptcpi_subflows`).
    pub extra_subflows: u8,
    /// Data-level bytes sent, received and acknowledged by the peer (`None`
    /// before Linux 6.5, which does not count them).
    pub bytes: Option<DataBytes>,
    /// The TCP subflows of this connection, in dump order.
    pub subflows: Vec<Subflow>,
}

/// Data-level byte counters of a connection (Linux 6.5+).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DataBytes {
    /// Bytes sent, retransmissions over another subflow included.
    pub sent: u64,
    /// Bytes received in sequence.
    pub received: u64,
    /// Bytes acknowledged at the data level by the peer.
    pub acked: u64,
}

/// One TCP subflow of an MPTCP connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subflow {
    /// Local address of the subflow.
    pub local: SocketAddr,
    /// Remote address of the subflow.
    pub remote: SocketAddr,
    /// TCP state ([`state_name`] gives its name).
    pub state: u8,
    /// Local connection token: the [`Connection::token`] it belongs to.
    pub token: u32,
    /// Local and remote address ids (endpoint ids).
    pub local_id: u8,
    /// Remote address id.
    pub remote_id: u8,
    /// This side marked the subflow as backup.
    pub backup_local: bool,
    /// The peer asked for the subflow to be a backup.
    pub backup_remote: bool,
    /// The MPTCP handshake of the subflow is complete.
    pub fully_established: bool,
    /// Bytes sent (retransmissions included; `tcpi_bytes_sent`, Linux 4.19+).
    pub bytes_sent: u64,
    /// Bytes acknowledged by the peer (`tcpi_bytes_acked`).
    pub bytes_acked: u64,
    /// Bytes received (`tcpi_bytes_received`).
    pub bytes_received: u64,
    /// Smoothed round-trip time in microseconds.
    pub rtt_us: u32,
    /// Congestion window in segments.
    pub cwnd: u32,
    /// Segments retransmitted over the subflow's life.
    pub total_retrans: u32,
    /// The kernel's delivery rate estimate in bytes per second.
    pub delivery_rate: u64,
}

/// Name of a TCP state number, as `ss` prints it.
pub fn state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTAB",
        2 => "SYN-SENT",
        3 => "SYN-RECV",
        4 => "FIN-WAIT-1",
        5 => "FIN-WAIT-2",
        6 => "TIME-WAIT",
        7 => "UNCONN",
        8 => "CLOSE-WAIT",
        9 => "LAST-ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "SYN-RECV",
        _ => "UNKNOWN",
    }
}

/// Lists the MPTCP connections of the current network namespace, each with
/// its subflows. Listening sockets and connections in TIME-WAIT are left out.
///
/// Errors: `ENOENT` (or `EINVAL`) when the kernel has no MPTCP socket
/// diagnostics, the message then says to load the `mptcp_diag` module.
pub fn connections() -> io::Result<Vec<Connection>> {
    let socket = open()?;
    let mut conns = Vec::new();
    let mut subflows = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        dump(&socket, family, Some(IPPROTO_MPTCP), |msg, attrs| {
            conns.push(parse_connection(msg, attrs));
            Ok(())
        })
        .map_err(explain_mptcp_dump_error)?;
        dump(&socket, family, None, |msg, attrs| {
            if let Some(sf) = parse_subflow(msg, attrs)? {
                subflows.push(sf);
            }
            Ok(())
        })?;
    }
    let mut by_token: HashMap<u32, usize> = HashMap::new();
    for (i, conn) in conns.iter().enumerate() {
        if conn.token != 0 {
            by_token.insert(conn.token, i);
        }
    }
    for sf in subflows {
        if let Some(&i) = by_token.get(&sf.token) {
            conns[i].subflows.push(sf);
        }
    }
    Ok(conns)
}

fn explain_mptcp_dump_error(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => io::Error::new(
            e.kind(),
            format!(
                "the kernel has no MPTCP socket diagnostics ({e}): load them with \
                 `modprobe mptcp_diag` (CONFIG_INET_MPTCP_DIAG, Linux 5.9+)"
            ),
        ),
        _ => e,
    }
}

fn open() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG as isize).map_err(|e| {
        io::Error::new(e.kind(), format!("opening a NETLINK_SOCK_DIAG socket: {e}"))
    })?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    Ok(socket)
}

/// Builds the dump request: TCP sockets of `family`, or the protocol
/// `protocol` (above 255, so in an `INET_DIAG_REQ_PROTOCOL` attribute).
fn request(family: u8, protocol: Option<u32>, seq: u32) -> Vec<u8> {
    let req = inet_diag_req_v2 {
        sdiag_family: family,
        sdiag_protocol: libc::IPPROTO_TCP as u8,
        idiag_ext: 1 << (INET_DIAG_INFO - 1),
        pad: 0,
        idiag_states: STATES_CONNECTED,
        id: inet_diag_sockid::default(),
    };
    let attr_len = if protocol.is_some() {
        NLA_HDRLEN + 4
    } else {
        0
    };
    let len = NLMSG_HDRLEN + size_of::<inet_diag_req_v2>() + attr_len;
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    buf.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&req.to_bytes());
    if let Some(protocol) = protocol {
        buf.extend_from_slice(&((NLA_HDRLEN + 4) as u16).to_ne_bytes());
        buf.extend_from_slice(&INET_DIAG_REQ_PROTOCOL.to_ne_bytes());
        buf.extend_from_slice(&protocol.to_ne_bytes());
    }
    debug_assert_eq!(buf.len(), len);
    buf
}

/// Sends one dump request and calls `each` with every socket of the answer
/// (its `inet_diag_msg` and its attributes) until `NLMSG_DONE`.
fn dump(
    socket: &Socket,
    family: u8,
    protocol: Option<u32>,
    mut each: impl FnMut(&inet_diag_msg, &Attrs<'_>) -> io::Result<()>,
) -> io::Result<()> {
    let seq = u32::from(family) << 16 | protocol.unwrap_or(0);
    socket.send(&request(family, protocol, seq), 0)?;
    loop {
        let (datagram, _) = socket.recv_from_full()?;
        for msg in Messages(&datagram) {
            let (kind, msg_seq, payload) = msg?;
            if msg_seq != seq {
                continue;
            }
            match kind {
                NLMSG_DONE => return done_status(payload),
                NLMSG_ERROR => {
                    let errno = read_i32(payload)?;
                    if errno != 0 {
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                }
                SOCK_DIAG_BY_FAMILY => {
                    if payload.len() < size_of::<inet_diag_msg>() {
                        return Err(malformed("inet_diag_msg shorter than 72 bytes"));
                    }
                    let diag = inet_diag_msg::read_prefix(payload);
                    let attrs = Attrs::parse(&payload[nla_align(size_of::<inet_diag_msg>())..])?;
                    each(&diag, &attrs)?;
                }
                _ => {}
            }
        }
    }
}

/// `NLMSG_DONE` of a dump carries an `int`: 0, or a negative errno when the
/// dump stopped on an error.
fn done_status(payload: &[u8]) -> io::Result<()> {
    match payload.get(..4) {
        Some(_) => match read_i32(payload)? {
            e if e < 0 => Err(io::Error::from_raw_os_error(-e)),
            _ => Ok(()),
        },
        None => Ok(()),
    }
}

fn read_i32(bytes: &[u8]) -> io::Result<i32> {
    bytes
        .get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| malformed("netlink message shorter than its error code"))
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed sock_diag answer: {what}"),
    )
}

const fn nla_align(len: usize) -> usize {
    (len + 3) & !3
}

/// The netlink messages of one datagram: (type, sequence number, payload).
struct Messages<'a>(&'a [u8]);

impl<'a> Iterator for Messages<'a> {
    type Item = io::Result<(u16, u32, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let buf = self.0;
        if buf.len() < NLMSG_HDRLEN {
            self.0 = &[];
            return Some(Err(malformed("truncated netlink header")));
        }
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            self.0 = &[];
            return Some(Err(malformed("netlink message length out of bounds")));
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        self.0 = &buf[nla_align(len).min(buf.len())..];
        Some(Ok((kind, seq, &buf[NLMSG_HDRLEN..len])))
    }
}

/// The attributes of one level, by type (the last one of a type wins).
struct Attrs<'a>(HashMap<u16, &'a [u8]>);

impl<'a> Attrs<'a> {
    fn parse(mut buf: &'a [u8]) -> io::Result<Attrs<'a>> {
        let mut map = HashMap::new();
        while buf.len() >= NLA_HDRLEN {
            let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
            let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
            if len < NLA_HDRLEN || len > buf.len() {
                return Err(malformed("attribute length out of bounds"));
            }
            map.insert(kind, &buf[NLA_HDRLEN..len]);
            buf = &buf[nla_align(len).min(buf.len())..];
        }
        Ok(Attrs(map))
    }

    fn get(&self, kind: u16) -> Option<&'a [u8]> {
        self.0.get(&kind).copied()
    }

    fn u32(&self, kind: u16) -> Option<u32> {
        let b = self.get(kind)?.get(..4)?;
        Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u8(&self, kind: u16) -> Option<u8> {
        self.get(kind)?.first().copied()
    }
}

/// Local and remote socket addresses of a diag message (IPv4-mapped IPv6
/// addresses shown as IPv4).
fn addresses(msg: &inet_diag_msg) -> (SocketAddr, SocketAddr) {
    let ip = |words: [u32; 4]| -> IpAddr {
        if i32::from(msg.idiag_family) == libc::AF_INET {
            IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
        } else {
            let mut octets = [0u8; 16];
            for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            Ipv6Addr::from(octets).to_canonical()
        }
    };
    let port = |p: u16| u16::from_be(p);
    (
        SocketAddr::new(ip(msg.id.idiag_src), port(msg.id.idiag_sport)),
        SocketAddr::new(ip(msg.id.idiag_dst), port(msg.id.idiag_dport)),
    )
}

fn parse_connection(msg: &inet_diag_msg, attrs: &Attrs<'_>) -> Connection {
    let (local, remote) = addresses(msg);
    let raw = attrs.get(INET_DIAG_INFO).unwrap_or(&[]);
    let info = mptcp_info::read_prefix(raw);
    Connection {
        local,
        remote,
        state: msg.idiag_state,
        inode: msg.idiag_inode,
        uid: msg.idiag_uid,
        token: info.mptcpi_token,
        fallback: info.mptcpi_flags & MPTCP_INFO_FLAG_FALLBACK != 0,
        extra_subflows: info.mptcpi_subflows,
        bytes: (raw.len() >= MPTCP_INFO_SIZE_6_5).then_some(DataBytes {
            sent: info.mptcpi_bytes_sent,
            received: info.mptcpi_bytes_received,
            acked: info.mptcpi_bytes_acked,
        }),
        subflows: Vec::new(),
    }
}

/// A TCP socket is an MPTCP subflow when its ULP is "mptcp".
fn parse_subflow(msg: &inet_diag_msg, attrs: &Attrs<'_>) -> io::Result<Option<Subflow>> {
    let Some(ulp) = attrs.get(INET_DIAG_ULP_INFO) else {
        return Ok(None);
    };
    let ulp = Attrs::parse(ulp)?;
    let name = ulp.get(INET_ULP_INFO_NAME).unwrap_or(&[]);
    if name.split(|&b| b == 0).next() != Some(b"mptcp") {
        return Ok(None);
    }
    let Some(mptcp) = ulp.get(INET_ULP_INFO_MPTCP) else {
        return Ok(None);
    };
    let sf = Attrs::parse(mptcp)?;
    let flags = sf.u32(MPTCP_SUBFLOW_ATTR_FLAGS).unwrap_or(0);
    let tcp = tcp_info::read_prefix(attrs.get(INET_DIAG_INFO).unwrap_or(&[]));
    let (local, remote) = addresses(msg);
    Ok(Some(Subflow {
        local,
        remote,
        state: msg.idiag_state,
        token: sf.u32(MPTCP_SUBFLOW_ATTR_TOKEN_LOC).unwrap_or(0),
        local_id: sf.u8(MPTCP_SUBFLOW_ATTR_ID_LOC).unwrap_or(0),
        remote_id: sf.u8(MPTCP_SUBFLOW_ATTR_ID_REM).unwrap_or(0),
        backup_local: flags & MPTCP_SUBFLOW_FLAG_BKUP_LOC != 0,
        backup_remote: flags & MPTCP_SUBFLOW_FLAG_BKUP_REM != 0,
        fully_established: flags & MPTCP_SUBFLOW_FLAG_FULLY_ESTABLISHED != 0,
        bytes_sent: tcp.tcpi_bytes_sent,
        bytes_acked: tcp.tcpi_bytes_acked,
        bytes_received: tcp.tcpi_bytes_received,
        rtt_us: tcp.tcpi_rtt,
        cwnd: tcp.tcpi_snd_cwnd,
        total_retrans: tcp.tcpi_total_retrans,
        delivery_rate: tcp.tcpi_delivery_rate,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let buf = request(libc::AF_INET as u8, Some(IPPROTO_MPTCP), 7);
        assert_eq!(buf.len(), 16 + 56 + 8);
        assert_eq!(u32::from_ne_bytes(buf[0..4].try_into().unwrap()), 80);
        assert_eq!(u16::from_ne_bytes([buf[4], buf[5]]), SOCK_DIAG_BY_FAMILY);
        assert_eq!(buf[16], libc::AF_INET as u8);
        assert_eq!(buf[17], libc::IPPROTO_TCP as u8);
        assert_eq!(buf[18], 1 << (INET_DIAG_INFO - 1));
        assert_eq!(
            u16::from_ne_bytes([buf[74], buf[75]]),
            INET_DIAG_REQ_PROTOCOL
        );
        assert_eq!(u32::from_ne_bytes(buf[76..80].try_into().unwrap()), 262);
    }

    #[test]
    fn parsers_reject_bad_lengths() {
        // Message length beyond the datagram.
        let mut bad = vec![0u8; 16];
        bad[0] = 200;
        assert!(Messages(&bad).next().unwrap().is_err());
        // Attribute length beyond the buffer, and shorter than its header.
        assert!(Attrs::parse(&[9, 0, 1, 0, 0]).is_err());
        assert!(Attrs::parse(&[2, 0, 1, 0]).is_err());
        // A trailing fragment shorter than a header is ignored; nested flag masked.
        let attrs = Attrs::parse(&[8, 0, 3, 0x80, 1, 2, 3, 4, 0]).unwrap();
        assert_eq!(attrs.u32(3), Some(u32::from_ne_bytes([1, 2, 3, 4])));
        assert_eq!(attrs.u8(4), None);
    }

    #[test]
    fn subflow_needs_the_mptcp_ulp() {
        let msg = inet_diag_msg::default();
        let tls = [12u8, 0, 19, 0, 8, 0, 1, 0, b't', b'l', b's', 0];
        assert_eq!(
            parse_subflow(&msg, &Attrs::parse(&tls).unwrap()).unwrap(),
            None
        );
        assert_eq!(
            parse_subflow(&msg, &Attrs::parse(&[]).unwrap()).unwrap(),
            None
        );
    }

    /// A real connection over two links in a test bed: both ends list it,
    /// with one subflow per link and the right addresses.
    #[test]
    fn lists_a_connection_with_its_subflows() {
        use std::io::{Read, Write};
        use std::time::{Duration, Instant};

        use socket2::{Domain, Protocol, SockAddr, Socket as Sock, Type};

        mptcp_testbed::require_privileges().unwrap();
        let bed = mptcp_testbed::two_links(2, None).unwrap();
        let server_addr = SocketAddr::new(bed.server_addr().into(), 5201);
        let listener = bed.server.run(|| {
            let s = Sock::new(Domain::IPV4, Type::STREAM, Some(Protocol::MPTCP)).unwrap();
            s.set_reuse_address(true).unwrap();
            s.bind(&SockAddr::from(server_addr)).unwrap();
            s.listen(4).unwrap();
            s
        });
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            while conn.read(&mut buf).unwrap_or(0) > 0 {}
        });
        let mut client = bed.client.run(|| {
            let s = Sock::new(Domain::IPV4, Type::STREAM, Some(Protocol::MPTCP)).unwrap();
            s.connect(&SockAddr::from(server_addr)).unwrap();
            s
        });
        client.write_all(&[7u8; 100_000]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let conn = loop {
            let conns = bed.client.run(connections).unwrap();
            let ours: Vec<_> = conns
                .into_iter()
                .filter(|c| c.remote == server_addr)
                .collect();
            assert_eq!(ours.len(), 1, "one MPTCP connection to {server_addr}");
            // write_all returns once the bytes are queued: wait until the
            // second subflow is up and the peer has acknowledged them all.
            let acked: u64 = ours[0].subflows.iter().map(|s| s.bytes_acked).sum();
            if (ours[0].subflows.len() == 2 && acked >= 100_000) || Instant::now() > deadline {
                break ours.into_iter().next().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(!conn.fallback);
        assert_ne!(conn.token, 0);
        assert_eq!(conn.state, 1, "ESTAB");
        let mut locals: Vec<IpAddr> = conn.subflows.iter().map(|s| s.local.ip()).collect();
        locals.sort();
        assert_eq!(
            locals,
            [
                IpAddr::from(bed.client_addr(0)),
                IpAddr::from(bed.client_addr(1))
            ]
        );
        assert!(
            conn.subflows
                .iter()
                .all(|s| s.token == conn.token && s.state == 1)
        );
        let sent: u64 = conn.subflows.iter().map(|s| s.bytes_acked).sum();
        assert!(sent >= 100_000, "subflows acked {sent} bytes");
        assert!(conn.bytes.is_some_and(|b| b.sent >= 100_000));
        // The server side sees the same connection from the other end.
        let server_conns = bed.server.run(connections).unwrap();
        assert!(
            server_conns
                .iter()
                .any(|c| c.local == server_addr && c.subflows.len() == 2)
        );
        drop(client);
        server.join().unwrap();
    }
}
