//! Watch an MPTCP connection's subflows while data flows.
//!
//! ```text
//! cargo run --example info -- server 0.0.0.0:5000      # receive, print each connection's subflows
//! cargo run --example info -- client 192.0.2.1:5000 10 # send for 10 s, print subflows every second
//! sudo cargo run --example info -- demo                # both ends over two 20 Mbit/s links in
//!                                                      # network namespaces (198.18.0.0/15)
//! ```
//!
//! The client falls back to plain TCP when the kernel refuses MPTCP and
//! says why; the printout says whether the connection really uses MPTCP.
use std::error::Error;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use mptcp_core::info::MptcpExt;
use mptcp_core::socket::{self, Fallback};

const USAGE: &str = "usage: info server <bind-addr> | info client <addr> [seconds] | info demo";

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["server", addr] => server(addr.parse()?),
        ["client", addr] => client(addr.parse()?, Duration::from_secs(5)),
        ["client", addr, seconds] => client(addr.parse()?, Duration::from_secs(seconds.parse()?)),
        ["demo"] => demo(),
        _ => Err(USAGE.into()),
    }
}

/// Accepts connections and drains each on its own thread, printing its
/// subflows when it ends.
fn server(addr: SocketAddr) -> Result<(), Box<dyn Error>> {
    let listener = socket::bind_listener(addr, Fallback::Tcp)?;
    println!(
        "listening on {} (MPTCP: {})",
        listener.local_addr()?,
        listener.is_mptcp()?
    );
    for stream in listener.incoming() {
        let stream = stream?;
        thread::spawn(move || {
            if let Err(err) = drain_and_report(stream) {
                eprintln!("connection: {err}");
            }
        });
    }
    Ok(())
}

fn drain_and_report(mut stream: TcpStream) -> io::Result<()> {
    let peer = stream.peer_addr()?;
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    // Keep the last report taken while data flowed: once the peer closes,
    // its subflows go away.
    let mut last = report(&stream);
    let mut next_report = Instant::now() + Duration::from_secs(1);
    loop {
        match stream.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
        if Instant::now() >= next_report {
            last = report(&stream);
            next_report += Duration::from_secs(1);
        }
    }
    println!("{peer}: received {total} bytes; last seen:\n{last}");
    Ok(())
}

/// Sends for `duration`, printing the connection's state every second.
fn client(addr: SocketAddr, duration: Duration) -> Result<(), Box<dyn Error>> {
    let created = socket::new(socket2::Domain::for_address(addr), Fallback::Tcp)?;
    if let Some(reason) = created.fallback {
        println!("plain TCP: {reason}");
    }
    created.socket.connect(&addr.into())?;
    let mut stream: TcpStream = created.socket.into();
    let buf = vec![0x5au8; 64 << 10];
    let start = Instant::now();
    let mut next_report = start;
    let mut sent = 0u64;
    while start.elapsed() < duration {
        stream.write_all(&buf)?;
        sent += buf.len() as u64;
        if Instant::now() >= next_report {
            println!(
                "after {:.1} s, {sent} bytes written:\n{}",
                start.elapsed().as_secs_f64(),
                report(&stream)
            );
            next_report += Duration::from_secs(1);
        }
    }
    println!(
        "done: {sent} bytes in {:.1} s\n{}",
        start.elapsed().as_secs_f64(),
        report(&stream)
    );
    Ok(())
}

/// One line for the connection, one per subflow.
fn report(stream: &TcpStream) -> String {
    match stream.is_mptcp() {
        Ok(true) => {}
        Ok(false) => return "  plain TCP (no MPTCP, or the peer made the kernel fall back)".into(),
        Err(err) => return format!("  {err}"),
    }
    let mut text = match stream.mptcp_info() {
        Ok(info) => format!(
            "  MPTCP token {:08x}: {} extra subflow(s) of at most {}, sent {} acked {} received {}",
            info.token,
            info.subflows,
            info.subflows_max,
            shown(info.bytes_sent),
            shown(info.bytes_acked),
            shown(info.bytes_received),
        ),
        Err(err) => format!("  {err}"),
    };
    match stream.subflows() {
        Ok(subflows) => subflows
            .iter()
            .for_each(|s| text.push_str(&format!("\n    {s}"))),
        Err(err) => text.push_str(&format!("\n    {err}")),
    }
    text
}

fn shown(value: Option<u64>) -> String {
    value.map_or_else(|| "n/a".into(), |v| v.to_string())
}

/// Both ends in the test bed: two 20 Mbit/s links, a 3 s transfer.
fn demo() -> Result<(), Box<dyn Error>> {
    let bed = mptcp_testbed::two_links(2, Some(20))?;
    let listener = bed
        .server
        .run(|| socket::bind_listener((bed.server_addr(), 0), Fallback::Fail))?;
    let addr = listener.local_addr()?;
    let receiver = thread::spawn(move || -> io::Result<()> {
        let (stream, _) = listener.accept()?;
        drain_and_report(stream)
    });
    bed.client
        .run(|| client(addr, Duration::from_secs(3)).map_err(|e| e.to_string()))?;
    receiver.join().map_err(|_| "the receiver panicked")??;
    Ok(())
}
