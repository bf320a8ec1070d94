//! HTTP proxy requests, as pure code ("sans I/O"): the request head a client
//! (a browser, or squid forwarding to a parent) sends to a proxy, either
//! `CONNECT host:port` (a tunnel) or a request with an absolute URI
//! (`GET http://host/path HTTP/1.1`), which the proxy forwards to the origin
//! rewritten to origin form.
//!
//! ```
//! use mptcp_core::http::{parse_proxy_request, ProxyRequestKind};
//! use mptcp_core::socks5::{Progress, TargetAddr};
//! let head = b"GET http://198.18.0.2:8080/a?b HTTP/1.1\r\nHost: 198.18.0.2:8080\r\n\r\nrest";
//! let Ok(Progress::Done(req, used)) = parse_proxy_request(head) else { panic!() };
//! assert_eq!(req.target, TargetAddr::Ip("198.18.0.2:8080".parse().unwrap()));
//! assert_eq!(&head[used..], b"rest");
//! let ProxyRequestKind::Forward { head: origin } = req.kind else { panic!() };
//! assert!(origin.starts_with(b"GET /a?b HTTP/1.1\r\n"));
//! ```
#![forbid(unsafe_code)]

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::socks5::{Progress, TargetAddr};

/// The longest request head accepted; longer ones get 431.
pub const MAX_HEAD: usize = 16 * 1024;

/// What to send a client after its CONNECT tunnel is open.
pub const CONNECT_ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// A parsed proxy request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRequest {
    /// The origin server to connect to.
    pub target: TargetAddr,
    /// Tunnel or forward.
    pub kind: ProxyRequestKind,
}

/// The two kinds of proxy request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyRequestKind {
    /// `CONNECT`: answer [`CONNECT_ESTABLISHED`], then relay bytes both ways.
    Connect,
    /// Absolute-URI request: send `head` (origin-form request line, the
    /// client's end-to-end headers, `Connection: close`) to the origin, then
    /// relay the rest of the stream both ways.
    Forward {
        /// The rewritten request head, ending with the empty line.
        head: Vec<u8>,
    },
}

/// A request the proxy refuses, with the HTTP status to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    /// 400, 405, 431, 501 or 505.
    pub status: u16,
    /// What went wrong, for logs.
    pub reason: &'static str,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP proxy: {} ({})", self.reason, self.status)
    }
}

impl std::error::Error for Error {}

fn bad(reason: &'static str) -> Error {
    Error {
        status: 400,
        reason,
    }
}

/// A complete response for an error `status` (parse errors, and failures
/// to reach the origin: 403, 502, 504) whose one-line body says why
/// (`reason`), so that an unknown name and a refused connection read
/// differently in the browser.
///
/// ```
/// let r = mptcp_core::http::error_response(502, "remote relay: host unreachable");
/// let text = String::from_utf8(r).unwrap();
/// assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
/// assert!(text.ends_with("\r\n\r\n502 Bad Gateway: remote relay: host unreachable\n"));
/// ```
pub fn error_response(status: u16, reason: &str) -> Vec<u8> {
    let text = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    // One line the user sees in the browser or curl: what went wrong.
    let body = format!("{status} {text}: {}\n", reason.replace(['\r', '\n'], " "));
    format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Hop-by-hop headers that are not forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "upgrade",
];

/// Parses a proxy request head. `Done(request, used)`: `used` bytes were the
/// head; what follows (a request body, tunnelled bytes) belongs to the
/// origin.
pub fn parse_proxy_request(buf: &[u8]) -> Result<Progress<ProxyRequest>, Error> {
    let Some(head_len) = find_head_end(buf) else {
        if buf.len() >= MAX_HEAD {
            return Err(Error {
                status: 431,
                reason: "request head too large",
            });
        }
        // Fail early on a first line that cannot become a request.
        let starts_badly = buf
            .first()
            .is_some_and(|&b| !b.is_ascii_alphabetic() && b != b'\r' && b != b'\n');
        if starts_badly {
            return Err(bad("request does not start with a method"));
        }
        return Ok(Progress::NeedMore);
    };
    if head_len > MAX_HEAD {
        return Err(Error {
            status: 431,
            reason: "request head too large",
        });
    }
    let head =
        std::str::from_utf8(&buf[..head_len]).map_err(|_| bad("request head is not UTF-8"))?;
    // RFC 9112 2.2: ignore empty lines before the request line.
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines
        .by_ref()
        .find(|l| !l.is_empty())
        .ok_or_else(|| bad("empty request"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("request line is not `METHOD TARGET VERSION`"));
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(bad("invalid method"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(Error {
            status: 505,
            reason: "only HTTP/1.0 and HTTP/1.1 are supported",
        });
    }
    let headers: Vec<(&str, &str)> = lines
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let (name, value) = l
                .split_once(':')
                .ok_or_else(|| bad("header line without colon"))?;
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(bad("invalid header name"));
            }
            Ok((name, value.trim()))
        })
        .collect::<Result<_, _>>()?;

    if method == "CONNECT" {
        let target = parse_authority(target, None)?;
        return Ok(Progress::Done(
            ProxyRequest {
                target,
                kind: ProxyRequestKind::Connect,
            },
            head_len,
        ));
    }
    let rest = target
        .strip_prefix("http://")
        .or_else(|| {
            target
                .get(..7)
                .filter(|s| s.eq_ignore_ascii_case("http://"))
                .map(|_| &target[7..])
        })
        .ok_or(if target.starts_with('/') {
            bad("origin-form request sent to a proxy (expected an absolute URI)")
        } else {
            Error {
                status: 501,
                reason: "only http:// URIs and CONNECT are proxied",
            }
        })?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], &rest[i..]),
        Some(i) => (&rest[..i], ""),
        None => (rest, ""),
    };
    let query_only = if path.is_empty() {
        rest.get(authority.len()..).unwrap_or("")
    } else {
        ""
    };
    // Drop userinfo ("user:pass@host"): it never goes to the origin.
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let target_addr = parse_authority(host_port, Some(80))?;

    let mut out = Vec::with_capacity(head_len + 32);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    if path.is_empty() {
        out.push(b'/');
        out.extend_from_slice(query_only.as_bytes());
    } else {
        out.extend_from_slice(path.as_bytes());
    }
    out.push(b' ');
    out.extend_from_slice(version.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_host = false;
    for (name, value) in &headers {
        let lower = name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&lower.as_str()) {
            continue;
        }
        has_host |= lower == "host";
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if !has_host {
        out.extend_from_slice(format!("Host: {host_port}\r\n").as_bytes());
    }
    // One origin per client connection: the next request on a kept-alive
    // connection could name another host, so the origin closes after this one.
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(Progress::Done(
        ProxyRequest {
            target: target_addr,
            kind: ProxyRequestKind::Forward { head: out },
        },
        head_len,
    ))
}

/// The length of the head including the terminating empty line, if present.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let limit = buf.len().min(MAX_HEAD + 4);
    let mut line_start = 0;
    let mut seen_request_line = false;
    for (i, &b) in buf[..limit].iter().enumerate() {
        if b == b'\n' {
            let line = &buf[line_start..i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() && seen_request_line {
                return Some(i + 1);
            }
            seen_request_line |= !line.is_empty();
            line_start = i + 1;
        }
    }
    None
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `host:port`, `[v6]:port`, or `host` when a default port is given.
fn parse_authority(s: &str, default_port: Option<u16>) -> Result<TargetAddr, Error> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("unclosed [ in IPv6 host"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad("garbage after IPv6 host")),
        };
        let ip: IpAddr = v6.parse().map_err(|_| bad("invalid IPv6 address"))?;
        let port = parse_port(port, default_port)?;
        return Ok(TargetAddr::Ip(SocketAddr::new(ip, port)));
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = parse_port(port, default_port)?;
    if host.is_empty() || host.len() > 255 {
        return Err(bad("host name must be 1 to 255 bytes"));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(TargetAddr::Ip(SocketAddr::new(ip, port)));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(bad("invalid host name"));
    }
    Ok(TargetAddr::Domain(host.to_owned(), port))
}

fn parse_port(port: Option<&str>, default: Option<u16>) -> Result<u16, Error> {
    match port {
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(bad("invalid port")),
        },
        None => default.ok_or_else(|| bad("CONNECT target needs a port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn done(buf: &[u8]) -> (ProxyRequest, usize) {
        match parse_proxy_request(buf) {
            Ok(Progress::Done(r, n)) => (r, n),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn connect_forms() {
        let req = b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\nTLS";
        let (r, n) = done(req);
        assert_eq!(r.target, TargetAddr::Domain("example.test".into(), 443));
        assert_eq!(r.kind, ProxyRequestKind::Connect);
        assert_eq!(&req[n..], b"TLS");
        let (r, _) = done(b"CONNECT [2001:db8::2]:22 HTTP/1.0\n\n");
        assert_eq!(
            r.target,
            TargetAddr::Ip("[2001:db8::2]:22".parse().unwrap())
        );
    }

    #[test]
    fn absolute_uri_rewritten() {
        let req = b"GET http://user:pw@Example.test/x/y?q=1 HTTP/1.1\r\nHost: Example.test\r\n\
                    Proxy-Connection: keep-alive\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n";
        let (r, n) = done(req);
        assert_eq!(n, req.len());
        assert_eq!(r.target, TargetAddr::Domain("Example.test".into(), 80));
        let ProxyRequestKind::Forward { head } = r.kind else {
            panic!()
        };
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /x/y?q=1 HTTP/1.1\r\nHost: Example.test\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let (r, _) = done(b"GET http://198.18.0.2:8000?x HTTP/1.0\r\n\r\n");
        let ProxyRequestKind::Forward { head } = r.kind else {
            panic!()
        };
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /?x HTTP/1.0\r\nHost: 198.18.0.2:8000\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn statuses_for_bad_requests() {
        let status = |b: &[u8]| parse_proxy_request(b).unwrap_err().status;
        assert_eq!(status(b"GET /local HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET https://a.test/ HTTP/1.1\r\n\r\n"), 501);
        assert_eq!(status(b"CONNECT a.test HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"CONNECT a.test:0 HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET http://a.test/ HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(status(b"\x05\x01\x00"), 400);
        assert_eq!(status(&vec![b'A'; MAX_HEAD + 1]), 431);
        assert_eq!(
            parse_proxy_request(b"CONNECT a.test:1 HTTP/1.1\r\n"),
            Ok(Progress::NeedMore)
        );
    }

    proptest! {
        #[test]
        fn never_panics(buf in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = parse_proxy_request(&buf);
        }

        #[test]
        fn never_panics_on_near_valid(method in "[A-Z]{1,8}", target in "[ -~]{0,60}", tail in "[ -~\r\n]{0,80}") {
            let req = format!("{method} {target} HTTP/1.1\r\n{tail}\r\n\r\n");
            let _ = parse_proxy_request(req.as_bytes());
        }

        #[test]
        fn connect_round_trip(host in "[a-z][a-z0-9-]{0,20}(\\.[a-z0-9-]{1,10}){0,3}", port in 1u16..) {
            let req = format!("CONNECT {host}:{port} HTTP/1.1\r\n\r\n");
            let (r, n) = done(req.as_bytes());
            prop_assert_eq!(n, req.len());
            prop_assert_eq!(r.target, TargetAddr::Domain(host, port));
        }
    }
}
