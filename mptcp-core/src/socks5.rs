//! SOCKS5 (RFC 1928) with username/password authentication (RFC 1929), as
//! pure code: parsers and state machines over byte slices, no I/O ("sans
//! I/O"). The relay engine, the LD_PRELOAD helper and tests drive them with
//! whatever sockets they have, blocking or not.
//!
//! Every parser returns [`Progress::NeedMore`] when the bytes seen so far are
//! a valid prefix, [`Progress::Done`] with the value and the number of bytes
//! it used, or an [`Error`] naming the reply the peer should get.
//!
//! Client side: [`encode_client_hello_auth_request`] writes greeting,
//! authentication and CONNECT request in one buffer (one round trip instead of
//! three), and [`ClientHandshake`] consumes the server's answers as they
//! arrive. Server side: [`ServerHandshake`] consumes a client's greeting,
//! authentication and request (pipelined or not) and writes the answers.
//!
//! ```
//! use mptcp_core::socks5::{self, Progress, TargetAddr, ClientHandshake, ServerHandshake};
//! let dest = TargetAddr::Domain("example.test".into(), 443);
//! let mut to_server = Vec::new();
//! socks5::encode_client_hello_auth_request(Some(("u", "p")), &socks5::Request::connect(dest.clone()), &mut to_server).unwrap();
//!
//! let mut server = ServerHandshake::new(true);
//! let mut to_client = Vec::new();
//! let step = server.advance(&to_server, &mut to_client, |c| c.username == b"u" && c.password == b"p");
//! let Ok(Progress::Done(request, used)) = step else { panic!() };
//! assert_eq!((request.dest.clone(), used), (dest, to_server.len()));
//! socks5::encode_reply(socks5::ReplyCode::Succeeded, None, &mut to_client);
//!
//! let mut client = ClientHandshake::new(true);
//! let Ok(Progress::Done(_bound, used)) = client.advance(&to_client) else { panic!() };
//! assert_eq!(used, to_client.len());
//! ```
#![forbid(unsafe_code)]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub mod udp;

/// The protocol version byte of SOCKS5.
pub const VERSION: u8 = 5;
/// The version byte of the username/password sub-negotiation (RFC 1929).
pub const USER_PASS_VERSION: u8 = 1;
/// Method: no authentication.
pub const METHOD_NO_AUTH: u8 = 0x00;
/// Method: username/password (RFC 1929).
pub const METHOD_USER_PASS: u8 = 0x02;
/// Method choice meaning "none of the offered methods is acceptable".
pub const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;

const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;

/// Result of feeding bytes to a parser or state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress<T> {
    /// The input is a valid but incomplete prefix: read more and call again
    /// with all the unconsumed bytes.
    NeedMore,
    /// Parsed a value using this many bytes from the start of the input.
    Done(T, usize),
}

/// The reply codes of RFC 1928, section 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyCode {
    /// 0x00: succeeded.
    Succeeded,
    /// 0x01: general SOCKS server failure (also used for malformed requests).
    GeneralFailure,
    /// 0x02: connection not allowed by ruleset.
    NotAllowed,
    /// 0x03: network unreachable.
    NetworkUnreachable,
    /// 0x04: host unreachable (also: name did not resolve).
    HostUnreachable,
    /// 0x05: connection refused.
    ConnectionRefused,
    /// 0x06: TTL expired (used for connect timeouts).
    TtlExpired,
    /// 0x07: command not supported.
    CommandNotSupported,
    /// 0x08: address type not supported.
    AddressTypeNotSupported,
    /// Any other value (unassigned).
    Other(u8),
}

impl ReplyCode {
    /// The wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            ReplyCode::Succeeded => 0,
            ReplyCode::GeneralFailure => 1,
            ReplyCode::NotAllowed => 2,
            ReplyCode::NetworkUnreachable => 3,
            ReplyCode::HostUnreachable => 4,
            ReplyCode::ConnectionRefused => 5,
            ReplyCode::TtlExpired => 6,
            ReplyCode::CommandNotSupported => 7,
            ReplyCode::AddressTypeNotSupported => 8,
            ReplyCode::Other(v) => v,
        }
    }

    /// The code for a wire value.
    pub fn from_u8(v: u8) -> ReplyCode {
        match v {
            0 => ReplyCode::Succeeded,
            1 => ReplyCode::GeneralFailure,
            2 => ReplyCode::NotAllowed,
            3 => ReplyCode::NetworkUnreachable,
            4 => ReplyCode::HostUnreachable,
            5 => ReplyCode::ConnectionRefused,
            6 => ReplyCode::TtlExpired,
            7 => ReplyCode::CommandNotSupported,
            8 => ReplyCode::AddressTypeNotSupported,
            v => ReplyCode::Other(v),
        }
    }

    /// The reply that best describes a failed `connect()` to the destination.
    pub fn from_io_error(err: &std::io::Error) -> ReplyCode {
        match err.raw_os_error() {
            Some(libc::ECONNREFUSED) => ReplyCode::ConnectionRefused,
            Some(libc::ENETUNREACH) => ReplyCode::NetworkUnreachable,
            Some(libc::EHOSTUNREACH) | Some(libc::EHOSTDOWN) => ReplyCode::HostUnreachable,
            Some(libc::ETIMEDOUT) => ReplyCode::TtlExpired,
            _ => match err.kind() {
                std::io::ErrorKind::TimedOut => ReplyCode::TtlExpired,
                std::io::ErrorKind::ConnectionRefused => ReplyCode::ConnectionRefused,
                _ => ReplyCode::GeneralFailure,
            },
        }
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ReplyCode::Succeeded => "succeeded",
            ReplyCode::GeneralFailure => "general SOCKS server failure",
            ReplyCode::NotAllowed => "connection not allowed by ruleset",
            ReplyCode::NetworkUnreachable => "network unreachable",
            ReplyCode::HostUnreachable => "host unreachable",
            ReplyCode::ConnectionRefused => "connection refused",
            ReplyCode::TtlExpired => "TTL expired",
            ReplyCode::CommandNotSupported => "command not supported",
            ReplyCode::AddressTypeNotSupported => "address type not supported",
            ReplyCode::Other(v) => return write!(f, "unassigned reply code {v:#04x}"),
        };
        f.write_str(text)
    }
}

/// A destination: an IP socket address, or a domain name the server resolves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetAddr {
    /// IPv4 or IPv6 address and port.
    Ip(SocketAddr),
    /// Domain name (1 to 255 bytes, not resolved by the client) and port.
    Domain(String, u16),
}

impl TargetAddr {
    /// The destination port.
    pub fn port(&self) -> u16 {
        match self {
            TargetAddr::Ip(a) => a.port(),
            TargetAddr::Domain(_, p) => *p,
        }
    }

    /// Appends ATYP, address and port, as in requests and replies.
    ///
    /// Fails if a domain name is empty or longer than 255 bytes.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            TargetAddr::Ip(SocketAddr::V4(a)) => {
                out.push(ATYP_IPV4);
                out.extend_from_slice(&a.ip().octets());
            }
            TargetAddr::Ip(SocketAddr::V6(a)) => {
                out.push(ATYP_IPV6);
                out.extend_from_slice(&a.ip().octets());
            }
            TargetAddr::Domain(name, _) => {
                let len = u8::try_from(name.len())
                    .ok()
                    .filter(|&l| l > 0)
                    .ok_or(EncodeError::DomainLength(name.len()))?;
                out.push(ATYP_DOMAIN);
                out.push(len);
                out.extend_from_slice(name.as_bytes());
            }
        }
        out.extend_from_slice(&self.port().to_be_bytes());
        Ok(())
    }

    /// Parses ATYP, address and port.
    pub fn parse(buf: &[u8]) -> Result<Progress<TargetAddr>, Error> {
        let Some(&atyp) = buf.first() else {
            return Ok(Progress::NeedMore);
        };
        let (addr_len, start) = match atyp {
            ATYP_IPV4 => (4, 1),
            ATYP_IPV6 => (16, 1),
            ATYP_DOMAIN => match buf.get(1) {
                None => return Ok(Progress::NeedMore),
                Some(0) => return Err(Error::malformed("empty domain name")),
                Some(&l) => (usize::from(l), 2),
            },
            _ => {
                return Err(Error {
                    reply: ReplyCode::AddressTypeNotSupported,
                    reason: "unknown address type",
                });
            }
        };
        let end = start + addr_len + 2;
        if buf.len() < end {
            return Ok(Progress::NeedMore);
        }
        let raw = &buf[start..start + addr_len];
        let port = u16::from_be_bytes([buf[end - 2], buf[end - 1]]);
        let addr = match atyp {
            ATYP_IPV4 => {
                let o: [u8; 4] = raw.try_into().expect("length checked");
                TargetAddr::Ip(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), port))
            }
            ATYP_IPV6 => {
                let o: [u8; 16] = raw.try_into().expect("length checked");
                TargetAddr::Ip(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
            }
            _ => {
                let name = std::str::from_utf8(raw)
                    .map_err(|_| Error::malformed("domain name is not UTF-8"))?;
                TargetAddr::Domain(name.to_owned(), port)
            }
        };
        Ok(Progress::Done(addr, end))
    }
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetAddr::Ip(a) => a.fmt(f),
            TargetAddr::Domain(n, p) => write!(f, "{n}:{p}"),
        }
    }
}

impl From<SocketAddr> for TargetAddr {
    fn from(a: SocketAddr) -> Self {
        TargetAddr::Ip(a)
    }
}

/// A protocol violation or refusal, with the reply the peer should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    /// The SOCKS reply code that describes the problem (for requests) or the
    /// code the server sent (for client-side errors).
    pub reply: ReplyCode,
    /// What went wrong, for logs.
    pub reason: &'static str,
}

impl Error {
    fn malformed(reason: &'static str) -> Error {
        Error {
            reply: ReplyCode::GeneralFailure,
            reason,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SOCKS5: {} ({})", self.reason, self.reply)
    }
}

impl std::error::Error for Error {}

/// A value that cannot be encoded on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// Domain names must be 1 to 255 bytes long; this one has this length.
    DomainLength(usize),
    /// Username and password must be 1 to 255 bytes long (RFC 1929).
    CredentialLength,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::DomainLength(n) => {
                write!(
                    f,
                    "SOCKS5 domain names are 1 to 255 bytes long, this one has {n}"
                )
            }
            EncodeError::CredentialLength => {
                f.write_str("SOCKS5 usernames and passwords are 1 to 255 bytes long")
            }
        }
    }
}

impl std::error::Error for EncodeError {}

/// The client's greeting: the authentication methods it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// Offered method numbers, in the client's order.
    pub methods: Vec<u8>,
}

impl Greeting {
    /// Parses `VER NMETHODS METHODS...`.
    pub fn parse(buf: &[u8]) -> Result<Progress<Greeting>, Error> {
        if buf.len() < 2 {
            return check_version(buf, VERSION).map(|()| Progress::NeedMore);
        }
        check_version(buf, VERSION)?;
        let n = usize::from(buf[1]);
        if n == 0 {
            return Err(Error::malformed("greeting offers no methods"));
        }
        if buf.len() < 2 + n {
            return Ok(Progress::NeedMore);
        }
        Ok(Progress::Done(
            Greeting {
                methods: buf[2..2 + n].to_vec(),
            },
            2 + n,
        ))
    }

    /// Appends the greeting.
    ///
    /// # Panics
    /// If there are no methods or more than 255.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let n = u8::try_from(self.methods.len()).expect("at most 255 methods");
        assert!(n > 0, "a greeting offers at least one method");
        out.extend_from_slice(&[VERSION, n]);
        out.extend_from_slice(&self.methods);
    }
}

fn check_version(buf: &[u8], version: u8) -> Result<(), Error> {
    match buf.first() {
        Some(&v) if v != version => Err(Error::malformed("wrong protocol version")),
        _ => Ok(()),
    }
}

/// RFC 1929 username and password, as raw bytes (the RFC does not fix an
/// encoding).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// 1 to 255 bytes.
    pub username: Vec<u8>,
    /// 1 to 255 bytes.
    pub password: Vec<u8>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &String::from_utf8_lossy(&self.username))
            .field("password", &"<hidden>")
            .finish()
    }
}

impl Credentials {
    /// Parses `VER ULEN UNAME PLEN PASSWD`.
    pub fn parse(buf: &[u8]) -> Result<Progress<Credentials>, Error> {
        check_version(buf, USER_PASS_VERSION)?;
        let Some(&ulen) = buf.get(1) else {
            return Ok(Progress::NeedMore);
        };
        let ulen = usize::from(ulen);
        let Some(&plen) = buf.get(2 + ulen) else {
            return Ok(Progress::NeedMore);
        };
        let plen = usize::from(plen);
        let end = 3 + ulen + plen;
        if buf.len() < end {
            return Ok(Progress::NeedMore);
        }
        let creds = Credentials {
            username: buf[2..2 + ulen].to_vec(),
            password: buf[3 + ulen..end].to_vec(),
        };
        Ok(Progress::Done(creds, end))
    }

    /// Appends the sub-negotiation request.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode_user_pass(&self.username, &self.password, out)
    }
}

fn encode_user_pass(user: &[u8], pass: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let ulen = u8::try_from(user.len()).map_err(|_| EncodeError::CredentialLength)?;
    let plen = u8::try_from(pass.len()).map_err(|_| EncodeError::CredentialLength)?;
    if ulen == 0 || plen == 0 {
        return Err(EncodeError::CredentialLength);
    }
    out.extend_from_slice(&[USER_PASS_VERSION, ulen]);
    out.extend_from_slice(user);
    out.push(plen);
    out.extend_from_slice(pass);
    Ok(())
}

/// SOCKS5 commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// 0x01: open a TCP connection to the destination.
    Connect,
    /// 0x02: wait for an incoming connection (not served by the relay).
    Bind,
    /// 0x03: relay UDP datagrams (served by the remote role, see [`udp`]).
    UdpAssociate,
    /// 0x80, a private extension of this project: the connection becomes a
    /// session carrying many streams ([`crate::mux`]) between a local and
    /// a remote relay. The destination field holds `0.0.0.0` and the
    /// protocol version as the port. Servers that do not know it answer
    /// [`ReplyCode::CommandNotSupported`], as RFC 1928 asks, which tells
    /// the client to fall back to one CONNECT per connection.
    Multiplex,
}

/// The wire value of [`Command::Multiplex`].
pub const CMD_MULTIPLEX: u8 = 0x80;

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What the client asks for.
    pub command: Command,
    /// Where to.
    pub dest: TargetAddr,
}

impl Request {
    /// A CONNECT request to `dest`.
    pub fn connect(dest: TargetAddr) -> Request {
        Request {
            command: Command::Connect,
            dest,
        }
    }

    /// Parses `VER CMD RSV ATYP DST.ADDR DST.PORT`. An unknown command gives
    /// [`ReplyCode::CommandNotSupported`] once the whole request is read.
    pub fn parse(buf: &[u8]) -> Result<Progress<Request>, Error> {
        check_version(buf, VERSION)?;
        if buf.len() < 3 {
            return Ok(Progress::NeedMore);
        }
        if buf[2] != 0 {
            return Err(Error::malformed("reserved byte is not zero"));
        }
        let command = match buf[1] {
            1 => Some(Command::Connect),
            2 => Some(Command::Bind),
            3 => Some(Command::UdpAssociate),
            CMD_MULTIPLEX => Some(Command::Multiplex),
            _ => None,
        };
        match TargetAddr::parse(&buf[3..])? {
            Progress::NeedMore => Ok(Progress::NeedMore),
            Progress::Done(dest, used) => match command {
                Some(command) => Ok(Progress::Done(Request { command, dest }, 3 + used)),
                None => Err(Error {
                    reply: ReplyCode::CommandNotSupported,
                    reason: "unknown command",
                }),
            },
        }
    }

    /// Appends the request.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let cmd = match self.command {
            Command::Connect => 1,
            Command::Bind => 2,
            Command::UdpAssociate => 3,
            Command::Multiplex => CMD_MULTIPLEX,
        };
        out.extend_from_slice(&[VERSION, cmd, 0]);
        self.dest.encode(out)
    }
}

/// Appends a server reply. `bound` is the address the server uses to reach
/// the destination; `None` sends 0.0.0.0:0, which clients accept.
pub fn encode_reply(code: ReplyCode, bound: Option<SocketAddr>, out: &mut Vec<u8>) {
    let bound = bound.unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    out.extend_from_slice(&[VERSION, code.to_u8(), 0]);
    TargetAddr::Ip(bound)
        .encode(out)
        .expect("IP addresses always encode");
}

/// Parses a server reply `VER REP RSV ATYP BND.ADDR BND.PORT` into its code
/// and bound address.
pub fn parse_reply(buf: &[u8]) -> Result<Progress<(ReplyCode, TargetAddr)>, Error> {
    check_version(buf, VERSION)?;
    if buf.len() < 3 {
        return Ok(Progress::NeedMore);
    }
    let code = ReplyCode::from_u8(buf[1]);
    match TargetAddr::parse(&buf[3..])? {
        Progress::NeedMore => Ok(Progress::NeedMore),
        Progress::Done(addr, used) => Ok(Progress::Done((code, addr), 3 + used)),
    }
}

/// Appends greeting, username/password sub-negotiation (if `credentials`)
/// and `request` (a CONNECT, usually), all in one buffer, so the handshake
/// costs a single round trip.
///
/// Only one method is offered (username/password with credentials, "no
/// authentication" without), so the server cannot pick a method that would
/// make it misread the pipelined bytes.
pub fn encode_client_hello_auth_request(
    credentials: Option<(&str, &str)>,
    request: &Request,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    let result = (|| {
        match credentials {
            Some((user, pass)) => {
                out.extend_from_slice(&[VERSION, 1, METHOD_USER_PASS]);
                encode_user_pass(user.as_bytes(), pass.as_bytes(), out)?;
            }
            None => out.extend_from_slice(&[VERSION, 1, METHOD_NO_AUTH]),
        }
        request.encode(out)
    })();
    if result.is_err() {
        out.truncate(start);
    }
    result
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    MethodChoice,
    AuthStatus,
    Reply,
    Finished,
}

/// The client side of a pipelined handshake: consumes the server's method
/// choice, authentication status and reply to the request, in whatever
/// pieces they arrive, after [`encode_client_hello_auth_request`] was sent.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    state: ClientState,
    with_auth: bool,
    consumed: usize,
}

impl ClientHandshake {
    /// `with_auth` must match whether credentials were passed to
    /// [`encode_client_hello_auth_request`].
    pub fn new(with_auth: bool) -> ClientHandshake {
        ClientHandshake {
            state: ClientState::MethodChoice,
            with_auth,
            consumed: 0,
        }
    }

    /// Whether the method (and the password) went through and only the
    /// reply to the request is missing: a server that closes now did not
    /// take the request (dante closes on a command it does not know).
    pub fn awaits_reply(&self) -> bool {
        self.state == ClientState::Reply
    }

    /// Feeds everything received from the server so far (the caller keeps
    /// appending to one buffer). Returns the bound address and the length of
    /// the handshake in that buffer once the server accepted the request
    /// (bytes after it come from the destination), `NeedMore` (read more,
    /// call again), or an error with the server's reply code
    /// ([`ReplyCode::NotAllowed`] for a refused method or password).
    pub fn advance(&mut self, input: &[u8]) -> Result<Progress<TargetAddr>, Error> {
        loop {
            let pos = self.consumed.min(input.len());
            let rest = &input[pos..];
            match self.state {
                ClientState::MethodChoice => {
                    if rest.len() < 2 {
                        check_version(rest, VERSION)?;
                        return Ok(Progress::NeedMore);
                    }
                    check_version(rest, VERSION)?;
                    let expected = if self.with_auth {
                        METHOD_USER_PASS
                    } else {
                        METHOD_NO_AUTH
                    };
                    if rest[1] != expected {
                        return Err(Error {
                            reply: ReplyCode::NotAllowed,
                            reason: "server refused the offered authentication method",
                        });
                    }
                    self.consumed += 2;
                    self.state = if self.with_auth {
                        ClientState::AuthStatus
                    } else {
                        ClientState::Reply
                    };
                }
                ClientState::AuthStatus => {
                    if rest.len() < 2 {
                        check_version(rest, USER_PASS_VERSION)?;
                        return Ok(Progress::NeedMore);
                    }
                    check_version(rest, USER_PASS_VERSION)?;
                    if rest[1] != 0 {
                        return Err(Error {
                            reply: ReplyCode::NotAllowed,
                            reason: "server rejected the username or password",
                        });
                    }
                    self.consumed += 2;
                    self.state = ClientState::Reply;
                }
                ClientState::Reply => {
                    // A failure code is final even if the server closes
                    // before sending the bound address.
                    if rest.len() >= 2 && rest[0] == VERSION && rest[1] != 0 {
                        self.state = ClientState::Finished;
                        let reply = ReplyCode::from_u8(rest[1]);
                        return Err(Error {
                            reply,
                            reason: "server refused the request",
                        });
                    }
                    return match parse_reply(rest)? {
                        Progress::NeedMore => Ok(Progress::NeedMore),
                        Progress::Done((_, bound), used) => {
                            self.state = ClientState::Finished;
                            Ok(Progress::Done(bound, pos + used))
                        }
                    };
                }
                ClientState::Finished => {
                    return Err(Error::malformed("handshake already finished"));
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    Greeting,
    Auth,
    Request,
    Finished,
}

/// The server side of a handshake: consumes greeting, authentication and
/// request (all at once or piecewise) and writes the method choice and
/// authentication status. The final reply to the request is the caller's,
/// with [`encode_reply`], once it knows how connecting went.
#[derive(Debug, Clone)]
pub struct ServerHandshake {
    state: ServerState,
    require_auth: bool,
    multiplex: bool,
    udp_associate: bool,
    consumed: usize,
}

impl ServerHandshake {
    /// `require_auth`: accept only username/password. Otherwise "no
    /// authentication" is chosen when offered, and username/password (still
    /// checked) when it is the only method offered.
    pub fn new(require_auth: bool) -> ServerHandshake {
        ServerHandshake {
            state: ServerState::Greeting,
            require_auth,
            multiplex: false,
            udp_associate: false,
            consumed: 0,
        }
    }

    /// Also accept [`Command::Multiplex`] requests (refused with
    /// [`ReplyCode::CommandNotSupported`] otherwise, like BIND and UDP).
    pub fn with_multiplex(mut self, on: bool) -> ServerHandshake {
        self.multiplex = on;
        self
    }

    /// Also accept [`Command::UdpAssociate`] requests (refused with
    /// [`ReplyCode::CommandNotSupported`] otherwise, like BIND).
    pub fn with_udp_associate(mut self, on: bool) -> ServerHandshake {
        self.udp_associate = on;
        self
    }

    /// Feeds everything received from the client so far (the caller keeps
    /// appending to one buffer); answers are appended to `out`, to be sent
    /// in order. `check` decides on credentials.
    ///
    /// Returns `NeedMore`, or the request and the length of the handshake in
    /// the buffer (bytes after it are early data for the destination). On
    /// `Err`, `out` ends with the refusal (method refused, authentication
    /// failed, or a reply with `err.reply`): send it, then close.
    pub fn advance(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        mut check: impl FnMut(&Credentials) -> bool,
    ) -> Result<Progress<Request>, Error> {
        // `consumed` counts bytes of `input` handled by earlier calls.
        loop {
            let rest = &input[self.consumed.min(input.len())..];
            match self.state {
                ServerState::Greeting => match Greeting::parse(rest)? {
                    Progress::NeedMore => return Ok(Progress::NeedMore),
                    Progress::Done(greeting, used) => {
                        let offers = |m| greeting.methods.contains(&m);
                        let chosen = if !self.require_auth && offers(METHOD_NO_AUTH) {
                            METHOD_NO_AUTH
                        } else if offers(METHOD_USER_PASS) {
                            METHOD_USER_PASS
                        } else {
                            out.extend_from_slice(&[VERSION, METHOD_NONE_ACCEPTABLE]);
                            self.state = ServerState::Finished;
                            return Err(Error {
                                reply: ReplyCode::NotAllowed,
                                reason: "client offers no acceptable authentication method",
                            });
                        };
                        out.extend_from_slice(&[VERSION, chosen]);
                        self.consumed += used;
                        self.state = if chosen == METHOD_USER_PASS {
                            ServerState::Auth
                        } else {
                            ServerState::Request
                        };
                    }
                },
                ServerState::Auth => match Credentials::parse(rest) {
                    Err(e) => {
                        out.extend_from_slice(&[USER_PASS_VERSION, 1]);
                        self.state = ServerState::Finished;
                        return Err(e);
                    }
                    Ok(Progress::NeedMore) => return Ok(Progress::NeedMore),
                    Ok(Progress::Done(creds, used)) => {
                        if !check(&creds) {
                            out.extend_from_slice(&[USER_PASS_VERSION, 1]);
                            self.state = ServerState::Finished;
                            return Err(Error {
                                reply: ReplyCode::NotAllowed,
                                reason: "wrong username or password",
                            });
                        }
                        out.extend_from_slice(&[USER_PASS_VERSION, 0]);
                        self.consumed += used;
                        self.state = ServerState::Request;
                    }
                },
                ServerState::Request => match Request::parse(rest) {
                    Err(e) => {
                        encode_reply(e.reply, None, out);
                        self.state = ServerState::Finished;
                        return Err(e);
                    }
                    Ok(Progress::NeedMore) => return Ok(Progress::NeedMore),
                    Ok(Progress::Done(request, used)) => {
                        self.state = ServerState::Finished;
                        let total = self.consumed + used;
                        let served = match request.command {
                            Command::Connect => true,
                            Command::Multiplex => self.multiplex,
                            Command::UdpAssociate => self.udp_associate,
                            Command::Bind => false,
                        };
                        if !served {
                            let e = Error {
                                reply: ReplyCode::CommandNotSupported,
                                reason: "command not supported",
                            };
                            encode_reply(e.reply, None, out);
                            return Err(e);
                        }
                        return Ok(Progress::Done(request, total));
                    }
                },
                ServerState::Finished => {
                    return Err(Error::malformed("handshake already finished"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn creds_ok(c: &Credentials) -> bool {
        c.username == b"alice" && c.password == b"secret"
    }

    #[test]
    fn pipelined_handshake_round_trip_byte_by_byte() {
        let dest = TargetAddr::Ip("[2001:db8::1]:8080".parse().unwrap());
        let mut wire = Vec::new();
        encode_client_hello_auth_request(
            Some(("alice", "secret")),
            &Request::connect(dest.clone()),
            &mut wire,
        )
        .unwrap();
        wire.extend_from_slice(b"GET / HTTP/1.0\r\n\r\n");
        let mut server = ServerHandshake::new(true);
        let mut answers = Vec::new();
        let mut got = None;
        for end in 0..=wire.len() {
            match server
                .advance(&wire[..end], &mut answers, creds_ok)
                .unwrap()
            {
                Progress::NeedMore => continue,
                Progress::Done(req, used) => {
                    got = Some((req, used));
                    break;
                }
            }
        }
        let (req, used) = got.expect("request parsed");
        assert_eq!(
            req,
            Request {
                command: Command::Connect,
                dest
            }
        );
        assert_eq!(&wire[used..], b"GET / HTTP/1.0\r\n\r\n");
        encode_reply(
            ReplyCode::Succeeded,
            Some("198.18.0.2:4000".parse().unwrap()),
            &mut answers,
        );
        answers.extend_from_slice(b"HTTP/1.0 200 OK");
        let mut client = ClientHandshake::new(true);
        let mut done = None;
        let mut start = 0;
        for end in 0..=answers.len() {
            match client.advance(&answers[start..end]).unwrap() {
                Progress::NeedMore => {}
                Progress::Done(bound, used) => {
                    start += used;
                    done = Some(bound);
                    break;
                }
            }
        }
        assert_eq!(
            done,
            Some(TargetAddr::Ip("198.18.0.2:4000".parse().unwrap()))
        );
        assert_eq!(&answers[start..], b"HTTP/1.0 200 OK");
    }

    #[test]
    fn wrong_password_gets_failure_status() {
        let mut wire = Vec::new();
        let dest = TargetAddr::Domain("a.test".into(), 80);
        encode_client_hello_auth_request(
            Some(("alice", "nope")),
            &Request::connect(dest),
            &mut wire,
        )
        .unwrap();
        let mut out = Vec::new();
        let err = ServerHandshake::new(true)
            .advance(&wire, &mut out, creds_ok)
            .unwrap_err();
        assert_eq!(err.reply, ReplyCode::NotAllowed);
        assert_eq!(out, [VERSION, METHOD_USER_PASS, USER_PASS_VERSION, 1]);
        let err = ClientHandshake::new(true).advance(&out).unwrap_err();
        assert_eq!(err.reply, ReplyCode::NotAllowed);
    }

    #[test]
    fn no_acceptable_method() {
        let mut out = Vec::new();
        let err = ServerHandshake::new(true)
            .advance(&[5, 1, 0], &mut out, creds_ok)
            .unwrap_err();
        assert_eq!(err.reply, ReplyCode::NotAllowed);
        assert_eq!(out, [VERSION, METHOD_NONE_ACCEPTABLE]);
    }

    #[test]
    fn unsupported_command_and_address_type() {
        let mut out = Vec::new();
        let bind = [5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80];
        let err = ServerHandshake::new(false)
            .advance(&bind, &mut out, creds_ok)
            .unwrap_err();
        assert_eq!(err.reply, ReplyCode::CommandNotSupported);
        assert_eq!(&out[..2], [5, 0]);
        assert_eq!(out[3], 7);
        let mut out = Vec::new();
        let bad_atyp = [5, 1, 0, 5, 1, 0, 9, 1, 2];
        let err = ServerHandshake::new(false)
            .advance(&bad_atyp, &mut out, creds_ok)
            .unwrap_err();
        assert_eq!(err.reply, ReplyCode::AddressTypeNotSupported);
        assert_eq!(out[3], 8);
    }

    #[test]
    fn client_sees_refusal_code() {
        let mut answers = vec![5, 0];
        encode_reply(ReplyCode::ConnectionRefused, None, &mut answers);
        let err = ClientHandshake::new(false).advance(&answers).unwrap_err();
        assert_eq!(err.reply, ReplyCode::ConnectionRefused);
        // Even when the server closes after REP.
        let err = ClientHandshake::new(false)
            .advance(&[5, 0, 5, 2])
            .unwrap_err();
        assert_eq!(err.reply, ReplyCode::NotAllowed);
    }

    #[test]
    fn client_knows_when_only_the_reply_is_missing() {
        // dante: the method, then a close instead of an answer.
        let mut client = ClientHandshake::new(false);
        assert_eq!(client.advance(&[5]).unwrap(), Progress::NeedMore);
        assert!(!client.awaits_reply(), "the method choice is not complete");
        assert_eq!(client.advance(&[5, 0]).unwrap(), Progress::NeedMore);
        assert!(client.awaits_reply());
        // With a password: only once the password went through.
        let mut client = ClientHandshake::new(true);
        assert_eq!(client.advance(&[5, 2]).unwrap(), Progress::NeedMore);
        assert!(!client.awaits_reply(), "the password is not answered yet");
        assert_eq!(client.advance(&[5, 2, 1, 0]).unwrap(), Progress::NeedMore);
        assert!(client.awaits_reply());
    }

    #[test]
    fn encode_rejects_overlong_fields() {
        let mut out = vec![9];
        let long = Request::connect(TargetAddr::Domain("x".repeat(256), 1));
        assert!(encode_client_hello_auth_request(None, &long, &mut out).is_err());
        assert!(encode_client_hello_auth_request(Some(("", "p")), &long, &mut out).is_err());
        assert_eq!(out, [9], "nothing appended on error");
    }

    fn target_addr() -> impl Strategy<Value = TargetAddr> {
        prop_oneof![
            any::<(u32, u16)>().prop_map(|(ip, p)| TargetAddr::Ip(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(ip)),
                p
            ))),
            any::<(u128, u16)>().prop_map(|(ip, p)| TargetAddr::Ip(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(ip)),
                p
            ))),
            ("[a-z0-9.-]{1,255}", any::<u16>()).prop_map(|(n, p)| TargetAddr::Domain(n, p)),
        ]
    }

    proptest! {
        #[test]
        fn parsers_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Greeting::parse(&buf);
            let _ = Credentials::parse(&buf);
            let _ = Request::parse(&buf);
            let _ = parse_reply(&buf);
            let _ = ClientHandshake::new(true).advance(&buf);
            let _ = ClientHandshake::new(false).advance(&buf);
            let mut out = Vec::new();
            let _ = ServerHandshake::new(true).advance(&buf, &mut out, |_| true);
            let _ = ServerHandshake::new(false).advance(&buf, &mut out, |_| true);
        }

        #[test]
        fn request_round_trip(dest in target_addr(), user in "[ -~]{1,255}", pass in "[ -~]{1,255}",
                              split in any::<prop::sample::Index>()) {
            let mut wire = Vec::new();
            encode_client_hello_auth_request(Some((&user, &pass)), &Request::connect(dest.clone()), &mut wire).unwrap();
            let mut server = ServerHandshake::new(true);
            let mut out = Vec::new();
            let cut = split.index(wire.len());
            let check = |c: &Credentials| c.username == user.as_bytes() && c.password == pass.as_bytes();
            let first = server.advance(&wire[..cut], &mut out, check).unwrap();
            prop_assert_eq!(first, Progress::NeedMore);
            let done = server.advance(&wire, &mut out, check).unwrap();
            prop_assert_eq!(done, Progress::Done(Request { command: Command::Connect, dest: dest.clone() }, wire.len()));
        }

        #[test]
        fn reply_round_trip(code in 0u8..=255, dest in target_addr()) {
            let mut wire = vec![VERSION, code, 0];
            dest.encode(&mut wire).unwrap();
            prop_assert_eq!(parse_reply(&wire).unwrap(),
                            Progress::Done((ReplyCode::from_u8(code), dest), wire.len()));
            prop_assert_eq!(ReplyCode::from_u8(code).to_u8(), code);
        }
    }
}
