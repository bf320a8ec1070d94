//! `mptcp relay --metrics ADDR`: one small HTTP listener for the operator:
//! the status page at `/` (one self-contained HTML page, its script and
//! style inline), the data it polls at `/status.json`, and the Prometheus
//! text at `/metrics`. A blocking server ([`listen`]): a thread per request,
//! a few at a time, one request per connection; `mptcp paths auto
//! --metrics` serves its links' metrics through it too ([`links`]). The
//! page's recent events are those [`crate::events`] keeps once recording.

pub mod links;
mod sampler;
mod status_json;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;

use crate::relay::Serving;
use sampler::LinkEnd;
pub use sampler::{Link, Sampler};

/// The status page.
const PAGE: &str = include_str!("page.html");

/// Requests served at once; more connections are closed at once.
const MAX_REQUESTS: usize = 8;

/// Which relay the page is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `mptcp relay local`.
    Local,
    /// `mptcp relay remote`.
    Remote,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Local => "local",
            Role::Remote => "remote",
        }
    }

    /// The end of a subflow that tells the links of the router apart.
    fn link_end(self) -> LinkEnd {
        match self {
            Role::Local => LinkEnd::Local,
            Role::Remote => LinkEnd::Peer,
        }
    }
}

/// Starts sampling `serving` and serves the page, its data and the metrics
/// of the relay in `role` on `addr`; the address it listens on (with the
/// actual port when 0 was asked).
pub fn serve(addr: SocketAddr, serving: Arc<Mutex<Serving>>, role: Role) -> io::Result<SocketAddr> {
    let sampler = Sampler::start(serving, role.link_end())?;
    let site = Site {
        registry: crate::metrics::registry(Arc::clone(&sampler)),
        sampler,
        role: role.name(),
    };
    listen(addr, Arc::new(site))
}

/// What a listener answers: a response to each GET (or HEAD) of `path`.
pub trait Pages: Send + Sync + 'static {
    /// The response to `path` with `query`.
    fn get(&self, path: &str, query: &str) -> io::Result<Response>;
}

/// Serves `pages` on `addr` from a thread of its own: a thread per request,
/// [`MAX_REQUESTS`] at a time, one request per connection. Returns the
/// address it listens on.
pub fn listen(addr: SocketAddr, pages: Arc<dyn Pages>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("web".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let mut conn = match conn {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of descriptors, most likely: the relay's
                        // connections come first; try again a bit later.
                        tracing::debug!("status page: accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                if busy.fetch_add(1, Ordering::AcqRel) >= MAX_REQUESTS {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let (pages, busy) = (Arc::clone(&pages), Arc::clone(&busy));
                let spawned = std::thread::Builder::new()
                    .name("web-request".into())
                    .spawn(move || {
                        if let Err(e) = answer(&*pages, &mut conn) {
                            tracing::debug!("status page: {e}");
                        }
                        busy.fetch_sub(1, Ordering::AcqRel);
                    });
                if let Err(e) = spawned {
                    tracing::debug!("status page: starting a thread: {e}");
                }
            }
        })?;
    Ok(addr)
}

/// Reads one request and answers it from `pages`.
fn answer(pages: &dyn Pages, conn: &mut TcpStream) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let head = read_head(conn)?;
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, content_type, body) = match method {
        "GET" | "HEAD" => pages.get(path, query)?,
        _ => (
            "405 Method Not Allowed",
            TEXT,
            "GET or HEAD only\n".to_owned(),
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        response += &body;
    }
    conn.write_all(response.as_bytes())
}

/// What the relay's listener serves.
struct Site {
    registry: Registry,
    sampler: Arc<Sampler>,
    role: &'static str,
}

/// A response: status line, content type and body.
pub type Response = (&'static str, &'static str, String);

impl Pages for Site {
    fn get(&self, path: &str, query: &str) -> io::Result<Response> {
        Ok(match path {
            "/" | "/status" => ("200 OK", "text/html; charset=utf-8", PAGE.to_owned()),
            "/status.json" => {
                let since = status_json::Since::from_query(query);
                let status = status_json::status(&self.sampler, self.role, since);
                ("200 OK", "application/json", status.to_string())
            }
            "/metrics" => metrics_response(&self.registry)?,
            _ => (
                "404 Not Found",
                TEXT,
                "the status page is at /, its data at /status.json, the metrics at /metrics\n"
                    .to_owned(),
            ),
        })
    }
}

/// `registry` as the answer to `/metrics`.
pub fn metrics_response(registry: &Registry) -> io::Result<Response> {
    Ok((
        "200 OK",
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        crate::metrics::encode(registry)?,
    ))
}

pub const TEXT: &str = "text/plain; charset=utf-8";

/// The request head, up to its blank line (at most 8 KiB).
fn read_head(conn: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 || head.len() > 8192 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no complete request head",
            ));
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}
